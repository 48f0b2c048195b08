// SPDX-License-Identifier: GPL-2.0
/*
 * lock-startup (test patch): its startup callback takes lucos_bugs_lock,
 * which the test makes another CPU hold with interrupts off until 100 ms
 * after the callback says it waits: the callback cannot return while lucos
 * runs its vCPU alone, only once every vCPU runs.
 */
#include <linux/init.h>
#include <linux/seq_file.h>
#include <linux/spinlock.h>
#include <lucos/patch.h>

LUCOS_PATCH("lock-startup", "test: a startup callback that waits for a lock another CPU holds");

extern spinlock_t lucos_bugs_lock;
extern int lucos_bugs_waiting;

static int take_the_lock(void)
{
	unsigned long flags;

	WRITE_ONCE(lucos_bugs_waiting, 1);	/* the holder lets go 100 ms later */
	spin_lock_irqsave(&lucos_bugs_lock, flags);
	spin_unlock_irqrestore(&lucos_bugs_lock, flags);
	return 0;
}
LUCOS_STARTUP(take_the_lock);

static int patched_cmdline_proc_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-patched\n", saved_command_line);
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, patched_cmdline_proc_show);
