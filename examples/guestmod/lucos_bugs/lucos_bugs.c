// SPDX-License-Identifier: GPL-2.0
/*
 * lucos_bugs: a guest module with deliberate bugs, for live patches to fix.
 * Every function and variable a patch names is global and every such
 * function noinline, so each keeps its symbol and its ftrace entry site.
 *
 * /proc/lucos_bugs/
 *   deadlock  write "trigger": lucos_bugs_deadlock_op(1) returns holding
 *             lucos_bugs_lock (the LUCOS paper's bug), so the next reader
 *             spins forever; the writer itself lives on (see
 *             deadlock_write). "ok": the correct path. "hold N": hold the
 *             lock, interrupts off, until lucos_bugs_waiting is set, then
 *             N ms more. Read: "ok <count>".
 *   stats     write "add N", "hold N" (blocks until "release"), "release".
 *             Read: "count=C total_ms=T".
 *   seen      read: the count the last "hold" saw after its update.
 *   sessions  any write counts one write for the writing task. Read: one
 *             "pid comm writes" line per task that wrote.
 *   events    read: the lines patches noted with lucos_bugs_note, in order
 *             (the callbacks example logs its callbacks here).
 */
#include <linux/delay.h>
#include <linux/kernel.h>
#include <linux/module.h>
#include <linux/proc_fs.h>
#include <linux/slab.h>
#include <linux/string.h>
#include <linux/uaccess.h>

#include "lucos_bugs.h"

/* (a) deadlock */

DEFINE_SPINLOCK(lucos_bugs_lock);
pid_t lucos_bugs_lock_holder;
unsigned long lucos_bugs_lock_count;

noinline int lucos_bugs_deadlock_op(int bad)
{
	spin_lock(&lucos_bugs_lock);
	lucos_bugs_lock_holder = task_pid_nr(current);
	lucos_bugs_lock_count++;
	if (bad)
		return -EIO;	/* BUG: returns with the lock held */
	lucos_bugs_lock_holder = 0;
	spin_unlock(&lucos_bugs_lock);
	return 0;
}

/*
 * A test's lock holder: takes the lock with interrupts off, waits (busy)
 * until someone announces in lucos_bugs_waiting that it waits for the lock,
 * holds it ms milliseconds more, and releases it. A test uses it to make a
 * guest call wait for a vCPU that lucos has stopped; the test's host side
 * sets lucos_bugs_waiting itself when the call never comes. The 60 s bound
 * only keeps a guest whose test died from spinning for good.
 */
int lucos_bugs_waiting;

noinline void lucos_bugs_lock_hold(unsigned int ms)
{
	unsigned long flags;
	int i;

	WRITE_ONCE(lucos_bugs_waiting, 0);
	spin_lock_irqsave(&lucos_bugs_lock, flags);
	lucos_bugs_lock_holder = task_pid_nr(current);
	for (i = 0; i < 60000 && !READ_ONCE(lucos_bugs_waiting); i++)
		mdelay(1);
	mdelay(ms);
	WRITE_ONCE(lucos_bugs_waiting, 0);
	lucos_bugs_lock_holder = 0;
	spin_unlock_irqrestore(&lucos_bugs_lock, flags);
}

noinline int lucos_bugs_deadlock_show(struct seq_file *m, void *v)
{
	unsigned long count;

	spin_lock(&lucos_bugs_lock);
	count = lucos_bugs_lock_count;
	spin_unlock(&lucos_bugs_lock);
	seq_printf(m, "ok %lu\n", count);
	return 0;
}

/* (b) stats */

struct lucos_bugs_stats lucos_bugs_stats;
unsigned long lucos_bugs_stats_seen;
DECLARE_WAIT_QUEUE_HEAD(lucos_bugs_wq);
int lucos_bugs_released;

noinline void lucos_bugs_stats_add(unsigned long ms)
{
	lucos_bugs_stats.count++;
	lucos_bugs_stats.total_ms += ms;
}

/*
 * The wait is inline so that a held task's stack has a return address in
 * this function, and the stores to lucos_bugs_stats are this function's
 * own: a patch that changes the struct's layout must wait for them.
 */
noinline void lucos_bugs_stats_hold(unsigned long ms)
{
	if (wait_event_interruptible(lucos_bugs_wq, READ_ONCE(lucos_bugs_released)))
		return;	/* a signal: nothing counted */
	WRITE_ONCE(lucos_bugs_released, 0);
	WRITE_ONCE(lucos_bugs_stats.count, lucos_bugs_stats.count + 1);
	WRITE_ONCE(lucos_bugs_stats.total_ms, lucos_bugs_stats.total_ms + ms);
	WRITE_ONCE(lucos_bugs_stats_seen, lucos_bugs_stats.count);
}

noinline int lucos_bugs_stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "count=%lu total_ms=%lu\n", lucos_bugs_stats.count, lucos_bugs_stats.total_ms);
	return 0;
}

/* (c) sessions */

LIST_HEAD(lucos_bugs_sessions);
DEFINE_SPINLOCK(lucos_bugs_sessions_lock);

noinline struct lucos_bugs_session *lucos_bugs_session_get(void)
{
	pid_t pid = task_pid_nr(current);
	struct lucos_bugs_session *s;

	spin_lock(&lucos_bugs_sessions_lock);
	list_for_each_entry(s, &lucos_bugs_sessions, node)
		if (s->pid == pid)
			goto out;
	s = kzalloc(sizeof(*s), GFP_ATOMIC);
	if (s) {
		s->pid = pid;
		get_task_comm(s->comm, current);
		list_add_tail(&s->node, &lucos_bugs_sessions);
	}
out:
	spin_unlock(&lucos_bugs_sessions_lock);
	return s;
}

noinline void lucos_bugs_session_write(size_t len)
{
	struct lucos_bugs_session *s = lucos_bugs_session_get();

	if (!s)
		return;
	spin_lock(&lucos_bugs_sessions_lock);
	s->writes++;
	spin_unlock(&lucos_bugs_sessions_lock);
}

noinline int lucos_bugs_sessions_show(struct seq_file *m, void *v)
{
	struct lucos_bugs_session *s;

	spin_lock(&lucos_bugs_sessions_lock);
	list_for_each_entry(s, &lucos_bugs_sessions, node)
		seq_printf(m, "%d %s %lu\n", s->pid, s->comm, s->writes);
	spin_unlock(&lucos_bugs_sessions_lock);
	return 0;
}

/* events: a log patches write to, so tests can see when their callbacks ran */

static char lucos_bugs_events[4096];
static size_t lucos_bugs_events_len;
static DEFINE_SPINLOCK(lucos_bugs_events_lock);

/* lucos_bugs_note appends line to the event log; any context. */
noinline void lucos_bugs_note(const char *line)
{
	unsigned long flags;
	size_t n = strlen(line);

	spin_lock_irqsave(&lucos_bugs_events_lock, flags);
	n = min(n, sizeof(lucos_bugs_events) - 1 - lucos_bugs_events_len);
	memcpy(lucos_bugs_events + lucos_bugs_events_len, line, n);
	lucos_bugs_events_len += n;
	spin_unlock_irqrestore(&lucos_bugs_events_lock, flags);
}

static int events_show(struct seq_file *m, void *v)
{
	unsigned long flags;
	char *copy = kmalloc(sizeof(lucos_bugs_events), GFP_KERNEL);
	size_t n;

	if (!copy)
		return -ENOMEM;
	spin_lock_irqsave(&lucos_bugs_events_lock, flags);
	n = lucos_bugs_events_len;
	memcpy(copy, lucos_bugs_events, n);
	spin_unlock_irqrestore(&lucos_bugs_events_lock, flags);
	seq_write(m, copy, n);
	kfree(copy);
	return 0;
}

/* /proc plumbing: nothing here is meant to be patched. */

/* read_cmd copies a short command from user space without its trailing
 * white space. */
static int read_cmd(char *buf, size_t size, const char __user *ubuf, size_t count)
{
	if (count >= size)
		return -EINVAL;
	if (copy_from_user(buf, ubuf, count))
		return -EFAULT;
	buf[count] = '\0';
	strim(buf);
	return 0;
}

static ssize_t deadlock_write(struct file *f, const char __user *ubuf, size_t count, loff_t *ppos)
{
	char buf[16];
	int err = read_cmd(buf, sizeof(buf), ubuf, count);

	if (err)
		return err;
	if (!strcmp(buf, "trigger")) {
		/*
		 * -EIO, and the lock stays taken. spin_lock also disabled
		 * preemption, and on this kernel (CONFIG_PREEMPT_COUNT) a task
		 * returning to user space so would have its next page fault
		 * refused (SIGSEGV) and its next schedule() reported as
		 * "scheduling while atomic". Give the count back so the writer
		 * lives on: only the lock is leaked. (Only if the op raised it:
		 * a fixed op returns with the count as it found it.)
		 */
		int pc = preempt_count();

		lucos_bugs_deadlock_op(1);
		if (preempt_count() > pc)
			preempt_enable();
	} else if (!strcmp(buf, "ok")) {
		lucos_bugs_deadlock_op(0);
	} else if (!strncmp(buf, "hold ", 5)) {
		unsigned int ms;

		if (kstrtouint(buf + 5, 10, &ms) || ms > 2000)
			return -EINVAL;
		lucos_bugs_lock_hold(ms);
	} else {
		return -EINVAL;
	}
	return count;
}

static ssize_t stats_write(struct file *f, const char __user *ubuf, size_t count, loff_t *ppos)
{
	char buf[32];
	unsigned long n;
	int err = read_cmd(buf, sizeof(buf), ubuf, count);

	if (err)
		return err;
	if (!strcmp(buf, "release")) {
		WRITE_ONCE(lucos_bugs_released, 1);
		wake_up(&lucos_bugs_wq);
	} else if (!strncmp(buf, "add ", 4) && !kstrtoul(buf + 4, 10, &n)) {
		lucos_bugs_stats_add(n);
	} else if (!strncmp(buf, "hold ", 5) && !kstrtoul(buf + 5, 10, &n)) {
		lucos_bugs_stats_hold(n);
	} else {
		return -EINVAL;
	}
	return count;
}

static ssize_t sessions_write(struct file *f, const char __user *ubuf, size_t count, loff_t *ppos)
{
	lucos_bugs_session_write(count);
	return count;
}

static int seen_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%lu\n", READ_ONCE(lucos_bugs_stats_seen));
	return 0;
}

static int deadlock_open(struct inode *i, struct file *f) { return single_open(f, lucos_bugs_deadlock_show, NULL); }
static int stats_open(struct inode *i, struct file *f) { return single_open(f, lucos_bugs_stats_show, NULL); }
static int seen_open(struct inode *i, struct file *f) { return single_open(f, seen_show, NULL); }
static int sessions_open(struct inode *i, struct file *f) { return single_open(f, lucos_bugs_sessions_show, NULL); }
static int events_open(struct inode *i, struct file *f) { return single_open(f, events_show, NULL); }

#define LUCOS_BUGS_OPS(name, write_fn) { \
	.proc_open = name##_open, .proc_read = seq_read, .proc_lseek = seq_lseek, \
	.proc_release = single_release, .proc_write = write_fn }

static const struct proc_ops deadlock_ops = LUCOS_BUGS_OPS(deadlock, deadlock_write);
static const struct proc_ops stats_ops = LUCOS_BUGS_OPS(stats, stats_write);
static const struct proc_ops seen_ops = LUCOS_BUGS_OPS(seen, NULL);
static const struct proc_ops sessions_ops = LUCOS_BUGS_OPS(sessions, sessions_write);
static const struct proc_ops events_ops = LUCOS_BUGS_OPS(events, NULL);

static struct proc_dir_entry *lucos_bugs_dir;

static int __init lucos_bugs_init(void)
{
	static const struct {
		const char *name;
		umode_t mode;
		const struct proc_ops *ops;
	} files[] = {
		{ "deadlock", 0644, &deadlock_ops },
		{ "stats", 0644, &stats_ops },
		{ "seen", 0444, &seen_ops },
		{ "sessions", 0644, &sessions_ops },
		{ "events", 0444, &events_ops },
	};
	int i;

	lucos_bugs_dir = proc_mkdir("lucos_bugs", NULL);
	if (!lucos_bugs_dir)
		return -ENOMEM;
	for (i = 0; i < ARRAY_SIZE(files); i++) {
		if (!proc_create(files[i].name, files[i].mode, lucos_bugs_dir, files[i].ops)) {
			proc_remove(lucos_bugs_dir);
			return -ENOMEM;
		}
	}
	return 0;
}

static void __exit lucos_bugs_exit(void)
{
	struct lucos_bugs_session *s, *tmp;

	proc_remove(lucos_bugs_dir);
	list_for_each_entry_safe(s, tmp, &lucos_bugs_sessions, node) {
		list_del(&s->node);
		kfree(s);
	}
}

module_init(lucos_bugs_init);
module_exit(lucos_bugs_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("lucos test module with deliberate bugs for live patches to fix");
