// SPDX-License-Identifier: GPL-2.0
/*
 * data-layout: lucos_bugs_stats changes units, milliseconds to
 * microseconds. Old code keeps using the old instance, new code a new one;
 * lucos keeps them coherent while both run (a task may be asleep inside
 * the old lucos_bugs_stats_hold), then drops the watches at commit.
 */
#include <linux/seq_file.h>
#include <linux/wait.h>
#include <lucos/patch.h>

LUCOS_PATCH("data-layout", "lucos_bugs_stats counts microseconds instead of milliseconds");

/* The module's layout, as in lucos_bugs.h. */
struct lucos_bugs_stats {
	unsigned long count;
	unsigned long total_ms;
};

/* The new layout. */
struct lucos_bugs_stats_v2 {
	unsigned long count;
	unsigned long total_us;
};

extern struct lucos_bugs_stats lucos_bugs_stats;
extern unsigned long lucos_bugs_stats_seen;
extern int lucos_bugs_released;
extern wait_queue_head_t lucos_bugs_wq;

static struct lucos_bugs_stats_v2 stats_v2;

/* State transfer, run by lucos inside the guest after a write to either. */
static void stats_to_v2(const struct lucos_bugs_stats *old, struct lucos_bugs_stats_v2 *new)
{
	new->count = old->count;
	new->total_us = old->total_ms * 1000;
}

static void stats_to_v1(const struct lucos_bugs_stats_v2 *new, struct lucos_bugs_stats *old)
{
	old->count = new->count;
	old->total_ms = new->total_us / 1000;
}
LUCOS_DATA(lucos_bugs_stats, stats_v2, stats_to_v2, stats_to_v1);

static void new_stats_add(unsigned long ms)
{
	stats_v2.count++;
	stats_v2.total_us += ms * 1000;
}
LUCOS_REPLACE(lucos_bugs_stats_add, new_stats_add);

static void new_stats_hold(unsigned long ms)
{
	wait_event_interruptible(lucos_bugs_wq, READ_ONCE(lucos_bugs_released));
	lucos_bugs_released = 0;
	stats_v2.count++;
	stats_v2.total_us += ms * 1000;
	lucos_bugs_stats_seen = stats_v2.count;
}
LUCOS_REPLACE(lucos_bugs_stats_hold, new_stats_hold);

static int new_stats_show(struct seq_file *m, void *v)
{
	seq_printf(m, "count=%lu total_us=%lu\n", stats_v2.count, stats_v2.total_us);
	return 0;
}
LUCOS_REPLACE(lucos_bugs_stats_show, new_stats_show);
