package loader

import (
	"debug/elf"
	"encoding/binary"
)

// The module shell's kallsyms: what struct mod_kallsyms points to, built
// on the host from the patch's own symbols at their runtime addresses, as
// the kernel's module loader builds it from a module's (add_kallsyms):
//
//	symtab   Elf64_Sym[n+1]: entry 0 the null symbol, then each symbol,
//	         st_name an offset into strtab, st_value its runtime address
//	typetab  n+1 letters, /proc/kallsyms' type of each symbol
//	strtab   "\0", then each name and its NUL
//
// The kernel shows a module symbol's letter in upper case only when the
// module exports it; nothing of a patch is exported, so every letter is
// the lower-case one of elf_type (kernel/module/kallsyms.c).

// kallsymsBlobName names the tables in Image.Sections.
const kallsymsBlobName = ".lucos.shell.kallsyms"

// kallsym is one symbol of the shell's kallsyms table.
type kallsym struct {
	name        string
	value, size uint64 // runtime address, and st_size
	info        byte   // ELF st_info
	shndx       uint16 // the patch's section index (the kernel only checks it is not SHN_UNDEF)
	typ         byte   // kallsyms letter
}

// kallsymsSize is how many bytes the tables of syms take.
func kallsymsSize(syms []kallsym) uint64 {
	n := uint64(len(syms))
	size := elf.Sym64Size*(n+1) + (n + 1) + 1
	for _, s := range syms {
		size += uint64(len(s.name)) + 1
	}
	return size
}

// kallsymsTables lays the tables of syms out from addr, in one block of
// kallsymsSize(syms) bytes: symtab, typetab, strtab. It returns the block
// and where each table starts.
func kallsymsTables(syms []kallsym, addr uint64) (block []byte, symtab, typetab, strtab uint64) {
	n := uint64(len(syms))
	block = make([]byte, kallsymsSize(syms))
	symtab = addr
	typetab = symtab + elf.Sym64Size*(n+1)
	strtab = typetab + n + 1
	types := block[typetab-addr : strtab-addr]
	names := block[strtab-addr:]
	types[0] = 'U'  // the null symbol, as elf_type says of SHN_UNDEF
	at := uint64(1) // names[0] is the empty name of the null symbol
	for i, s := range syms {
		e := block[elf.Sym64Size*uint64(i+1):]
		binary.LittleEndian.PutUint32(e[0:], uint32(at))
		e[4] = s.info
		binary.LittleEndian.PutUint16(e[6:], s.shndx)
		binary.LittleEndian.PutUint64(e[8:], s.value)
		binary.LittleEndian.PutUint64(e[16:], s.size)
		types[i+1] = s.typ
		at += uint64(copy(names[at:], s.name)) + 1
	}
	return block, symtab, typetab, strtab
}

// kallsymsType is the letter elf_type gives a defined symbol of section s.
func kallsymsType(sym symbol, s *section) byte {
	switch {
	case sym.bind == elf.STB_WEAK && sym.typ == elf.STT_OBJECT:
		return 'v'
	case sym.bind == elf.STB_WEAK:
		return 'w'
	case s.flags&elf.SHF_EXECINSTR != 0:
		return 't'
	case s.typ == elf.SHT_NOBITS:
		return 'b'
	case s.flags&elf.SHF_WRITE == 0:
		return 'r'
	}
	return 'd'
}

// kallsymsSymbols are the symbols the shell lists: every named function,
// object or label the patch defines in a section lucos loads, in symbol
// table order (the kernel keeps a module's core symbols the same way,
// is_core_symbol). Their values are filled in when linking.
func (m *Module) kallsymsSymbols() []kallsym {
	var out []kallsym
	for _, sym := range m.syms[1:] {
		if sym.name == "" || sym.shndx == elf.SHN_UNDEF || sym.shndx >= elf.SHN_LORESERVE {
			continue
		}
		if sym.typ != elf.STT_FUNC && sym.typ != elf.STT_OBJECT && sym.typ != elf.STT_NOTYPE {
			continue
		}
		s := m.secs[sym.shndx]
		if !s.loaded() {
			continue
		}
		out = append(out, kallsym{name: sym.name, value: sym.value, size: sym.size,
			info: byte(sym.bind)<<4 | byte(sym.typ), shndx: uint16(sym.shndx), typ: kallsymsType(sym, s)})
	}
	return out
}
