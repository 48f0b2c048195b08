// SPDX-License-Identifier: GPL-2.0
/* alt: alternatives: always, never, inverted, a call and a jump in the replacement. */
#include <lucos/patch.h>
#include <linux/seq_file.h>
#include <asm/alternative.h>
#include <asm/cpufeature.h>

LUCOS_PATCH("alt", "alternatives");

void lucos_alt_target(void);

static int new_cmdline_proc_show(struct seq_file *m, void *v)
{
	/* X86_FEATURE_ALWAYS: always replaced. */
	asm volatile("lucos_alt_always:\n\t"
		     ALTERNATIVE("ud2", "nop", X86_FEATURE_ALWAYS));
	/* ALT_NOT(ALWAYS): never replaced. */
	asm volatile("lucos_alt_never:\n\t"
		     ALTERNATIVE("nop; nop; nop", "ud2", ALT_NOT(X86_FEATURE_ALWAYS)));
	/* A call in the replacement is re-targeted to its new place. */
	asm volatile("lucos_alt_call:\n\t"
		     ALTERNATIVE("ud2", "call lucos_alt_target", X86_FEATURE_ALWAYS));
	/* A jump in the replacement too: it becomes a short jump over the ud2. */
	asm volatile("lucos_alt_jmp:\n\t"
		     ALTERNATIVE("nop", "jmp lucos_alt_jmp_done", X86_FEATURE_ALWAYS)
		     "\n\tud2\n"
		     "lucos_alt_jmp_done:");
	/* static_cpu_has(): an ALTERNATIVE_2 and the .altinstr_aux slow path. */
	if (static_cpu_has(X86_FEATURE_AVX2))
		seq_puts(m, "avx2 ");
	if (static_cpu_has(X86_FEATURE_CX16))
		seq_puts(m, "cx16 ");
	seq_puts(m, "\n");
	return 0;
}
LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);

void lucos_alt_target(void)
{
}
