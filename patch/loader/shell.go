package loader

import (
	"debug/elf"
	"encoding/binary"
	"fmt"
	"strconv"
	"strings"
)

// The module shell (sdk/runtime/lucos_rt.c): the runtime registers the
// patch with the guest kernel as a struct module of its own, so that the
// kernel's lookups by address cover patch code as they cover a module's —
// exception tables, the ORC unwinder, kallsyms, kernel_text_address, the
// bug table. Parse finds the runtime's shell; Link lays out, sorts and
// fills what the kernel will read (the runtime's C cannot know where lucos
// put things) in struct lucos_shell, and checks the one kernel type the
// runtime declares itself, struct mod_tree_root, against the guest's BTF.
// The engine registers the shell before anything can run patch code and
// unregisters it before the slot is freed (Image.Shell).

// Runtime symbols of the module shell.
const (
	rtShell       = "__lucos_shell"        // struct lucos_shell, filled by Link
	rtShellResult = "__lucos_shell_result" // the kworker's result, polled by the engine
	rtShellStart  = "__lucos_shell_start"  // long (unsigned long op): queue an add or a delete
	rtShellCancel = "__lucos_shell_cancel" // long (void): cancel a queued add
	rtShellLayout = "__lucos_shell_layout" // struct lucos_shell_layout: what the runtime was compiled with

	shellDescSize   = 192 // struct lucos_shell
	shellNameOff    = 128 // its name[64]
	shellNameSize   = 64
	shellLayoutSize = 16 // struct lucos_shell_layout

	// moduleNameLen is MODULE_NAME_LEN on 64-bit (64 - sizeof(unsigned
	// long)), the NUL included.
	moduleNameLen = 56
)

// Shell operations: __lucos_shell_start's argument.
const (
	ShellAdd = 1 // LUCOS_SHELL_ADD
	ShellDel = 2 // LUCOS_SHELL_DEL
	// ShellPending is __lucos_shell_result while the work is queued or runs.
	ShellPending = 1
)

// Shell is the patch's module shell as linked: its name in the guest, the
// runtime's entry points that register and unregister it, and what the
// kernel will see of the patch through it.
type Shell struct {
	Name   string // lucos_<patch>, unique among the guest's modules when linked
	Start  uint64 // __lucos_shell_start(op): queues ShellAdd or ShellDel on a kworker
	Cancel uint64 // __lucos_shell_cancel(): 1 if a queued add was cancelled
	Result uint64 // __lucos_shell_result: ShellPending, then 0 or -errno

	Base, Size       uint64 // the module's range: the patch's pages
	TextSize, ROSize uint64 // code, and code plus read-only data, from Base
	ExTable          int    // exception table entries
	ORC              int    // ORC entries
	Symbols          int    // kallsyms symbols (num_symtab counts the null one too)
	Bugs             int    // bug table entries
}

// shellSyms is where the runtime's shell is in the module.
type shellSyms struct {
	desc, result, start, cancel place
	layout                      shellLayout
}

// shellLayout is struct lucos_shell_layout: sizes and offsets the runtime
// was compiled with.
type shellLayout struct {
	moduleSize, treeRootSize, addrMin, addrMax uint64
}

// readShell finds the runtime's module shell. A patch without it (not
// built by lucos patch build, or by an older lucos) gets no shell: its
// WARN sites are NOPs, the guest's unwinder and kallsyms do not see it,
// and an exception table, which only the shell can register, is refused.
func (m *Module) readShell() error {
	type want struct {
		name string
		typ  elf.SymType
		perm Perm
		size uint64 // 0: any
		at   *place
	}
	var ss shellSyms
	var layout place
	found := true
	for _, w := range []want{
		{rtShell, elf.STT_OBJECT, RW, shellDescSize, &ss.desc},
		{rtShellResult, elf.STT_OBJECT, RW, 8, &ss.result},
		{rtShellStart, elf.STT_FUNC, RX, 0, &ss.start},
		{rtShellCancel, elf.STT_FUNC, RX, 0, &ss.cancel},
		{rtShellLayout, elf.STT_OBJECT, RO, shellLayoutSize, &layout},
	} {
		p, ok := m.globalAt(w.name, w.typ, w.perm, w.size)
		found = found && ok
		*w.at = p
	}
	if found {
		s := m.secs[layout.sec]
		if s.data == nil || layout.off+shellLayoutSize > uint64(len(s.data)) {
			return formatErr(s.name, layout.off, "%s has no contents", rtShellLayout)
		}
		b := s.data[layout.off:]
		u32 := func(i int) uint64 { return uint64(binary.LittleEndian.Uint32(b[4*i:])) }
		ss.layout = shellLayout{u32(0), u32(1), u32(2), u32(3)}
		m.shell = &ss
	}
	if s := m.section("__ex_table"); s != nil && s.size > 0 && m.shell == nil {
		return refuse(s.name, m.firstSymbolIn(s.idx), nil,
			"exception table of inline user or unsafe memory access (unsafe_get_user, __get_kernel_nofault, *_safe MSR access) in patch code: "+
				"the guest kernel finds it in the patch's module shell, which the lucos runtime registers, and this patch has no runtime: build it with `lucos patch build`")
	}
	return nil
}

// globalAt finds a global symbol the patch defines in a loaded section of
// permission perm (of size bytes, unless 0).
func (m *Module) globalAt(name string, typ elf.SymType, perm Perm, size uint64) (place, bool) {
	for _, sym := range m.syms {
		if sym.name != name || sym.typ != typ || sym.bind != elf.STB_GLOBAL ||
			sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
			continue
		}
		if s := m.secs[sym.shndx]; s.loaded() && s.perm == perm && sym.value < s.size && (size == 0 || sym.size == size) {
			return place{s.idx, sym.value}, true
		}
	}
	return place{}, false
}

// moduleNamer is implemented by a Target that knows the names of the
// guest's loaded modules (the shell's must differ from all of them).
type moduleNamer interface {
	ModuleNames() []string
}

// linkShell makes the shell's tables and fills struct lucos_shell. It runs
// after every fix-up: the tables describe the final code.
func (l *linker) linkShell() error {
	ss := l.m.shell
	if ss == nil {
		return nil
	}
	if err := l.checkShellLayout(); err != nil {
		return err
	}
	sh := &Shell{Start: l.at(ss.start), Cancel: l.at(ss.cancel), Result: l.at(ss.result),
		Base: l.base, Size: l.used, TextSize: l.classEnd[RX] - l.base, ROSize: l.classEnd[RO] - l.base}
	ex, err := l.linkExTable()
	if err != nil {
		return err
	}
	orcIP, orc, err := l.linkORC()
	if err != nil {
		return err
	}
	x := &l.extra[l.kallsymsBlob]
	syms := make([]kallsym, len(l.kallsyms))
	for i, s := range l.kallsyms {
		s.value += l.addr[s.shndx]
		syms[i] = s
	}
	block, symtab, typetab, strtab := kallsymsTables(syms, x.addr)
	copy(x.data, block)

	var taken []string
	if mn, ok := l.t.(moduleNamer); ok {
		taken = mn.ModuleNames()
	}
	sh.Name = shellName(l.m.ModName, l.m.Name, taken)
	sh.ExTable, sh.ORC, sh.Symbols, sh.Bugs = ex.n, orc.n, len(syms), l.bugs.n

	d := l.buf[ss.desc.sec][ss.desc.off : ss.desc.off+shellDescSize]
	for i, v := range []uint64{sh.Base, sh.Size, sh.TextSize, sh.ROSize,
		ex.addr, uint64(ex.n), orcIP, orc.addr, uint64(orc.n),
		symtab, strtab, typetab, uint64(len(syms) + 1), l.bugs.addr, uint64(l.bugs.n), 0} {
		binary.LittleEndian.PutUint64(d[8*i:], v)
	}
	copy(d[shellNameOff:shellNameOff+shellNameSize], sh.Name)
	l.shell = sh
	return nil
}

// checkShellLayout refuses a guest whose struct module or struct
// mod_tree_root (kernel/module/internal.h, which the runtime declares
// itself: it is not among the headers) differ from what the runtime was
// compiled with.
func (l *linker) checkShellLayout() error {
	lay := l.m.shell.layout
	size := func(typ string) uint64 {
		v, err := l.t.Sizeof(typ)
		if err != nil {
			return ^uint64(0)
		}
		return v
	}
	off := func(typ, field string) uint64 {
		v, err := l.t.FieldOffset(typ, field)
		if err != nil {
			return ^uint64(0)
		}
		return v
	}
	got := shellLayout{size("module"), size("mod_tree_root"), off("mod_tree_root", "addr_min"), off("mod_tree_root", "addr_max")}
	if got != lay {
		return refuse(rtShellLayout, "mod_tree", nil,
			"the lucos runtime was compiled with sizeof(struct module) %d and struct mod_tree_root of %d bytes (addr_min at %d, addr_max at %d), "+
				"the guest kernel's BTF says %s, %s (%s, %s): the runtime cannot register the patch's module shell in this kernel",
			lay.moduleSize, lay.treeRootSize, lay.addrMin, lay.addrMax, btfVal(got.moduleSize), btfVal(got.treeRootSize), btfVal(got.addrMin), btfVal(got.addrMax))
	}
	return nil
}

func btfVal(v uint64) string {
	if v == ^uint64(0) {
		return "nothing"
	}
	return strconv.FormatUint(v, 10)
}

// linkExTable sorts __ex_table by instruction, dropping the entries of
// code lucos does not load, and checks that each entry's instruction and
// fixup are the patch's code.
func (l *linker) linkExTable() (tableRef, error) {
	s := l.m.section("__ex_table")
	if s == nil || s.size == 0 {
		return tableRef{}, nil
	}
	size, err := l.t.Sizeof("exception_table_entry")
	if err != nil {
		return tableRef{}, fmt.Errorf("struct exception_table_entry: %w", err)
	}
	insnOff, err := l.t.FieldOffset("exception_table_entry", "insn")
	if err != nil {
		return tableRef{}, fmt.Errorf("struct exception_table_entry: %w", err)
	}
	fixupOff, err := l.t.FieldOffset("exception_table_entry", "fixup")
	if err != nil {
		return tableRef{}, fmt.Errorf("struct exception_table_entry: %w", err)
	}
	if size == 0 || insnOff+4 > size || fixupOff+4 > size || s.size%size != 0 {
		return tableRef{}, formatErr(s.name, 0, "size %d is not a table of %d-byte struct exception_table_entry", s.size, size)
	}
	base, b := l.addr[s.idx], l.buf[s.idx]
	keep := func(i int) bool { return !l.droppedEntry(s, uint64(i)*size, size) }
	for i := uint64(0); i < s.size/size; i++ {
		if !keep(int(i)) {
			continue
		}
		e := b[i*size:]
		for _, f := range []struct {
			what string
			off  uint64
		}{{"instruction", insnOff}, {"fixup", fixupOff}} {
			if a := rel32Dest(base+i*size+f.off, e[f.off:f.off+4]); !l.inText(a) {
				return tableRef{}, formatErr(s.name, i*size+f.off, "exception table entry %d: its %s %#x is not in the patch's code", i, f.what, a)
			}
		}
	}
	n, err := sortExTable(b, base, size, insnOff, fixupOff, keep)
	if err != nil {
		return tableRef{}, formatErr(s.name, 0, "%v", err)
	}
	return tableRef{addr: base, n: n}, nil
}

// linkORC sorts .orc_unwind_ip and .orc_unwind by address, dropping the
// entries of code lucos does not load. It returns the address of the ip
// table and the unwind table with the count.
func (l *linker) linkORC() (uint64, tableRef, error) {
	ip, u := l.m.section(".orc_unwind_ip"), l.m.section(".orc_unwind")
	if ip == nil || u == nil || ip.size == 0 {
		return 0, tableRef{}, nil
	}
	if size, err := l.t.Sizeof("orc_entry"); err != nil || size != orcEntrySize {
		return 0, tableRef{}, refuse(u.name, "", err, "struct orc_entry of the guest is not the %d bytes of Linux 6.1 (BTF says %d)", orcEntrySize, size)
	}
	base := l.addr[ip.idx]
	keep := func(i int) bool { return !l.droppedEntry(ip, uint64(i)*orcIPEntrySize, orcIPEntrySize) }
	n, err := sortORC(l.buf[ip.idx], base, l.buf[u.idx], keep)
	if err != nil {
		return 0, tableRef{}, formatErr(ip.name, 0, "%v", err)
	}
	// Each address is in the patch's code or the end of one of its
	// sections (objtool's section terminators).
	for i := 0; i < n; i++ {
		at := base + uint64(i)*orcIPEntrySize
		if a := rel32Dest(at, l.buf[ip.idx][i*orcIPEntrySize:]); !l.inText(a) && !l.inText(a-1) {
			return 0, tableRef{}, formatErr(ip.name, uint64(i)*orcIPEntrySize, "ORC entry for %#x, outside the patch's code", a)
		}
	}
	return base, tableRef{addr: l.addr[u.idx], n: n}, nil
}

// inText reports whether addr is in the patch's loaded code.
func (l *linker) inText(addr uint64) bool {
	_, _, ok := l.code(addr, 1)
	return ok
}

// shellName is the module name of the shell: the .ko's own (kbuild's
// lucos_<dir>), or lucos_ and the patch's name, with what a module name
// may not hold made '_', and a _2, _3 ... suffix while a module of that
// name is loaded.
func shellName(modName, patchName string, taken []string) string {
	base := modName
	if base == "" {
		base = "lucos_" + patchName
	}
	var b strings.Builder
	for _, r := range base {
		if r < 0x80 && (r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	base = b.String()
	used := map[string]bool{}
	for _, t := range taken {
		used[t] = true
	}
	for i := 1; ; i++ {
		suffix := ""
		if i > 1 {
			suffix = "_" + strconv.Itoa(i)
		}
		name := base
		if len(name)+len(suffix) > moduleNameLen-1 {
			name = name[:moduleNameLen-1-len(suffix)]
		}
		if name += suffix; !used[name] {
			return name
		}
	}
}
