// SPDX-License-Identifier: GPL-2.0
/*
 * multi: three /proc files change in one patch, replaced in one pause.
 * The patch spans two source files, linked into one module; LUCOS_PATCH
 * appears in exactly one of them.
 *
 *   /proc/cmdline   <command line> lucos-multi
 *   /proc/version   <banner> lucos-multi              (version.c)
 *   /proc/loadavg   <five fields> lucos-multi         (version.c)
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>
#include "multi.h"

LUCOS_PATCH("multi", "/proc/cmdline, /proc/version and /proc/loadavg end with lucos-multi");

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s " MULTI_MARKER "\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
