// SPDX-License-Identifier: GPL-2.0
/*
 * bad-ex-table: must be refused. The new time(2) stores the result with
 * unsafe_put_user, an inline user-memory access: its store instruction gets
 * an __ex_table entry (faulting address → fixup code). The kernel's page
 * fault handler searches exception tables of vmlinux and of insmod'ed
 * modules only, never lucos' patch region, so a fault there would oops
 * instead of returning -EFAULT.
 *
 * (On x86-64 6.1, get_user, put_user, __get_user and __put_user are calls
 * to out-of-line helpers whose __ex_table entries are in vmlinux: they are
 * fine in a patch. unsafe_get_user, unsafe_put_user and __get_kernel_nofault
 * are inline and are not.)
 */
#include <linux/ptrace.h>
#include <linux/timekeeping.h>
#include <linux/uaccess.h>
#include <lucos/patch.h>

LUCOS_PATCH("bad-ex-table", "refused: __ex_table from inline user access");

static long patched_x64_sys_time(const struct pt_regs *regs)
{
	__kernel_old_time_t __user *tloc = (__kernel_old_time_t __user *)regs->di;
	__kernel_old_time_t now = (__kernel_old_time_t)ktime_get_real_seconds();

	if (tloc) {
		if (!user_access_begin(tloc, sizeof(*tloc)))
			return -EFAULT;
		unsafe_put_user(now, tloc, efault);
		user_access_end();
	}
	return now;
efault:
	user_access_end();
	return -EFAULT;
}
LUCOS_REPLACE(__x64_sys_time, patched_x64_sys_time);
