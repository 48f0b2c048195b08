// SPDX-License-Identifier: GPL-2.0
/* rt_rodata: a data update of read-only data (linux_banner is in .rodata; kallsyms says D). */
#include <lucos/patch.h>

LUCOS_PATCH("rt_rodata", "watch read-only data");

extern const char linux_banner[16];

static char new_banner[16];

static void banner_transfer(const char (*old)[16], char (*new)[16])
{
	memcpy(*new, *old, sizeof(*new));
}

static void banner_reverse(const char (*new)[16], const char (*old)[16])
{
}
LUCOS_DATA(linux_banner, new_banner, banner_transfer, banner_reverse);
