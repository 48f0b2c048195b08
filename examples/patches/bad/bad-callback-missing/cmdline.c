// SPDX-License-Identifier: GPL-2.0
/*
 * bad-callback-missing: must be refused. The function callback names
 * lucos_no_such_function, which no kernel (or module) defines.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-callback-missing", "refused: a function callback on a function that does not exist");

static void on_entry(void)
{
}
LUCOS_FUNC_CALLBACK(lucos_no_such_function, on_entry);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
