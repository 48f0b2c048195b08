// SPDX-License-Identifier: GPL-2.0
/*
 * rt_shell: what the module shell registers, built with the lucos runtime:
 * inline user access (__ex_table), WARN_ON_ONCE and BUG_ON (__bug_table),
 * two functions and their ORC entries, and exit code, whose entries lucos
 * drops with the code.
 */
#include <lucos/patch.h>
#include <linux/bug.h>
#include <linux/seq_file.h>
#include <linux/uaccess.h>

LUCOS_PATCH("rt_shell", "exception table, bug table, ORC and kallsyms");

static noinline long rt_shell_read(const long __user *p)
{
	long val;

	if (!user_access_begin(p, sizeof(*p)))
		return -EFAULT;
	unsafe_get_user(val, p, efault);
	user_access_end();
	return val;
efault:
	user_access_end();
	return -EFAULT;
}

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	long val = rt_shell_read((const long __user *)v);

	WARN_ON_ONCE(val == 42);
	BUG_ON(!m);
	seq_printf(m, "%ld\n", val);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);

static void __exit rt_shell_exit(void)
{
	WARN_ON(rt_shell_read(NULL) == 1);
}
module_exit(rt_shell_exit);
