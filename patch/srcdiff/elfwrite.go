package srcdiff

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
)

// A minimal writer of x86-64 relocatable objects: the patch's code is a
// new object assembled from pieces of the patched one, and Go's debug/elf
// only reads. What it writes is what ld -r needs: sections, one symbol
// table (locals first), RELA sections.

type outSection struct {
	name    string
	typ     elf.SectionType
	flags   elf.SectionFlag
	align   uint64
	entsize uint64
	data    []byte
	size    uint64 // for NOBITS
	relocs  []outReloc
	sym     *outSymbol // its STT_SECTION symbol
	index   int
}

type outSymbol struct {
	name  string
	bind  elf.SymBind
	typ   elf.SymType
	sec   *outSection // nil: undefined
	value uint64
	size  uint64
	index int
}

type outReloc struct {
	off    uint64
	typ    elf.R_X86_64
	sym    *outSymbol
	addend int64
}

// outObject is the object being assembled.
type outObject struct {
	secs []*outSection
	syms []*outSymbol
	und  map[string]*outSymbol
}

func newOutObject() *outObject { return &outObject{und: map[string]*outSymbol{}} }

// section returns the output section named name, creating it like in.
func (o *outObject) section(name string, typ elf.SectionType, flags elf.SectionFlag, align uint64) *outSection {
	for _, s := range o.secs {
		if s.name == name {
			s.align = max(s.align, align)
			return s
		}
	}
	s := &outSection{name: name, typ: typ, flags: flags, align: max(align, 1)}
	s.sym = &outSymbol{name: "", bind: elf.STB_LOCAL, typ: elf.STT_SECTION, sec: s}
	o.secs = append(o.secs, s)
	o.syms = append(o.syms, s.sym)
	return s
}

// appendBytes places b (or n zero bytes for NOBITS) at the section's end,
// aligned, and returns its offset.
func (s *outSection) appendBytes(b []byte, n, align uint64) uint64 {
	align = max(align, 1)
	s.align = max(s.align, align)
	if s.typ == elf.SHT_NOBITS {
		off := (s.size + align - 1) &^ (align - 1)
		s.size = off + n
		return off
	}
	off := (uint64(len(s.data)) + align - 1) &^ (align - 1)
	s.data = append(s.data, make([]byte, off-uint64(len(s.data)))...)
	s.data = append(s.data, b...)
	return off
}

// undefined returns the undefined global symbol name.
func (o *outObject) undefined(name string) *outSymbol {
	if s, ok := o.und[name]; ok {
		return s
	}
	s := &outSymbol{name: name, bind: elf.STB_GLOBAL, typ: elf.STT_NOTYPE}
	o.und[name] = s
	o.syms = append(o.syms, s)
	return s
}

// define adds a symbol defined in sec.
func (o *outObject) define(name string, bind elf.SymBind, typ elf.SymType, sec *outSection, value, size uint64) *outSymbol {
	s := &outSymbol{name: name, bind: bind, typ: typ, sec: sec, value: value, size: size}
	o.syms = append(o.syms, s)
	return s
}

// bytes serialises the object.
func (o *outObject) bytes() ([]byte, error) {
	// Symbol table: the null symbol, locals, then globals.
	syms := []*outSymbol{{}}
	for _, pass := range []bool{true, false} {
		for _, s := range o.syms {
			if (s.bind == elf.STB_LOCAL) == pass {
				syms = append(syms, s)
			}
		}
	}
	firstGlobal := 1
	for i, s := range syms {
		s.index = i
		if i > 0 && s.bind == elf.STB_LOCAL {
			firstGlobal = i + 1
		}
	}
	strtab := []byte{0}
	addStr := func(tab *[]byte, s string) uint32 {
		if s == "" {
			return 0
		}
		off := uint32(len(*tab))
		*tab = append(append(*tab, s...), 0)
		return off
	}

	type hdr struct {
		name       string
		typ        elf.SectionType
		flags      elf.SectionFlag
		data       []byte
		size       uint64
		link, info uint32
		align      uint64
		entsize    uint64
	}
	hdrs := []hdr{{}}
	for i, s := range o.secs {
		s.index = i + 1
		size := uint64(len(s.data))
		if s.typ == elf.SHT_NOBITS {
			size = s.size
		}
		hdrs = append(hdrs, hdr{name: s.name, typ: s.typ, flags: s.flags, data: s.data, size: size, align: s.align, entsize: s.entsize})
	}
	symtabIdx := len(hdrs) + len(o.secs) // after the RELA sections
	var relaNames []int
	for _, s := range o.secs {
		if len(s.relocs) == 0 {
			continue
		}
		var b bytes.Buffer
		for _, r := range s.relocs {
			if r.sym == nil || r.sym.index == 0 && r.sym.sec == nil && r.sym.name == "" {
				return nil, fmt.Errorf("section %s: relocation at %#x has no symbol", s.name, r.off)
			}
			binary.Write(&b, binary.LittleEndian, elf.Rela64{Off: r.off, Info: uint64(r.sym.index)<<32 | uint64(r.typ), Addend: r.addend})
		}
		hdrs = append(hdrs, hdr{name: ".rela" + s.name, typ: elf.SHT_RELA, flags: elf.SHF_INFO_LINK, data: b.Bytes(), size: uint64(b.Len()),
			info: uint32(s.index), align: 8, entsize: 24})
		relaNames = append(relaNames, len(hdrs)-1)
	}
	symtabIdx = len(hdrs)
	for _, i := range relaNames {
		hdrs[i].link = uint32(symtabIdx)
	}
	var symb bytes.Buffer
	for _, s := range syms {
		var shndx uint16
		if s.sec != nil {
			shndx = uint16(s.sec.index)
		}
		binary.Write(&symb, binary.LittleEndian, elf.Sym64{Name: addStr(&strtab, s.name), Info: elf.ST_INFO(s.bind, s.typ),
			Shndx: shndx, Value: s.value, Size: s.size})
	}
	hdrs = append(hdrs, hdr{name: ".symtab", typ: elf.SHT_SYMTAB, data: symb.Bytes(), size: uint64(symb.Len()),
		link: uint32(symtabIdx + 1), info: uint32(firstGlobal), align: 8, entsize: 24})
	hdrs = append(hdrs, hdr{name: ".strtab", typ: elf.SHT_STRTAB, data: strtab, size: uint64(len(strtab)), align: 1})
	shstrtab := []byte{0}
	names := make([]uint32, len(hdrs)+1)
	for i, h := range hdrs {
		names[i] = addStr(&shstrtab, h.name)
	}
	names[len(hdrs)] = addStr(&shstrtab, ".shstrtab")
	hdrs = append(hdrs, hdr{name: ".shstrtab", typ: elf.SHT_STRTAB, data: shstrtab, size: uint64(len(shstrtab)), align: 1})

	var out bytes.Buffer
	out.Write(make([]byte, 64)) // the ELF header, written last
	offs := make([]uint64, len(hdrs))
	for i, h := range hdrs {
		if i == 0 || h.typ == elf.SHT_NOBITS {
			continue
		}
		align := max(h.align, 1)
		for uint64(out.Len())%align != 0 {
			out.WriteByte(0)
		}
		offs[i] = uint64(out.Len())
		out.Write(h.data)
	}
	for out.Len()%8 != 0 {
		out.WriteByte(0)
	}
	shoff := uint64(out.Len())
	for i, h := range hdrs {
		binary.Write(&out, binary.LittleEndian, elf.Section64{Name: names[i], Type: uint32(h.typ), Flags: uint64(h.flags),
			Off: offs[i], Size: h.size, Link: h.link, Info: h.info, Addralign: h.align, Entsize: h.entsize})
	}
	b := out.Bytes()
	var eh bytes.Buffer
	ident := [elf.EI_NIDENT]byte{0x7f, 'E', 'L', 'F', byte(elf.ELFCLASS64), byte(elf.ELFDATA2LSB), byte(elf.EV_CURRENT)}
	binary.Write(&eh, binary.LittleEndian, elf.Header64{Ident: ident, Type: uint16(elf.ET_REL), Machine: uint16(elf.EM_X86_64),
		Version: uint32(elf.EV_CURRENT), Shoff: shoff, Ehsize: 64, Shentsize: 64, Shnum: uint16(len(hdrs)), Shstrndx: uint16(len(hdrs) - 1)})
	copy(b, eh.Bytes())
	return b, nil
}
