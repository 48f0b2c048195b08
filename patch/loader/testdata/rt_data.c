// SPDX-License-Identifier: GPL-2.0
/*
 * rt_data: a data update and one callback of each kind, built with the
 * lucos runtime (rt_* testdata are linked with sdk/runtime/lucos_rt.c).
 */
#include <lucos/patch.h>
#include <linux/jiffies.h>
#include <linux/sched.h>
#include <linux/seq_file.h>

LUCOS_PATCH("rt_data", "data update and callbacks");

/* static int sysctl_sched_rr_timeslice in kernel/sched/rt.c (kallsyms d) */
extern int sysctl_sched_rr_timeslice;

struct timeslice {
	int ms;
	int doubled;
};
static struct timeslice new_timeslice;		/* .bss */
static unsigned long lucos_counts[8];		/* .bss */

static void timeslice_transfer(const int *old, struct timeslice *new)
{
	new->ms = *old;
	new->doubled = *old * 2;
}

static void timeslice_reverse(const struct timeslice *new, int *old)
{
	*old = new->ms;
}
LUCOS_DATA(sysctl_sched_rr_timeslice, new_timeslice, timeslice_transfer, timeslice_reverse);

static int lucos_startup(void)
{
	lucos_counts[0]++;
	return 0;
}
LUCOS_STARTUP(lucos_startup);

static void lucos_cleanup(void)
{
	lucos_counts[1]++;
}
LUCOS_CLEANUP(lucos_cleanup);

/* version_proc_show(struct seq_file *m, void *v) */
static void on_version(struct seq_file *m, void *v)
{
	lucos_counts[2] += (unsigned long)v;
}
LUCOS_FUNC_CALLBACK(version_proc_show, on_version);
LUCOS_FUNC_CALLBACK_ONCE(cmdline_proc_show, on_version);

static void on_task(struct task_struct *t)
{
	lucos_counts[3] += t->pid;
}
LUCOS_THREAD_CALLBACK(on_task);
LUCOS_CALLBACK(LUCOS_CB_THREAD, NULL, 0, on_task, LUCOS_CB_NMI_SAFE);

static void on_jiffies(u64 *j)
{
	lucos_counts[4] = *j;
}
LUCOS_DATA_CALLBACK(jiffies_64, on_jiffies);

static void on_new_timeslice(struct timeslice *ts)
{
	lucos_counts[5] += ts->ms;
}
LUCOS_DATA_CALLBACK(new_timeslice, on_new_timeslice);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	unsigned long *seen = lucos_shadow_get_or_alloc(m, 1, sizeof(*seen), GFP_ATOMIC);

	if (seen)
		(*seen)++;
	seq_printf(m, "timeslice %d\n", new_timeslice.ms);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
