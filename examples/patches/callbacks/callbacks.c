// SPDX-License-Identifier: GPL-2.0
/*
 * callbacks: every kind of callback, each noting when it runs in the
 * lucos_bugs module's event log (/proc/lucos_bugs/events), so a test can
 * check that they run in the documented order, exactly as often as
 * documented.
 */
#include <linux/kernel.h>
#include <linux/sched.h>
#include <linux/wait.h>
#include <lucos/patch.h>

LUCOS_PATCH("callbacks", "notes its startup, cleanup, function and thread callbacks in /proc/lucos_bugs/events");

/* The module's layout, as in lucos_bugs.h. */
struct lucos_bugs_stats {
	unsigned long count;
	unsigned long total_ms;
};

extern void lucos_bugs_note(const char *line);
extern struct lucos_bugs_stats lucos_bugs_stats;
extern int lucos_bugs_released;
extern wait_queue_head_t lucos_bugs_wq;
extern unsigned long lucos_bugs_stats_seen;

static int on_startup(void)
{
	lucos_bugs_note("startup\n");
	return 0;
}
LUCOS_STARTUP(on_startup);

static void on_cleanup(void)
{
	lucos_bugs_note("cleanup\n");
}
LUCOS_CLEANUP(on_cleanup);

/* On every entry of lucos_bugs_stats_add, with its argument. */
static void on_stats_add(unsigned long ms)
{
	char line[48];

	snprintf(line, sizeof(line), "func stats_add %lu\n", ms);
	lucos_bugs_note(line);
}
LUCOS_FUNC_CALLBACK(lucos_bugs_stats_add, on_stats_add);

/* On the first entry of lucos_bugs_session_write only. */
static void on_session_write(size_t len)
{
	char line[48];

	snprintf(line, sizeof(line), "func-once session_write %zu\n", len);
	lucos_bugs_note(line);
}
LUCOS_FUNC_CALLBACK_ONCE(lucos_bugs_session_write, on_session_write);

/* For each task found inside lucos_bugs_stats_hold (the old one). */
static void on_thread(struct task_struct *t)
{
	char line[64];

	snprintf(line, sizeof(line), "thread %d %s\n", task_pid_nr(t), t->comm);
	lucos_bugs_note(line);
}
LUCOS_THREAD_CALLBACK(on_thread);

/* The replaced function: the same behaviour, so the update has an old function to terminate on. */
static void new_stats_hold(unsigned long ms)
{
	wait_event_interruptible(lucos_bugs_wq, READ_ONCE(lucos_bugs_released));
	lucos_bugs_released = 0;
	lucos_bugs_stats.count++;
	lucos_bugs_stats.total_ms += ms;
	lucos_bugs_stats_seen = lucos_bugs_stats.count;
}
LUCOS_REPLACE(lucos_bugs_stats_hold, new_stats_hold);
