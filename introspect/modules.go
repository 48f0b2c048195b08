package introspect

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"fmt"
	"slices"
	"strings"

	"github.com/cilium/ebpf/btf"
	"github.com/lucos/lucos/kimage"
)

// ErrModuleLayout means the kernel's struct module is not one lucos knows
// how to read.
var ErrModuleLayout = errors.New("unknown struct module layout")

// Module is a kernel module loaded in the guest.
type Module struct {
	Name string
	// Base and Size are the module's core: before Linux 6.4 core_layout,
	// one block of text, rodata and data; from 6.4 mem[MOD_TEXT], its text.
	Base uint64
	Size uint64
	// Data is where its writable data may be: before 6.4 the same core
	// block, from 6.4 mem[MOD_DATA].
	Data Range
	// Symbols are the module's kallsyms: Addr is the runtime address, Type
	// the letter of the module's typetab, Size the ELF symbol's st_size and
	// Pos the 1-based position among the module's symbols of the same name,
	// in table order. The kernel's typetab letters are lower case ('t',
	// 'd', 'b', 'r') for global symbols too; /proc/kallsyms upper-cases
	// those the module exports.
	Symbols []kimage.Symbol
}

// Symbol returns the module's symbol name at sympos pos (0: must be unique).
func (m *Module) Symbol(name string, pos int) (kimage.Symbol, error) {
	var found []kimage.Symbol
	for _, s := range m.Symbols {
		if s.Name == name && (pos == 0 || s.Pos == pos) {
			found = append(found, s)
		}
	}
	switch {
	case len(found) == 0 && pos != 0:
		return kimage.Symbol{}, fmt.Errorf("module %s: symbol %s with sympos %d: %w", m.Name, name, pos, kimage.ErrNotFound)
	case len(found) == 0:
		return kimage.Symbol{}, fmt.Errorf("module %s: symbol %s: %w", m.Name, name, kimage.ErrNotFound)
	case len(found) > 1:
		return kimage.Symbol{}, fmt.Errorf("module %s: symbol %s has %d definitions; add sympos: %w", m.Name, name, len(found), kimage.ErrAmbiguous)
	}
	return found[0], nil
}

// ksymNameLen is KSYM_NAME_LEN (include/linux/kallsyms.h, 512 since 6.1):
// no symbol name is longer.
const ksymNameLen = 512

// maxModuleSymbols bounds num_symtab so a corrupt module cannot make lucos
// read gigabytes.
const maxModuleSymbols = 1 << 20

// moduleLayout is where struct module and struct mod_kallsyms keep what
// Modules reads, all from BTF; the widths are those of the members' types.
type moduleLayout struct {
	moduleSize                  uint64 // sizeof(struct module)
	list, name, nameLen         uint64
	state, stateWidth           uint64
	kallsyms, base, size        uint64
	sizeWidth                   uint64
	dataBase, dataSize          uint64 // mem[MOD_DATA] (6.4+); else base and size
	kallsymsSize                uint64 // sizeof(struct mod_kallsyms)
	symtab, numSymtab, numWidth uint64
	strtab, typetab             uint64
	unformed                    uint64 // MODULE_STATE_UNFORMED
}

func (k *Kernel) moduleLayout() (*moduleLayout, error) {
	spec := k.Image.BTF
	if spec == nil {
		return nil, fmt.Errorf("modules: %w", kimage.ErrNoBTF)
	}
	l := &moduleLayout{}
	var err error
	field := func(dst *uint64, typ, path string) {
		if err == nil {
			*dst, err = k.FieldOffset(typ, path)
		}
	}
	width := func(dst *uint64, typ, path string, allowed ...uint64) {
		if err != nil {
			return
		}
		if *dst, err = memberSize(spec, typ, path); err == nil && !slices.Contains(allowed, *dst) {
			err = fmt.Errorf("%w: %s.%s is %d bytes wide", ErrModuleLayout, typ, path, *dst)
		}
	}
	field(&l.list, "struct module", "list")
	field(&l.name, "struct module", "name")
	if err == nil {
		// char name[MODULE_NAME_LEN]: 56 on 64-bit kernels.
		if l.nameLen, err = memberSize(spec, "module", "name"); err == nil && (l.nameLen == 0 || l.nameLen > 256) {
			err = fmt.Errorf("%w: module.name is %d bytes", ErrModuleLayout, l.nameLen)
		}
	}
	field(&l.state, "struct module", "state")
	width(&l.stateWidth, "module", "state", 4)
	field(&l.kallsyms, "struct module", "kallsyms")
	width(new(uint64), "module", "kallsyms", 8)
	core, data := "core_layout", "core_layout"
	if _, cerr := k.FieldOffset("struct module", core); cerr != nil {
		// Linux 6.4 split the module's memory by kind into mem[].
		text, terr := enumValue(spec, "mod_mem_type", "MOD_TEXT")
		rw, derr := enumValue(spec, "mod_mem_type", "MOD_DATA")
		if _, merr := k.FieldOffset("struct module", "mem"); merr != nil || terr != nil || derr != nil {
			return nil, fmt.Errorf("modules: %w: struct module has neither core_layout (%w) nor mem[MOD_TEXT] and mem[MOD_DATA]", ErrModuleLayout, cerr)
		}
		core, data = fmt.Sprintf("mem[%d]", text), fmt.Sprintf("mem[%d]", rw)
	}
	field(&l.base, "struct module", core+".base")
	width(new(uint64), "module", core+".base", 8)
	field(&l.size, "struct module", core+".size")
	width(&l.sizeWidth, "module", core+".size", 4, 8)
	field(&l.dataBase, "struct module", data+".base")
	field(&l.dataSize, "struct module", data+".size")
	field(&l.symtab, "struct mod_kallsyms", "symtab")
	field(&l.numSymtab, "struct mod_kallsyms", "num_symtab")
	width(&l.numWidth, "mod_kallsyms", "num_symtab", 4, 8)
	field(&l.strtab, "struct mod_kallsyms", "strtab")
	field(&l.typetab, "struct mod_kallsyms", "typetab")
	if err == nil {
		l.moduleSize, err = k.Sizeof("struct module")
	}
	if err == nil {
		l.kallsymsSize, err = k.Sizeof("struct mod_kallsyms")
	}
	if err == nil {
		l.unformed, err = enumValue(spec, "module_state", "MODULE_STATE_UNFORMED")
	}
	if err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	return l, nil
}

// Modules walks the guest's modules list and returns every module past
// MODULE_STATE_UNFORMED with its kallsyms: for a live module its core
// symbols; for one still initialising (MODULE_STATE_COMING), its init
// symbols too, as /proc/kallsyms shows them then. It reads without
// pausing the VM: call it inside Machine.WithPaused for a consistent view
// while modules load or unload.
func (k *Kernel) Modules() ([]Module, error) {
	l, err := k.moduleLayout()
	if err != nil {
		return nil, err
	}
	head, err := k.Addr("modules", 0)
	if err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	var mods []Module
	err = k.walkList(head, l.list, func(addr uint64) error {
		m, live, err := k.readModule(l, addr)
		if err != nil {
			return err
		}
		if live {
			mods = append(mods, m)
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules: %w", err)
	}
	return mods, nil
}

// readModule reads the struct module at addr; live is false for a module
// the kernel has not finished forming, whose fields are not yet set.
func (k *Kernel) readModule(l *moduleLayout, addr uint64) (m Module, live bool, err error) {
	b := make([]byte, l.moduleSize)
	if err := k.ReadVirt(addr, b); err != nil {
		return m, false, fmt.Errorf("read struct module at %#x: %w", addr, err)
	}
	if uint64(binary.LittleEndian.Uint32(b[l.state:])) == l.unformed {
		return m, false, nil
	}
	name := b[l.name : l.name+l.nameLen]
	if i := bytes.IndexByte(name, 0); i >= 0 {
		name = name[:i]
	}
	m = Module{
		Name: string(name),
		Base: binary.LittleEndian.Uint64(b[l.base:]),
		Size: leUint(b[l.size:], l.sizeWidth),
	}
	m.Data.Start = binary.LittleEndian.Uint64(b[l.dataBase:])
	m.Data.End = m.Data.Start + leUint(b[l.dataSize:], l.sizeWidth)
	ks := binary.LittleEndian.Uint64(b[l.kallsyms:])
	if m.Symbols, err = k.readModuleSymbols(l, ks); err != nil {
		return m, false, fmt.Errorf("module %s (struct module at %#x): %w", m.Name, addr, err)
	}
	return m, true, nil
}

// Elf64_Sym is fixed by the ELF ABI.
const (
	symName  = 0  // st_name, u32
	symValue = 8  // st_value, u64
	symSize  = 16 // st_size, u64
)

// readModuleSymbols reads the mod_kallsyms at addr: the ELF symbols, their
// names in strtab and their kallsyms letters in typetab. The null symbol
// and symbols without a name are left out, as /proc/kallsyms leaves them.
func (k *Kernel) readModuleSymbols(l *moduleLayout, addr uint64) ([]kimage.Symbol, error) {
	b := make([]byte, l.kallsymsSize)
	if err := k.ReadVirt(addr, b); err != nil {
		return nil, fmt.Errorf("read mod_kallsyms at %#x: %w", addr, err)
	}
	symtab := binary.LittleEndian.Uint64(b[l.symtab:])
	num := leUint(b[l.numSymtab:], l.numWidth)
	strtab := binary.LittleEndian.Uint64(b[l.strtab:])
	typetab := binary.LittleEndian.Uint64(b[l.typetab:])
	if num > maxModuleSymbols {
		return nil, fmt.Errorf("mod_kallsyms at %#x: num_symtab %d is implausible", addr, num)
	}
	syms := make([]byte, num*elf.Sym64Size)
	if err := k.ReadVirt(symtab, syms); err != nil {
		return nil, fmt.Errorf("read %d symbols at %#x: %w", num, symtab, err)
	}
	types := make([]byte, num)
	if err := k.ReadVirt(typetab, types); err != nil {
		return nil, fmt.Errorf("read typetab at %#x: %w", typetab, err)
	}
	strs := pageReader{k: k, pages: map[uint64][]byte{}}
	var out []kimage.Symbol
	seen := map[string]int{}
	for i := uint64(0); i < num; i++ {
		e := syms[i*elf.Sym64Size:]
		off := uint64(binary.LittleEndian.Uint32(e[symName:]))
		if off == 0 {
			continue // the null symbol, or one without a name
		}
		name, err := strs.cString(strtab+off, ksymNameLen)
		if err != nil {
			return nil, fmt.Errorf("name of symbol %d: %w", i, err)
		}
		if name == "" {
			continue
		}
		seen[name]++
		out = append(out, kimage.Symbol{
			Name: name,
			Addr: binary.LittleEndian.Uint64(e[symValue:]),
			Type: types[i],
			Size: binary.LittleEndian.Uint64(e[symSize:]),
			Pos:  seen[name],
		})
	}
	return out, nil
}

// pageReader reads NUL-terminated strings page by page, each page once:
// a string table's names share a few pages, and reading past a name's end
// could cross into an unmapped page.
type pageReader struct {
	k     *Kernel
	pages map[uint64][]byte
}

func (r *pageReader) cString(va uint64, max int) (string, error) {
	var s []byte
	for len(s) < max {
		page := va &^ 0xfff
		p, ok := r.pages[page]
		if !ok {
			p = make([]byte, 4096)
			if err := r.k.ReadVirt(page, p); err != nil {
				return "", fmt.Errorf("read string at %#x: %w", va, err)
			}
			r.pages[page] = p
		}
		rest := p[va-page:]
		if i := bytes.IndexByte(rest, 0); i >= 0 {
			return string(append(s, rest[:i]...)), nil
		}
		s = append(s, rest...)
		va = page + 4096
	}
	return "", fmt.Errorf("string at %#x: no NUL in %d bytes", va, max)
}

func leUint(b []byte, width uint64) uint64 {
	if width == 8 {
		return binary.LittleEndian.Uint64(b)
	}
	return uint64(binary.LittleEndian.Uint32(b))
}

// memberSize is the size of the member at a dotted path in the struct
// named structName, looking through anonymous members as FieldOffset does.
func memberSize(spec *btf.Spec, structName, path string) (uint64, error) {
	var typ btf.Type
	var s *btf.Struct
	if err := spec.TypeByName(structName, &s); err != nil {
		return 0, fmt.Errorf("struct %s: %w", structName, err)
	}
	typ = s
	for _, name := range strings.Split(path, ".") {
		// "mem[0]": an element of an array member (its index does not
		// change its size).
		name, indexed := strings.CutSuffix(name, "]")
		if indexed {
			name, _, _ = strings.Cut(name, "[")
		}
		m, ok := findMemberType(btf.UnderlyingType(typ), name)
		if !ok {
			return 0, fmt.Errorf("struct %s has no member %s: %w", structName, path, kimage.ErrNotFound)
		}
		typ = m
		if indexed {
			a, ok := btf.UnderlyingType(typ).(*btf.Array)
			if !ok {
				return 0, fmt.Errorf("struct %s: %s in %s is no array", structName, name, path)
			}
			typ = a.Type
		}
	}
	n, err := btf.Sizeof(typ)
	if err != nil {
		return 0, fmt.Errorf("size of %s.%s: %w", structName, path, err)
	}
	return uint64(n), nil
}

func findMemberType(typ btf.Type, name string) (btf.Type, bool) {
	var members []btf.Member
	switch t := typ.(type) {
	case *btf.Struct:
		members = t.Members
	case *btf.Union:
		members = t.Members
	default:
		return nil, false
	}
	for _, m := range members {
		if m.Name == name {
			return m.Type, true
		}
		if m.Name == "" {
			if t, ok := findMemberType(btf.UnderlyingType(m.Type), name); ok {
				return t, true
			}
		}
	}
	return nil, false
}

// enumValue is the value of enumerator name of the enum typ.
func enumValue(spec *btf.Spec, typ, name string) (uint64, error) {
	var e *btf.Enum
	if err := spec.TypeByName(typ, &e); err != nil {
		return 0, fmt.Errorf("enum %s: %w", typ, err)
	}
	for _, v := range e.Values {
		if v.Name == name {
			return v.Value, nil
		}
	}
	return 0, fmt.Errorf("enum %s has no %s: %w", typ, name, kimage.ErrNotFound)
}
