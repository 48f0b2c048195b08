// SPDX-License-Identifier: GPL-2.0
/*
 * new-data: /proc/cmdline ends with " lucos-reads=N", N counting the reads
 * since the patch was applied.
 *
 * The patch brings its own variables: a counter in .bss (zero when lucos
 * loads the patch) and an initialised label in .data. lucos lays both out
 * in the patch region, writable, next to the patch's code.
 */
#include <linux/atomic.h>
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("new-data", "/proc/cmdline counts its reads: lucos-reads=N");

static atomic_long_t reads;		/* .bss */
static char label[16] = "lucos-reads";	/* .data */

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %s=%ld\n", saved_command_line, label,
		   atomic_long_inc_return(&reads));
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
