package loader

import (
	"bytes"
	"cmp"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/lucos/lucos/kimage"
)

// Target is what the loader needs of the running kernel.
// *introspect.Kernel implements it. A Target whose Symbol also resolves
// the symbols of loaded modules implements ModuleData(addr, size uint64)
// bool, true when [addr, addr+size) lies inside one loaded module: the
// loader then accepts a module's writable data for LUCOS_DATA and data
// callbacks.
type Target interface {
	// Symbol returns a kernel symbol and its runtime address (KASLR
	// applied); pos 0 means the name must be unique. Errors wrap
	// kimage.ErrNotFound or are a *kimage.AmbiguousError.
	Symbol(name string, pos int) (kimage.Symbol, uint64, error)
	// ReadVirt reads kernel memory at a runtime virtual address.
	ReadVirt(va uint64, buf []byte) error
	// Release is the running kernel's release (uname -r).
	Release() string
	// FieldOffset and Sizeof read the kernel's BTF.
	FieldOffset(typ, path string) (uint64, error)
	Sizeof(typ string) (uint64, error)
}

// origPrefix marks LUCOS_ORIG(fn): fn's body after its 5-byte ftrace NOP
// (and its endbr64, if any).
const origPrefix = "__lucos_orig__"

// ftraceNOP is the 5-byte NOP at every traceable function's entry in the
// running kernel (the image has `call __fentry__` there until ftrace
// rewrites it at boot).
var ftraceNOP = [5]byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

// Kernel-image window of x86-64 (__START_KERNEL_map, KERNEL_IMAGE_SIZE
// with KASLR): kernel text and lucos's patch slots live here.
const (
	kernelImageStart = 0xffffffff80000000
	kernelImageEnd   = 0xffffffffc0000000
)

// Link lays the patch out at [base, base+size) of the guest kernel's
// address space, resolves its symbols against t, relocates it and applies
// the kernel's fix-ups (fentry NOPs, alternatives, static branches, return
// thunks, WARN sites) for the running kernel. It only reads the guest.
func (m *Module) Link(t Target, base, size uint64) (*Image, error) {
	if rel := t.Release(); m.Release != rel {
		return nil, fmt.Errorf("link %s: patch built for %s, guest runs %s: %w", m.Name, m.Release, rel, ErrWrongRelease)
	}
	if base%PageSize != 0 || size%PageSize != 0 || size == 0 || base+size < base || base+2*size < base {
		return nil, fmt.Errorf("link %s: slot %#x+%#x is not a page-aligned range", m.Name, base, size)
	}
	l := &linker{m: m, t: t, base: base, size: size,
		addr: make([]uint64, len(m.secs)), buf: make([][]byte, len(m.secs)),
		resolved: make(map[uint32]uint64), dropped: make(map[int][]uint64)}
	steps := []func() error{
		l.layout,
		l.relocate,
		l.applyReturns, // before alternatives, as the kernel orders them
		l.applyAlternatives,
		l.applyMcount,
		l.checkCallSites,
		l.applyJumpTable,
		l.applyBugTable,
		l.checkFuncs,
		l.linkData,
		l.linkCallbacks,
		l.linkRuntime,
		l.linkShell,
	}
	for _, step := range steps {
		if err := step(); err != nil {
			return nil, fmt.Errorf("link %s: %w", m.Name, err)
		}
	}
	return l.image(), nil
}

type linker struct {
	m          *Module
	t          Target
	base, size uint64

	addr     []uint64 // per section: runtime address (Load) or scratch address (Consume)
	buf      [][]byte // per placed section: its bytes being linked
	used     uint64   // bytes of the slot used, page aligned
	resolved map[uint32]uint64
	// dropped holds, per consumed section, the offsets of relocations to
	// code or data lucos does not load (.init.text, .exit.text): the
	// entries holding them describe that code and are skipped.
	dropped map[int][]uint64

	// classEnd is where each permission class ends, page aligned.
	classEnd [RW + 1]uint64
	// extra are the tables lucos makes itself (the shell's kallsyms), placed
	// in the slot after the sections of their class.
	extra []extraBlob
	// kallsyms are the symbols of the shell's kallsyms table, at
	// l.extra[kallsymsBlob] once laid out; kallsymsBlob is -1 without a shell.
	kallsyms     []kallsym
	kallsymsBlob int
	bugs         tableRef // the bug table as registered (entries of dropped code removed)

	funcs               []Func
	data                []Data
	callbacks           []Callback
	runtime             Runtime
	shell               *Shell
	jumps               []JumpSite
	warnings            []Warning
	altApplied, altKept int
}

// extraBlob is a table lucos makes and places in the slot.
type extraBlob struct {
	name string
	addr uint64
	data []byte
	perm Perm
}

// layout places loaded sections by permission class — code, read-only
// data, data — each class starting on a page, and gives consumed sections
// scratch addresses past the slot (they are relocated, never written).
// With a module shell, the shell's kallsyms tables end the read-only class.
func (l *linker) layout() error {
	at := l.base
	l.kallsymsBlob = -1
	for _, perm := range []Perm{RX, RO, RW} {
		at = alignUp(at, PageSize)
		for _, s := range l.m.secs {
			if !s.loaded() || s.perm != perm {
				continue
			}
			at = alignUp(at, s.align)
			if at-l.base > l.size || s.size > l.size-(at-l.base) {
				return fmt.Errorf("%w: section %s (%d bytes) ends beyond the %d KiB slot", ErrNoSpace, s.name, s.size, l.size>>10)
			}
			l.addr[s.idx] = at
			l.buf[s.idx] = make([]byte, s.size)
			copy(l.buf[s.idx], s.data)
			at += s.size
		}
		if perm == RO && l.m.shell != nil {
			l.kallsyms = l.m.kallsymsSymbols()
			size := kallsymsSize(l.kallsyms)
			at = alignUp(at, 8)
			if at-l.base > l.size || size > l.size-(at-l.base) {
				return fmt.Errorf("%w: the module shell's kallsyms tables (%d bytes) end beyond the %d KiB slot", ErrNoSpace, size, l.size>>10)
			}
			l.kallsymsBlob = len(l.extra)
			l.extra = append(l.extra, extraBlob{name: kallsymsBlobName, addr: at, data: make([]byte, size), perm: RO})
			at += size
		}
		l.classEnd[perm] = alignUp(at, PageSize)
	}
	l.used = alignUp(at, PageSize) - l.base
	if l.used > l.size {
		return fmt.Errorf("%w: %d KiB needed, slot has %d KiB", ErrNoSpace, l.used>>10, l.size>>10)
	}
	scratch := l.base + l.size
	for _, s := range l.m.secs {
		if s.treat != Consume {
			continue
		}
		if s.size > l.size {
			return formatErr(s.name, 0, "%d bytes of fix-up entries for a %d KiB slot", s.size, l.size>>10)
		}
		scratch = alignUp(scratch, s.align)
		l.addr[s.idx] = scratch
		l.buf[s.idx] = make([]byte, s.size)
		copy(l.buf[s.idx], s.data)
		scratch += s.size
	}
	return nil
}

func alignUp(v, a uint64) uint64 { return (v + a - 1) &^ (a - 1) }

// symAddr resolves symbol i as referenced from section from.
func (l *linker) symAddr(i uint32, from *section, off uint64) (uint64, error) {
	if v, ok := l.resolved[i]; ok {
		return v, nil
	}
	s := l.m.syms[i]
	var v uint64
	switch {
	case i == 0:
		v = 0
	case s.shndx == elf.SHN_ABS:
		v = s.value
	case s.shndx == elf.SHN_UNDEF:
		var err error
		if v, err = l.resolveKernel(s, from, off); err != nil {
			return 0, err
		}
	default:
		ts := l.m.secs[s.shndx]
		if !ts.placed() {
			what := fmt.Sprintf("refers to %s in section %s, which lucos does not load", s.name, ts.name)
			if r, ok := classify(ts.name); ok && r.treat != Load {
				what += " (" + r.reason + ")"
			}
			if ts.name == ".gnu.linkonce.this_module" {
				what = "uses THIS_MODULE: a lucos patch is not a module (there is no struct module for it)"
			}
			return 0, refuseAt(from.name, off, s.name, nil, "%s", what)
		}
		v = l.addr[ts.idx] + s.value
	}
	l.resolved[i] = v
	return v, nil
}

// resolveKernel resolves an undefined symbol against the running kernel.
func (l *linker) resolveKernel(s symbol, from *section, off uint64) (uint64, error) {
	if fn, ok := strings.CutPrefix(s.name, origPrefix); ok {
		return l.resolveOrig(fn, s.name, from, off)
	}
	pos := l.m.sympos[s.name]
	_, addr, err := l.t.Symbol(s.name, pos)
	if err == nil {
		return addr, nil
	}
	var amb *kimage.AmbiguousError
	switch {
	case errors.As(err, &amb):
		return 0, refuseAt(from.name, off, s.name, err, "%v: add LUCOS_SYMPOS(%s, <pos>) to the patch", amb.Error(), s.name)
	case errors.Is(err, kimage.ErrNotFound) && s.bind == elf.STB_WEAK:
		return 0, nil // an unresolved weak reference is NULL, as for modules
	case errors.Is(err, kimage.ErrNotFound):
		if pos != 0 {
			return 0, refuseAt(from.name, off, s.name, err, "LUCOS_SYMPOS(%s, %d): %v", s.name, pos, err)
		}
		if strings.Contains(s.name, ":") {
			// module:symbol, from lucos patch build --diff: the target says
			// whether the module is loaded and has it.
			return 0, refuseAt(from.name, off, s.name, err, "unknown symbol: %v", err)
		}
		return 0, refuseAt(from.name, off, s.name, err, "unknown symbol: neither the guest kernel nor a loaded module has a symbol of that name")
	}
	return 0, fmt.Errorf("section %s+%#x: resolve %s: %w", from.name, off, s.name, err)
}

// resolveOrig resolves LUCOS_ORIG(fn) to fn+5, after fn's ftrace NOP.
func (l *linker) resolveOrig(fn, ref string, from *section, off uint64) (uint64, error) {
	pos, ok := l.m.sympos[ref]
	if !ok {
		pos, ok = l.m.sympos[fn]
	}
	if !ok {
		for _, f := range l.m.Funcs {
			if f.OldName == fn {
				pos = f.Pos
				break
			}
		}
	}
	sym, addr, err := l.t.Symbol(fn, pos)
	if err != nil {
		var amb *kimage.AmbiguousError
		if errors.As(err, &amb) {
			return 0, refuseAt(from.name, off, ref, err, "LUCOS_ORIG(%s): %v: add LUCOS_SYMPOS(%s, <pos>)", fn, amb.Error(), fn)
		}
		return 0, refuseAt(from.name, off, ref, err, "LUCOS_ORIG(%s): %v", fn, err)
	}
	if !sym.Text() {
		return 0, refuseAt(from.name, off, ref, nil, "LUCOS_ORIG(%s): %s is not a function (%c)", fn, fn, sym.Type)
	}
	site, entry, err := entrySite(l.t, sym, addr)
	if err == nil && sym.Size <= site-addr+5 {
		err = fmt.Errorf("it has no body after its entry (%d bytes)", sym.Size)
	}
	if err != nil {
		return 0, refuseAt(from.name, off, ref, err, "LUCOS_ORIG(%s): %v", fn, err)
	}
	if entry != ftraceNOP {
		return 0, refuseAt(from.name, off, ref, nil, "LUCOS_ORIG(%s): %s", fn, entryProblem(entry, site))
	}
	return site + 5, nil
}

// relocate applies the relocations of every placed section.
func (l *linker) relocate() error {
	for _, s := range l.m.secs {
		if !s.placed() {
			continue
		}
		buf := l.buf[s.idx]
		for _, r := range s.relocs {
			if r.typ == elf.R_X86_64_NONE {
				continue
			}
			if sym := l.m.syms[r.sym]; (s.treat == Consume || s.treat == Register) && sym.shndx != elf.SHN_UNDEF &&
				sym.shndx < elf.SHN_LORESERVE && l.m.secs[sym.shndx].treat == Ignore {
				l.dropped[s.idx] = append(l.dropped[s.idx], r.off)
				continue
			}
			sv, err := l.symAddr(r.sym, s, r.off)
			if err != nil {
				return err
			}
			val := sv + uint64(r.addend)
			p := l.addr[s.idx] + r.off
			loc := buf[r.off : r.off+relocSize[r.typ]]
			if !bytes.Equal(loc, make([]byte, len(loc))) {
				return formatErr(s.name, r.off, "%v target already holds % x (two relocations at one place?)", r.typ, loc)
			}
			name := l.m.syms[r.sym].name
			switch r.typ {
			case elf.R_X86_64_64:
				binary.LittleEndian.PutUint64(loc, val)
			case elf.R_X86_64_32:
				if val != uint64(uint32(val)) {
					return refuseAt(s.name, r.off, name, nil, "R_X86_64_32 value %#x does not fit in 32 bits", val)
				}
				binary.LittleEndian.PutUint32(loc, uint32(val))
			case elf.R_X86_64_32S:
				if int64(val) != int64(int32(val)) {
					return refuseAt(s.name, r.off, name, nil, "R_X86_64_32S value %#x does not fit in 32 signed bits", val)
				}
				binary.LittleEndian.PutUint32(loc, uint32(val))
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32:
				d := val - p
				if int64(d) != int64(int32(d)) {
					return refuseAt(s.name, r.off, name, nil, "%v displacement from %#x to %#x does not fit in 32 bits (is the slot within ±2 GiB of kernel text?)", r.typ, p, val)
				}
				binary.LittleEndian.PutUint32(loc, uint32(d))
			case elf.R_X86_64_PC64:
				binary.LittleEndian.PutUint64(loc, val-p)
			}
		}
	}
	return nil
}

// place finds the placed section holding [addr, addr+n): its index and the
// offset of addr in it.
func (l *linker) place(addr, n uint64) (*section, uint64, bool) {
	for _, s := range l.m.secs {
		if !s.placed() || s.size == 0 || addr < l.addr[s.idx] {
			continue
		}
		off := addr - l.addr[s.idx]
		if off <= s.size && n <= s.size-off {
			return s, off, true
		}
	}
	return nil, 0, false
}

// code returns the bytes of the patch's loaded code at [addr, addr+n).
func (l *linker) code(addr, n uint64) ([]byte, *section, bool) {
	s, off, ok := l.place(addr, n)
	if !ok || !s.loaded() || s.perm != RX {
		return nil, nil, false
	}
	return l.buf[s.idx][off : off+n], s, true
}

// loadedBytes returns bytes of any loaded section at [addr, addr+n).
func (l *linker) loadedBytes(addr, n uint64) ([]byte, bool) {
	s, off, ok := l.place(addr, n)
	if !ok || !s.loaded() {
		return nil, false
	}
	return l.buf[s.idx][off : off+n], true
}

// kernelAddr resolves a kernel symbol the loader itself needs.
func (l *linker) kernelAddr(name string) (uint64, error) {
	_, a, err := l.t.Symbol(name, 0)
	if err != nil {
		return 0, fmt.Errorf("kernel symbol %s: %w", name, err)
	}
	return a, nil
}

func (l *linker) image() *Image {
	m := l.m
	im := &Image{Name: m.Name, BuildID: m.BuildID, Release: m.Release,
		Base: l.base, Size: l.used,
		Funcs: l.funcs, Data: l.data, Callbacks: l.callbacks, Runtime: l.runtime, Shell: l.shell,
		JumpSites: l.jumps, Warnings: l.warnings,
		AltApplied: l.altApplied, AltKept: l.altKept}
	for off := uint64(0); off < l.used; off += PageSize {
		im.Pages = append(im.Pages, Page{Addr: l.base + off, Data: make([]byte, PageSize)})
	}
	put := func(name string, a uint64, data []byte, perm Perm) {
		im.Sections = append(im.Sections, Section{Name: name, Addr: a, Size: uint64(len(data)), Perm: perm})
		for i := 0; i < len(data); {
			p := &im.Pages[(a+uint64(i)-l.base)/PageSize]
			in := (a + uint64(i) - l.base) % PageSize
			i += copy(p.Data[in:], data[i:])
		}
	}
	for _, s := range m.secs {
		if s.loaded() {
			put(s.name, l.addr[s.idx], l.buf[s.idx], s.perm)
		}
	}
	for _, x := range l.extra {
		put(x.name, x.addr, x.data, x.perm)
	}
	slices.SortStableFunc(im.Sections, func(a, b Section) int { return cmp.Compare(a.Addr, b.Addr) })
	// A page's permission is its class's; classes never share a page.
	for i := range im.Pages {
		im.Pages[i].Perm = RO
	}
	for _, s := range im.Sections {
		for a := s.Addr &^ (PageSize - 1); a < s.Addr+s.Size; a += PageSize {
			im.Pages[(a-l.base)/PageSize].Perm = s.Perm
		}
		if s.Perm == RX && s.Size > 0 {
			if n := len(im.Text); n > 0 && im.Text[n-1].End == s.Addr {
				im.Text[n-1].End = s.Addr + s.Size
			} else {
				im.Text = append(im.Text, Range{s.Addr, s.Addr + s.Size})
			}
		}
	}
	for _, sym := range m.syms {
		if (sym.typ != elf.STT_FUNC && sym.typ != elf.STT_OBJECT) || sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
			continue
		}
		if s := m.secs[sym.shndx]; s.loaded() {
			im.Symbols = append(im.Symbols, Symbol{Name: sym.name, Addr: l.addr[s.idx] + sym.value, Size: sym.size, Func: sym.typ == elf.STT_FUNC})
		}
	}
	return im
}
