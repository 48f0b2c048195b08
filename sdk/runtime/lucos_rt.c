// SPDX-License-Identifier: GPL-2.0
/*
 * lucos_rt.c — the lucos runtime, linked into every patch by
 * `lucos patch build` (as runtime/lucos_rt.o). Each patch carries its own
 * copy: its shadow table is private to the patch.
 *
 * What lucos calls (__lucos_call, __lucos_trampoline, __lucos_rt_exit, the
 * module shell's __lucos_shell_start and __lucos_shell_cancel) and the
 * shadow-variable API are declared in <lucos/patch.h>.
 */
#include <linux/context_tracking_irq.h>
#include <linux/hashtable.h>
#include <linux/module.h>
#include <linux/mutex.h>
#include <linux/notifier.h>
#include <linux/pid_namespace.h>
#include <linux/overflow.h>
#include <linux/rbtree_latch.h>
#include <linux/rcupdate.h>
#include <linux/sched/signal.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
#include <linux/string.h>
#include <linux/version.h>
#include <linux/workqueue.h>
#include <lucos/patch.h>

typedef unsigned long (*lucos_fn_t)(unsigned long, unsigned long, unsigned long,
				    unsigned long, unsigned long);

/*
 * notrace: lucos enters here and returns to the trampoline itself; neither
 * needs the ftrace call site the loader would turn into a NOP anyway.
 *
 * The call runs with preemption off, like an interrupt handler: an
 * interrupt that arrives meanwhile must not switch this vCPU to another
 * task, because lucos puts back the interrupted context's registers when
 * the call returns and the other vCPUs may be stopped. The count is
 * dropped without a reschedule check (preempt_enable would schedule here);
 * the interrupted context reschedules at its next preemption point.
 */
notrace unsigned long __lucos_call(lucos_fn_t fn, unsigned long a0, unsigned long a1,
				   unsigned long a2, unsigned long a3, unsigned long a4)
{
	unsigned long ret;
	bool idle = !rcu_is_watching();

	preempt_count_inc();
	barrier();
	/* An idle vCPU: RCU ignores it until told otherwise (RCU_NONIDLE). */
	if (idle)
		ct_irq_enter_irqson();
	ret = fn(a0, a1, a2, a3, a4);
	if (idle)
		ct_irq_exit_irqson();
	barrier();
	preempt_count_dec();
	return ret;
}

/*
 * Where __lucos_call returns to. It stores the result, still in rax, in
 * __lucos_call_done: lucos watches that word, and QEMU stops the vCPU right
 * after the store. (A write watch, not a breakpoint at the trampoline:
 * under TCG every breakpoint inserted or removed flushes all translated
 * code, which would cost the guest far more than the call.) The loop is
 * only a safety net: lucos never lets a vCPU run on from here.
 */
unsigned long __lucos_call_done;

notrace void __noreturn __lucos_trampoline(void)
{
	asm volatile("movq %%rax, %0" : "=m" (__lucos_call_done));
	for (;;)
		cpu_relax();
}

/* Shadow variables: one table per patch, keyed by (obj, id). */
struct lucos_shadow {
	struct hlist_node node;
	void *obj;
	unsigned long id;
	u8 data[] __aligned(sizeof(u64));
};

static DEFINE_HASHTABLE(lucos_shadows, 8);
static DEFINE_SPINLOCK(lucos_shadow_lock);

/* Precondition: lucos_shadow_lock is held. */
static struct lucos_shadow *lucos_shadow_find(void *obj, unsigned long id)
{
	struct lucos_shadow *s;

	hash_for_each_possible(lucos_shadows, s, node, (unsigned long)obj)
		if (s->obj == obj && s->id == id)
			return s;
	return NULL;
}

void *lucos_shadow_get(void *obj, unsigned long id)
{
	struct lucos_shadow *s;
	unsigned long flags;

	spin_lock_irqsave(&lucos_shadow_lock, flags);
	s = lucos_shadow_find(obj, id);
	spin_unlock_irqrestore(&lucos_shadow_lock, flags);
	return s ? s->data : NULL;
}

/*
 * lucos_shadow_add allocates outside the lock (gfp may sleep) and inserts
 * unless (obj, id) exists meanwhile: then it returns the existing shadow
 * if existing_ok, else NULL.
 */
static void *lucos_shadow_add(void *obj, unsigned long id, size_t size, gfp_t gfp, bool existing_ok)
{
	struct lucos_shadow *s, *fresh;
	unsigned long flags;

	fresh = kzalloc(struct_size(fresh, data, size), gfp);
	if (!fresh)
		return NULL;
	fresh->obj = obj;
	fresh->id = id;
	spin_lock_irqsave(&lucos_shadow_lock, flags);
	s = lucos_shadow_find(obj, id);
	if (!s) {
		hash_add(lucos_shadows, &fresh->node, (unsigned long)obj);
		s = fresh;
		fresh = NULL;
	} else if (!existing_ok) {
		s = NULL;
	}
	spin_unlock_irqrestore(&lucos_shadow_lock, flags);
	kfree(fresh);
	return s ? s->data : NULL;
}

void *lucos_shadow_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp)
{
	if (lucos_shadow_get(obj, id))
		return NULL;
	return lucos_shadow_add(obj, id, size, gfp, false);
}

void *lucos_shadow_get_or_alloc(void *obj, unsigned long id, size_t size, gfp_t gfp)
{
	void *p = lucos_shadow_get(obj, id);

	return p ? p : lucos_shadow_add(obj, id, size, gfp, true);
}

void lucos_shadow_free(void *obj, unsigned long id)
{
	struct lucos_shadow *s;
	unsigned long flags;

	spin_lock_irqsave(&lucos_shadow_lock, flags);
	s = lucos_shadow_find(obj, id);
	if (s)
		hash_del(&s->node);
	spin_unlock_irqrestore(&lucos_shadow_lock, flags);
	kfree(s);
}

/* lucos_shadow_remove frees the shadows with id (all if !match_id); kfree never sleeps. */
static int lucos_shadow_remove(unsigned long id, bool match_id)
{
	struct lucos_shadow *s;
	struct hlist_node *tmp;
	unsigned long flags;
	int bkt, n = 0;

	spin_lock_irqsave(&lucos_shadow_lock, flags);
	hash_for_each_safe(lucos_shadows, bkt, tmp, s, node) {
		if (match_id && s->id != id)
			continue;
		hash_del(&s->node);
		kfree(s);
		n++;
	}
	spin_unlock_irqrestore(&lucos_shadow_lock, flags);
	return n;
}

void lucos_shadow_free_all(unsigned long id)
{
	lucos_shadow_remove(id, true);
}

int __lucos_rt_exit(void)
{
	return lucos_shadow_remove(0, false);
}

/*
 * Runs as a guest call, like an interrupt handler: the interrupted context
 * had interrupts on, so it holds no runqueue or pi lock, and waking a task
 * is safe here as from any interrupt.
 */
long __lucos_kick(unsigned long pid, unsigned long task)
{
	struct task_struct *t;
	long kicked = 0;

	rcu_read_lock();
	t = find_task_by_pid_ns((pid_t)pid, &init_pid_ns);
	if (t && (unsigned long)t == task) {
		if (t->flags & PF_KTHREAD)
			wake_up_state(t, TASK_INTERRUPTIBLE);
		else
			set_notify_signal(t);
		kicked = 1;
	}
	rcu_read_unlock();
	return kicked;
}

/*
 * The module shell: the patch as a struct module of the guest kernel.
 * Registered, it makes the kernel's own lookups cover patch code, as they
 * cover a module's: search_exception_tables() (a fault in an inline user
 * access is fixed up to -EFAULT), the ORC unwinder (oops traces,
 * /proc/PID/stack), kallsyms (/proc/kallsyms, %pS: "fn [lucos_<patch>]"),
 * kernel_text_address() and report_bug() (WARN in patch code warns). The
 * tables are lucos's: it lays them out, sorts them and fills __lucos_shell
 * when it links the patch. Nothing of the shell is ever freed by the
 * kernel: it has no init or exit the kernel runs, and rmmod refuses it
 * (-EBUSY: an init and no exit make a module permanent).
 *
 * Registering takes module_mutex, a sleeping lock, which a guest call may
 * not take: __lucos_shell_start queues the work on a kworker, and lucos
 * polls __lucos_shell_result. The work never waits for the lock: it tries,
 * and requeues itself a jiffy later, so while it waits it is queued and
 * __lucos_shell_cancel can still take it back.
 */

/*
 * kernel/module/internal.h is not among the headers: its declarations, as
 * in Linux 6.1. lucos checks struct mod_tree_root against the guest's BTF
 * (__lucos_shell_layout) before it loads the patch.
 */
struct mod_tree_root {
#ifdef CONFIG_MODULES_TREE_LOOKUP
	struct latch_tree_root root;
#endif
	unsigned long addr_min;
	unsigned long addr_max;
};
extern struct mutex module_mutex;
extern struct list_head modules;
extern struct mod_tree_root mod_tree;
#ifdef CONFIG_MODULES_TREE_LOOKUP
void mod_tree_insert(struct module *mod);
void mod_tree_remove(struct module *mod);
#endif
/* kernel/module/main.c: the reference the loader holds on a live module. */
#define MODULE_REF_BASE	1
/* Statics of kernel/module/main.c and lib/bug.c (lucos resolves statics). */
extern struct blocking_notifier_head module_notify_list;
#ifdef CONFIG_GENERIC_BUG
extern struct list_head module_bug_list;
#endif

struct lucos_shell __lucos_shell;
long __lucos_shell_result;
const struct lucos_shell_layout __lucos_shell_layout = {
	.module_size = sizeof(struct module),
	.mod_tree_root_size = sizeof(struct mod_tree_root),
	.mod_tree_addr_min = offsetof(struct mod_tree_root, addr_min),
	.mod_tree_addr_max = offsetof(struct mod_tree_root, addr_max),
};

static struct module lucos_module;
static unsigned long lucos_shell_op;
static bool lucos_shell_cancelled;
static void lucos_shell_work_fn(struct work_struct *work);
static DECLARE_DELAYED_WORK(lucos_shell_work, lucos_shell_work_fn);

_Static_assert(sizeof(struct lucos_shell) == 192, "struct lucos_shell is lucos's ABI");

/* Never called: its presence, with no exit, makes rmmod refuse the module. */
static int lucos_shell_init(void)
{
	return -EBUSY;
}

/* lucos_shell_add registers the shell. Precondition: module_mutex is held. */
static long lucos_shell_add(void)
{
	const struct lucos_shell *d = &__lucos_shell;
	struct module *mod = &lucos_module, *m;
	unsigned long base = d->base, end = d->base + d->size;

	if (!d->size || !d->name[0] || strnlen(d->name, sizeof(d->name)) >= MODULE_NAME_LEN)
		return -EINVAL;
	list_for_each_entry(m, &modules, list)
		if (!strcmp(m->name, d->name))
			return -EEXIST;
	strscpy(mod->name, d->name, sizeof(mod->name));
	mod->state = MODULE_STATE_LIVE;
	mod->init = lucos_shell_init;
	mod->taints = BIT(TAINT_LIVEPATCH);	/* "(K)" in /proc/modules and oopses */
#ifdef CONFIG_MODULE_UNLOAD
	mod->exit = NULL;
	INIT_LIST_HEAD(&mod->source_list);
	INIT_LIST_HEAD(&mod->target_list);
	atomic_set(&mod->refcnt, MODULE_REF_BASE);
#endif
	/* The slot's image: text, then rodata, then data (no ro_after_init). */
#if LINUX_VERSION_CODE >= KERNEL_VERSION(6, 4, 0)
	/* 6.4 split the module's memory by kind; mod_tree_insert skips the empty ones. */
	mod->mem[MOD_TEXT].base = (void *)base;
	mod->mem[MOD_TEXT].size = d->text_size;
	mod->mem[MOD_RODATA].base = (void *)(base + d->text_size);
	mod->mem[MOD_RODATA].size = d->ro_size - d->text_size;
	mod->mem[MOD_RO_AFTER_INIT].base = (void *)(base + d->ro_size);
	mod->mem[MOD_RO_AFTER_INIT].size = 0;
	mod->mem[MOD_DATA].base = (void *)(base + d->ro_size);
	mod->mem[MOD_DATA].size = d->size - d->ro_size;
#else
	mod->core_layout.base = (void *)base;
	mod->core_layout.size = d->size;
	mod->core_layout.text_size = d->text_size;
	mod->core_layout.ro_size = d->ro_size;
	mod->core_layout.ro_after_init_size = d->ro_size;
#endif
	mod->extable = (struct exception_table_entry *)d->extable;
	mod->num_exentries = d->num_extable;
#ifdef CONFIG_UNWINDER_ORC
	mod->arch.orc_unwind_ip = (int *)d->orc_unwind_ip;
	mod->arch.orc_unwind = (struct orc_entry *)d->orc_unwind;
	mod->arch.num_orcs = d->num_orcs;
#endif
#ifdef CONFIG_KALLSYMS
	mod->core_kallsyms.symtab = (Elf_Sym *)d->symtab;
	mod->core_kallsyms.num_symtab = d->num_syms;
	mod->core_kallsyms.strtab = (char *)d->strtab;
	mod->core_kallsyms.typetab = (char *)d->typetab;
	rcu_assign_pointer(mod->kallsyms, &mod->core_kallsyms);
#endif
#ifdef CONFIG_GENERIC_BUG
	mod->bug_table = (struct bug_entry *)d->bug_table;
	mod->num_bugs = d->num_bugs;
	list_add_rcu(&mod->bug_list, &module_bug_list);
#endif
#ifdef CONFIG_MODULES_TREE_LOOKUP
	mod_tree_insert(mod);
#endif
	/* As __mod_update_bounds: the kernel never narrows them again either. */
	if (base < mod_tree.addr_min)
		mod_tree.addr_min = base;
	if (end > mod_tree.addr_max)
		mod_tree.addr_max = end;
	list_add_rcu(&mod->list, &modules);
	return 0;
}

/*
 * lucos_shell_del_begin starts unregistering, as delete_module does: the
 * shell must be live and unreferenced, and goes GOING (try_module_get
 * fails from then on). -ENOENT: it is no longer listed; -EALREADY: a
 * forced rmmod (rmmod -f) is under way; -EBUSY: something holds a
 * reference. Precondition: module_mutex is held.
 */
static long lucos_shell_del_begin(void)
{
	struct module *mod = &lucos_module, *m;
	bool listed = false;

	list_for_each_entry(m, &modules, list)
		listed |= m == mod;
	if (!listed)
		return -ENOENT;
	if (mod->state != MODULE_STATE_LIVE)
		return -EALREADY;
#ifdef CONFIG_MODULE_UNLOAD
	if (atomic_cmpxchg(&mod->refcnt, MODULE_REF_BASE, 0) != MODULE_REF_BASE)
		return -EBUSY;
#endif
	mod->state = MODULE_STATE_GOING;
	return 0;
}

/* lucos_shell_del_end unlinks the shell, as free_module does. Precondition: module_mutex is held. */
static void lucos_shell_del_end(void)
{
	struct module *mod = &lucos_module;

	mod->state = MODULE_STATE_UNFORMED;
	list_del_rcu(&mod->list);
#ifdef CONFIG_MODULES_TREE_LOOKUP
	mod_tree_remove(mod);
#endif
#ifdef CONFIG_GENERIC_BUG
	list_del_rcu(&mod->bug_list);
#endif
}

static void lucos_shell_work_fn(struct work_struct *work)
{
	long ret;

	if (READ_ONCE(lucos_shell_cancelled)) {
		ret = -ECANCELED;
		goto done;
	}
	if (!mutex_trylock(&module_mutex)) {
		queue_delayed_work(system_unbound_wq, &lucos_shell_work, 1);
		return;
	}
	if (lucos_shell_op == LUCOS_SHELL_ADD) {
		ret = lucos_shell_add();
		mutex_unlock(&module_mutex);
		goto done;
	}
	ret = lucos_shell_del_begin();
	mutex_unlock(&module_mutex);
	if (ret)
		goto done;
	/* What watches modules go (kprobes in patch code, ...) lets go of it. */
	blocking_notifier_call_chain(&module_notify_list, MODULE_STATE_GOING, &lucos_module);
	mutex_lock(&module_mutex);
	lucos_shell_del_end();
	mutex_unlock(&module_mutex);
	/* Lookups under rcu_read_lock_sched or preempt_disable are over. */
	synchronize_rcu();
done:
	smp_store_release(&__lucos_shell_result, ret);
}

long __lucos_shell_start(unsigned long op)
{
	if (op != LUCOS_SHELL_ADD && op != LUCOS_SHELL_DEL)
		return -EINVAL;
	if (READ_ONCE(__lucos_shell_result) == LUCOS_SHELL_PENDING)
		return -EBUSY;
	lucos_shell_op = op;
	WRITE_ONCE(lucos_shell_cancelled, false);
	WRITE_ONCE(__lucos_shell_result, LUCOS_SHELL_PENDING);
	queue_delayed_work(system_unbound_wq, &lucos_shell_work, 0);
	return 0;
}

long __lucos_shell_cancel(void)
{
	WRITE_ONCE(lucos_shell_cancelled, true);
	if (!cancel_delayed_work(&lucos_shell_work))
		return 0;
	WRITE_ONCE(__lucos_shell_result, -ECANCELED);
	return 1;
}
