// SPDX-License-Identifier: GPL-2.0
/*
 * bad-watch-function: must be refused. The data callback asks lucos to
 * watch writes to version_proc_show, a function: kernel text is not data.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-watch-function", "refused: a data callback on kernel text");

extern int version_proc_show(struct seq_file *m, void *v);

static void on_write(int (*instance)(struct seq_file *, void *))
{
}
LUCOS_DATA_CALLBACK(version_proc_show, on_write);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
