// A test patch whose new hrtimer_nanosleep is the old one, copied from
// Linux 6.1 (kernel/time/hrtimer.c, do_nanosleep inlined by hand): it never
// calls back into the old body. A task asleep in nanosleep holds the update
// inside the old hrtimer_nanosleep; kicked, its sleep is restarted through
// hrtimer_nanosleep_restart, outside the old function, and goes on.
#include <linux/hrtimer.h>
#include <linux/restart_block.h>
#include <linux/sched.h>
#include <linux/sched/signal.h>
#include <linux/thread_info.h>
#include <linux/time.h>
#include <lucos/patch.h>

LUCOS_PATCH("hold-nanosleep", "hrtimer_nanosleep, copied");

extern long hrtimer_nanosleep_restart(struct restart_block *restart);

static int copy_do_nanosleep(struct hrtimer_sleeper *t, enum hrtimer_mode mode)
{
	struct restart_block *restart;

	do {
		set_current_state(TASK_INTERRUPTIBLE | TASK_FREEZABLE);
		hrtimer_sleeper_start_expires(t, mode);
		if (likely(t->task))
			schedule();
		hrtimer_cancel(&t->timer);
		mode = HRTIMER_MODE_ABS;
	} while (t->task && !signal_pending(current));
	__set_current_state(TASK_RUNNING);
	if (!t->task)
		return 0;
	restart = &current->restart_block;
	if (restart->nanosleep.type != TT_NONE) {
		ktime_t rem = hrtimer_expires_remaining(&t->timer);
		struct timespec64 rmt;

		if (rem <= 0)
			return 0;
		rmt = ktime_to_timespec64(rem);
		return nanosleep_copyout(restart, &rmt);
	}
	return -ERESTART_RESTARTBLOCK;
}

static long new_hrtimer_nanosleep(ktime_t rqtp, const enum hrtimer_mode mode, const clockid_t clockid)
{
	struct restart_block *restart;
	struct hrtimer_sleeper t;
	int ret;

	hrtimer_init_sleeper_on_stack(&t, clockid, mode);
	hrtimer_set_expires_range_ns(&t.timer, rqtp, current->timer_slack_ns);
	ret = copy_do_nanosleep(&t, mode);
	if (ret != -ERESTART_RESTARTBLOCK)
		goto out;
	if (mode == HRTIMER_MODE_ABS) {
		ret = -ERESTARTNOHAND;
		goto out;
	}
	restart = &current->restart_block;
	restart->nanosleep.clockid = t.timer.base->clockid;
	restart->nanosleep.expires = hrtimer_get_expires_tv64(&t.timer);
	set_restart_fn(restart, hrtimer_nanosleep_restart);
out:
	destroy_hrtimer_on_stack(&t.timer);
	return ret;
}
LUCOS_REPLACE(hrtimer_nanosleep, new_hrtimer_nanosleep);
