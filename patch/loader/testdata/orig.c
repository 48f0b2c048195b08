// SPDX-License-Identifier: GPL-2.0
/* orig: the new function calls the original body through LUCOS_ORIG. */
#include <lucos/patch.h>
#include <linux/seq_file.h>

LUCOS_PATCH("orig", "call the original cmdline_proc_show");

extern int LUCOS_ORIG(cmdline_proc_show)(struct seq_file *, void *);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	int ret = LUCOS_ORIG(cmdline_proc_show)(m, v);

	seq_puts(m, "lucos-orig\n");
	return ret;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
