// SPDX-License-Identifier: GPL-2.0
/*
 * user-fault: getcpu(2) counts its calls in its third argument, the
 * struct getcpu_cache that the kernel has ignored since Linux 2.6.24, with
 * inline user access: unsafe_get_user and unsafe_put_user in a
 * user_access_begin/end region (STAC ... CLAC). Each of those accesses
 * gets an entry in __ex_table. When one faults on a bad pointer, the
 * guest's page-fault handler finds the entry in the patch's exception
 * table (lucos registers it with the kernel, in the patch's module shell),
 * jumps to the fixup, and getcpu returns -EFAULT: no oops.
 *
 * The original, in kernel/sys.c:
 *   SYSCALL_DEFINE3(getcpu, unsigned __user *, cpup, unsigned __user *, nodep,
 *                   struct getcpu_cache __user *, unused)
 * is replaced at its x86-64 entry, __x64_sys_getcpu(const struct pt_regs *),
 * with its arguments in regs->di, si and dx.
 */
#include <linux/getcpu.h>
#include <linux/ptrace.h>
#include <linux/smp.h>
#include <linux/topology.h>
#include <linux/uaccess.h>
#include <lucos/patch.h>

LUCOS_PATCH("user-fault", "getcpu(2) counts its calls in its unused cache argument, with inline user access");

static long patched_x64_sys_getcpu(const struct pt_regs *regs)
{
	unsigned __user *cpup = (unsigned __user *)regs->di;
	unsigned __user *nodep = (unsigned __user *)regs->si;
	struct getcpu_cache __user *cache = (struct getcpu_cache __user *)regs->dx;
	int cpu = raw_smp_processor_id();
	unsigned long calls;
	int err = 0;

	if (cpup)
		err |= put_user(cpu, cpup);
	if (nodep)
		err |= put_user(cpu_to_node(cpu), nodep);
	if (err)
		return -EFAULT;
	if (!cache)
		return 0;
	/* access_ok, then STAC: the accesses below are plain loads and stores. */
	if (!user_access_begin(cache, sizeof(*cache)))
		return -EFAULT;
	unsafe_get_user(calls, &cache->blob[0], efault);
	unsafe_put_user(calls + 1, &cache->blob[0], efault);
	user_access_end();
	return 0;
efault:
	user_access_end();
	return -EFAULT;
}
LUCOS_REPLACE(__x64_sys_getcpu, patched_x64_sys_getcpu);
