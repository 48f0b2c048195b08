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
 * A patch may also change kernel data (LUCOS_DATA: a new instance of a
 * global, kept coherent with the old one by transfer functions while the
 * update is in transition), run callbacks (LUCOS_STARTUP, LUCOS_CLEANUP,
 * LUCOS_FUNC_CALLBACK, LUCOS_THREAD_CALLBACK, LUCOS_DATA_CALLBACK) and
 * attach shadow variables to kernel objects (lucos_shadow_*). The contexts
 * these run in are in docs/PATCH-FORMAT.md, "Data updates and callbacks".
 *
 * Descriptor layout (ABI version 1): every struct is 8-byte aligned, all
 * pointers are filled by R_X86_64_64 relocations, reserved fields are 0.
 */
#ifndef _LUCOS_PATCH_H
#define _LUCOS_PATCH_H

#include <linux/types.h>
#include <linux/compiler.h>
#include <linux/module.h>

struct task_struct;

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

/* .lucos.data: one per LUCOS_DATA, 56 bytes. */
struct lucos_data {
	const char *old_name;	/* the kernel (or module) global whose layout or meaning changes */
	u64 sympos;		/* 1-based among same-named statics; 0 = unique */
	void *new_var;		/* its new version, defined in the patch */
	void *transfer;		/* void transfer(const OLD *old, NEW *new) */
	void *reverse;		/* void reverse(const NEW *new, OLD *old) */
	u32 old_size, new_size;	/* sizeof both: the watched lengths */
	u64 flags;		/* reserved, 0 */
};

/* struct lucos_callback.kind */
#define LUCOS_CB_STARTUP	1	/* int fn(void), before the switch; nonzero aborts */
#define LUCOS_CB_CLEANUP	2	/* void fn(void), after rollback */
#define LUCOS_CB_FUNC		3	/* void fn(<symbol's parameters>), on entry of symbol */
#define LUCOS_CB_THREAD		4	/* void fn(struct task_struct *), per task in an old function */
#define LUCOS_CB_DATA		5	/* void fn(typeof(symbol) *), after each write to symbol */

/* struct lucos_callback.flags */
#define LUCOS_CB_ONCE		1	/* FUNC only: the first entry only */
#define LUCOS_CB_NMI_SAFE	2	/* may also run where interrupts are off */

/* .lucos.callbacks: one per callback, 32 bytes. */
struct lucos_callback {
	u32 kind;		/* LUCOS_CB_STARTUP .. LUCOS_CB_DATA */
	u32 flags;		/* LUCOS_CB_ONCE, LUCOS_CB_NMI_SAFE */
	const char *symbol;	/* FUNC: the function; DATA: the instance; else NULL */
	u64 sympos;		/* as for functions */
	void *fn;		/* the callback in this patch */
};

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

/*
 * LUCOS_DATA_POS(old, pos, new, transfer, reverse): the kernel global `old`
 * (its pos-th definition, 0 = unique) gets a new version `new`, defined in
 * the patch; patched code uses `new`. Declare and define them first:
 *   extern struct old_t old;
 *   static struct new_t new;
 *   static void transfer(const struct old_t *old, struct new_t *new);
 *   static void reverse(const struct new_t *new, struct old_t *old);
 * transfer converts old into new when the patch is applied and after each
 * write to old until the update commits; reverse does the opposite (writes
 * to new while in transition, and rollback). Both run in the writer's
 * context: they only copy and convert memory. A wrong signature fails to
 * compile. The descriptor refers to `old` by name only (sizeof makes no
 * reference), so the patch need not use `old` itself.
 */
#define LUCOS_DATA_POS(old, pos, new, xfer, rxfer)				\
	_Static_assert(__builtin_types_compatible_p(typeof(&(xfer)),		\
			void (*)(const typeof(old) *, typeof(new) *)),		\
		"LUCOS_DATA(" #old ", " #new "): declare the transfer as void "	\
		#xfer "(const typeof(" #old ") *old, typeof(" #new ") *new)");	\
	_Static_assert(__builtin_types_compatible_p(typeof(&(rxfer)),		\
			void (*)(const typeof(new) *, typeof(old) *)),		\
		"LUCOS_DATA(" #old ", " #new "): declare the reverse transfer as void " \
		#rxfer "(const typeof(" #new ") *new, typeof(" #old ") *old)"); \
	static const struct lucos_data						\
	LUCOS_ID(LUCOS_ID(__lucos_data_, new), LUCOS_ID(_, __COUNTER__))	\
	__used __section(".lucos.data") __aligned(8) = {			\
		.old_name = #old, .sympos = (pos), .new_var = (void *)&(new),	\
		.transfer = (void *)(xfer), .reverse = (void *)(rxfer),		\
		.old_size = sizeof(old), .new_size = sizeof(new),		\
	}

/* LUCOS_DATA(old, new, transfer, reverse): LUCOS_DATA_POS for a unique `old`. */
#define LUCOS_DATA(old, new, xfer, rxfer)	LUCOS_DATA_POS(old, 0, new, xfer, rxfer)

/*
 * LUCOS_CALLBACK(kind, symbol, pos, fn, flags): the generic callback
 * descriptor. symbol is a string ("name") or NULL; flags are LUCOS_CB_ONCE
 * and LUCOS_CB_NMI_SAFE. It checks no signature: prefer the macros below,
 * and use this one for flags or a sympos they do not take, e.g.
 *   LUCOS_CALLBACK(LUCOS_CB_THREAD, NULL, 0, on_task, LUCOS_CB_NMI_SAFE);
 */
#define LUCOS_CALLBACK(cb_kind, cb_sym, cb_pos, cb_fn, cb_flags)		\
	static const struct lucos_callback					\
	LUCOS_ID(LUCOS_ID(__lucos_callback_, cb_fn), LUCOS_ID(_, __COUNTER__))	\
	__used __section(".lucos.callbacks") __aligned(8) = {			\
		.kind = (cb_kind), .flags = (cb_flags), .symbol = (cb_sym),	\
		.sympos = (cb_pos), .fn = (void *)(cb_fn),			\
	}

/* LUCOS_STARTUP(fn): int fn(void) runs before the switch; nonzero aborts the apply. */
#define LUCOS_STARTUP(fn)							\
	_Static_assert(__builtin_types_compatible_p(typeof(&(fn)), int (*)(void)), \
		"LUCOS_STARTUP(" #fn "): declare it int " #fn "(void)");	\
	LUCOS_CALLBACK(LUCOS_CB_STARTUP, NULL, 0, fn, 0)

/* LUCOS_CLEANUP(fn): void fn(void) runs once the patch is rolled back. */
#define LUCOS_CLEANUP(fn)							\
	_Static_assert(__builtin_types_compatible_p(typeof(&(fn)), void (*)(void)), \
		"LUCOS_CLEANUP(" #fn "): declare it void " #fn "(void)");	\
	LUCOS_CALLBACK(LUCOS_CB_CLEANUP, NULL, 0, fn, 0)

/*
 * LUCOS_FUNC_CALLBACK(sym, fn): fn runs at each entry of the kernel function
 * sym, before its first instruction, with sym's first five integer or
 * pointer arguments: declare it void fn(<sym's parameters>). _ONCE: the
 * first entry only. sym need not be declared; lucos checks fn's parameter
 * count (at most five) and return type from the module's debug info.
 */
#define LUCOS_FUNC_CALLBACK(sym, fn)	LUCOS_CALLBACK(LUCOS_CB_FUNC, #sym, 0, fn, 0)
#define LUCOS_FUNC_CALLBACK_ONCE(sym, fn) LUCOS_CALLBACK(LUCOS_CB_FUNC, #sym, 0, fn, LUCOS_CB_ONCE)

/* LUCOS_THREAD_CALLBACK(fn): void fn(struct task_struct *t), once per task found inside an old function. */
#define LUCOS_THREAD_CALLBACK(fn)						\
	_Static_assert(__builtin_types_compatible_p(typeof(&(fn)),		\
			void (*)(struct task_struct *)),			\
		"LUCOS_THREAD_CALLBACK(" #fn "): declare it void " #fn "(struct task_struct *t)"); \
	LUCOS_CALLBACK(LUCOS_CB_THREAD, NULL, 0, fn, 0)

/*
 * LUCOS_DATA_CALLBACK(sym, fn): void fn(typeof(sym) *instance) runs after
 * each write to sym while the update is in transition: a kernel global
 * (declared extern) or the patch's own variable (a LUCOS_DATA's new one).
 */
#define LUCOS_DATA_CALLBACK(sym, fn)						\
	_Static_assert(__builtin_types_compatible_p(typeof(&(fn)),		\
			void (*)(typeof(sym) *)),				\
		"LUCOS_DATA_CALLBACK(" #sym ", " #fn "): declare it void " #fn	\
		"(typeof(" #sym ") *instance)");				\
	LUCOS_CALLBACK(LUCOS_CB_DATA, #sym, 0, fn, 0)

/*
 * Runtime: sdk/runtime/lucos_rt.c, linked into every patch by
 * `lucos patch build`.
 *
 * Shadow variables attach data of the patch to any object (a kernel
 * struct, keyed by its address, and an id the patch chooses): a field
 * added without changing the struct's layout. A shadow belongs to the
 * patch that allocated it: each patch has its own table, other patches do
 * not see it, and lucos frees every shadow of a patch when it rolls the
 * patch back (__lucos_rt_exit). Allocation is zeroed, with gfp (GFP_ATOMIC
 * in callbacks and wherever the caller may not sleep). The functions take
 * one spinlock with interrupts saved and may be called from any context
 * kmalloc(gfp) may.
 */
void *lucos_shadow_get(void *obj, unsigned long id);
/* lucos_shadow_alloc: NULL if (obj, id) already has a shadow, or out of memory. */
void *lucos_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp);
/* lucos_shadow_get_or_alloc: the existing shadow, or a new one; NULL only if out of memory. */
void *lucos_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp);
void lucos_shadow_free(void *obj, unsigned long id);
void lucos_shadow_free_all(unsigned long id);

/*
 * For lucos only. __lucos_call is where lucos makes a vCPU call a patch
 * function: rip = __lucos_call, rdi = fn, rsi, rdx, rcx, r8, r9 = up to
 * five arguments, and a return address at __lucos_trampoline on the stack
 * (rsp = 8 mod 16, as after a call). On an idle vCPU, where RCU is not
 * watching, it makes RCU watch around the call (ct_irq_enter_irqson), as
 * RCU_NONIDLE does. __lucos_trampoline never returns: it stores the
 * result in __lucos_call_done, where a write watch stops the vCPU.
 * __lucos_rt_exit frees every shadow of the patch and returns how many.
 */
unsigned long __lucos_call(unsigned long (*fn)(unsigned long, unsigned long, unsigned long,
					       unsigned long, unsigned long),
			   unsigned long a0, unsigned long a1, unsigned long a2,
			   unsigned long a3, unsigned long a4);
void __noreturn __lucos_trampoline(void);
extern unsigned long __lucos_call_done;
int __lucos_rt_exit(void);
/*
 * For lucos only: __lucos_kick makes a task asleep inside an old function
 * leave it, as Linux livepatch's klp_send_signals does: a user task gets
 * TIF_NOTIFY_SIGNAL (an interruptible sleep ends, the system call is
 * restarted through the new code, no signal is delivered), a kernel
 * thread a wake-up from TASK_INTERRUPTIBLE. pid and task come from lucos'
 * snapshot: the task is kicked only if pid still names it. Returns 1 if
 * kicked, 0 if the task has gone.
 */
long __lucos_kick(unsigned long pid, unsigned long task);

/*
 * For lucos only: the module shell. The runtime registers the patch with
 * the guest kernel as a struct module of its own (name lucos_<patch>), so
 * that the kernel's lookups cover patch code: exception tables (a fault in
 * an inline user access is fixed up), the ORC unwinder, kallsyms and the
 * bug table. lucos fills __lucos_shell when it links the patch; a guest
 * call of __lucos_shell_start(LUCOS_SHELL_ADD or _DEL) queues the work on
 * a kworker (module_mutex sleeps; a guest call may not), which stores 0 or
 * -errno in __lucos_shell_result, LUCOS_SHELL_PENDING until then.
 * __lucos_shell_cancel() cancels a queued add and returns 1, or 0 when the
 * work already runs or ran. __lucos_shell_layout is what the runtime was
 * compiled with, checked by lucos against the guest's BTF.
 */
struct lucos_shell {			/* 192 bytes, filled by lucos */
	u64 base, size;			/* the patch's pages: [base, base+size) */
	u64 text_size, ro_size;		/* code, then read-only data, from base */
	u64 extable, num_extable;	/* __ex_table, sorted by instruction */
	u64 orc_unwind_ip, orc_unwind, num_orcs; /* ORC tables, sorted by address */
	u64 symtab, strtab, typetab, num_syms;	/* kallsyms: Elf64_Sym[], names, type letters */
	u64 bug_table, num_bugs;	/* __bug_table */
	u64 flags;			/* reserved, 0 */
	char name[64];			/* the module's name, NUL-terminated */
};

struct lucos_shell_layout {		/* sizes and offsets the runtime was compiled with */
	u32 module_size;		/* sizeof(struct module) */
	u32 mod_tree_root_size;		/* sizeof(struct mod_tree_root) */
	u32 mod_tree_addr_min, mod_tree_addr_max; /* offsetof(struct mod_tree_root, addr_min/max) */
};

#define LUCOS_SHELL_ADD		1
#define LUCOS_SHELL_DEL		2
#define LUCOS_SHELL_PENDING	1L

extern struct lucos_shell __lucos_shell;
extern long __lucos_shell_result;
extern const struct lucos_shell_layout __lucos_shell_layout;
long __lucos_shell_start(unsigned long op);
long __lucos_shell_cancel(void);

#endif /* _LUCOS_PATCH_H */
