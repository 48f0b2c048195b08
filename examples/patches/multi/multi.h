/* SPDX-License-Identifier: GPL-2.0 */
#ifndef LUCOS_EXAMPLE_MULTI_H
#define LUCOS_EXAMPLE_MULTI_H

/* The marker every file this patch changes ends its line with. */
#define MULTI_MARKER "lucos-multi"

#endif
