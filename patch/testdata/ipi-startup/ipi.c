// SPDX-License-Identifier: GPL-2.0
/*
 * ipi-startup (test patch): its startup callback makes the other CPU run a
 * function and waits for it, so it cannot return while lucos runs its vCPU
 * alone; it returns once every vCPU runs.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <linux/smp.h>
#include <lucos/patch.h>

LUCOS_PATCH("ipi-startup", "test: a startup callback that needs the other CPU");

static void nothing(void *info)
{
}

static int ask_the_other_cpu(void)
{
	return smp_call_function_single(raw_smp_processor_id() ^ 1, nothing, NULL, 1);
}
LUCOS_STARTUP(ask_the_other_cpu);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-patched\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
