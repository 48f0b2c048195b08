// SPDX-License-Identifier: GPL-2.0
/*
 * meminfo-string: /proc/meminfo gains a last line "LucosPatched:          1 kB".
 *
 * Replaces meminfo_proc_show (fs/proc/meminfo.c, static) with a function
 * that runs the original body through LUCOS_ORIG, then adds one line in
 * meminfo's own format (a 16-column label, an 8-column value, " kB").
 */
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("meminfo-string", "/proc/meminfo gains the line LucosPatched: 1 kB");

/* The original body, callable while meminfo_proc_show itself is redirected. */
extern int LUCOS_ORIG(meminfo_proc_show)(struct seq_file *m, void *v);

static int patched_meminfo_proc_show(struct seq_file *m, void *v)
{
	int ret = LUCOS_ORIG(meminfo_proc_show)(m, v);

	if (ret)
		return ret;
	seq_printf(m, "%-16s%8lu kB\n", "LucosPatched:", 1UL);
	return 0;
}
LUCOS_REPLACE(meminfo_proc_show, patched_meminfo_proc_show);
