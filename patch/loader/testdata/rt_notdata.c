// SPDX-License-Identifier: GPL-2.0
/* rt_notdata: a function declared as a variable and replaced as data. */
#include <lucos/patch.h>

LUCOS_PATCH("rt_notdata", "a function used as data");

extern unsigned long cmdline_proc_show;

static unsigned long new_value;

static void value_transfer(const unsigned long *old, unsigned long *new)
{
	*new = *old;
}

static void value_reverse(const unsigned long *new, unsigned long *old)
{
	*old = *new;
}
LUCOS_DATA(cmdline_proc_show, new_value, value_transfer, value_reverse);
