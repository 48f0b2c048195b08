// Package loader links a lucos patch module (a .ko built by kbuild with
// lucos/patch.h) for one running guest kernel, on the host, without writing
// to the guest: it does what the kernel's module loader would do, so that
// the update engine only has to copy pages into a slot and install jumps.
//
// In the data path it sits between `lucos patch build` and the engine:
//
//	.ko ──Parse──► Module (descriptors, release, section policy; no kernel needed)
//	Module ──Link(Target, slot)──► Image (pages + permissions, redirects, text ranges)
//	Image ──engine──► guest (pages written through QEMU, then the jumps)
//
// Parse checks everything that needs no kernel: the ELF header (ET_REL,
// x86-64), .lucos.meta (magic, ABI 1), the descriptors, the release in
// .modinfo's vermagic, relocation types, and sections lucos cannot honour.
// For data updates (.lucos.data) and callbacks (.lucos.callbacks) it also
// checks kinds and flags, that every function and new variable is the
// patch's own, that the patch carries the runtime that runs them
// (sdk/runtime/lucos_rt.c: __lucos_call, __lucos_trampoline,
// __lucos_rt_exit) and, when the module has DWARF, each function's
// prototype; it lists them in declaration order.
// Link reads the running kernel through a Target (*introspect.Kernel):
// symbols with the KASLR slide, BTF layouts, CPU features, static keys and
// the first bytes of each function to replace. Every refusal is a
// *RefusedError (errors.Is ErrRefused) naming the section and symbol, and
// comes before the engine writes anything.
//
// # Layout
//
// Loaded sections go into [base, base+size) by permission class — code
// (RX), read-only data including the .lucos descriptors (RO), data and bss
// (RW) — each class starting on a new page, each section at its alignment,
// in file order. Permission follows the section flags, as in the kernel.
//
// # Linking
//
//   - Undefined symbols resolve against the whole kernel symbol table,
//     statics included. An ambiguous static needs LUCOS_SYMPOS; an unknown
//     one is refused naming the symbol and the referencing section; an
//     unresolved weak one is NULL, as for modules.
//   - __lucos_orig__<fn> (LUCOS_ORIG) resolves to fn+5, after fn's ftrace
//     NOP, which must be there when linking.
//   - Relocations R_X86_64_64, 32, 32S, PC32, PLT32 and PC64 (and NONE), with
//     overflow checks; any other type is refused naming it.
//   - Fix-ups in the kernel's order: return thunks, alternatives (Linux 6.1
//     rules, struct alt_instr from BTF, features from boot_cpu_data), fentry
//     NOPs, static branches (jump_label_type() from each key's current
//     count), WARN sites (NOPs only without the module shell), then the
//     module shell's tables.
//   - Each LUCOS_REPLACE target must be a text symbol of at least 5 bytes
//     whose entry is the ftrace NOP 0f 1f 44 00 00; a call there means ftrace
//     or Linux livepatch owns it, a jump into the kernel-image window means it
//     is already redirected.
//   - Each LUCOS_DATA variable and data-callback symbol must be writable
//     kernel data — kallsyms d/D/b/B between _sdata and _edata or
//     __bss_start and __bss_stop (kallsyms calls .rodata D) — at least as
//     large as the patch declares it; a function callback's symbol must be
//     a function. Image.Data, Image.Callbacks and Image.Runtime give the
//     engine their runtime addresses.
//
// # Module shell
//
// Every patch built by lucos patch build carries the runtime
// (sdk/runtime/lucos_rt.c), whose module shell is a struct module the
// engine registers with the guest kernel (Image.Shell), so that the
// kernel's lookups by address see patch code as a module's: its exception
// table (a fault in an inline user access in patch code is fixed up),
// ORC unwinding (oops traces and /proc/PID/stack go through patch frames),
// kallsyms (/proc/kallsyms and %pS name patch functions "fn [lucos_x]"),
// kernel_text_address and the bug table (WARN warns). Link makes what the
// runtime's C cannot: it sorts __ex_table by instruction and the ORC
// tables by address (rewriting their self-relative fields for each
// entry's new place), drops the entries of code it does not load, builds
// the kallsyms tables from the patch's symbols at their runtime
// addresses, picks a module name no loaded module has, fills struct
// lucos_shell, and checks the kernel type the runtime declares itself
// (struct mod_tree_root) against the guest's BTF. A patch without the
// runtime gets no shell, and its __ex_table is refused.
//
// Static branches are set once, from the key's state at link time: the
// kernel does not know the patch's sites, so a key that changes later does
// not reach them. Image.JumpSites lists them so the engine can re-check
// kernel keys under pause.
//
// # Sections
//
// What Link does with each SHF_ALLOC section (first match wins; a section
// matching no row is refused, an empty one never is). load: placed and
// written; consume: relocated and acted on while linking, never written;
// register: loaded, sorted and handed to the kernel in the module shell;
// metadata: read by Parse; ignore: neither written nor relocated.
//
//	section                     what     why
//	.text                       load     code
//	.text.*                     load     code (.text.unlikely, .text.hot, per-function sections)
//	.noinstr.text               load     code (noinstr functions)
//	.entry.text                 load     code
//	.sched.text                 load     code (__sched: wchan does not take patch code for the scheduler's)
//	.cpuidle.text               load     code
//	.spinlock.text              load     code
//	.kprobes.text               load     code
//	.ref.text                   load     code (__ref)
//	.meminit.text               load     code (__meminit, kept as with memory hotplug)
//	.altinstr_replacement       load     alternative replacements stay loaded: relocations in them need a real address, and the e8/e9 re-targeting is computed from it as the kernel does
//	.altinstr_aux               load     static_cpu_has() slow path, jumped to from code
//	.rodata                     load     read-only data
//	.rodata.*                   load     read-only data, strings, constants
//	.lucos.data                 load     LUCOS_DATA descriptors: read by Parse (Module.Data), resolved by Link (Image.Data); loaded RO like every descriptor
//	.lucos.callbacks            load     callback descriptors: read by Parse (Module.Callbacks), resolved by Link (Image.Callbacks); loaded RO
//	.lucos.*                    load     the other lucos descriptors (.lucos.meta, .lucos.funcs, .lucos.sympos): read by Parse, loaded RO; an unknown .lucos.* section is loaded and ignored
//	.data..percpu               refuse   per-CPU variables in a patch would need a per-CPU allocation lucos does not make
//	.data                       load     data
//	.data.*                     load     data (.data.once of WARN_ONCE, .data..read_mostly, .data..ro_after_init: RW, as no init code seals it)
//	.ref.data                   load     data (__refdata)
//	.meminit.data               load     data (__meminitdata)
//	.meminit.rodata             load     read-only data (__meminitconst)
//	.bss                        load     zeroed data
//	.bss.*                      load     zeroed data
//	__dyndbg                    load     pr_debug() descriptors: never registered with dynamic debug, so those pr_debug sites stay off
//	__dyndbg_classes            load     dynamic-debug class maps, as __dyndbg
//	__mcount_loc                consume  the patch's `call __fentry__` sites, turned into the 5-byte NOP (ftrace never learns of patch code)
//	.altinstructions            consume  alternatives, applied for the guest CPU's features (boot_cpu_data)
//	__jump_table                consume  static branches, set from each key's state at link time; the sites are not registered, so later key changes do not reach them (Image.JumpSites lists them)
//	.return_sites               consume  `jmp __x86_return_thunk` sites, re-targeted to the thunk the kernel chose (x86_return_thunk)
//	.call_sites                 consume  direct calls a kernel running call-depth tracking re-targets to accounting thunks: left as they are, as the kernel's module loader does, unless the guest set thunks_initialized at boot (retbleed=stuff), which is refused
//	__ex_table                  register exception table of inline user or unsafe memory access (unsafe_get_user, __get_kernel_nofault, *_safe MSR access): loaded RO, sorted by instruction, registered as the shell's extable, so a fault there is fixed up (-EFAULT) as in a module; needs the lucos runtime
//	.orc_unwind_ip              register ORC unwind table: loaded RO, sorted by address with .orc_unwind, registered as the shell's ORC table, so the guest's unwinder (oops traces, /proc/PID/stack) sees through patch code
//	.orc_unwind                 register as .orc_unwind_ip
//	__bug_table                 register WARN and BUG sites: loaded RW (WARN_ONCE marks its entry), registered as the shell's bug table, so WARN warns and continues and BUG is a kernel BUG; without the runtime WARN sites become a 2-byte NOP (Image.Warnings)
//	.modinfo                    metadata vermagic gives the kernel release
//	__versions                  metadata modversions CRCs: lucos checks the release instead
//	.note.gnu.build-id          metadata the patch's build id
//	.note.*                     metadata ELF notes
//	.gnu.linkonce.this_module   ignore   modpost's struct module: the runtime registers a struct module of its own, the module shell, which has no sysfs; code referencing THIS_MODULE is refused
//	.init.*                     ignore   module_init never runs; code referencing init code or data is refused
//	.exit.*                     ignore   module_exit never runs; code referencing exit code or data is refused
//	.orc_header                 ignore   ORC format header (Linux 6.4 and later)
//	__patchable_function_entries ignore   where the 16-byte NOP padding before each function is (CALL_PADDING, Linux 6.2+): x86's module loader reads nothing from it (ftrace uses __mcount_loc)
//	.static_call_sites          ignore   static_call() sites keep calling the trampoline, which the kernel keeps current
//	.retpoline_sites            ignore   calls through __x86_indirect_thunk_* stay; the thunks carry the kernel's chosen mitigation
//	.smp_locks                  ignore   lock prefixes stay: always correct, only a UP kernel would strip them
//	.parainstructions           ignore   paravirt sites keep their indirect call through pv_ops: correct, a little slower
//	.ibt_endbr_seal             ignore   unsealed ENDBR instructions are harmless
//	__ksymtab*                  ignore   nothing in the guest can import from a patch
//	__kcrctab*                  ignore   as __ksymtab
//	_kprobe_blacklist           ignore   kprobes cannot be placed in patch code anyway
//	_error_injection_whitelist  ignore   error injection is not registered for patch code
//	.discard*                   ignore   discarded by the kernel's linker scripts too
//	__param                     refuse   module parameters cannot be set: lucos never insmods the patch
//	__tracepoints               refuse   tracepoints defined in a patch would need registration; using the kernel's is fine
//	__tracepoints_ptrs          refuse   as __tracepoints
//	__tracepoints_strings       refuse   as __tracepoints
//	_ftrace_events              refuse   trace events defined in a patch would need registration
//	_ftrace_eval_map            refuse   as _ftrace_events
//	__bpf_raw_tp_map            refuse   as _ftrace_events
//	__trace_printk_fmt          refuse   trace_printk formats would need registration
//	.static_call.text           refuse   static calls defined in a patch would need registration
//	.kcfi_traps                 refuse   kCFI (clang) is not implemented
//	.init_array                 refuse   constructors never run
//	.ctors                      refuse   constructors never run
//
// A patch built by Debian 6.1's kbuild has .text, .rodata.str*, the .lucos
// descriptors, __mcount_loc, .return_sites, .orc_unwind(_ip), .modinfo,
// __versions, .note.*, .data, .bss and .gnu.linkonce.this_module; the
// others appear when the code uses what emits them.
//
// TestSectionTableDocumented keeps this table equal to the rules in
// sections.go.
package loader
