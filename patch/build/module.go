package build

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
)

// The descriptor ABI of sdk/include/lucos/patch.h, version 1.
const (
	Magic      = 0x4f43554c // "LUCO" little-endian
	ABIVersion = 1

	metaSection   = ".lucos.meta"
	funcsSection  = ".lucos.funcs"
	symposSection = ".lucos.sympos"

	metaSize   = 24 // struct lucos_meta: u32 magic, u32 abi, name, description
	funcSize   = 32 // struct lucos_func: old_name, sympos, new_func, flags
	symposSize = 16 // struct lucos_sympos: name, sympos
)

// Errors callers branch on.
var (
	// ErrNotPatch: the module has no LUCOS_PATCH (no .lucos.meta section).
	ErrNotPatch = errors.New("not a lucos patch: no LUCOS_PATCH (section .lucos.meta)")
	// ErrABI: the descriptors use an ABI version this lucos does not know.
	ErrABI = errors.New("unknown lucos patch ABI")
)

// patchName is what LUCOS_PATCH may name a patch: it is shown by `lucos
// patch list` and used in file names.
var patchName = regexp.MustCompile(`^[A-Za-z0-9][A-Za-z0-9._-]{0,63}$`)

// Module is what a built patch module says about itself.
type Module struct {
	Name        string // LUCOS_PATCH's name
	Description string // LUCOS_PATCH's description
	ABI         uint32
	// Vermagic is the module's vermagic string; its first word is the
	// kernel release the module was built against.
	Vermagic string
	Release  string
	// BuildID is the hex GNU build id (a sha1 of the module's contents).
	BuildID string
	Funcs   []Func
	Sympos  []Sympos
	// Sections are the module's SHF_ALLOC sections, in file order.
	Sections []Section
}

// Func is one LUCOS_REPLACE: the kernel function OldName (the Sympos-th of
// that name, 0 = the only one) is redirected to New, a function of the patch.
type Func struct {
	OldName string
	Sympos  uint64
	New     string // symbol name of the replacement in the module
	Flags   uint64
}

// Sympos is one LUCOS_SYMPOS: references to the static Name mean its
// Sympos-th definition.
type Sympos struct {
	Name   string
	Sympos uint64
}

// Section is an SHF_ALLOC section of the module.
type Section struct {
	Name  string
	Size  uint64
	Flags elf.SectionFlag
}

// FormatError reports a malformed patch module: what section, at which
// offset in it, and what is wrong.
type FormatError struct {
	Section string
	Off     uint64
	Msg     string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s+%#x: %s", e.Section, e.Off, e.Msg)
}

// InspectFile is Inspect on the file at path.
func InspectFile(path string) (*Module, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	m, err := Inspect(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return m, nil
}

// Inspect reads a patch module: its descriptors (resolving their pointers
// through the module's relocations), vermagic and build id. It checks the
// descriptor format, not whether the patch can be applied.
func Inspect(r io.ReaderAt) (*Module, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB || f.Machine != elf.EM_X86_64 || f.Type != elf.ET_REL {
		return nil, fmt.Errorf("not an x86-64 kernel module: %v %v %v %v", f.Class, f.Data, f.Machine, f.Type)
	}
	o, err := newObject(f)
	if err != nil {
		return nil, err
	}
	m := &Module{}
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC != 0 {
			m.Sections = append(m.Sections, Section{Name: s.Name, Size: s.Size, Flags: s.Flags})
		}
	}
	if err := o.readMeta(m); err != nil {
		return nil, err
	}
	if m.Funcs, err = o.readFuncs(); err != nil {
		return nil, err
	}
	if m.Sympos, err = o.readSympos(); err != nil {
		return nil, err
	}
	if m.Vermagic, err = o.modinfo("vermagic"); err != nil {
		return nil, err
	}
	m.Release, _, _ = strings.Cut(m.Vermagic, " ")
	if m.BuildID, err = o.buildID(); err != nil {
		return nil, err
	}
	return m, nil
}

// object is an ELF relocatable file with its symbols loaded.
type object struct {
	f    *elf.File
	syms []elf.Symbol // index i is ELF symbol i+1
}

func newObject(f *elf.File) (*object, error) {
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("symbol table: %w", err)
	}
	return &object{f: f, syms: syms}, nil
}

// only returns the section named name, nil if there is none, and an error
// if there are several (a linked module has one of each name).
func (o *object) only(name string) (*elf.Section, error) {
	var found *elf.Section
	for _, s := range o.f.Sections {
		if s.Name != name {
			continue
		}
		if found != nil {
			return nil, &FormatError{name, 0, "section appears more than once"}
		}
		found = s
	}
	return found, nil
}

// sectionData returns the contents of s (nil for NOBITS).
func sectionData(s *elf.Section) ([]byte, error) {
	if s.Type == elf.SHT_NOBITS {
		return nil, nil
	}
	b, err := s.Data()
	if err != nil {
		return nil, &FormatError{s.Name, 0, err.Error()}
	}
	return b, nil
}

// target is where a relocation points: into a section of the module at
// an offset, or at an undefined (kernel) symbol.
type target struct {
	sec     *elf.Section // nil when undefined
	off     uint64
	sym     string // the symbol the relocation names ("" for a section symbol)
	undef   bool
	relType elf.R_X86_64
}

// relocs returns the relocations applying to section s, by offset in s.
func (o *object) relocs(s *elf.Section) (map[uint64]target, error) {
	var rela *elf.Section
	for _, r := range o.f.Sections {
		if r.Type == elf.SHT_RELA && int(r.Info) < len(o.f.Sections) && o.f.Sections[r.Info] == s {
			rela = r
			break
		}
	}
	out := make(map[uint64]target)
	if rela == nil {
		return out, nil
	}
	b, err := sectionData(rela)
	if err != nil {
		return nil, err
	}
	if len(b)%24 != 0 {
		return nil, &FormatError{rela.Name, 0, fmt.Sprintf("size %d is not a multiple of 24", len(b))}
	}
	for i := 0; i < len(b); i += 24 {
		off := binary.LittleEndian.Uint64(b[i:])
		info := binary.LittleEndian.Uint64(b[i+8:])
		addend := int64(binary.LittleEndian.Uint64(b[i+16:]))
		symIdx, typ := info>>32, elf.R_X86_64(info&0xffffffff)
		if symIdx == 0 || symIdx > uint64(len(o.syms)) {
			return nil, &FormatError{rela.Name, uint64(i), fmt.Sprintf("relocation names symbol %d of %d", symIdx, len(o.syms))}
		}
		sym := o.syms[symIdx-1]
		t := target{relType: typ, sym: sym.Name}
		switch {
		case sym.Section == elf.SHN_UNDEF:
			t.undef = true
			t.off = uint64(addend)
		case sym.Section >= elf.SHN_LORESERVE || int(sym.Section) >= len(o.f.Sections):
			return nil, &FormatError{rela.Name, uint64(i), fmt.Sprintf("symbol %q in special section %v", sym.Name, sym.Section)}
		default:
			t.sec = o.f.Sections[sym.Section]
			t.off = sym.Value + uint64(addend)
			if elf.ST_TYPE(sym.Info) == elf.STT_SECTION {
				t.sym = ""
			}
		}
		out[off] = t
	}
	return out, nil
}

// pointer returns the target of the R_X86_64_64 relocation that fills the
// pointer at off in section s.
func pointer(s *elf.Section, rels map[uint64]target, off uint64, field string) (target, error) {
	t, ok := rels[off]
	if !ok {
		return target{}, &FormatError{s.Name, off, field + " is not a relocated pointer (NULL?)"}
	}
	if t.relType != elf.R_X86_64_64 {
		return target{}, &FormatError{s.Name, off, fmt.Sprintf("%s is filled by %v, want R_X86_64_64", field, t.relType)}
	}
	return t, nil
}

// cString reads the NUL-terminated string at t, which must be in the module.
func (o *object) cString(t target) (string, error) {
	if t.undef {
		return "", fmt.Errorf("points at the undefined symbol %q, not at a string of the patch", t.sym)
	}
	b, err := sectionData(t.sec)
	if err != nil {
		return "", err
	}
	if t.off >= uint64(len(b)) {
		return "", fmt.Errorf("points past the end of %s (%#x)", t.sec.Name, t.off)
	}
	s, _, ok := bytes.Cut(b[t.off:], []byte{0})
	if !ok {
		return "", fmt.Errorf("string at %s+%#x is not terminated", t.sec.Name, t.off)
	}
	return string(s), nil
}

// stringField reads the string a descriptor's pointer field at off points at.
func (o *object) stringField(s *elf.Section, rels map[uint64]target, off uint64, field string) (string, error) {
	t, err := pointer(s, rels, off, field)
	if err != nil {
		return "", err
	}
	str, err := o.cString(t)
	if err != nil {
		return "", &FormatError{s.Name, off, field + " " + err.Error()}
	}
	return str, nil
}

// descriptors returns the section name holding entries of size each, with
// its relocations; nil if the module has no such section.
func (o *object) descriptors(name string, size int) (*elf.Section, []byte, map[uint64]target, error) {
	s, err := o.only(name)
	if s == nil || err != nil {
		return nil, nil, nil, err
	}
	b, err := sectionData(s)
	if err != nil {
		return nil, nil, nil, err
	}
	if s.Type == elf.SHT_NOBITS || len(b)%size != 0 {
		return nil, nil, nil, &FormatError{name, 0, fmt.Sprintf("size %d is not a multiple of %d", s.Size, size)}
	}
	rels, err := o.relocs(s)
	if err != nil {
		return nil, nil, nil, err
	}
	return s, b, rels, nil
}

func (o *object) readMeta(m *Module) error {
	s, b, rels, err := o.descriptors(metaSection, metaSize)
	if err != nil {
		return err
	}
	if s == nil {
		return ErrNotPatch
	}
	if n := len(b) / metaSize; n != 1 {
		return &FormatError{metaSection, 0, fmt.Sprintf("%d LUCOS_PATCH descriptors; a patch has exactly one", n)}
	}
	if magic := binary.LittleEndian.Uint32(b); magic != Magic {
		return &FormatError{metaSection, 0, fmt.Sprintf("magic %#x, want %#x", magic, Magic)}
	}
	m.ABI = binary.LittleEndian.Uint32(b[4:])
	if m.ABI != ABIVersion {
		return fmt.Errorf("%w: version %d (this lucos reads version %d)", ErrABI, m.ABI, ABIVersion)
	}
	if m.Name, err = o.stringField(s, rels, 8, "name"); err != nil {
		return err
	}
	if m.Description, err = o.stringField(s, rels, 16, "description"); err != nil {
		return err
	}
	return nil
}

func (o *object) readFuncs() ([]Func, error) {
	s, b, rels, err := o.descriptors(funcsSection, funcSize)
	if s == nil || err != nil {
		return nil, err
	}
	var funcs []Func
	for off := uint64(0); off < uint64(len(b)); off += funcSize {
		fn := Func{
			Sympos: binary.LittleEndian.Uint64(b[off+8:]),
			Flags:  binary.LittleEndian.Uint64(b[off+24:]),
		}
		if fn.OldName, err = o.stringField(s, rels, off, "old_name"); err != nil {
			return nil, err
		}
		t, err := pointer(s, rels, off+16, "new_func")
		if err != nil {
			return nil, err
		}
		if fn.New, err = o.function(t); err != nil {
			return nil, &FormatError{funcsSection, off + 16, fmt.Sprintf("new_func of %s: %v", fn.OldName, err)}
		}
		funcs = append(funcs, fn)
	}
	return funcs, nil
}

// function names the function of the module at t.
func (o *object) function(t target) (string, error) {
	if t.undef {
		return "", fmt.Errorf("%q is not defined in the patch", t.sym)
	}
	if t.sec.Flags&elf.SHF_EXECINSTR == 0 {
		return "", fmt.Errorf("points into %s, not into code", t.sec.Name)
	}
	if t.sym != "" {
		return t.sym, nil
	}
	for _, sym := range o.syms {
		if elf.ST_TYPE(sym.Info) == elf.STT_FUNC && int(sym.Section) < len(o.f.Sections) &&
			o.f.Sections[sym.Section] == t.sec && sym.Value == t.off {
			return sym.Name, nil
		}
	}
	return "", fmt.Errorf("no function starts at %s+%#x", t.sec.Name, t.off)
}

func (o *object) readSympos() ([]Sympos, error) {
	s, b, rels, err := o.descriptors(symposSection, symposSize)
	if s == nil || err != nil {
		return nil, err
	}
	var out []Sympos
	for off := uint64(0); off < uint64(len(b)); off += symposSize {
		sp := Sympos{Sympos: binary.LittleEndian.Uint64(b[off+8:])}
		if sp.Name, err = o.stringField(s, rels, off, "name"); err != nil {
			return nil, err
		}
		out = append(out, sp)
	}
	return out, nil
}

// modinfo returns the value of key in .modinfo ("key=value\0" strings).
func (o *object) modinfo(key string) (string, error) {
	s, err := o.only(".modinfo")
	if err != nil {
		return "", err
	}
	if s == nil {
		return "", &FormatError{".modinfo", 0, "missing: not a kernel module"}
	}
	b, err := sectionData(s)
	if err != nil {
		return "", err
	}
	for kv := range bytes.SplitSeq(b, []byte{0}) {
		if v, ok := bytes.CutPrefix(kv, []byte(key+"=")); ok {
			return string(v), nil
		}
	}
	return "", &FormatError{".modinfo", 0, "no " + key}
}

// buildID returns the hex GNU build id from .note.gnu.build-id.
func (o *object) buildID() (string, error) {
	const name = ".note.gnu.build-id"
	s, err := o.only(name)
	if err != nil {
		return "", err
	}
	if s == nil {
		return "", &FormatError{name, 0, "missing: the module was linked without --build-id"}
	}
	b, err := sectionData(s)
	if err != nil {
		return "", err
	}
	// Elf64_Nhdr: namesz, descsz, type (4 bytes each); name and desc
	// padded to 4 bytes.
	for off := 0; off+12 <= len(b); {
		namesz := int(binary.LittleEndian.Uint32(b[off:]))
		descsz := int(binary.LittleEndian.Uint32(b[off+4:]))
		typ := binary.LittleEndian.Uint32(b[off+8:])
		nameOff := off + 12
		descOff := nameOff + align4(namesz)
		end := descOff + align4(descsz)
		if namesz < 0 || descsz < 0 || descOff > len(b) || descOff+descsz > len(b) || nameOff+namesz > len(b) {
			return "", &FormatError{name, uint64(off), "truncated note"}
		}
		if typ == 3 && string(b[nameOff:nameOff+namesz]) == "GNU\x00" && descsz > 0 {
			return hex.EncodeToString(b[descOff : descOff+descsz]), nil
		}
		off = end
	}
	return "", &FormatError{name, 0, "no NT_GNU_BUILD_ID note"}
}

func align4(n int) int { return (n + 3) &^ 3 }
