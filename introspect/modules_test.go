package introspect

import (
	"debug/elf"
	"encoding/binary"
	"errors"
	"testing"

	"github.com/cilium/ebpf/btf"
	"github.com/lucos/lucos/kimage"
)

// Unit tests of Modules on guest memory laid out by hand, with BTF that
// has the shape of Linux 6.1's struct module (reduced to what Modules
// reads; the offsets differ from the real kernel's on purpose, so nothing
// can depend on a hard-coded one).

var (
	btfUint  = &btf.Int{Name: "unsigned int", Size: 4}
	btfChar  = &btf.Int{Name: "char", Size: 1, Encoding: btf.Signed}
	btfULong = &btf.Int{Name: "long unsigned int", Size: 8}
)

func btfListHead() *btf.Struct {
	lh := &btf.Struct{Name: "list_head", Size: 16}
	lh.Members = []btf.Member{
		{Name: "next", Type: &btf.Pointer{Target: lh}, Offset: 0},
		{Name: "prev", Type: &btf.Pointer{Target: lh}, Offset: 64},
	}
	return lh
}

func btfModKallsyms() *btf.Struct {
	return &btf.Struct{Name: "mod_kallsyms", Size: 40, Members: []btf.Member{
		{Name: "pad", Type: btfULong, Offset: 0},
		{Name: "symtab", Type: &btf.Pointer{Target: &btf.Void{}}, Offset: 8 * 8},
		{Name: "num_symtab", Type: btfUint, Offset: 16 * 8},
		{Name: "strtab", Type: &btf.Pointer{Target: btfChar}, Offset: 24 * 8},
		{Name: "typetab", Type: &btf.Pointer{Target: btfChar}, Offset: 32 * 8},
	}}
}

func btfModuleState() *btf.Enum {
	return &btf.Enum{Name: "module_state", Size: 4, Values: []btf.EnumValue{
		{Name: "MODULE_STATE_LIVE", Value: 0}, {Name: "MODULE_STATE_COMING", Value: 1},
		{Name: "MODULE_STATE_GOING", Value: 2}, {Name: "MODULE_STATE_UNFORMED", Value: 3},
	}}
}

// Offsets of the hand-made struct module (6.1 shape).
const (
	tmState    = 4
	tmList     = 8
	tmName     = 32
	tmNameLen  = 40
	tmLayout   = 80 // core_layout: a pointer in an anonymous union, then size
	tmKallsyms = 104
	tmSize     = 160
)

func btf61Module() *btf.Struct {
	layout := &btf.Struct{Name: "module_layout", Size: 16, Members: []btf.Member{
		{Type: &btf.Union{Size: 8, Members: []btf.Member{
			{Name: "base", Type: &btf.Pointer{Target: &btf.Void{}}},
		}}, Offset: 0},
		{Name: "size", Type: btfUint, Offset: 64},
	}}
	return &btf.Struct{Name: "module", Size: tmSize, Members: []btf.Member{
		{Name: "state", Type: btfModuleState(), Offset: tmState * 8},
		{Name: "list", Type: btfListHead(), Offset: tmList * 8},
		{Name: "name", Type: &btf.Array{Index: btfUint, Type: btfChar, Nelems: tmNameLen}, Offset: tmName * 8},
		{Name: "core_layout", Type: layout, Offset: tmLayout * 8},
		{Name: "kallsyms", Type: &btf.Pointer{Target: btfModKallsyms()}, Offset: tmKallsyms * 8},
	}}
}

func specOf(t *testing.T, types ...btf.Type) *btf.Spec {
	t.Helper()
	b, err := btf.NewBuilder(types, nil)
	if err != nil {
		t.Fatal(err)
	}
	spec, err := b.Spec()
	if err != nil {
		t.Fatal(err)
	}
	return spec
}

// directMap is where the fake guest's RAM (physical 0..1 GiB) is mapped.
const directMap = 0xffff888000000000

// moduleRAM is guest memory with the direct map of tables() and helpers
// to place bytes at direct-map addresses.
type moduleRAM struct {
	ram fakeRAM
	pgd uint64
}

func (m *moduleRAM) write(va uint64, b []byte) {
	for i, c := range b {
		pa := va + uint64(i) - directMap
		if m.ram[pa&^0xfff] == nil {
			m.ram[pa&^0xfff] = make([]byte, 4096)
		}
		m.ram[pa&^0xfff][pa&0xfff] = c
	}
}

func (m *moduleRAM) u64(va, v uint64) { m.write(va, binary.LittleEndian.AppendUint64(nil, v)) }
func (m *moduleRAM) u32(va uint64, v uint32) {
	m.write(va, binary.LittleEndian.AppendUint32(nil, v))
}

type fakeSym struct {
	name        string // "" for st_name 0
	value, size uint64
	typ         byte
}

// addModule writes a struct module at addr with its kallsyms at ks: the
// symbol table, then the string table starting at strtab (so a name can
// be made to cross a page), then the type table.
func (m *moduleRAM) addModule(addr uint64, state uint32, name string, base, size uint64, ks, strtab uint64, syms []fakeSym) {
	m.u32(addr+tmState, state)
	m.write(addr+tmName, append([]byte(name), 0))
	m.u64(addr+tmLayout, base)
	m.u32(addr+tmLayout+8, uint32(size))
	m.u64(addr+tmKallsyms, ks)
	symtab, typetab := ks+0x100, strtab+0x2000
	m.u64(ks+8, symtab)
	m.u32(ks+16, uint32(len(syms)))
	m.u64(ks+24, strtab)
	m.u64(ks+32, typetab)
	off := uint32(1) // strtab[0] is the empty string
	m.write(strtab, []byte{0})
	for i, s := range syms {
		e := make([]byte, elf.Sym64Size)
		if s.name != "" {
			binary.LittleEndian.PutUint32(e[0:], off)
			m.write(strtab+uint64(off), append([]byte(s.name), 0))
			off += uint32(len(s.name) + 1)
		}
		binary.LittleEndian.PutUint64(e[8:], s.value)
		binary.LittleEndian.PutUint64(e[16:], s.size)
		m.write(symtab+uint64(i)*elf.Sym64Size, e)
		m.write(typetab+uint64(i), []byte{s.typ})
	}
}

// link chains list_heads (each given as the address of the list_head)
// into a circular list starting at head.
func (m *moduleRAM) link(head uint64, entries ...uint64) {
	all := append([]uint64{head}, entries...)
	for i, e := range all {
		m.u64(e, all[(i+1)%len(all)])
		m.u64(e+8, all[(i+len(all)-1)%len(all)])
	}
}

func moduleKernel(t *testing.T, spec *btf.Spec, mem *moduleRAM, modulesHead uint64) *Kernel {
	img := &kimage.Image{
		BTF:     spec,
		Symbols: kimage.NewSymbols([]kimage.RawSymbol{{Name: "modules", Addr: modulesHead, Type: 'D'}}, nil),
	}
	return &Kernel{Image: img, Walker: &Walker{Mem: mem.ram, Root: mem.pgd}}
}

func TestModules(t *testing.T) {
	ram, pgd := tables()
	mem := &moduleRAM{ram: ram, pgd: pgd}
	spec := specOf(t, btf61Module())
	const (
		head   = directMap + 0x10000
		alpha  = directMap + 0x20000
		ghost  = directMap + 0x30000
		beta   = directMap + 0x40000
		base   = 0xffffffffc0000000
		strtab = directMap + 0x51000 - 3 // "first" crosses a page boundary
	)
	mem.link(head, alpha+tmList, ghost+tmList, beta+tmList)
	mem.addModule(alpha, 0, "alpha", base, 0x3000, directMap+0x50000, strtab, []fakeSym{
		{"", 0, 0, 0},                     // the null symbol
		{"first", base + 0x10, 0x20, 't'}, // name crosses a page
		{"dup", base + 0x30, 0x8, 't'},
		{"", base + 0x40, 0, 't'}, // no name: left out
		{"data", base + 0x2000, 0x10, 'D'},
		{"dup", base + 0x38, 0x8, 't'},
	})
	mem.addModule(ghost, 3, "ghost", 0, 0, directMap+0x60000, directMap+0x61000, nil) // unformed
	mem.addModule(beta, 1, "beta", base+0x10000, 0x1000, directMap+0x70000, directMap+0x71000, []fakeSym{
		{"", 0, 0, 0},
		{"init_fn", base + 0x10010, 0x10, 't'},
	})
	k := moduleKernel(t, spec, mem, head)

	mods, err := k.Modules()
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 2 || mods[0].Name != "alpha" || mods[1].Name != "beta" {
		t.Fatalf("modules %+v, want alpha and beta (ghost is unformed)", mods)
	}
	a := mods[0]
	if a.Base != base || a.Size != 0x3000 {
		t.Errorf("alpha at %#x size %#x", a.Base, a.Size)
	}
	want := []kimage.Symbol{
		{Name: "first", Addr: base + 0x10, Type: 't', Size: 0x20, Pos: 1},
		{Name: "dup", Addr: base + 0x30, Type: 't', Size: 0x8, Pos: 1},
		{Name: "data", Addr: base + 0x2000, Type: 'D', Size: 0x10, Pos: 1},
		{Name: "dup", Addr: base + 0x38, Type: 't', Size: 0x8, Pos: 2},
	}
	if len(a.Symbols) != len(want) {
		t.Fatalf("alpha symbols %+v, want %+v", a.Symbols, want)
	}
	for i := range want {
		if a.Symbols[i] != want[i] {
			t.Errorf("alpha symbol %d: %+v, want %+v", i, a.Symbols[i], want[i])
		}
	}
	if s, err := a.Symbol("dup", 2); err != nil || s.Addr != base+0x38 {
		t.Errorf("Symbol(dup, 2) = %+v, %v", s, err)
	}
	if _, err := a.Symbol("dup", 0); !errors.Is(err, kimage.ErrAmbiguous) {
		t.Errorf("Symbol(dup, 0): %v, want ErrAmbiguous", err)
	}
	if _, err := a.Symbol("nope", 0); !errors.Is(err, kimage.ErrNotFound) {
		t.Errorf("Symbol(nope, 0): %v, want ErrNotFound", err)
	}
	if b := mods[1]; len(b.Symbols) != 1 || b.Symbols[0].Name != "init_fn" {
		t.Errorf("beta symbols %+v", b.Symbols)
	}
}

// A module whose kallsyms point at unmapped memory is an error naming the
// module, not a panic or a silent gap.
func TestModulesUnmappedKallsyms(t *testing.T) {
	ram, pgd := tables()
	mem := &moduleRAM{ram: ram, pgd: pgd}
	const head, mod = directMap + 0x10000, directMap + 0x20000
	mem.link(head, mod+tmList)
	mem.addModule(mod, 0, "broken", 0, 0, directMap+0x50000, directMap+0x51000, []fakeSym{{"x", 1, 1, 't'}})
	mem.u64(mod+tmKallsyms, 0xffffc90000400000) // not mapped
	_, err := moduleKernel(t, specOf(t, btf61Module()), mem, head).Modules()
	var ue *UnmappedError
	if !errors.As(err, &ue) {
		t.Fatalf("err %v, want an UnmappedError", err)
	}
	t.Log(err)
}

// btf64Module is struct module as Linux 6.4 made it: mem[MOD_MEM_NUM_TYPES]
// in place of core_layout, mem[MOD_TEXT] (here 1, to prove the index is
// read from the enum) at tmLayout. withMem false leaves mem out.
func btf64Module(withMem bool) (*btf.Struct, *btf.Enum) {
	memType := &btf.Struct{Name: "module_memory", Size: 16, Members: []btf.Member{
		{Name: "base", Type: &btf.Pointer{Target: &btf.Void{}}},
		{Name: "size", Type: btfUint, Offset: 64},
	}}
	kinds := &btf.Enum{Name: "mod_mem_type", Size: 4, Values: []btf.EnumValue{
		{Name: "MOD_DATA", Value: 0}, {Name: "MOD_TEXT", Value: 1}, {Name: "MOD_MEM_NUM_TYPES", Value: 2},
	}}
	members := []btf.Member{
		{Name: "state", Type: btfModuleState(), Offset: tmState * 8},
		{Name: "list", Type: btfListHead(), Offset: tmList * 8},
		{Name: "name", Type: &btf.Array{Index: btfUint, Type: btfChar, Nelems: tmNameLen}, Offset: tmName * 8},
		{Name: "kallsyms", Type: &btf.Pointer{Target: btfModKallsyms()}, Offset: tmKallsyms * 8},
	}
	if withMem {
		members = append(members, btf.Member{Name: "mem", Type: &btf.Array{Index: btfUint, Type: memType, Nelems: 2}, Offset: (tmLayout - 16) * 8})
	}
	return &btf.Struct{Name: "module", Size: tmSize, Members: members}, kinds
}

// Linux 6.4 replaced core_layout with mem[]: a module's Base and Size are
// then those of its text, mem[MOD_TEXT].
func TestModules64Layout(t *testing.T) {
	ram, pgd := tables()
	mem := &moduleRAM{ram: ram, pgd: pgd}
	const head, mod, base = directMap + 0x10000, directMap + 0x20000, 0xffffffffc0002000
	mem.link(head, mod+tmList)
	mem.addModule(mod, 0, "new", base, 0x1800, directMap+0x50000, directMap+0x51000, []fakeSym{{"", 0, 0, 0}, {"fn", base + 0x10, 0x20, 't'}})
	mem.u64(mod+tmLayout-16, base+0x4000) // mem[MOD_DATA]
	mem.u32(mod+tmLayout-8, 0x200)
	spec := specOf(t, func() []btf.Type { m, e := btf64Module(true); return []btf.Type{m, e} }()...)
	mods, err := moduleKernel(t, spec, mem, head).Modules()
	if err != nil {
		t.Fatal(err)
	}
	if len(mods) != 1 || mods[0].Base != base || mods[0].Size != 0x1800 || len(mods[0].Symbols) != 1 {
		t.Fatalf("modules %+v, want new at %#x size 0x1800 with fn", mods, uint64(base))
	}
	if d := mods[0].Data; d.Start != base+0x4000 || d.End != base+0x4200 {
		t.Errorf("data %#x-%#x, want mem[MOD_DATA] %#x+0x200", d.Start, d.End, uint64(base+0x4000))
	}
}

// A struct module with neither core_layout nor mem[] is refused by name.
func TestModulesRefusesUnknownLayout(t *testing.T) {
	ram, pgd := tables()
	mem := &moduleRAM{ram: ram, pgd: pgd}
	m, e := btf64Module(false)
	_, err := moduleKernel(t, specOf(t, m, e), mem, directMap).Modules()
	if !errors.Is(err, ErrModuleLayout) {
		t.Fatalf("err %v, want ErrModuleLayout", err)
	}
	t.Log(err)
}

// Whatever the guest's module memory holds, Modules returns modules or an
// error, never panics.
func FuzzModules(f *testing.F) {
	f.Add([]byte{}, []byte{})
	f.Add(make([]byte, tmSize), make([]byte, 40))
	f.Fuzz(func(t *testing.T, module, kallsyms []byte) {
		ram, pgd := tables()
		mem := &moduleRAM{ram: ram, pgd: pgd}
		const head, mod, ks = directMap + 0x10000, directMap + 0x20000, directMap + 0x50000
		mem.link(head, mod+tmList)
		mem.addModule(mod, 0, "fuzz", 0, 0, ks, directMap+0x51000, []fakeSym{{"", 0, 0, 0}, {"x", 1, 1, 't'}})
		// Keep the list intact so the walk ends; the rest is the fuzzer's.
		mem.write(mod, module[:min(len(module), tmList)])
		if len(module) > tmList+16 {
			mem.write(mod+tmList+16, module[tmList+16:min(len(module), tmSize)])
		}
		mem.write(ks, kallsyms[:min(len(kallsyms), 0x1000)])
		moduleKernel(t, specOf(t, btf61Module()), mem, head).Modules()
	})
}
