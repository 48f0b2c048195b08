// SPDX-License-Identifier: GPL-2.0
/*
 * bad-not-function: must be refused. LUCOS_REPLACE names linux_proc_banner,
 * a data symbol (the format string of /proc/version): only a function that
 * starts with the 5-byte ftrace NOP can be redirected. Writing a jmp over
 * data would corrupt it.
 */
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-not-function", "refused: LUCOS_REPLACE of a data symbol");

static int patched_banner(struct seq_file *m, void *v)
{
	seq_puts(m, "lucos\n");
	return 0;
}
LUCOS_REPLACE(linux_proc_banner, patched_banner);
