// SPDX-License-Identifier: GPL-2.0
/*
 * bad-data-rodata: must be refused. LUCOS_DATA names linux_banner, which
 * lives in read-only data: nothing writes it, so there is nothing to keep
 * coherent, and a watch there is a mistake.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <linux/string.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-data-rodata", "refused: a data update of read-only data");

extern const char linux_banner[64];
static char new_banner[64];

static void banner_fwd(const char (*old)[64], char (*new)[64])
{
	memcpy(*new, *old, sizeof(*new));
}

static void banner_rev(const char (*new)[64], const char (*old)[64])
{
}
LUCOS_DATA(linux_banner, new_banner, banner_fwd, banner_rev);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %s\n", saved_command_line, new_banner);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
