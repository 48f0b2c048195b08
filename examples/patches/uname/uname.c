// SPDX-License-Identifier: GPL-2.0
/*
 * uname: `uname -r` reports the release with the suffix "-lucos".
 *
 * Patches the syscall path itself: __x64_sys_newuname, the x86-64 entry
 * that SYSCALL_DEFINE1(newuname, ...) in kernel/sys.c generates (it takes
 * the user's registers; the argument is in regs->di). The new function
 * does what the original does — copy the task's utsname under uts_sem, copy
 * it to user space, then the UNAME26 and 32-bit personality fix-ups — and
 * appends the suffix to the release on the way.
 *
 * Only out-of-line user-memory accessors are used (copy_to_user calls
 * _copy_to_user): inline ones (__put_user, unsafe_put_user, __get_user)
 * put entries in __ex_table, which lucos v1 refuses.
 */
#include <linux/compat.h>
#include <linux/personality.h>
#include <linux/ptrace.h>
#include <linux/rwsem.h>
#include <linux/sched.h>
#include <linux/string.h>
#include <linux/uaccess.h>
#include <linux/utsname.h>
#include <lucos/patch.h>

LUCOS_PATCH("uname", "uname -r reports the release with the suffix -lucos");

#define RELEASE_SUFFIX "-lucos"

/*
 * override_release is static in kernel/sys.c (one definition: lucos finds
 * it by name). It rewrites the release as 2.6.x for UNAME26 tasks.
 */
extern int override_release(char __user *release, size_t len);

/* Same prototype as the original: long __x64_sys_newuname(const struct pt_regs *). */
static long patched_x64_sys_newuname(const struct pt_regs *regs)
{
	struct new_utsname __user *name = (struct new_utsname __user *)regs->di;
	struct new_utsname tmp;

	down_read(&uts_sem);
	memcpy(&tmp, utsname(), sizeof(tmp));
	up_read(&uts_sem);
	strlcat(tmp.release, RELEASE_SUFFIX, sizeof(tmp.release));

	if (copy_to_user(name, &tmp, sizeof(tmp)))
		return -EFAULT;
	if (override_release(name->release, sizeof(name->release)))
		return -EFAULT;
	if (personality(current->personality) == PER_LINUX32 &&
	    copy_to_user(name->machine, COMPAT_UTS_MACHINE, sizeof(COMPAT_UTS_MACHINE)))
		return -EFAULT;
	return 0;
}
LUCOS_REPLACE(__x64_sys_newuname, patched_x64_sys_newuname);
