// SPDX-License-Identifier: GPL-2.0
/* jump: static branches on kernel keys and on a key of the patch's own. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <linux/jump_label.h>

LUCOS_PATCH("jump", "static branches");

DECLARE_STATIC_KEY_FALSE(sched_schedstats);	/* kernel, false by default */
DECLARE_STATIC_KEY_TRUE(init_on_alloc);	/* kernel, Debian turns it on */
static DEFINE_STATIC_KEY_TRUE(lucos_own_true);
static DEFINE_STATIC_KEY_FALSE(lucos_own_false);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	if (static_branch_unlikely(&sched_schedstats))
		seq_puts(m, "schedstats ");
	if (static_branch_likely(&init_on_alloc))
		seq_puts(m, "init_on_alloc ");
	if (static_branch_likely(&lucos_own_true))
		seq_puts(m, "own_true ");
	if (static_branch_unlikely(&lucos_own_false))
		seq_puts(m, "own_false ");
	seq_puts(m, "\n");
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
