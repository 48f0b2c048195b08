package kimage

import (
	"cmp"
	"fmt"
	"slices"
	"sort"
	"strings"
)

// Symbol is one kernel symbol at its link-time address.
type Symbol struct {
	Name string
	// Addr is the link-time address; add the KASLR slide for the running
	// kernel. Per-CPU symbols (type 'A' in kallsyms) hold their offset in
	// each CPU's per-CPU area, which KASLR does not move.
	Addr uint64
	// Type is kallsyms' (nm's) letter: T/t text, D/d data, R/r read-only,
	// B/b bss, A absolute, W/V weak; lower case is local (static).
	Type byte
	// Size is the distance to the next symbol at a higher address, cut at
	// the end of the section holding the symbol; 0 for a symbol outside any
	// known section (linker markers such as _end).
	Size uint64
	// Pos is livepatch's sympos: the 1-based position of this symbol among
	// those of the same name, in table (address) order.
	Pos int
}

// Global reports whether the symbol is global (an upper-case type).
func (s Symbol) Global() bool { return s.Type >= 'A' && s.Type <= 'Z' }

// Text reports whether the symbol is code.
func (s Symbol) Text() bool { return s.Type == 'T' || s.Type == 't' || s.Type == 'W' || s.Type == 'w' }

func (s Symbol) String() string {
	return fmt.Sprintf("%s %c %#x+%#x sympos %d", s.Name, s.Type, s.Addr, s.Size, s.Pos)
}

// Region is a range of link-time addresses (an ELF section) that bounds the
// sizes of the symbols inside it.
type Region struct {
	Name       string
	Start, End uint64 // [Start, End)
}

// Symbols is a kernel's symbol table in table order: by address, then in
// the source's order (kallsyms order for the image's own table).
type Symbols struct {
	syms    []Symbol
	first   map[string]int32 // name → index of its sympos 1
	next    []int32          // index → next of the same name, or -1
	regions []Region
}

// NewSymbols derives sizes (bounded by regions, which may be nil) and
// sympos for raw, which it sorts by address keeping the order of equal ones.
func NewSymbols(raw []RawSymbol, regions []Region) *Symbols {
	regions = slices.Clone(regions)
	slices.SortStableFunc(regions, func(a, b Region) int { return cmp.Compare(a.Start, b.Start) })
	s := &Symbols{
		syms:    make([]Symbol, len(raw)),
		first:   make(map[string]int32, len(raw)),
		next:    make([]int32, len(raw)),
		regions: regions,
	}
	for i, r := range raw {
		s.syms[i] = Symbol{Name: r.Name, Addr: r.Addr, Type: r.Type}
	}
	if !slices.IsSortedFunc(s.syms, func(a, b Symbol) int { return cmp.Compare(a.Addr, b.Addr) }) {
		slices.SortStableFunc(s.syms, func(a, b Symbol) int { return cmp.Compare(a.Addr, b.Addr) })
	}
	last := make(map[string]int32) // only names seen more than once
	for i := range s.syms {
		sym := &s.syms[i]
		s.next[i] = -1
		f, seen := s.first[sym.Name]
		if !seen {
			s.first[sym.Name] = int32(i)
			sym.Pos = 1
			continue
		}
		l, ok := last[sym.Name]
		if !ok {
			l = f
		}
		s.next[l] = int32(i)
		last[sym.Name] = int32(i)
		sym.Pos = s.syms[l].Pos + 1
	}
	// Walk down from the top so the next higher address is known.
	next, haveNext := uint64(0), false
	for i := len(s.syms) - 1; i >= 0; {
		j := i
		for j > 0 && s.syms[j-1].Addr == s.syms[i].Addr {
			j--
		}
		addr := s.syms[i].Addr
		var size uint64
		if r, ok := s.region(addr); ok {
			end := r.End
			if haveNext && next < end {
				end = next
			}
			size = end - addr
		}
		for k := j; k <= i; k++ {
			s.syms[k].Size = size
		}
		next, haveNext = addr, true
		i = j - 1
	}
	return s
}

// region returns the region holding addr. Sections of a vmlinux do not
// overlap, so the last one starting at or below addr is the only candidate.
func (s *Symbols) region(addr uint64) (Region, bool) {
	i := sort.Search(len(s.regions), func(k int) bool { return s.regions[k].Start > addr })
	if i > 0 && addr < s.regions[i-1].End {
		return s.regions[i-1], true
	}
	return Region{}, false
}

// Len is the number of symbols.
func (s *Symbols) Len() int { return len(s.syms) }

// All returns a copy of the symbols in table order.
func (s *Symbols) All() []Symbol { return slices.Clone(s.syms) }

// Regions returns the regions that bound symbol sizes.
func (s *Symbols) Regions() []Region { return slices.Clone(s.regions) }

// Lookup returns every symbol named name, in sympos order.
func (s *Symbols) Lookup(name string) []Symbol {
	var out []Symbol
	i, ok := s.first[name]
	for ok && i >= 0 {
		out = append(out, s.syms[i])
		i = s.next[i]
	}
	return out
}

// Find returns the symbol named name at sympos pos (1-based); pos 0 means
// the name must be unique. Errors wrap ErrNotFound, or are an
// *AmbiguousError (wrapping ErrAmbiguous) listing the candidates.
func (s *Symbols) Find(name string, pos int) (Symbol, error) {
	i, ok := s.first[name]
	switch {
	case !ok:
		return Symbol{}, fmt.Errorf("symbol %q: %w", name, ErrNotFound)
	case pos == 0 && s.next[i] < 0:
		return s.syms[i], nil
	case pos == 0:
		return Symbol{}, &AmbiguousError{Name: name, Candidates: s.Lookup(name)}
	}
	all := s.Lookup(name)
	if pos < 0 || pos > len(all) {
		return Symbol{}, fmt.Errorf("symbol %q sympos %d: %w (it has %d definitions)", name, pos, ErrNotFound, len(all))
	}
	return all[pos-1], nil
}

// At returns the symbol holding addr and addr's offset in it. Of several
// symbols at one address it returns the first in table order, as the
// kernel's own lookup (%pS) does. An address past a symbol's size, or
// outside every region, has no symbol, except exactly at a symbol's address.
func (s *Symbols) At(addr uint64) (Symbol, uint64, bool) {
	i := sort.Search(len(s.syms), func(k int) bool { return s.syms[k].Addr > addr })
	if i == 0 {
		return Symbol{}, 0, false
	}
	i--
	for i > 0 && s.syms[i-1].Addr == s.syms[i].Addr {
		i--
	}
	sym := s.syms[i]
	off := addr - sym.Addr
	if off != 0 && off >= sym.Size {
		return Symbol{}, 0, false
	}
	return sym, off, true
}

// AmbiguousError is returned by Find for a name with several definitions
// when no sympos was given.
type AmbiguousError struct {
	Name       string
	Candidates []Symbol
}

func (e *AmbiguousError) Error() string {
	var b strings.Builder
	fmt.Fprintf(&b, "symbol %q has %d definitions (", e.Name, len(e.Candidates))
	for i, c := range e.Candidates {
		if i > 0 {
			b.WriteString(", ")
		}
		fmt.Fprintf(&b, "sympos %d: %c %#x", c.Pos, c.Type, c.Addr)
	}
	b.WriteString("); add sympos")
	return b.String()
}

func (e *AmbiguousError) Is(target error) bool { return target == ErrAmbiguous }
