// SPDX-License-Identifier: GPL-2.0
/*
 * stuck-startup (test patch): its startup callback spins until
 * lucos_bugs_released is set (the test sets it from the host), so a guest
 * call outlasts lucos's timeouts. It spins with preemption off, as every
 * guest call runs: its CPU does nothing else meanwhile.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <lucos/patch.h>

LUCOS_PATCH("stuck-startup", "test: a startup callback that waits for user space");

extern int lucos_bugs_released;

static int wait_for_release(void)
{
	while (!READ_ONCE(lucos_bugs_released))
		cpu_relax();
	WRITE_ONCE(lucos_bugs_released, 0);
	return 0;
}
LUCOS_STARTUP(wait_for_release);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-patched\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
