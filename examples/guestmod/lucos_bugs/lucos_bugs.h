/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lucos_bugs: the module's types and globals, for live patches that
 * replace its functions. Patches reference every name here by symbol, so
 * none may change without changing the patches.
 */
#ifndef LUCOS_BUGS_H
#define LUCOS_BUGS_H

#include <linux/list.h>
#include <linux/sched.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <linux/types.h>
#include <linux/wait.h>

/* (a) deadlock: lucos_bugs_deadlock_op(1) returns holding lucos_bugs_lock. */
extern spinlock_t lucos_bugs_lock;
extern pid_t lucos_bugs_lock_holder;	/* who took the lock; 0 once released */
extern unsigned long lucos_bugs_lock_count;
int lucos_bugs_deadlock_op(int bad);
int lucos_bugs_deadlock_show(struct seq_file *m, void *v);
void lucos_bugs_lock_hold(unsigned int ms);
extern int lucos_bugs_waiting;	/* set by a test's waiter: lucos_bugs_lock_hold lets go soon after */

/* (b) stats: a global instance whose layout a patch changes. */
struct lucos_bugs_stats {
	unsigned long count;
	unsigned long total_ms;
};
extern struct lucos_bugs_stats lucos_bugs_stats;
extern unsigned long lucos_bugs_stats_seen;	/* count after the last hold */
extern wait_queue_head_t lucos_bugs_wq;
extern int lucos_bugs_released;
void lucos_bugs_stats_add(unsigned long ms);
void lucos_bugs_stats_hold(unsigned long ms);
int lucos_bugs_stats_show(struct seq_file *m, void *v);

/* (c) sessions: per-task objects a patch extends with a shadow field. */
struct lucos_bugs_session {
	struct list_head node;
	pid_t pid;
	char comm[TASK_COMM_LEN];
	unsigned long writes;
};
extern struct list_head lucos_bugs_sessions;
extern spinlock_t lucos_bugs_sessions_lock;
struct lucos_bugs_session *lucos_bugs_session_get(void);
void lucos_bugs_session_write(size_t len);
int lucos_bugs_sessions_show(struct seq_file *m, void *v);

/* events */
void lucos_bugs_note(const char *line);

#endif /* LUCOS_BUGS_H */
