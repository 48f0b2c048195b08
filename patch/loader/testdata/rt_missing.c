// SPDX-License-Identifier: GPL-2.0
/* rt_missing: a data update of a variable the kernel does not have. */
#include <lucos/patch.h>

LUCOS_PATCH("rt_missing", "no such variable");

extern unsigned long lucos_no_such_variable;

static unsigned long new_value;

static void value_transfer(const unsigned long *old, unsigned long *new)
{
	*new = *old;
}

static void value_reverse(const unsigned long *new, unsigned long *old)
{
	*old = *new;
}
LUCOS_DATA(lucos_no_such_variable, new_value, value_transfer, value_reverse);
