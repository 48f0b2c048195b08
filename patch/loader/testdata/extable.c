// SPDX-License-Identifier: GPL-2.0
/* extable: inline user access (unsafe_get_user) emits __ex_table. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

LUCOS_PATCH("extable", "inline user access");

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	const long __user *p = (const long __user *)v;
	long val;

	if (!user_access_begin(p, sizeof(*p)))
		return -EFAULT;
	unsafe_get_user(val, p, efault);
	user_access_end();
	seq_printf(m, "%ld\n", val);
	return 0;
efault:
	user_access_end();
	return -EFAULT;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
