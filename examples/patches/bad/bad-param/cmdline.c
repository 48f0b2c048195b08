// SPDX-License-Identifier: GPL-2.0
/*
 * bad-param: must be refused. The new function reads a module parameter,
 * and module_param puts its descriptor in __param. A lucos patch is never
 * insmod'ed, so nothing would ever parse or set the parameter.
 */
#include <linux/init.h>
#include <linux/moduleparam.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-param", "refused: defines a module parameter");

static int suffix = 1;
module_param(suffix, int, 0644);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %d\n", saved_command_line, suffix);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
