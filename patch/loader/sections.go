package loader

import (
	"debug/elf"
	"strings"
)

// Treatment is what the loader does with one SHF_ALLOC section of a patch.
type Treatment uint8

const (
	// Load: placed in the slot and written to the guest (permission from
	// the section's flags: exec → RX, write → RW, else RO).
	Load Treatment = iota + 1
	// Consume: relocated and acted on while linking (fentry NOPs,
	// alternatives, jump labels, ...), never written to the guest.
	Consume
	// Register: a kernel table placed like Load, its entries for code lucos
	// does not load dropped, sorted as the kernel's module loader sorts it,
	// and handed to the guest kernel in the patch's module shell (the
	// runtime's struct module): exception table, ORC, bug table.
	Register
	// Metadata: read by Parse (release, build id), never written.
	Metadata
	// Ignore: neither written nor relocated; the patch works without it.
	Ignore
	// Refuse: lucos cannot honour what the section asks for.
	Refuse
)

func (t Treatment) String() string {
	switch t {
	case Load:
		return "load"
	case Consume:
		return "consume"
	case Register:
		return "register"
	case Metadata:
		return "metadata"
	case Ignore:
		return "ignore"
	case Refuse:
		return "refuse"
	}
	return "unknown"
}

// sectionRule is one row of the section policy; the package doc's table is
// this list.
type sectionRule struct {
	name   string // exact name, or a prefix when it ends in '*'
	treat  Treatment
	reason string
}

// sectionRules is checked in order; the first match wins. SHF_ALLOC
// sections matching none are refused. Empty sections are never refused.
var sectionRules = []sectionRule{
	// What the patch is made of.
	{".text", Load, "code"},
	{".text.*", Load, "code (.text.unlikely, .text.hot, per-function sections)"},
	{".noinstr.text", Load, "code (noinstr functions)"},
	{".entry.text", Load, "code"},
	{".sched.text", Load, "code (__sched: wchan does not take patch code for the scheduler's)"},
	{".cpuidle.text", Load, "code"},
	{".spinlock.text", Load, "code"},
	{".kprobes.text", Load, "code"},
	{".ref.text", Load, "code (__ref)"},
	{".meminit.text", Load, "code (__meminit, kept as with memory hotplug)"},
	{".altinstr_replacement", Load, "alternative replacements stay loaded: relocations in them need a real address, and the e8/e9 re-targeting is computed from it as the kernel does"},
	{".altinstr_aux", Load, "static_cpu_has() slow path, jumped to from code"},
	{".rodata", Load, "read-only data"},
	{".rodata.*", Load, "read-only data, strings, constants"},
	{".lucos.data", Load, "LUCOS_DATA descriptors: read by Parse (Module.Data), resolved by Link (Image.Data); loaded RO like every descriptor"},
	{".lucos.callbacks", Load, "callback descriptors: read by Parse (Module.Callbacks), resolved by Link (Image.Callbacks); loaded RO"},
	{".lucos.*", Load, "the other lucos descriptors (.lucos.meta, .lucos.funcs, .lucos.sympos): read by Parse, loaded RO; an unknown .lucos.* section is loaded and ignored"},
	{".data..percpu", Refuse, "per-CPU variables in a patch would need a per-CPU allocation lucos does not make"},
	{".data", Load, "data"},
	{".data.*", Load, "data (.data.once of WARN_ONCE, .data..read_mostly, .data..ro_after_init: RW, as no init code seals it)"},
	{".ref.data", Load, "data (__refdata)"},
	{".meminit.data", Load, "data (__meminitdata)"},
	{".meminit.rodata", Load, "read-only data (__meminitconst)"},
	{".bss", Load, "zeroed data"},
	{".bss.*", Load, "zeroed data"},
	{"__dyndbg", Load, "pr_debug() descriptors: never registered with dynamic debug, so those pr_debug sites stay off"},
	{"__dyndbg_classes", Load, "dynamic-debug class maps, as __dyndbg"},

	// Consumed while linking.
	{"__mcount_loc", Consume, "the patch's `call __fentry__` sites, turned into the 5-byte NOP (ftrace never learns of patch code)"},
	{".altinstructions", Consume, "alternatives, applied for the guest CPU's features (boot_cpu_data)"},
	{"__jump_table", Consume, "static branches, set from each key's state at link time; the sites are not registered, so later key changes do not reach them (Image.JumpSites lists them)"},
	{".return_sites", Consume, "`jmp __x86_return_thunk` sites, re-targeted to the thunk the kernel chose (x86_return_thunk)"},
	{".call_sites", Consume, "direct calls a kernel running call-depth tracking re-targets to accounting thunks: left as they are, as the kernel's module loader does, unless the guest set thunks_initialized at boot (retbleed=stuff), which is refused"},

	// Registered with the guest kernel in the module shell.
	{"__ex_table", Register, "exception table of inline user or unsafe memory access (unsafe_get_user, __get_kernel_nofault, *_safe MSR access): loaded RO, sorted by instruction, registered as the shell's extable, so a fault there is fixed up (-EFAULT) as in a module; needs the lucos runtime"},
	{".orc_unwind_ip", Register, "ORC unwind table: loaded RO, sorted by address with .orc_unwind, registered as the shell's ORC table, so the guest's unwinder (oops traces, /proc/PID/stack) sees through patch code"},
	{".orc_unwind", Register, "as .orc_unwind_ip"},
	{"__bug_table", Register, "WARN and BUG sites: loaded RW (WARN_ONCE marks its entry), registered as the shell's bug table, so WARN warns and continues and BUG is a kernel BUG; without the runtime WARN sites become a 2-byte NOP (Image.Warnings)"},

	// Read by Parse.
	{".modinfo", Metadata, "vermagic gives the kernel release"},
	{"__versions", Metadata, "modversions CRCs: lucos checks the release instead"},
	{".note.gnu.build-id", Metadata, "the patch's build id"},
	{".note.*", Metadata, "ELF notes"},

	// Not needed.
	{".gnu.linkonce.this_module", Ignore, "modpost's struct module: the runtime registers a struct module of its own, the module shell, which has no sysfs; code referencing THIS_MODULE is refused"},
	{".init.*", Ignore, "module_init never runs; code referencing init code or data is refused"},
	{".exit.*", Ignore, "module_exit never runs; code referencing exit code or data is refused"},
	{".orc_header", Ignore, "ORC format header (Linux 6.4 and later)"},
	{"__patchable_function_entries", Ignore, "where the 16-byte NOP padding before each function is (CALL_PADDING, Linux 6.2+): x86's module loader reads nothing from it (ftrace uses __mcount_loc)"},
	{".static_call_sites", Ignore, "static_call() sites keep calling the trampoline, which the kernel keeps current"},
	{".retpoline_sites", Ignore, "calls through __x86_indirect_thunk_* stay; the thunks carry the kernel's chosen mitigation"},
	{".smp_locks", Ignore, "lock prefixes stay: always correct, only a UP kernel would strip them"},
	{".parainstructions", Ignore, "paravirt sites keep their indirect call through pv_ops: correct, a little slower"},
	{".ibt_endbr_seal", Ignore, "unsealed ENDBR instructions are harmless"},
	{"__ksymtab*", Ignore, "nothing in the guest can import from a patch"},
	{"__kcrctab*", Ignore, "as __ksymtab"},
	{"_kprobe_blacklist", Ignore, "kprobes cannot be placed in patch code anyway"},
	{"_error_injection_whitelist", Ignore, "error injection is not registered for patch code"},
	{".discard*", Ignore, "discarded by the kernel's linker scripts too"},

	// Cannot honour.
	{"__param", Refuse, "module parameters cannot be set: lucos never insmods the patch"},
	{"__tracepoints", Refuse, "tracepoints defined in a patch would need registration; using the kernel's is fine"},
	{"__tracepoints_ptrs", Refuse, "as __tracepoints"},
	{"__tracepoints_strings", Refuse, "as __tracepoints"},
	{"_ftrace_events", Refuse, "trace events defined in a patch would need registration"},
	{"_ftrace_eval_map", Refuse, "as _ftrace_events"},
	{"__bpf_raw_tp_map", Refuse, "as _ftrace_events"},
	{"__trace_printk_fmt", Refuse, "trace_printk formats would need registration"},
	{".static_call.text", Refuse, "static calls defined in a patch would need registration"},
	{".kcfi_traps", Refuse, "kCFI (clang) is not implemented"},
	{".init_array", Refuse, "constructors never run"},
	{".ctors", Refuse, "constructors never run"},
}

// classify returns the rule for an SHF_ALLOC section.
func classify(name string) (sectionRule, bool) {
	for _, r := range sectionRules {
		if p, ok := strings.CutSuffix(r.name, "*"); ok {
			if strings.HasPrefix(name, p) {
				return r, true
			}
		} else if name == r.name {
			return r, true
		}
	}
	return sectionRule{}, false
}

// loaded reports whether the section is written to the guest.
func (s *section) loaded() bool { return s.treat == Load || s.treat == Register }

// permOf is the guest permission of a loaded section, from its flags as the
// kernel's module loader decides it.
func permOf(flags elf.SectionFlag) Perm {
	switch {
	case flags&elf.SHF_EXECINSTR != 0:
		return RX
	case flags&elf.SHF_WRITE != 0:
		return RW
	}
	return RO
}
