// SPDX-License-Identifier: GPL-2.0
/*
 * The /proc/version and /proc/loadavg parts of the multi example
 * (fs/proc/version.c and fs/proc/loadavg.c; both functions are static).
 */
#include <linux/idr.h>
#include <linux/pid_namespace.h>
#include <linux/printk.h>
#include <linux/sched.h>
#include <linux/sched/loadavg.h>
#include <linux/sched/stat.h>
#include <linux/seq_file.h>
#include <linux/utsname.h>
#include <lucos/patch.h>
#include "multi.h"

/*
 * /proc/version: the kernel's own banner format, then the marker before
 * the banner's final newline (dropped from the seq_file buffer).
 */
static int patched_version_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, linux_proc_banner, utsname()->sysname,
		   utsname()->release, utsname()->version);
	if (m->count > 0 && m->count < m->size && m->buf[m->count - 1] == '\n')
		m->count--;
	seq_puts(m, " " MULTI_MARKER "\n");
	return 0;
}
LUCOS_REPLACE(version_proc_show, patched_version_proc_show);

/* /proc/loadavg: the original's five fields, then the marker. */
static int patched_loadavg_proc_show(struct seq_file *m, void *v)
{
	unsigned long avnrun[3];

	get_avenrun(avnrun, FIXED_1 / 200, 0);
	seq_printf(m, "%lu.%02lu %lu.%02lu %lu.%02lu %u/%d %d " MULTI_MARKER "\n",
		   LOAD_INT(avnrun[0]), LOAD_FRAC(avnrun[0]),
		   LOAD_INT(avnrun[1]), LOAD_FRAC(avnrun[1]),
		   LOAD_INT(avnrun[2]), LOAD_FRAC(avnrun[2]),
		   nr_running(), nr_threads,
		   idr_get_cursor(&task_active_pid_ns(current)->idr) - 1);
	return 0;
}
LUCOS_REPLACE(loadavg_proc_show, patched_loadavg_proc_show);
