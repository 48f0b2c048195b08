// SPDX-License-Identifier: GPL-2.0
/*
 * bad-ambiguous: must be refused. The new function refers to name_show, a
 * static function name that six files of the 6.1 kernel define (sysfs
 * attribute handlers): without LUCOS_SYMPOS(name_show, N) lucos cannot know
 * which one is meant.
 */
#include <linux/device.h>
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-ambiguous", "refused: ambiguous static without LUCOS_SYMPOS");

extern ssize_t name_show(struct device *dev, struct device_attribute *attr, char *buf);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s %ps\n", saved_command_line, name_show);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
