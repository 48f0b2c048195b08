// SPDX-License-Identifier: GPL-2.0
/*
 * deadlock-fix: the LUCOS paper's example. lucos_bugs_deadlock_op (in the
 * lucos_bugs test module) returns early on an error with lucos_bugs_lock
 * still held; every later taker spins forever.
 *
 * The patch fixes the function and, before the fix goes live, its startup
 * callback repairs the tainted state the bug may already have left: a lock
 * whose recorded holder no longer exists was leaked, and is released.
 */
#include <linux/spinlock.h>
#include <linux/sched.h>
#include <linux/pid.h>
#include <linux/pid_namespace.h>
#include <lucos/patch.h>

LUCOS_PATCH("deadlock-fix", "lucos_bugs_deadlock_op no longer returns with its lock held; a leaked lock is released");

extern spinlock_t lucos_bugs_lock;
extern pid_t lucos_bugs_lock_holder;
extern unsigned long lucos_bugs_lock_count;

static int fixed_deadlock_op(int bad)
{
	spin_lock(&lucos_bugs_lock);
	lucos_bugs_lock_holder = task_pid_nr(current);
	lucos_bugs_lock_count++;
	lucos_bugs_lock_holder = 0;
	spin_unlock(&lucos_bugs_lock);
	return bad ? -EIO : 0;
}
LUCOS_REPLACE(lucos_bugs_deadlock_op, fixed_deadlock_op);

/*
 * Startup callback: runs once, before the redirect, on a vCPU lucos picks
 * (the other vCPUs stopped). A held lock whose holder has exited can only
 * have been leaked by the bug: release it.
 */
static int release_leaked_lock(void)
{
	pid_t holder = READ_ONCE(lucos_bugs_lock_holder);
	bool gone;

	if (!holder || !spin_is_locked(&lucos_bugs_lock))
		return 0;
	rcu_read_lock();
	gone = !find_pid_ns(holder, &init_pid_ns);
	rcu_read_unlock();
	if (gone) {
		WRITE_ONCE(lucos_bugs_lock_holder, 0);
		/*
		 * The lock only: spin_unlock would also drop a preempt count
		 * this CPU never raised (the leaking task's count went with
		 * that task).
		 */
		do_raw_spin_unlock(&lucos_bugs_lock.rlock);
	}
	return 0;
}
LUCOS_STARTUP(release_leaked_lock);
