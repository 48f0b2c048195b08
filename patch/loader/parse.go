package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"fmt"
	"strings"
)

// Descriptor ABI (sdk/include/lucos/patch.h).
const (
	lucosMagic      = 0x4f43554c // "LUCO"
	lucosABIVersion = 1

	metaSize   = 24 // struct lucos_meta
	funcSize   = 32 // struct lucos_func
	symposSize = 16 // struct lucos_sympos

	maxSympos = 1 << 20
	// maxSection bounds the sections Parse reads: the whole patch region
	// is 16 MiB, and hostile sizes must not allocate or overflow.
	maxSection = 16 << 20
)

// Module is a parsed patch module: everything lucos can check without a
// kernel. It is immutable; Link it as often as needed.
type Module struct {
	Name        string // LUCOS_PATCH's name
	Description string
	Release     string // kernel release it was built for (.modinfo vermagic)
	Vermagic    string
	ModName     string // the module's name (.modinfo name=, kbuild's lucos_<dir>), "" if none
	BuildID     string // hex of the GNU build-id note, "" if none
	Funcs       []FuncSpec
	SymPos      []SymPos       // LUCOS_SYMPOS entries
	Data        []DataSpec     // LUCOS_DATA entries, in declaration order
	Callbacks   []CallbackSpec // callbacks, in declaration order (files in link order)
	Sections    []SectionInfo  // every SHF_ALLOC section and what the loader does with it

	secs    []*section // by ELF section index
	syms    []symbol   // by ELF symbol index; 0 is the null symbol
	sympos  map[string]int
	metaSec int              // index of .lucos.meta
	runtime map[string]place // the runtime's entry points (__lucos_call...) the patch defines
	shell   *shellSyms       // the runtime's module shell, nil without it
}

// FuncSpec is one LUCOS_REPLACE: redirect OldName (sympos Pos, 0 = unique)
// to NewSymbol.
type FuncSpec struct {
	OldName   string
	Pos       int
	NewSymbol string

	newSec  int    // section of the new function
	newOff  uint64 // its offset there
	newSize uint64 // its size: its symbol's, else the rest of its section
}

// SymPos is one LUCOS_SYMPOS: undefined references to Name mean its Pos-th
// definition in the kernel.
type SymPos struct {
	Name string
	Pos  int
}

// SectionInfo is one SHF_ALLOC section of the patch and its treatment.
type SectionInfo struct {
	Name      string
	Size      uint64
	Treatment Treatment
	Perm      Perm // for Load
	Reason    string
}

type section struct {
	idx    int
	name   string
	typ    elf.SectionType
	flags  elf.SectionFlag
	size   uint64
	align  uint64
	data   []byte // nil for SHT_NOBITS
	treat  Treatment
	perm   Perm
	relocs []reloc        // RELA entries targeting this section (only for Load and Consume)
	byOff  map[uint64]int // index in relocs of the first relocation at each offset (descriptor reads)
}

// relocAt returns the first relocation at off, indexing them on first use:
// descriptors look up one per pointer.
func (s *section) relocAt(off uint64) (reloc, bool) {
	if s.byOff == nil {
		s.byOff = make(map[uint64]int, len(s.relocs))
		for i, r := range s.relocs {
			if _, dup := s.byOff[r.off]; !dup {
				s.byOff[r.off] = i
			}
		}
	}
	i, ok := s.byOff[off]
	if !ok {
		return reloc{}, false
	}
	return s.relocs[i], true
}

func (s *section) alloc() bool { return s.flags&elf.SHF_ALLOC != 0 }

// placed reports whether Link gives the section an address.
func (s *section) placed() bool { return s.loaded() || s.treat == Consume }

type reloc struct {
	off    uint64
	typ    elf.R_X86_64
	sym    uint32
	addend int64
}

type symbol struct {
	name  string
	bind  elf.SymBind
	typ   elf.SymType
	shndx elf.SectionIndex
	value uint64
	size  uint64
}

// relocSize is the width of the field each supported relocation writes.
var relocSize = map[elf.R_X86_64]uint64{
	elf.R_X86_64_NONE:  0,
	elf.R_X86_64_64:    8,
	elf.R_X86_64_32:    4,
	elf.R_X86_64_32S:   4,
	elf.R_X86_64_PC32:  4,
	elf.R_X86_64_PLT32: 4,
	elf.R_X86_64_PC64:  8,
}

// Parse reads a patch module built by `lucos patch build` (kbuild with
// lucos/patch.h) and checks everything that needs no kernel: the ELF
// header, the lucos descriptors, the release it was built for, the
// sections and relocation types the loader cannot honour, and — for data
// updates and callbacks — the runtime they need and, where the module has
// DWARF, their functions' prototypes.
func Parse(ko []byte) (*Module, error) {
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		return nil, &FormatError{Msg: "not an ELF file: " + err.Error()}
	}
	switch {
	case f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB:
		return nil, formatErr("", 0, "not a little-endian 64-bit ELF file (%v, %v)", f.Class, f.Data)
	case f.Machine != elf.EM_X86_64:
		return nil, formatErr("", 0, "built for %v, not x86-64", f.Machine)
	case f.Type != elf.ET_REL:
		return nil, formatErr("", 0, "%v, not a relocatable object (a kernel module .ko)", f.Type)
	}
	m := &Module{sympos: map[string]int{}, metaSec: -1, runtime: map[string]place{}}
	if err := m.readSections(f); err != nil {
		return nil, err
	}
	if err := m.readSymbols(f); err != nil {
		return nil, err
	}
	if err := m.readRelocs(f); err != nil {
		return nil, err
	}
	if err := m.checkSections(); err != nil {
		return nil, err
	}
	if err := m.readModinfo(); err != nil {
		return nil, err
	}
	m.readBuildID()
	if err := m.readDescriptors(); err != nil {
		return nil, err
	}
	if err := m.readData(); err != nil {
		return nil, err
	}
	if err := m.readCallbacks(); err != nil {
		return nil, err
	}
	if err := m.readRuntime(); err != nil {
		return nil, err
	}
	if err := m.readShell(); err != nil {
		return nil, err
	}
	if err := m.checkSignatures(f); err != nil {
		return nil, err
	}
	return m, nil
}

func (m *Module) readSections(f *elf.File) error {
	m.secs = make([]*section, len(f.Sections))
	for i, es := range f.Sections {
		s := &section{idx: i, name: es.Name, typ: es.Type, flags: es.Flags, size: es.Size, align: es.Addralign}
		m.secs[i] = s
		if !s.alloc() {
			continue // relocation sections are read when their target matters
		}
		if s.flags&elf.SHF_COMPRESSED != 0 {
			return formatErr(s.name, 0, "compressed SHF_ALLOC section")
		}
		if s.size > maxSection {
			return formatErr(s.name, 0, "size %#x is beyond any patch", s.size)
		}
		if s.align == 0 {
			s.align = 1
		}
		if s.align&(s.align-1) != 0 {
			return formatErr(s.name, 0, "alignment %d is not a power of two", s.align)
		}
		if s.typ == elf.SHT_NOBITS {
			continue
		}
		data, err := es.Data()
		if err != nil {
			return formatErr(s.name, 0, "read: %v", err)
		}
		if uint64(len(data)) != s.size {
			return formatErr(s.name, 0, "holds %d bytes, header says %d", len(data), s.size)
		}
		s.data = data
	}
	return nil
}

func (m *Module) readSymbols(f *elf.File) error {
	syms, err := f.Symbols()
	if err != nil {
		return formatErr(".symtab", 0, "%v", err)
	}
	m.syms = make([]symbol, len(syms)+1)
	for i, es := range syms {
		s := symbol{name: es.Name, bind: elf.ST_BIND(es.Info), typ: elf.ST_TYPE(es.Info),
			shndx: es.Section, value: es.Value, size: es.Size}
		switch {
		case s.shndx == elf.SHN_COMMON:
			return formatErr(".symtab", uint64(i+1)*24, "symbol %s is COMMON (build with -fno-common, as kbuild does)", s.name)
		case s.shndx == elf.SHN_UNDEF || s.shndx == elf.SHN_ABS:
		case s.shndx >= elf.SHN_LORESERVE:
			return formatErr(".symtab", uint64(i+1)*24, "symbol %s has unsupported section index %#x", s.name, uint16(s.shndx))
		case int(s.shndx) >= len(m.secs):
			return formatErr(".symtab", uint64(i+1)*24, "symbol %s in section %d of %d", s.name, s.shndx, len(m.secs))
		}
		if s.typ == elf.STT_SECTION && s.name == "" && s.shndx < elf.SHN_LORESERVE && int(s.shndx) < len(m.secs) {
			s.name = m.secs[s.shndx].name
		}
		m.syms[i+1] = s
	}
	return nil
}

// readRelocs attaches the RELA entries of every SHF_ALLOC section and
// classifies those sections (relocation types only matter where Link
// applies them).
func (m *Module) readRelocs(f *elf.File) error {
	for _, s := range m.secs {
		if !s.alloc() {
			continue
		}
		rule, ok := classify(s.name)
		switch {
		case !ok:
			s.treat = Refuse
		default:
			s.treat = rule.treat
		}
		if s.loaded() {
			s.perm = permOf(s.flags)
		}
	}
	for _, rs := range m.secs {
		if rs.typ != elf.SHT_RELA && rs.typ != elf.SHT_REL {
			continue
		}
		es := f.Sections[rs.idx]
		if es.Info == 0 || int(es.Info) >= len(m.secs) {
			return formatErr(rs.name, 0, "relocates section %d of %d", es.Info, len(m.secs))
		}
		t := m.secs[es.Info]
		// Relocations matter where Link applies them; those of a refused
		// section only name the code it belongs to in the refusal.
		if !t.alloc() || !(t.placed() || t.treat == Refuse) {
			continue // debug info, or a section Link ignores
		}
		if rs.typ == elf.SHT_REL {
			return refuse(t.name, "", nil, "SHT_REL relocations (without addend): x86-64 kernel modules use RELA")
		}
		if es.Link >= uint32(len(m.secs)) || m.secs[es.Link].typ != elf.SHT_SYMTAB {
			return formatErr(rs.name, 0, "its symbol table is section %d, not .symtab", es.Link)
		}
		if rs.size > maxSection || rs.flags&elf.SHF_COMPRESSED != 0 {
			return formatErr(rs.name, 0, "size %#x is beyond any patch", rs.size)
		}
		data, err := es.Data()
		if err != nil {
			return formatErr(rs.name, 0, "read: %v", err)
		}
		rs.data = data
		if len(rs.data)%24 != 0 {
			return formatErr(rs.name, 0, "size %d is not a multiple of 24", len(rs.data))
		}
		for off := 0; off+24 <= len(rs.data); off += 24 {
			r := reloc{
				off:    binary.LittleEndian.Uint64(rs.data[off:]),
				sym:    uint32(binary.LittleEndian.Uint64(rs.data[off+8:]) >> 32),
				typ:    elf.R_X86_64(binary.LittleEndian.Uint32(rs.data[off+8:])),
				addend: int64(binary.LittleEndian.Uint64(rs.data[off+16:])),
			}
			if int(r.sym) >= len(m.syms) {
				return formatErr(rs.name, uint64(off), "symbol index %d of %d", r.sym, len(m.syms))
			}
			if t.treat == Refuse {
				t.relocs = append(t.relocs, r)
				continue
			}
			size, ok := relocSize[r.typ]
			if !ok {
				return refuseAt(t.name, r.off, m.syms[r.sym].name, nil,
					"relocation type %v is not supported (lucos applies R_X86_64_64, 32, 32S, PC32, PLT32, PC64)", r.typ)
			}
			if r.off > t.size || size > t.size-r.off {
				return formatErr(rs.name, uint64(off), "%v at %#x is outside %s (%#x bytes)", r.typ, r.off, t.name, t.size)
			}
			if t.typ == elf.SHT_NOBITS && size > 0 {
				return formatErr(rs.name, uint64(off), "relocation in %s, which has no contents", t.name)
			}
			t.relocs = append(t.relocs, r)
		}
	}
	return nil
}

// checkSections refuses what cannot be honoured and records the table.
func (m *Module) checkSections() error {
	for _, s := range m.secs {
		if !s.alloc() {
			continue
		}
		rule, known := classify(s.name)
		info := SectionInfo{Name: s.name, Size: s.size, Treatment: s.treat, Perm: s.perm, Reason: rule.reason}
		if !known {
			info.Reason = "unknown section"
		}
		m.Sections = append(m.Sections, info)
		if s.treat != Refuse || s.size == 0 {
			continue
		}
		if !known {
			return refuse(s.name, "", nil, "unknown SHF_ALLOC section (%d bytes): lucos does not know what the kernel would do with it", s.size)
		}
		return refuse(s.name, m.firstSymbolIn(s.idx), nil, "%s", rule.reason)
	}
	for _, s := range m.secs {
		if s.loaded() && s.flags&elf.SHF_WRITE != 0 && s.flags&elf.SHF_EXECINSTR != 0 {
			return refuse(s.name, "", nil, "section is both writable and executable")
		}
		if s.placed() && s.align > PageSize {
			return refuse(s.name, "", nil, "alignment %d is larger than a page", s.align)
		}
	}
	return nil
}

// firstSymbolIn names a function or object defined in section idx, or
// the function a relocation into it comes from, for messages.
func (m *Module) firstSymbolIn(idx int) string {
	for _, s := range m.syms {
		if int(s.shndx) == idx && (s.typ == elf.STT_FUNC || s.typ == elf.STT_OBJECT) && s.shndx < elf.SHN_LORESERVE {
			return s.name
		}
	}
	// __ex_table entries point into code: name the function holding the first.
	for _, s := range m.secs {
		if s.idx != idx {
			continue
		}
		for _, r := range s.relocs {
			if fn := m.funcAt(m.syms[r.sym], r.addend); fn != "" {
				return fn
			}
		}
	}
	return ""
}

// funcAt names the function holding sym+addend, "" if none.
func (m *Module) funcAt(sym symbol, addend int64) string {
	if sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
		return ""
	}
	at := sym.value + uint64(addend)
	for _, s := range m.syms {
		if s.typ == elf.STT_FUNC && s.shndx == sym.shndx && at >= s.value && at < s.value+s.size {
			return s.name
		}
	}
	return ""
}

func (m *Module) section(name string) *section {
	for _, s := range m.secs {
		if s.name == name {
			return s
		}
	}
	return nil
}

func (m *Module) readModinfo() error {
	s := m.section(".modinfo")
	if s == nil {
		return formatErr("", 0, "no .modinfo section: not a kernel module")
	}
	for _, kv := range bytes.Split(s.data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		switch {
		case ok && k == "vermagic":
			m.Vermagic = strings.TrimSpace(v)
		case ok && k == "name":
			m.ModName = v
		}
	}
	if m.Vermagic == "" {
		return formatErr(".modinfo", 0, "no vermagic: cannot tell which kernel the patch was built for")
	}
	m.Release = strings.Fields(m.Vermagic)[0]
	return nil
}

// readBuildID reads the GNU build-id note the linker adds (ld --build-id).
func (m *Module) readBuildID() {
	s := m.section(".note.gnu.build-id")
	if s == nil || len(s.data) < 12 {
		return
	}
	d := s.data
	namesz := uint64(binary.LittleEndian.Uint32(d[0:]))
	descsz := uint64(binary.LittleEndian.Uint32(d[4:]))
	typ := binary.LittleEndian.Uint32(d[8:])
	nameEnd := 12 + (namesz+3)&^3
	if typ != 3 || namesz != 4 || nameEnd > uint64(len(d)) || descsz > uint64(len(d))-nameEnd || string(d[12:15]) != "GNU" {
		return
	}
	m.BuildID = hex.EncodeToString(d[nameEnd : nameEnd+descsz])
}

func (m *Module) readDescriptors() error {
	var meta *section
	for _, s := range m.secs {
		if s.name == ".lucos.meta" {
			if meta != nil {
				return formatErr(".lucos.meta", 0, "two .lucos.meta sections")
			}
			meta = s
		}
	}
	if meta == nil {
		return formatErr("", 0, "no .lucos.meta section: not a lucos patch (use LUCOS_PATCH from lucos/patch.h)")
	}
	m.metaSec = meta.idx
	if meta.size != metaSize || meta.data == nil {
		return formatErr(".lucos.meta", 0, "%d bytes: a patch has exactly one LUCOS_PATCH (%d bytes)", meta.size, metaSize)
	}
	if magic := binary.LittleEndian.Uint32(meta.data); magic != lucosMagic {
		return formatErr(".lucos.meta", 0, "magic %#x, want %#x", magic, lucosMagic)
	}
	if abi := binary.LittleEndian.Uint32(meta.data[4:]); abi != lucosABIVersion {
		return formatErr(".lucos.meta", 4, "descriptor ABI version %d; this lucos reads version %d", abi, lucosABIVersion)
	}
	var err error
	if m.Name, err = m.stringAt(meta, 8); err != nil {
		return err
	}
	if m.Description, err = m.stringAt(meta, 16); err != nil {
		return err
	}
	if m.Name == "" {
		return formatErr(".lucos.meta", 8, "empty patch name")
	}

	if s := m.section(".lucos.sympos"); s != nil {
		if s.size%symposSize != 0 || s.data == nil {
			return formatErr(s.name, 0, "size %d is not a multiple of %d", s.size, symposSize)
		}
		for off := uint64(0); off < s.size; off += symposSize {
			name, err := m.stringAt(s, off)
			if err != nil {
				return err
			}
			pos, err := m.posAt(s, off+8)
			if err != nil {
				return err
			}
			if pos == 0 {
				return formatErr(s.name, off+8, "LUCOS_SYMPOS(%s, 0): sympos is 1-based", name)
			}
			if old, dup := m.sympos[name]; dup && old != pos {
				return refuse(s.name, name, nil, "two LUCOS_SYMPOS for one name (%d and %d)", old, pos)
			}
			m.sympos[name] = pos
			m.SymPos = append(m.SymPos, SymPos{Name: name, Pos: pos})
		}
	}

	if s := m.section(".lucos.funcs"); s != nil {
		if s.size%funcSize != 0 || s.data == nil {
			return formatErr(s.name, 0, "size %d is not a multiple of %d", s.size, funcSize)
		}
		seen := map[string]bool{}
		for off := uint64(0); off < s.size; off += funcSize {
			var fs FuncSpec
			if fs.OldName, err = m.stringAt(s, off); err != nil {
				return err
			}
			if fs.Pos, err = m.posAt(s, off+8); err != nil {
				return err
			}
			if flags := binary.LittleEndian.Uint64(s.data[off+24:]); flags != 0 {
				return formatErr(s.name, off+24, "LUCOS_REPLACE(%s): reserved flags %#x", fs.OldName, flags)
			}
			sym, addend, err := m.pointerAt(s, off+16)
			if err != nil {
				return err
			}
			if sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
				return refuseAt(s.name, off+16, sym.name, nil, "LUCOS_REPLACE(%s): the new function must be defined in the patch", fs.OldName)
			}
			ns := m.secs[sym.shndx]
			fs.newSec, fs.newOff = ns.idx, sym.value+uint64(addend)
			if ns.treat != Load || ns.flags&elf.SHF_EXECINSTR == 0 || fs.newOff >= ns.size {
				return refuseAt(s.name, off+16, sym.name, nil, "LUCOS_REPLACE(%s): the new function is not in the patch's loaded code (section %s)", fs.OldName, ns.name)
			}
			fs.NewSymbol = m.funcAt(sym, addend)
			if fs.NewSymbol == "" {
				fs.NewSymbol = fmt.Sprintf("%s+%#x", ns.name, fs.newOff)
			}
			fs.newSize = ns.size - fs.newOff
			for _, s := range m.syms {
				if s.typ == elf.STT_FUNC && s.shndx == sym.shndx && s.value == fs.newOff && s.size > 0 {
					fs.newSize = s.size
				}
			}
			key := fmt.Sprintf("%s/%d", fs.OldName, fs.Pos)
			if seen[key] {
				return refuse(s.name, fs.OldName, nil, "the function is replaced twice")
			}
			seen[key] = true
			m.Funcs = append(m.Funcs, fs)
		}
	}
	return nil
}

func (m *Module) posAt(s *section, off uint64) (int, error) {
	v := binary.LittleEndian.Uint64(s.data[off:])
	if v > maxSympos {
		return 0, formatErr(s.name, off, "sympos %d is not a position", v)
	}
	return int(v), nil
}

// pointerAt returns the symbol and addend of the R_X86_64_64 relocation
// that fills the pointer at s+off.
func (m *Module) pointerAt(s *section, off uint64) (symbol, int64, error) {
	r, ok := s.relocAt(off)
	if !ok {
		return symbol{}, 0, formatErr(s.name, off, "pointer without a relocation (NULL)")
	}
	if r.typ != elf.R_X86_64_64 {
		return symbol{}, 0, formatErr(s.name, off, "pointer filled by %v, want R_X86_64_64", r.typ)
	}
	return m.syms[r.sym], r.addend, nil
}

// stringAt reads the C string a descriptor's pointer at s+off points to.
func (m *Module) stringAt(s *section, off uint64) (string, error) {
	sym, addend, err := m.pointerAt(s, off)
	if err != nil {
		return "", err
	}
	if sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
		return "", formatErr(s.name, off, "string pointer to %s, which the patch does not define", sym.name)
	}
	ts := m.secs[sym.shndx]
	at := sym.value + uint64(addend)
	if ts.data == nil || at >= uint64(len(ts.data)) {
		return "", formatErr(s.name, off, "string pointer outside %s", ts.name)
	}
	n := bytes.IndexByte(ts.data[at:], 0)
	if n < 0 {
		return "", formatErr(s.name, off, "unterminated string in %s", ts.name)
	}
	return string(ts.data[at : at+uint64(n)]), nil
}
