// SPDX-License-Identifier: GPL-2.0
/* cmdline: /proc/cmdline gains a marker; new data and bss in the patch. */
#include <lucos/patch.h>
#include <linux/seq_file.h>

extern char *saved_command_line;

LUCOS_PATCH("cmdline", "marker in /proc/cmdline");

static unsigned long lucos_calls;		/* .bss */
const char *lucos_marker = " lucos\n";		/* .data (global: not folded) */

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	lucos_calls++;
	seq_puts(m, saved_command_line);
	seq_puts(m, lucos_marker);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
