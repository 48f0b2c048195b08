// SPDX-License-Identifier: GPL-2.0
/*
 * cmdline-string: /proc/cmdline ends with the marker "lucos-patched".
 *
 * Replaces cmdline_proc_show (fs/proc/cmdline.c, static). The original
 * prints saved_command_line and a newline; this prints the same line with
 * " lucos-patched" before the newline.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("cmdline-string", "/proc/cmdline gains the marker lucos-patched");

/* Same prototype as the original: static int cmdline_proc_show(struct seq_file *, void *). */
static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-patched\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
