package loader

import (
	"cmp"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"strings"

	"github.com/lucos/lucos/kimage"
	"golang.org/x/arch/x86/x86asm"
)

// Data updates and callbacks: .lucos.data (LUCOS_DATA) and
// .lucos.callbacks (LUCOS_STARTUP ... LUCOS_CALLBACK), read by Parse and
// resolved by Link. The engine runs them through the runtime every patch
// carries (sdk/runtime/lucos_rt.c); docs/PATCH-FORMAT.md gives the order
// and the contexts.

const (
	dataSize     = 56 // struct lucos_data
	callbackSize = 32 // struct lucos_callback

	dataSection      = ".lucos.data"
	callbacksSection = ".lucos.callbacks"

	// struct lucos_callback.flags
	cbOnce    = 1
	cbNMISafe = 2
)

// Runtime symbols: what lucos calls in the guest.
const (
	rtCall       = "__lucos_call"
	rtTrampoline = "__lucos_trampoline"
	rtExit       = "__lucos_rt_exit"
	rtKick       = "__lucos_kick" // optional: older runtimes lack it
	rtDone       = "__lucos_call_done"
)

// DataSpec is one LUCOS_DATA: the kernel global OldName (sympos Pos, 0 =
// unique) is replaced by the patch's NewSymbol; Transfer converts old to
// new, Reverse new to old. OldSize and NewSize are sizeof both in the
// patch: the lengths lucos watches.
type DataSpec struct {
	OldName                      string
	Pos                          int
	NewSymbol, Transfer, Reverse string
	OldSize, NewSize             uint64

	newVar, transfer, reverse place
}

// CallbackKind is struct lucos_callback.kind.
type CallbackKind uint32

const (
	CallbackStartup CallbackKind = iota + 1 // int fn(void) before the switch; nonzero aborts
	CallbackCleanup                         // void fn(void) after rollback
	CallbackFunc                            // void fn(<Symbol's parameters>) on each entry of Symbol
	CallbackThread                          // void fn(struct task_struct *) per task found in an old function
	CallbackData                            // void fn(typeof(Symbol) *) after each trapped write to Symbol
)

func (k CallbackKind) String() string {
	switch k {
	case CallbackStartup:
		return "startup"
	case CallbackCleanup:
		return "cleanup"
	case CallbackFunc:
		return "func"
	case CallbackThread:
		return "thread"
	case CallbackData:
		return "data"
	}
	return fmt.Sprintf("CallbackKind(%d)", uint32(k))
}

// macro is the patch.h macro that makes a callback of kind k.
func (k CallbackKind) macro() string {
	switch k {
	case CallbackStartup:
		return "LUCOS_STARTUP"
	case CallbackCleanup:
		return "LUCOS_CLEANUP"
	case CallbackFunc:
		return "LUCOS_FUNC_CALLBACK"
	case CallbackThread:
		return "LUCOS_THREAD_CALLBACK"
	case CallbackData:
		return "LUCOS_DATA_CALLBACK"
	}
	return "LUCOS_CALLBACK"
}

// CallbackSpec is one callback: Fn, a function of the patch, of Kind,
// about the kernel's Symbol (sympos Pos) for func and data callbacks.
// Once: a func callback runs on the first entry only. NMISafe: it may
// run where interrupts are off.
type CallbackSpec struct {
	Kind          CallbackKind
	Once, NMISafe bool
	Symbol        string
	Pos           int
	Fn            string

	fn place
}

// place is a definition in the patch: section index and offset.
type place struct {
	sec int
	off uint64
}

func (s DataSpec) macro() string {
	if s.Pos != 0 {
		return fmt.Sprintf("LUCOS_DATA_POS(%s, %d, %s)", s.OldName, s.Pos, s.NewSymbol)
	}
	return fmt.Sprintf("LUCOS_DATA(%s, %s)", s.OldName, s.NewSymbol)
}

func (s CallbackSpec) macro() string {
	if s.Symbol != "" {
		return fmt.Sprintf("%s(%s, %s)", s.Kind.macro(), s.Symbol, s.Fn)
	}
	return fmt.Sprintf("%s(%s)", s.Kind.macro(), s.Fn)
}

// readData reads .lucos.data.
func (m *Module) readData() error {
	s := m.section(dataSection)
	if s == nil {
		return nil
	}
	if s.size%dataSize != 0 || s.data == nil {
		return formatErr(s.name, 0, "size %d is not a multiple of %d", s.size, dataSize)
	}
	olds := map[string]bool{}
	news := map[place]string{}
	for _, off := range m.declOrder(s, dataSize) {
		var d DataSpec
		var err error
		if d.OldName, err = m.stringAt(s, off); err != nil {
			return err
		}
		if d.Pos, err = m.posAt(s, off+8); err != nil {
			return err
		}
		d.OldSize = uint64(binary.LittleEndian.Uint32(s.data[off+40:]))
		d.NewSize = uint64(binary.LittleEndian.Uint32(s.data[off+44:]))
		if flags := binary.LittleEndian.Uint64(s.data[off+48:]); flags != 0 {
			return formatErr(s.name, off+48, "LUCOS_DATA(%s): reserved flags %#x", d.OldName, flags)
		}
		if d.OldSize == 0 || d.NewSize == 0 {
			return formatErr(s.name, off+40, "LUCOS_DATA(%s): sizes %d and %d: a variable has at least one byte", d.OldName, d.OldSize, d.NewSize)
		}
		what := fmt.Sprintf("LUCOS_DATA(%s)", d.OldName)
		var size uint64
		if d.NewSymbol, d.newVar, size, err = m.definedData(s, off+16, what+": the new variable"); err != nil {
			return err
		}
		if d.NewSize > size {
			return refuseAt(s.name, off+44, d.NewSymbol, nil, "%s: sizeof(%s) is %d bytes, but %d bytes are defined there", what, d.NewSymbol, d.NewSize, size)
		}
		if d.Transfer, d.transfer, err = m.definedFunc(s, off+24, what+": the transfer"); err != nil {
			return err
		}
		if d.Reverse, d.reverse, err = m.definedFunc(s, off+32, what+": the reverse transfer"); err != nil {
			return err
		}
		key := fmt.Sprintf("%s/%d", d.OldName, d.Pos)
		if olds[key] {
			return refuse(s.name, d.OldName, nil, "the variable is replaced twice")
		}
		olds[key] = true
		if other, dup := news[d.newVar]; dup {
			return refuse(s.name, d.NewSymbol, nil, "one new variable for both %s and %s", other, d.OldName)
		}
		news[d.newVar] = d.OldName
		m.Data = append(m.Data, d)
	}
	return nil
}

// readCallbacks reads .lucos.callbacks, refusing kinds and flags this
// lucos does not know.
func (m *Module) readCallbacks() error {
	s := m.section(callbacksSection)
	if s == nil {
		return nil
	}
	if s.size%callbackSize != 0 || s.data == nil {
		return formatErr(s.name, 0, "size %d is not a multiple of %d", s.size, callbackSize)
	}
	for _, off := range m.declOrder(s, callbackSize) {
		var c CallbackSpec
		kind := binary.LittleEndian.Uint32(s.data[off:])
		flags := binary.LittleEndian.Uint32(s.data[off+4:])
		c.Kind = CallbackKind(kind)
		if c.Kind < CallbackStartup || c.Kind > CallbackData {
			return refuseAt(s.name, off, "", nil, "callback kind %d is unknown: this lucos runs startup (1), cleanup (2), func (3), thread (4) and data (5) callbacks", kind)
		}
		if flags&^(cbOnce|cbNMISafe) != 0 {
			return refuseAt(s.name, off+4, "", nil, "%s callback: unknown flags %#x (this lucos knows LUCOS_CB_ONCE 1, LUCOS_CB_NMI_SAFE 2)", c.Kind, flags&^(cbOnce|cbNMISafe))
		}
		c.Once, c.NMISafe = flags&cbOnce != 0, flags&cbNMISafe != 0
		if c.Once && c.Kind != CallbackFunc {
			return refuseAt(s.name, off+4, "", nil, "%s callback: LUCOS_CB_ONCE applies to function callbacks only", c.Kind)
		}
		var err error
		if c.Fn, c.fn, err = m.definedFunc(s, off+24, fmt.Sprintf("%s callback", c.Kind)); err != nil {
			return err
		}
		if m.hasPointer(s, off+8) {
			if c.Symbol, err = m.stringAt(s, off+8); err != nil {
				return err
			}
		}
		if c.Pos, err = m.posAt(s, off+16); err != nil {
			return err
		}
		needsSymbol := c.Kind == CallbackFunc || c.Kind == CallbackData
		switch {
		case needsSymbol && c.Symbol == "":
			return refuseAt(s.name, off+8, c.Fn, nil, "%s callback %s: names no symbol", c.Kind, c.Fn)
		case !needsSymbol && (c.Symbol != "" || c.Pos != 0):
			return refuseAt(s.name, off+8, c.Fn, nil, "%s callback %s: a %s callback is about no symbol (symbol %q, sympos %d)", c.Kind, c.Fn, c.Kind, c.Symbol, c.Pos)
		}
		m.Callbacks = append(m.Callbacks, c)
	}
	return nil
}

// readRuntime finds the runtime's entry points, which a patch with data
// updates or callbacks needs.
func (m *Module) readRuntime() error {
	for _, name := range []string{rtCall, rtTrampoline, rtExit, rtDone, rtKick} {
		want, perm := elf.STT_FUNC, RX
		if name == rtDone {
			want, perm = elf.STT_OBJECT, RW
		}
		for _, sym := range m.syms {
			if sym.name != name || sym.typ != want || sym.bind != elf.STB_GLOBAL ||
				sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
				continue
			}
			if s := m.secs[sym.shndx]; s.treat == Load && s.perm == perm && sym.value < s.size {
				m.runtime[name] = place{s.idx, sym.value}
			}
		}
	}
	if len(m.Data) == 0 && len(m.Callbacks) == 0 {
		return nil
	}
	for _, name := range []string{rtCall, rtTrampoline, rtExit, rtDone} {
		if _, ok := m.runtime[name]; !ok {
			sec := dataSection
			if len(m.Data) == 0 {
				sec = callbacksSection
			}
			return refuse(sec, name, nil, "the patch has data updates or callbacks but not the lucos runtime that runs them: build it with `lucos patch build`, which links sdk/runtime/lucos_rt.c into every patch")
		}
	}
	return nil
}

// declOrder returns the offsets of the entries of descriptor section s in
// the order the patch declares them. gcc emits a file's descriptors in an
// order of its own (reversed, in practice) and ld concatenates the files
// in link order (file names, sorted, for lucos patch build): within a file
// the __COUNTER__ suffix of each descriptor's name (LUCOS_ID) gives the
// order, files keep theirs. An entry without such a name (not made by
// patch.h) leaves the section's order.
func (m *Module) declOrder(s *section, size uint64) []uint64 {
	type entry struct {
		off, file, counter uint64
	}
	var entries []entry
	for off := uint64(0); off+size <= s.size; off += size {
		entries = append(entries, entry{off: off})
	}
	file := uint64(0)
	named := 0
	for i, sym := range m.syms {
		if sym.typ == elf.STT_FILE {
			file = uint64(i)
			continue
		}
		if sym.typ != elf.STT_OBJECT || int(sym.shndx) != s.idx || sym.value%size != 0 || sym.value >= s.size {
			continue
		}
		at := strings.LastIndexByte(sym.name, '_')
		n, err := strconv.ParseUint(sym.name[at+1:], 10, 64)
		if at < 0 || err != nil {
			continue
		}
		e := &entries[sym.value/size]
		if e.file == 0 {
			named++
		}
		e.file, e.counter = file+1, n
	}
	if named != len(entries) {
		return offsets(entries, func(e entry) uint64 { return e.off })
	}
	first := map[uint64]uint64{} // file → offset of its first entry
	for _, e := range entries {
		if f, ok := first[e.file]; !ok || e.off < f {
			first[e.file] = e.off
		}
	}
	slices.SortStableFunc(entries, func(a, b entry) int {
		if c := cmp.Compare(first[a.file], first[b.file]); c != 0 {
			return c
		}
		return cmp.Compare(a.counter, b.counter)
	})
	return offsets(entries, func(e entry) uint64 { return e.off })
}

func offsets[E any](es []E, off func(E) uint64) []uint64 {
	out := make([]uint64, len(es))
	for i, e := range es {
		out[i] = off(e)
	}
	return out
}

// hasPointer reports whether a relocation fills the pointer at s+off
// (else it is NULL).
func (m *Module) hasPointer(s *section, off uint64) bool {
	_, ok := s.relocAt(off)
	return ok
}

// definedFunc resolves the pointer at s+off to a function of the patch's
// loaded code.
func (m *Module) definedFunc(s *section, off uint64, what string) (string, place, error) {
	sym, addend, err := m.pointerAt(s, off)
	if err != nil {
		return "", place{}, err
	}
	if sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
		return "", place{}, refuseAt(s.name, off, sym.name, nil, "%s must be a function defined in the patch", what)
	}
	ts := m.secs[sym.shndx]
	at := sym.value + uint64(addend)
	if ts.treat != Load || ts.perm != RX || at >= ts.size {
		return "", place{}, refuseAt(s.name, off, sym.name, nil, "%s is not in the patch's loaded code (section %s)", what, ts.name)
	}
	name := m.funcAt(sym, addend)
	if name == "" {
		name = fmt.Sprintf("%s+%#x", ts.name, at)
	}
	return name, place{ts.idx, at}, nil
}

// definedData resolves the pointer at s+off to a variable in the patch's
// data or bss, and returns the bytes defined from there.
func (m *Module) definedData(s *section, off uint64, what string) (string, place, uint64, error) {
	sym, addend, err := m.pointerAt(s, off)
	if err != nil {
		return "", place{}, 0, err
	}
	if sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
		return "", place{}, 0, refuseAt(s.name, off, sym.name, nil, "%s must be a variable defined in the patch", what)
	}
	ts := m.secs[sym.shndx]
	at := sym.value + uint64(addend)
	if ts.treat != Load || ts.perm != RW || at >= ts.size {
		return "", place{}, 0, refuseAt(s.name, off, sym.name, nil, "%s is not in the patch's data or bss (section %s)", what, ts.name)
	}
	name, size := fmt.Sprintf("%s+%#x", ts.name, at), ts.size-at
	for _, o := range m.syms {
		if o.typ == elf.STT_OBJECT && o.shndx == sym.shndx && at >= o.value && at-o.value < o.size {
			name, size = o.name, o.size-(at-o.value)
			if at != o.value {
				name = fmt.Sprintf("%s+%#x", o.name, at-o.value)
			}
			break
		}
	}
	return name, place{ts.idx, at}, size, nil
}

// objectNamed finds the patch's own variable name (data or bss), unique.
func (m *Module) objectNamed(name string) (place, uint64, bool) {
	var found []symbol
	for _, o := range m.syms {
		if o.name == name && o.typ == elf.STT_OBJECT && o.shndx != elf.SHN_UNDEF && o.shndx < elf.SHN_LORESERVE {
			if s := m.secs[o.shndx]; s.treat == Load && s.perm == RW {
				found = append(found, o)
			}
		}
	}
	if len(found) != 1 {
		return place{}, 0, false
	}
	return place{int(found[0].shndx), found[0].value}, found[0].size, true
}

// linkData resolves each LUCOS_DATA's old variable, which must be
// writable kernel data lucos can watch.
func (l *linker) linkData() error {
	seen := map[uint64]string{}
	for _, ds := range l.m.Data {
		sym, addr, err := l.t.Symbol(ds.OldName, ds.Pos)
		var amb *kimage.AmbiguousError
		switch {
		case errors.As(err, &amb):
			return refuse(dataSection, ds.OldName, err, "%s: %v: use LUCOS_DATA_POS(%s, <pos>, %s, %s, %s)", ds.macro(), amb.Error(), ds.OldName, ds.NewSymbol, ds.Transfer, ds.Reverse)
		case errors.Is(err, kimage.ErrNotFound):
			return refuse(dataSection, ds.OldName, err, "%s: the variable is not in the guest kernel: %v", ds.macro(), err)
		case err != nil:
			return fmt.Errorf("resolve %s: %w", ds.OldName, err)
		}
		if err := l.checkKernelData(dataSection, ds.OldName, ds.macro(), sym, addr, ds.OldSize); err != nil {
			return err
		}
		if sym.Size > 0 && ds.OldSize > sym.Size {
			return refuse(dataSection, ds.OldName, nil, "%s: sizeof(%s) is %d bytes in the patch, the kernel's is at most %d: the patch declares it with another type",
				ds.macro(), ds.OldName, ds.OldSize, sym.Size)
		}
		if other, dup := seen[addr]; dup {
			return refuse(dataSection, ds.OldName, nil, "%s: replaced twice (also as %s)", ds.macro(), other)
		}
		seen[addr] = ds.OldName
		l.data = append(l.data, Data{Spec: ds, Old: sym, OldAddr: addr,
			NewAddr: l.at(ds.newVar), Transfer: l.at(ds.transfer), Reverse: l.at(ds.reverse)})
	}
	return nil
}

// checkKernelData refuses a watch on anything but writable data: the
// kernel's .data and .bss, between the linker's markers, or a loaded
// module's data when the Target resolves module symbols.
func (l *linker) checkKernelData(sec, name, what string, sym kimage.Symbol, addr, size uint64) error {
	const notData = "a watch on memory that is not kernel data"
	switch sym.Type {
	case 'd', 'D', 'b', 'B':
	case 'T', 't', 'W', 'w':
		return refuse(sec, name, nil, "%s: %s: %s is a function (kallsyms type %c)", what, notData, sym.Name, sym.Type)
	case 'R', 'r':
		return refuse(sec, name, nil, "%s: %s: %s is read-only data (kallsyms type %c)", what, notData, sym.Name, sym.Type)
	case 'A', 'a':
		return refuse(sec, name, nil, "%s: %s: %s is a per-CPU or absolute symbol (kallsyms type %c), not one address", what, notData, sym.Name, sym.Type)
	default:
		return refuse(sec, name, nil, "%s: %s: %s has kallsyms type %c", what, notData, sym.Name, sym.Type)
	}
	// kallsyms calls much of .rodata 'D' (linux_banner): the markers tell.
	if start, err := l.kernelAddr("__start_rodata"); err == nil {
		if end, err := l.kernelAddr("__end_rodata"); err == nil && addr >= start && addr < end {
			return refuse(sec, name, nil, "%s: %s: %s is read-only data (in .rodata, kallsyms type %c)", what, notData, sym.Name, sym.Type)
		}
	}
	for _, r := range [][2]string{{"_sdata", "_edata"}, {"__bss_start", "__bss_stop"}} {
		start, err := l.kernelAddr(r[0])
		if err != nil {
			return err
		}
		end, err := l.kernelAddr(r[1])
		if err != nil {
			return err
		}
		if addr >= start && addr < end {
			if size > end-addr {
				return refuse(sec, name, nil, "%s: %s: %d bytes at %#x run past %s", what, notData, size, addr, r[1])
			}
			return nil
		}
	}
	if mt, ok := l.t.(moduleDataTarget); ok && mt.ModuleData(addr, size) {
		return nil // a module's data (kallsyms typetab d or b)
	}
	return refuse(sec, name, nil, "%s: %s: %s at %#x is outside the kernel's .data and .bss", what, notData, sym.Name, addr)
}

// moduleDataTarget is a Target that also resolves the symbols of the
// guest's loaded modules (the engine's does): ModuleData reports whether
// [addr, addr+size) lies inside one of them.
type moduleDataTarget interface {
	ModuleData(addr, size uint64) bool
}

// linkCallbacks resolves the symbols of func and data callbacks.
func (l *linker) linkCallbacks() error {
	for _, cs := range l.m.Callbacks {
		cb := Callback{Spec: cs, Fn: l.at(cs.fn)}
		if cs.Symbol == "" {
			l.callbacks = append(l.callbacks, cb)
			continue
		}
		// A data callback may watch the patch's own variable (the new
		// instance of a LUCOS_DATA).
		if p, size, ok := l.m.objectNamed(cs.Symbol); ok && cs.Kind == CallbackData && cs.Pos == 0 {
			cb.SymAddr = l.at(p)
			cb.Sym = kimage.Symbol{Name: cs.Symbol, Addr: cb.SymAddr, Type: 'd', Size: size, Pos: 1}
			l.callbacks = append(l.callbacks, cb)
			continue
		}
		sym, addr, err := l.t.Symbol(cs.Symbol, cs.Pos)
		var amb *kimage.AmbiguousError
		switch {
		case errors.As(err, &amb):
			return refuse(callbacksSection, cs.Symbol, err, "%s: %v: use LUCOS_CALLBACK(LUCOS_CB_%s, %q, <pos>, %s, flags)",
				cs.macro(), amb.Error(), strings.ToUpper(cs.Kind.String()), cs.Symbol, cs.Fn)
		case errors.Is(err, kimage.ErrNotFound):
			return refuse(callbacksSection, cs.Symbol, err, "%s: not in the guest kernel: %v", cs.macro(), err)
		case err != nil:
			return fmt.Errorf("resolve %s: %w", cs.Symbol, err)
		}
		cb.Sym, cb.SymAddr, cb.SymSize = sym, addr, sym.Size
		switch cs.Kind {
		case CallbackFunc:
			if !sym.Text() {
				return refuse(callbacksSection, cs.Symbol, nil, "%s: not a function (kallsyms type %c)", cs.macro(), sym.Type)
			}
			site, _, err := entrySite(l.t, sym, addr)
			if err != nil {
				return refuse(callbacksSection, cs.Symbol, err, "%s: %v", cs.macro(), err)
			}
			cb.SymAddr, cb.SymSize = site, sym.Size-(site-addr)
		case CallbackData:
			if err := l.checkKernelData(callbacksSection, cs.Symbol, cs.macro(), sym, addr, 1); err != nil {
				return err
			}
		}
		l.callbacks = append(l.callbacks, cb)
	}
	return nil
}

// linkRuntime gives the runtime's entry points their addresses (0 for a
// patch built without it, which Parse accepted only without data updates
// and callbacks).
func (l *linker) linkRuntime() error {
	addr := func(name string) uint64 {
		if p, ok := l.m.runtime[name]; ok {
			return l.at(p)
		}
		return 0
	}
	l.runtime = Runtime{Call: addr(rtCall), Trampoline: addr(rtTrampoline), Exit: addr(rtExit), Done: addr(rtDone), Kick: addr(rtKick)}
	if l.runtime.Trampoline == 0 {
		return nil
	}
	end, err := l.trampolineStoreEnd()
	if err != nil {
		return fmt.Errorf("section .text: %s: %w", rtTrampoline, err)
	}
	l.runtime.Returned = end
	return nil
}

// trampolineStoreEnd decodes __lucos_trampoline (an endbr64 with IBT, the
// store of the call's result to __lucos_call_done, then a pause loop) and
// returns the address after the store.
func (l *linker) trampolineStoreEnd() (uint64, error) {
	const maxLen = 32
	pc := l.runtime.Trampoline
	for pc < l.runtime.Trampoline+maxLen {
		var code []byte // up to an instruction's 15 bytes, as many as the section has
		for n := uint64(15); n > 0 && code == nil; n-- {
			code, _, _ = l.code(pc, n)
		}
		if code == nil {
			break
		}
		if len(code) >= len(endbr64) && [4]byte(code[:4]) == endbr64 { // x86asm does not know it
			pc += uint64(len(endbr64))
			continue
		}
		in, err := x86asm.Decode(code, 64)
		if err != nil {
			return 0, fmt.Errorf("decode at %#x: %w", pc, err)
		}
		next := pc + uint64(in.Len)
		if in.Op == x86asm.MOV {
			if m, ok := in.Args[0].(x86asm.Mem); ok && m.Base == x86asm.RIP && next+uint64(int64(m.Disp)) == l.runtime.Done {
				return next, nil
			}
		}
		pc = next
	}
	return 0, fmt.Errorf("no store to %s in its first %d bytes", rtDone, maxLen)
}

// at is the runtime address of a place in the patch.
func (l *linker) at(p place) uint64 { return l.addr[p.sec] + p.off }
