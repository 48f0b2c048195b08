// SPDX-License-Identifier: GPL-2.0
/* thismodule: THIS_MODULE has no meaning for a patch that is not a module. */
#include <lucos/patch.h>
#include <linux/seq_file.h>

LUCOS_PATCH("thismodule", "uses THIS_MODULE");

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s\n", THIS_MODULE->name);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
