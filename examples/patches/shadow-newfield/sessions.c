// SPDX-License-Identifier: GPL-2.0
/*
 * shadow-newfield: each lucos_bugs session (one per task that writes to
 * /proc/lucos_bugs/sessions) gains a field, the bytes it wrote, without
 * changing struct lucos_bugs_session: the field is a shadow variable
 * attached to the session object (kpatch's shadow-newpid idea). Sessions
 * created before the patch get theirs on their first write after it.
 */
#include <linux/list.h>
#include <linux/seq_file.h>
#include <linux/sched.h>
#include <linux/spinlock.h>
#include <lucos/patch.h>

LUCOS_PATCH("shadow-newfield", "lucos_bugs sessions count the bytes each task wrote");

/* The module's layout, as in lucos_bugs.h. */
struct lucos_bugs_session {
	struct list_head node;
	pid_t pid;
	char comm[TASK_COMM_LEN];
	unsigned long writes;
};

extern struct list_head lucos_bugs_sessions;
extern spinlock_t lucos_bugs_sessions_lock;
extern struct lucos_bugs_session *lucos_bugs_session_get(void);

#define SHADOW_BYTES 1	/* the new field's shadow id */

static void new_session_write(size_t len)
{
	struct lucos_bugs_session *s = lucos_bugs_session_get();
	unsigned long *bytes;

	if (!s)
		return;
	spin_lock(&lucos_bugs_sessions_lock);
	s->writes++;
	bytes = lucos_shadow_get_or_alloc(s, SHADOW_BYTES, sizeof(*bytes), GFP_ATOMIC);
	if (bytes)
		*bytes += len;
	spin_unlock(&lucos_bugs_sessions_lock);
}
LUCOS_REPLACE(lucos_bugs_session_write, new_session_write);

static int new_sessions_show(struct seq_file *m, void *v)
{
	struct lucos_bugs_session *s;
	unsigned long *bytes;

	spin_lock(&lucos_bugs_sessions_lock);
	list_for_each_entry(s, &lucos_bugs_sessions, node) {
		bytes = lucos_shadow_get(s, SHADOW_BYTES);
		seq_printf(m, "%d %s %lu %lu\n", s->pid, s->comm, s->writes, bytes ? *bytes : 0);
	}
	spin_unlock(&lucos_bugs_sessions_lock);
	return 0;
}
LUCOS_REPLACE(lucos_bugs_sessions_show, new_sessions_show);
