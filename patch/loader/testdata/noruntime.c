// SPDX-License-Identifier: GPL-2.0
/* noruntime: a callback in a patch built without the lucos runtime. */
#include <lucos/patch.h>

LUCOS_PATCH("noruntime", "a startup callback without the runtime");

static unsigned long lucos_started;

static int lucos_startup(void)
{
	lucos_started++;
	return 0;
}
LUCOS_STARTUP(lucos_startup);
