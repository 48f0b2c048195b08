// SPDX-License-Identifier: GPL-2.0
/*
 * bad-unknown-symbol: must be refused. The new function calls
 * lucos_no_such_symbol, which no kernel defines: the build succeeds (kbuild
 * only warns about undefined symbols), resolution at apply time fails.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-unknown-symbol", "refused: references a symbol the kernel lacks");

extern int lucos_no_such_symbol(void);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %d\n", saved_command_line, lucos_no_such_symbol());
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
