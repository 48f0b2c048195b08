// SPDX-License-Identifier: GPL-2.0
/* unknown: a symbol the kernel does not have. */
#include <lucos/patch.h>
#include <linux/seq_file.h>

LUCOS_PATCH("unknown", "calls a function no kernel has");

extern void lucos_no_such_function(struct seq_file *m);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	lucos_no_such_function(m);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
