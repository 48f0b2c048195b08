package kimage

import (
	"bufio"
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"strconv"
)

// ReadSystemMap parses a System.map (nm -n output: "address type name" per
// line), or the text of /proc/kallsyms: lines that name a module ("\t[mod]")
// are skipped, since they are not part of the image, and so are undefined
// ('U') symbols. Debian's stub System.map yields ErrStubSystemMap.
func ReadSystemMap(r io.Reader) ([]RawSymbol, error) {
	const what = "System.map"
	br := bufio.NewReader(r)
	var syms []RawSymbol
	var off int64
	for lineNo := 1; ; lineNo++ {
		line, err := br.ReadSlice('\n')
		if errors.Is(err, bufio.ErrBufferFull) {
			return nil, formatErr(what, off, "line %d longer than %d bytes", lineNo, br.Size())
		}
		if err != nil && err != io.EOF {
			return nil, fmt.Errorf("read System.map: %w", err)
		}
		start := off
		off += int64(len(line))
		if s, ok, perr := parseMapLine(line); perr != nil {
			if lineNo == 1 && bytes.Contains(line, []byte("System.map")) {
				return nil, fmt.Errorf("%w: %q", ErrStubSystemMap, bytes.TrimSpace(line))
			}
			return nil, formatErr(what, start, "line %d: %v: %q", lineNo, perr, bytes.TrimSpace(line))
		} else if ok {
			syms = append(syms, s)
		}
		if err == io.EOF {
			break
		}
	}
	if len(syms) == 0 {
		return nil, formatErr(what, 0, "no symbols")
	}
	return syms, nil
}

// parseMapLine parses one line; ok is false for a line to skip.
func parseMapLine(line []byte) (s RawSymbol, ok bool, err error) {
	f := bytes.Fields(line)
	switch {
	case len(f) == 0:
		return s, false, nil
	case len(f) == 2 && len(f[0]) == 1 && (f[0][0] == 'U' || f[0][0] == 'w' || f[0][0] == 'v'):
		return s, false, nil // nm's undefined symbols have no address
	case len(f) < 3:
		return s, false, errors.New("want address, type and name")
	case len(f) == 4 && f[3][0] == '[' && f[3][len(f[3])-1] == ']':
		return s, false, nil // a module's symbol
	case len(f) > 3:
		return s, false, errors.New("text after the name")
	}
	if len(f[0]) > 16 {
		return s, false, errors.New("address longer than 64 bits")
	}
	addr, perr := strconv.ParseUint(string(f[0]), 16, 64)
	if perr != nil {
		return s, false, errors.New("address is not hexadecimal")
	}
	if len(f[1]) != 1 || f[1][0] <= ' ' || f[1][0] > '~' {
		return s, false, errors.New("type is not one letter")
	}
	if f[1][0] == 'U' {
		return s, false, nil
	}
	return RawSymbol{Name: string(f[2]), Addr: addr, Type: f[1][0]}, true, nil
}

// ELFSymbols reads the .symtab of an unstripped vmlinux, typing each symbol
// as nm does. Section and file symbols, undefined and nameless ones are
// left out. A stripped vmlinux (Debian's) yields an error wrapping
// elf.ErrNoSymbols: use its kallsyms instead.
func ELFSymbols(f *elf.File) ([]RawSymbol, error) {
	es, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("vmlinux symbol table: %w", err)
	}
	syms := make([]RawSymbol, 0, len(es))
	for _, e := range es {
		t := nmType(f, e)
		if t == 0 || e.Name == "" {
			continue
		}
		syms = append(syms, RawSymbol{Name: e.Name, Addr: e.Value, Type: t})
	}
	return syms, nil
}

// nmType is nm's letter for e, 0 for a symbol nm would not list as defined.
func nmType(f *elf.File, e elf.Symbol) byte {
	st := elf.ST_TYPE(e.Info)
	if st == elf.STT_SECTION || st == elf.STT_FILE {
		return 0
	}
	bind := elf.ST_BIND(e.Info)
	var t byte
	switch {
	case e.Section == elf.SHN_UNDEF:
		return 0
	case e.Section == elf.SHN_ABS:
		t = 'a'
	case e.Section == elf.SHN_COMMON:
		return 'C'
	case bind == elf.STB_WEAK:
		if st == elf.STT_OBJECT {
			return 'V'
		}
		return 'W'
	case int(e.Section) >= len(f.Sections):
		return 0
	default:
		sec := f.Sections[e.Section]
		switch {
		case sec.Flags&elf.SHF_EXECINSTR != 0:
			t = 't'
		case sec.Type == elf.SHT_NOBITS:
			t = 'b'
		case sec.Flags&elf.SHF_WRITE != 0:
			t = 'd'
		case sec.Flags&elf.SHF_ALLOC != 0:
			t = 'r'
		default:
			t = 'n'
		}
	}
	if bind == elf.STB_GLOBAL && t != 'n' {
		t -= 'a' - 'A'
	}
	return t
}

// ELFRegions are the allocated sections of a vmlinux, which bound symbol
// sizes.
func ELFRegions(f *elf.File) []Region {
	var rs []Region
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_ALLOC == 0 || s.Size == 0 || s.Addr+s.Size < s.Addr {
			continue
		}
		rs = append(rs, Region{Name: s.Name, Start: s.Addr, End: s.Addr + s.Size})
	}
	return rs
}
