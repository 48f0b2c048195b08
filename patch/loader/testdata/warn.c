// SPDX-License-Identifier: GPL-2.0
/* warn: WARN_ON and BUG_ON in patch code emit __bug_table. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <linux/bug.h>

LUCOS_PATCH("warn", "WARN and BUG in patch code");

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	WARN_ON(m == v);
	BUG_ON(!m);
	seq_puts(m, "warn\n");
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
