// SPDX-License-Identifier: GPL-2.0
/*
 * lucos_rt.c — the lucos runtime, linked into every patch by
 * `lucos patch build` (as runtime/lucos_rt.o). Each patch carries its own
 * copy: its shadow table is private to the patch.
 *
 * What lucos calls (__lucos_call, __lucos_trampoline, __lucos_rt_exit) and
 * the shadow-variable API are declared in <lucos/patch.h>.
 */
#include <linux/context_tracking_irq.h>
#include <linux/hashtable.h>
#include <linux/overflow.h>
#include <linux/rcupdate.h>
#include <linux/slab.h>
#include <linux/spinlock.h>
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
