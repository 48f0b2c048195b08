// SPDX-License-Identifier: GPL-2.0
/* ambiguous: default_read_file is a static defined twice in the kernel. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <linux/fs.h>

#ifndef LUCOS_TEST_NAME
#define LUCOS_TEST_NAME "ambiguous"
#endif
LUCOS_PATCH(LUCOS_TEST_NAME, "references a static with two definitions");

extern ssize_t default_read_file(struct file *, char __user *, size_t, loff_t *);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%px\n", default_read_file);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
#ifdef LUCOS_TEST_SYMPOS
LUCOS_SYMPOS(default_read_file, LUCOS_TEST_SYMPOS);
#endif
