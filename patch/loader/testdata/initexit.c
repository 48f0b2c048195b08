// SPDX-License-Identifier: GPL-2.0
/* initexit: module_init/module_exit are never run; their code is not loaded. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <linux/jump_label.h>

LUCOS_PATCH("initexit", "init and exit code is ignored");

DECLARE_STATIC_KEY_FALSE(sched_schedstats);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_puts(m, "initexit\n");
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);

static int __init lucos_init(void)
{
	if (static_branch_unlikely(&sched_schedstats))
		pr_info("schedstats\n");
	return 0;
}
module_init(lucos_init);

static void __exit lucos_exit(void)
{
	pr_info("exit\n");
}
module_exit(lucos_exit);
