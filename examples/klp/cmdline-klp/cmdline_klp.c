// SPDX-License-Identifier: GPL-2.0
/*
 * cmdline-klp: the change of examples/patches/cmdline-string — /proc/cmdline
 * ends with " lucos-patched" — as an in-guest Linux livepatch module, for
 * the side-by-side benchmark (`lucos bench apply`). insmod enables the
 * patch; `echo 0 > /sys/kernel/livepatch/cmdline_klp/enabled` disables it,
 * then rmmod removes it.
 *
 * A livepatch module can only link against exported symbols, and
 * saved_command_line is not exported. Its address is looked up once at
 * load time with kallsyms_lookup_name, itself not exported since 5.7 but
 * findable through a kprobe on it (register_kprobe fills in kp.addr). The
 * new function then reads the variable on every call, as the original does.
 */
#include <linux/kallsyms.h>
#include <linux/kprobes.h>
#include <linux/livepatch.h>
#include <linux/module.h>
#include <linux/seq_file.h>

static char **cmdline_klp_saved;	/* &saved_command_line */

static int cmdline_klp_show(struct seq_file *m, void *v)
{
	seq_printf(m, "%s lucos-patched\n", *cmdline_klp_saved);
	return 0;
}

static struct klp_func cmdline_klp_funcs[] = {
	{ .old_name = "cmdline_proc_show", .new_func = cmdline_klp_show },
	{ }
};

static struct klp_object cmdline_klp_objs[] = {
	{ .name = NULL /* vmlinux */, .funcs = cmdline_klp_funcs },
	{ }
};

static struct klp_patch cmdline_klp_patch = {
	.mod = THIS_MODULE,
	.objs = cmdline_klp_objs,
};

/* lookup_symbol resolves a kernel symbol, exported or not. */
static unsigned long lookup_symbol(const char *name)
{
	struct kprobe kp = { .symbol_name = "kallsyms_lookup_name" };
	unsigned long (*lookup)(const char *);
	int err;

	err = register_kprobe(&kp);
	if (err)
		return 0;
	lookup = (unsigned long (*)(const char *))kp.addr;
	unregister_kprobe(&kp);
	return lookup(name);
}

static int __init cmdline_klp_init(void)
{
	cmdline_klp_saved = (char **)lookup_symbol("saved_command_line");
	if (!cmdline_klp_saved)
		return -ENOENT;
	return klp_enable_patch(&cmdline_klp_patch);
}

static void __exit cmdline_klp_exit(void)
{
}

module_init(cmdline_klp_init);
module_exit(cmdline_klp_exit);
MODULE_LICENSE("GPL");
MODULE_DESCRIPTION("livepatch: /proc/cmdline gains the marker lucos-patched");
MODULE_INFO(livepatch, "Y");
