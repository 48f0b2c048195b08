// SPDX-License-Identifier: GPL-2.0
/*
 * rt_badsig: a thread callback with two parameters, through the generic
 * LUCOS_CALLBACK (which checks no prototype): refused from the DWARF.
 */
#include <lucos/patch.h>
#include <linux/sched.h>

LUCOS_PATCH("rt_badsig", "a thread callback of the wrong prototype");

static unsigned long lucos_seen;

static void on_task(struct task_struct *t, unsigned long why)
{
	lucos_seen += t->pid + why;
}
LUCOS_CALLBACK(LUCOS_CB_THREAD, NULL, 0, on_task, 0);
