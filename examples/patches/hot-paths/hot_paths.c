// SPDX-License-Identifier: GPL-2.0
/*
 * hot-paths: pass-through wrappers over the system calls the benchmark
 * workloads (bench/workload) spend their time in, so that `lucos bench
 * overhead` measures what a committed code patch costs the hot path: each
 * of these calls now takes lucos's jmp at the old entry, runs the wrapper
 * in the patch slot, and the old body through LUCOS_ORIG.
 *
 * Behaviour is unchanged. Each target is the x86-64 entry that
 * SYSCALL_DEFINEx generates (asm/syscall_wrapper.h):
 * long __x64_sys_NAME(const struct pt_regs *regs), the arguments in regs.
 *
 * Why the entries and not the functions behind them (ksys_write,
 * kernel_clone, ...): a wrapper runs the old body, so lucos's conservative
 * stack scan must find no word of an old function on any kernel stack for
 * the update to commit, and a task asleep elsewhere keeps stale return
 * addresses of what it ran before in the uninitialised parts of its live
 * frames. The idle console shell, asleep in poll, holds one into
 * ksys_write; init, asleep after reaping a child, one into kernel_clone —
 * each for as long as it sleeps. A return address into a syscall entry
 * sits just below the saved user registers, in the frames of whatever
 * syscall the task sleeps in now, where it rarely survives.
 */
#include <linux/ptrace.h>
#include <lucos/patch.h>

LUCOS_PATCH("hot-paths", "pass-through wrappers on the workloads' hot system calls");

/* PASS_THROUGH(sys) replaces the syscall entry sys by a call of its old body. */
#define PASS_THROUGH(sys)							\
	extern long LUCOS_ORIG(sys)(const struct pt_regs *regs);		\
	static long patched_##sys(const struct pt_regs *regs)			\
	{									\
		return LUCOS_ORIG(sys)(regs);					\
	}									\
	LUCOS_REPLACE(sys, patched_##sys)

/* syscall: getpid, and a one-byte pipe write and read. */
PASS_THROUGH(__x64_sys_getpid);
PASS_THROUGH(__x64_sys_write);
PASS_THROUGH(__x64_sys_read);

/* fork: fork (glibc's is clone) and execve. */
PASS_THROUGH(__x64_sys_clone);
PASS_THROUGH(__x64_sys_execve);

/* fs: create (open is openat), write (above), close, unlink. */
PASS_THROUGH(__x64_sys_openat);
PASS_THROUGH(__x64_sys_close);
PASS_THROUGH(__x64_sys_unlink);

/* oltp: SQLite's page reads and writes and its POSIX advisory locks. */
PASS_THROUGH(__x64_sys_pread64);
PASS_THROUGH(__x64_sys_pwrite64);
PASS_THROUGH(__x64_sys_fcntl);
