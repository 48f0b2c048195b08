// SPDX-License-Identifier: GPL-2.0
/* ambiguous_sympos: ambiguous.c with LUCOS_SYMPOS(default_read_file, 1). */
#define LUCOS_TEST_NAME		"ambiguous_sympos"
#define LUCOS_TEST_SYMPOS	1
#include "ambiguous.c"
