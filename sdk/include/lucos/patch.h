/* SPDX-License-Identifier: GPL-2.0 */
/*
 * lucos/patch.h — write a lucos live patch as a Linux kernel module.
 *
 * A patch is C built with kbuild against the guest kernel's headers
 * (`lucos patch build DIR`). It is never insmod'ed: lucos loads it into the
 * running guest from the host. These macros emit descriptor sections that
 * lucos reads; docs/PATCH-FORMAT.md documents them with a complete example.
 *
 *   LUCOS_PATCH("name", "what it fixes");
 *   static int new_cmdline_proc_show(struct seq_file *m, void *v) { ... }
 *   LUCOS_REPLACE(cmdline_proc_show, new_cmdline_proc_show);
 *
 * Any kernel symbol, exported or static, may be referenced with an extern
 * declaration; lucos resolves it against the running kernel. A static name
 * defined more than once needs LUCOS_SYMPOS(name, pos).
 *
 * Descriptor layout (ABI version 1): every struct is 8-byte aligned, all
 * pointers are filled by R_X86_64_64 relocations, reserved fields are 0.
 */
#ifndef _LUCOS_PATCH_H
#define _LUCOS_PATCH_H

#include <linux/types.h>
#include <linux/compiler.h>
#include <linux/module.h>

#define LUCOS_MAGIC		0x4f43554cU	/* "LUCO" little-endian */
#define LUCOS_ABI_VERSION	1

/* .lucos.meta: exactly one per patch. */
struct lucos_meta {
	u32 magic;
	u32 abi;
	const char *name;
	const char *description;
};

/* .lucos.funcs: one per replaced function. */
struct lucos_func {
	const char *old_name;	/* the kernel function to replace */
	u64 sympos;		/* 1-based among same-named statics; 0 = unique */
	void *new_func;		/* its replacement in this patch */
	u64 flags;		/* reserved, 0 */
};

/* .lucos.sympos: which definition an undefined reference to a static means. */
struct lucos_sympos {
	const char *name;
	u64 sympos;
};

/*
 * Reserved for data updates and callbacks (ABI version 1 readers ignore
 * unknown sections, and refuse a patch whose abi they do not know):
 *   .lucos.data       struct lucos_data { const char *old_name; u64 sympos;
 *                     void *new_var; void *transfer; void *reverse; u64 flags; }
 *   .lucos.callbacks  struct lucos_callback { u32 kind; u32 flags;
 *                     const char *symbol; u64 sympos; void *fn; }
 */

#define __LUCOS_ID(a, b)	a##b
#define LUCOS_ID(a, b)		__LUCOS_ID(a, b)

/* LUCOS_PATCH(name, description): name the patch. */
#define LUCOS_PATCH(pname, pdesc)						\
	static const struct lucos_meta __lucos_meta				\
	__used __section(".lucos.meta") __aligned(8) = {			\
		.magic = LUCOS_MAGIC, .abi = LUCOS_ABI_VERSION,			\
		.name = pname, .description = pdesc,				\
	};									\
	MODULE_LICENSE("GPL");							\
	MODULE_DESCRIPTION(pdesc)

/*
 * LUCOS_REPLACE_POS(old, sympos, new): redirect the sympos-th `old` to `new`.
 * One new function may replace several old ones (e.g. every copy of a
 * static duplicated across files): the descriptor's name is made unique
 * with __COUNTER__.
 */
#define LUCOS_REPLACE_POS(old, pos, new)					\
	static const struct lucos_func						\
	LUCOS_ID(LUCOS_ID(__lucos_func_, new), LUCOS_ID(_, __COUNTER__))	\
	__used __section(".lucos.funcs") __aligned(8) = {			\
		.old_name = #old, .sympos = (pos), .new_func = (void *)(new),	\
	}

/* LUCOS_REPLACE(old, new): redirect the kernel function `old` to `new`. */
#define LUCOS_REPLACE(old, new)	LUCOS_REPLACE_POS(old, 0, new)

/* LUCOS_SYMPOS(name, pos): references to the static `name` mean its sympos-th definition. */
#define LUCOS_SYMPOS(sym, pos)							\
	static const struct lucos_sympos LUCOS_ID(__lucos_sympos_, sym)	\
	__used __section(".lucos.sympos") __aligned(8) = {			\
		.name = #sym, .sympos = (pos),					\
	}

/*
 * LUCOS_ORIG(fn): the original body of kernel function `fn`, callable from
 * patch code even while `fn` is redirected. Declare it with fn's prototype:
 *   extern int LUCOS_ORIG(meminfo_proc_show)(struct seq_file *, void *);
 * lucos resolves it to fn's address + 5: the redirect replaces only the
 * 5-byte ftrace NOP at fn's entry, so the rest of the body is intact.
 */
#define LUCOS_ORIG(fn)	__lucos_orig__##fn

#endif /* _LUCOS_PATCH_H */
