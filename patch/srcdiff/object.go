package srcdiff

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"os"
	"slices"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// object is a relocatable kernel object (.o) read for comparison: its
// sections with their relocations, and its symbols. debug/elf reads the
// file; the model adds what comparing needs — which symbol each relocation
// really points at.
type object struct {
	path  string
	secs  []*section // by ELF index
	syms  []*symbol  // by ELF index; 0 is the null symbol
	elf   *elf.File
	bySec map[*section][]*symbol // defined FUNC/OBJECT symbols per section, by value
}

type section struct {
	idx    int
	name   string
	hdr    elf.SectionHeader
	data   []byte // nil for SHT_NOBITS
	relocs []reloc
	// insnEnd maps the offset of a PC-relative relocation in code to the
	// end of its instruction, where the CPU starts counting.
	insnEnd map[uint64]uint64
	// marks are offsets in this section that relocations point at: where
	// anonymous pieces (alternatives' replacements, .altinstr_aux blocks)
	// begin.
	marks []uint64
}

func (s *section) exec() bool  { return s.hdr.Flags&elf.SHF_EXECINSTR != 0 }
func (s *section) write() bool { return s.hdr.Flags&elf.SHF_WRITE != 0 }
func (s *section) alloc() bool { return s.hdr.Flags&elf.SHF_ALLOC != 0 }
func (s *section) strings() bool {
	return s.hdr.Flags&elf.SHF_STRINGS != 0 || strings.Contains(s.name, ".str")
}

type symbol struct {
	idx   int
	name  string
	bind  elf.SymBind
	typ   elf.SymType
	sec   *section // nil: undefined or absolute
	value uint64
	size  uint64
}

func (s *symbol) defined() bool { return s.sec != nil }

type reloc struct {
	off    uint64
	typ    elf.R_X86_64
	sym    *symbol
	addend int64
}

// pcRelative reports whether a relocation's value is relative to where it
// is stored.
func (r reloc) pcRelative() bool {
	switch r.typ {
	case elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_PC64:
		return true
	}
	return false
}

// size is the width of the field a relocation writes.
func (r reloc) size() int {
	switch r.typ {
	case elf.R_X86_64_64, elf.R_X86_64_PC64:
		return 8
	case elf.R_X86_64_NONE:
		return 0
	}
	return 4
}

// readObject reads a relocatable x86-64 object.
func readObject(path string) (o *object, err error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	defer func() {
		if r := recover(); r != nil { // debug/elf is not hardened
			o, err = nil, fmt.Errorf("%s: malformed ELF: %v", path, r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	if f.Type != elf.ET_REL || f.Machine != elf.EM_X86_64 {
		return nil, fmt.Errorf("%s: not an x86-64 relocatable object", path)
	}
	o = &object{path: path, elf: f, bySec: map[*section][]*symbol{}}
	for i, es := range f.Sections {
		if es.Size > uint64(len(b)) && es.Type != elf.SHT_NOBITS || es.Size > 1<<30 {
			return nil, fmt.Errorf("%s: section %s: size %#x is past the file's end", path, es.Name, es.Size)
		}
		s := &section{idx: i, name: es.Name, hdr: es.SectionHeader}
		if es.Type != elf.SHT_NOBITS && es.Type != elf.SHT_NULL {
			if s.data, err = es.Data(); err != nil {
				return nil, fmt.Errorf("%s: section %s: %w", path, es.Name, err)
			}
		}
		o.secs = append(o.secs, s)
	}
	esyms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	o.syms = []*symbol{{}}
	for i, es := range esyms {
		s := &symbol{idx: i + 1, name: es.Name, bind: elf.ST_BIND(es.Info), typ: elf.ST_TYPE(es.Info), value: es.Value, size: es.Size}
		if es.Section > elf.SHN_UNDEF && es.Section < elf.SHN_LORESERVE && int(es.Section) < len(o.secs) {
			s.sec = o.secs[es.Section]
			if s.typ == elf.STT_SECTION {
				s.name = s.sec.name
			} else if s.typ == elf.STT_FUNC || s.typ == elf.STT_OBJECT {
				o.bySec[s.sec] = append(o.bySec[s.sec], s)
			}
		}
		o.syms = append(o.syms, s)
	}
	for _, list := range o.bySec {
		slices.SortStableFunc(list, func(a, b *symbol) int { return int(int64(a.value) - int64(b.value)) })
	}
	for _, es := range f.Sections {
		if es.Type != elf.SHT_RELA || int(es.Info) >= len(o.secs) {
			continue
		}
		target := o.secs[es.Info]
		raw, err := es.Data()
		if err != nil {
			return nil, fmt.Errorf("%s: %s: %w", path, es.Name, err)
		}
		for off := 0; off+24 <= len(raw); off += 24 {
			info := binary.LittleEndian.Uint64(raw[off+8:])
			symIdx := int(info >> 32)
			if symIdx >= len(o.syms) {
				return nil, fmt.Errorf("%s: %s: relocation %d names symbol %d of %d", path, es.Name, off/24, symIdx, len(o.syms))
			}
			target.relocs = append(target.relocs, reloc{
				off:    binary.LittleEndian.Uint64(raw[off:]),
				typ:    elf.R_X86_64(uint32(info)),
				sym:    o.syms[symIdx],
				addend: int64(binary.LittleEndian.Uint64(raw[off+16:])),
			})
		}
		slices.SortStableFunc(target.relocs, func(a, b reloc) int { return int(int64(a.off) - int64(b.off)) })
	}
	for _, s := range o.secs {
		if s.exec() && s.data != nil {
			s.decode()
		}
	}
	for _, s := range o.secs {
		for _, r := range s.relocs {
			if ts, off, ok := o.target(s, r); ok {
				ts.marks = append(ts.marks, off)
			}
		}
	}
	for _, s := range o.secs {
		slices.Sort(s.marks)
		s.marks = slices.Compact(s.marks)
	}
	return o, nil
}

// decode finds the end of the instruction holding each PC-relative
// relocation. Code is decoded from each function's start (or the section's
// start); where the decoder gives up, the displacement is taken to end its
// instruction, which holds for calls, jumps and most memory operands.
func (s *section) decode() {
	s.insnEnd = map[uint64]uint64{}
	want := map[uint64]bool{}
	for _, r := range s.relocs {
		if r.pcRelative() {
			want[r.off] = true
		}
	}
	if len(want) == 0 {
		return
	}
	for pc := 0; pc < len(s.data); {
		inst, err := x86asm.Decode(s.data[pc:], 64)
		if err != nil || inst.Len == 0 {
			pc++
			continue
		}
		for off := pc; off < pc+inst.Len; off++ {
			if want[uint64(off)] {
				s.insnEnd[uint64(off)] = uint64(pc + inst.Len)
			}
		}
		pc += inst.Len
	}
}

// target is where a relocation points: a section and an offset in it, for
// relocations against a defined symbol (section symbols included). For a
// PC-relative relocation in code the offset is what the instruction
// addresses: the addend counts from the relocated field, the CPU from the
// instruction's end.
func (o *object) target(s *section, r reloc) (*section, uint64, bool) {
	if r.sym == nil || !r.sym.defined() {
		return nil, 0, false
	}
	off := int64(r.sym.value) + r.addend
	if r.pcRelative() && s.exec() {
		end, ok := s.insnEnd[r.off]
		if !ok {
			end = r.off + uint64(r.size())
		}
		off += int64(end - r.off)
	}
	if off < 0 {
		off = 0
	}
	return r.sym.sec, uint64(off), true
}

// symbolAt is the FUNC or OBJECT symbol of sec that holds off: a sized
// symbol containing it, else one starting there, else one ending there (a
// pointer one past an array, `offsets + ARRAY_SIZE(offsets)`); or nil.
func (o *object) symbolAt(sec *section, off uint64) *symbol {
	var at, end *symbol
	for _, s := range o.bySec[sec] {
		if off >= s.value && off < s.value+s.size {
			return s
		}
		if s.value == off && at == nil {
			at = s
		}
		if s.size > 0 && s.value+s.size == off && end == nil {
			end = s
		}
	}
	if at != nil {
		return at
	}
	return end
}

// piece is the extent of an anonymous target at off in sec: the string
// there, one merged constant, or the bytes up to the next place anything
// points at or a symbol starts.
func (o *object) piece(sec *section, off uint64) (uint64, uint64) {
	size := uint64(len(sec.data))
	if sec.hdr.Type == elf.SHT_NOBITS {
		size = sec.hdr.Size
	}
	if off >= size {
		return off, off
	}
	switch {
	case sec.strings() && sec.data != nil:
		if i := bytes.IndexByte(sec.data[off:], 0); i >= 0 {
			return off, off + uint64(i) + 1
		}
		return off, size
	case sec.hdr.Flags&elf.SHF_MERGE != 0 && sec.hdr.Entsize > 0:
		return off, min(off+sec.hdr.Entsize, size)
	}
	end := size
	if i, found := slices.BinarySearch(sec.marks, off+1); found || i < len(sec.marks) {
		end = min(end, sec.marks[i])
	}
	for _, s := range o.bySec[sec] {
		if s.value > off && s.value < end {
			end = s.value
		}
	}
	return off, end
}

// relocsIn returns the relocations of sec in [from, to).
func (s *section) relocsIn(from, to uint64) []reloc {
	i, _ := slices.BinarySearchFunc(s.relocs, from, func(r reloc, off uint64) int { return int(int64(r.off) - int64(off)) })
	j := i
	for j < len(s.relocs) && s.relocs[j].off < to {
		j++
	}
	return s.relocs[i:j]
}

// functions lists the defined function symbols, in symbol table order.
func (o *object) functions() []*symbol {
	var fns []*symbol
	for _, s := range o.syms {
		if s.typ == elf.STT_FUNC && s.defined() {
			fns = append(fns, s)
		}
	}
	return fns
}

// lookup returns the defined FUNC or OBJECT symbol of that name (statics
// of one object have distinct names: gcc numbers duplicates).
func (o *object) lookup(name string) *symbol {
	for _, s := range o.syms {
		if s.name == name && s.defined() && (s.typ == elf.STT_FUNC || s.typ == elf.STT_OBJECT) {
			return s
		}
	}
	return nil
}

// bytesOf returns the bytes of [from, to) of sec (zeros for NOBITS).
func (s *section) bytesOf(from, to uint64) []byte {
	if s.data == nil {
		return make([]byte, to-from)
	}
	return s.data[from:to]
}
