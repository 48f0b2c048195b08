// SPDX-License-Identifier: GPL-2.0
/*
 * static-call: /proc/cmdline ends with " lucos-inodes=N", N being the
 * number of inodes in use, as computed by get_nr_inodes().
 *
 * get_nr_inodes is a static function of fs/inode.c: not exported, not in
 * any header, a local 't' symbol in kallsyms with one definition. A patch
 * declares it extern with its exact prototype and calls it; lucos resolves
 * the reference against the kernel's whole symbol table.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("static-call", "/proc/cmdline shows the inode count from the static get_nr_inodes()");

/* static long get_nr_inodes(void) in fs/inode.c */
extern long get_nr_inodes(void);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-inodes=%ld\n", saved_command_line, get_nr_inodes());
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
