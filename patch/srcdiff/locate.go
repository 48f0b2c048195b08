package srcdiff

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"fmt"
	"io/fs"
	"path/filepath"
	"slices"
	"strings"

	"github.com/lucos/lucos/kimage"
)

// home is where a compiled file's code runs in the guest — vmlinux, or a
// module — as lucos can see it without the guest: its symbols (kallsyms
// for vmlinux, the .ko's symbol table for a module) and its code bytes as
// built, to check that the original object is what the guest runs.
type home struct {
	name   string // "vmlinux" or the module name
	module bool
	// lookup returns the definitions of a name, Pos numbered as the
	// loader counts them in the running guest.
	lookup func(name string) []kimage.Symbol
	// code returns n bytes of a symbol and which of them the image's own
	// relocations (a module's) leave unknown; ok=false if it holds no code.
	code func(s kimage.Symbol, n uint64) ([]byte, []bool, bool)
	// where names an address of lookup's symbols for a message.
	where func(addr uint64) string
}

// qualify is the loader's name for a symbol of this home: a module's are
// "module:name" (resolved in that module only, once it is loaded).
func (h *home) qualify(name string) string {
	if h.module && len(h.lookup(name)) > 0 {
		return h.name + ":" + name
	}
	return name
}

// vmlinuxHome reads the kernel image's code: the decompressed vmlinux keeps
// its section headers, and its code is what the object files link into.
func vmlinuxHome(img *kimage.Image, vmlinux []byte) (*home, error) {
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	type span struct {
		addr uint64
		data []byte
	}
	var spans []span
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_EXECINSTR == 0 || s.Type != elf.SHT_PROGBITS {
			continue
		}
		b, err := s.Data()
		if err != nil {
			return nil, fmt.Errorf("vmlinux %s: %w", s.Name, err)
		}
		spans = append(spans, span{s.Addr, b})
	}
	return &home{name: "vmlinux", lookup: img.Symbols.Lookup, code: func(sym kimage.Symbol, n uint64) ([]byte, []bool, bool) {
		addr := sym.Addr
		for _, s := range spans {
			if addr >= s.addr && addr+n <= s.addr+uint64(len(s.data)) {
				return s.data[addr-s.addr : addr-s.addr+n], nil, true
			}
		}
		return nil, nil, false
	}}, nil
}

// moduleHome reads a module of the release from its .ko: its symbol table
// (the loader counts sympos in it as the guest's module kallsyms keeps it:
// defined, named symbols of allocated, non-init sections, in table order)
// and its code, whose relocated fields are unknown.
func moduleHome(name, ko string) (*home, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, fmt.Errorf("module %s: %w", name, err)
	}
	defer f.Close()
	esyms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", ko, err)
	}
	type place struct {
		sec   int
		value uint64
	}
	places := map[uint64]place{}
	byName := map[string][]kimage.Symbol{}
	for _, es := range esyms {
		sec := int(es.Section)
		if es.Name == "" || es.Section == elf.SHN_UNDEF || sec >= len(f.Sections) {
			continue
		}
		s := f.Sections[sec]
		if s.Flags&elf.SHF_ALLOC == 0 || strings.HasPrefix(s.Name, ".init") {
			continue
		}
		t := byte('d')
		switch {
		case s.Flags&elf.SHF_EXECINSTR != 0:
			t = 't'
		case s.Type == elf.SHT_NOBITS:
			t = 'b'
		case s.Flags&elf.SHF_WRITE == 0:
			t = 'r'
		}
		if elf.ST_BIND(es.Info) == elf.STB_GLOBAL {
			t -= 'a' - 'A'
		}
		// The .ko is not linked to addresses: a symbol's is its section's
		// index and its offset there, so that distances within a section,
		// which nearest measures, are the real ones; places maps it back.
		addr := uint64(sec)<<32 | es.Value
		places[addr] = place{sec, es.Value}
		list := byName[es.Name]
		byName[es.Name] = append(list, kimage.Symbol{Name: es.Name, Addr: addr, Type: t, Size: es.Size, Pos: len(list) + 1})
	}
	data := map[int][]byte{}
	unknown := map[int][]bool{}
	for i, s := range f.Sections {
		if s.Flags&elf.SHF_EXECINSTR == 0 || s.Type != elf.SHT_PROGBITS {
			continue
		}
		b, err := s.Data()
		if err != nil {
			return nil, fmt.Errorf("%s %s: %w", ko, s.Name, err)
		}
		data[i] = b
		unknown[i] = make([]bool, len(b))
	}
	for _, rs := range f.Sections {
		if rs.Type != elf.SHT_RELA || unknown[int(rs.Info)] == nil {
			continue
		}
		raw, err := rs.Data()
		if err != nil {
			return nil, err
		}
		u := unknown[int(rs.Info)]
		for off := 0; off+24 <= len(raw); off += 24 {
			at := binary.LittleEndian.Uint64(raw[off:])
			for k := at; k < at+4 && k < uint64(len(u)); k++ {
				u[k] = true
			}
		}
	}
	return &home{name: name, module: true,
		where: func(a uint64) string {
			if sec := int(a >> 32); sec < len(f.Sections) {
				return fmt.Sprintf("%s+%#x", f.Sections[sec].Name, a&0xffffffff)
			}
			return fmt.Sprintf("%#x", a)
		},
		lookup: func(n string) []kimage.Symbol { return byName[n] },
		code: func(sym kimage.Symbol, n uint64) ([]byte, []bool, bool) {
			p, ok := places[sym.Addr]
			b := data[p.sec]
			if !ok || b == nil || p.value+n > uint64(len(b)) {
				return nil, nil, false
			}
			return b[p.value : p.value+n], unknown[p.sec][p.value : p.value+n], true
		}}, nil
}

// findModule returns the .ko of module name under the release's modules
// directory (file names may spell '_' as '-').
func findModule(modulesDir, name string) (string, error) {
	want := strings.ReplaceAll(name, "-", "_") + ".ko"
	var found string
	err := filepath.WalkDir(modulesDir, func(p string, d fs.DirEntry, err error) error {
		if err == nil && !d.IsDir() && strings.ReplaceAll(d.Name(), "-", "_") == want {
			found = p
			return fs.SkipAll
		}
		return nil
	})
	if err != nil {
		return "", err
	}
	if found == "" {
		return "", fmt.Errorf("%w: the release ships no module %s under %s", ErrSourceMismatch, name, modulesDir)
	}
	return found, nil
}

// locator finds the guest's definitions of an object's symbols.
type locator struct {
	h      *home
	orig   *object
	kernel *home // vmlinux, for a module's references to the kernel
}

// kind of a symbol for matching kallsyms types.
func symKind(t byte) byte {
	switch t {
	case 'T', 't', 'W', 'w':
		return 't'
	case 'D', 'd', 'V', 'v':
		return 'd'
	case 'B', 'b':
		return 'b'
	case 'R', 'r':
		return 'r'
	}
	return t | 0x20
}

// sectionKind is the kallsyms kind of an object section.
func sectionKind(s *section) byte {
	switch {
	case s.exec():
		return 't'
	case s.hdr.Type == elf.SHT_NOBITS:
		return 'b'
	case s.write():
		return 'd'
	}
	return 'r'
}

// matches reports whether a guest symbol can be a definition of an object
// symbol of kind k. kallsyms calls read-only data in .rodata 'D' or 'd' as
// often as 'R': any data kind matches any data kind.
func matches(gs kimage.Symbol, k byte) bool {
	gk := symKind(gs.Type)
	if k == 't' || gk == 't' {
		return k == gk
	}
	return gk != 'a' && gk != 'u'
}

// function returns the guest's definition of f, a function of the original
// object, checking that its code is f's: the bytes must agree wherever no
// relocation writes. Among same-named statics the one whose code agrees is
// taken.
func (l *locator) function(f *symbol) (kimage.Symbol, error) {
	cands := l.candidates(f.name, 't')
	if len(cands) == 0 {
		return kimage.Symbol{}, fmt.Errorf("%w: %s has no function %s (was %s built into it with this configuration?)", ErrSourceMismatch, l.h.name, f.name, l.orig.path)
	}
	var ok []kimage.Symbol
	for _, c := range cands {
		if l.sameCode(f, c) {
			ok = append(ok, c)
		}
	}
	switch len(ok) {
	case 1:
		return ok[0], nil
	case 0:
		return kimage.Symbol{}, fmt.Errorf("%w: the original build of %s differs from %s's code (%d candidate(s)): the source or its configuration is not what the guest's kernel was built from", ErrSourceMismatch, f.name, l.h.name, len(cands))
	}
	// Identical copies (a static inline emitted out of line by several
	// files): any is right for calling; for replacing, all are the same
	// code, so the first that is this object's by neighbourhood.
	if c, err := l.nearest(f.name, ok, 't'); err == nil {
		return c, nil
	}
	return ok[0], nil
}

// sameCode compares f's bytes (relocated fields masked) with the guest's at c.
func (l *locator) sameCode(f *symbol, c kimage.Symbol) bool {
	if c.Size < f.size {
		return false
	}
	got, unknown, ok := l.h.code(c, f.size)
	if !ok {
		return false
	}
	want := slices.Clone(f.sec.bytesOf(f.value, f.value+f.size))
	got = slices.Clone(got)
	rs := f.sec.relocsIn(f.value, f.value+f.size)
	mask(want, rs, f.value)
	mask(got, rs, f.value)
	for i, u := range unknown {
		if u {
			want[i], got[i] = 0, 0
		}
	}
	return bytes.Equal(want, got)
}

// candidates are the guest symbols of that name and kind, in sympos order.
func (l *locator) candidates(name string, k byte) []kimage.Symbol {
	var out []kimage.Symbol
	for _, s := range l.h.lookup(name) {
		if matches(s, k) {
			out = append(out, s)
		}
	}
	return out
}

// sympos returns the sympos the loader needs for a reference to name: 0
// when the guest has one definition of it, else the position of the one
// this object means — for a global of another object the only global
// definition, for the object's own static the definition nearest the
// object's other symbols in the guest.
func (l *locator) sympos(name string, k byte, own bool) (int, error) {
	all := l.h.lookup(name)
	if len(all) == 1 {
		return 0, nil
	}
	if len(all) == 0 {
		return 0, fmt.Errorf("%w: %s has no symbol %s", ErrSourceMismatch, l.h.name, name)
	}
	cands := l.candidates(name, k)
	if !own {
		var globals []kimage.Symbol
		for _, c := range cands {
			if c.Global() {
				globals = append(globals, c)
			}
		}
		if len(globals) == 1 {
			return globals[0].Pos, nil
		}
		cands = globals
	}
	switch len(cands) {
	case 0:
		return 0, fmt.Errorf("%w: %s defines %s %d times, none of the kind %c", ErrSourceMismatch, l.h.name, name, len(all), k)
	case 1:
		return cands[0].Pos, nil
	}
	if k == 't' {
		if f := l.orig.lookup(name); f != nil && f.typ == elf.STT_FUNC {
			c, err := l.function(f)
			if err != nil {
				return 0, err
			}
			return c.Pos, nil
		}
	}
	if c, ok := l.byUse(name, cands); ok {
		return c.Pos, nil
	}
	c, err := l.nearest(name, cands, k)
	if err != nil {
		return 0, err
	}
	return c.Pos, nil
}

// byUse picks, among cands, the definition of the object's static name
// that the guest's copy of one of the object's functions refers to: the
// function is located by its code, and its relocated field, which the
// image holds linked, says where the static is. It needs a linked image
// (vmlinux: a module's fields are unknown until it loads).
func (l *locator) byUse(name string, cands []kimage.Symbol) (kimage.Symbol, bool) {
	target := l.orig.lookup(name)
	if target == nil {
		return kimage.Symbol{}, false
	}
	for _, f := range l.orig.syms {
		if !f.defined() || f.typ != elf.STT_FUNC || f.size == 0 {
			continue
		}
		for _, r := range f.sec.relocsIn(f.value, f.value+f.size) {
			// The static itself, or its section (gas turns references
			// to local symbols into section+offset).
			var base uint64
			switch {
			case r.sym == target:
			case r.sym != nil && r.sym.typ == elf.STT_SECTION && r.sym.sec == target.sec:
				base = target.value
			default:
				continue
			}
			width := uint64(4)
			switch r.typ {
			case elf.R_X86_64_PC32, elf.R_X86_64_PLT32, elf.R_X86_64_32S, elf.R_X86_64_32:
			case elf.R_X86_64_64:
				width = 8
			default:
				continue
			}
			c, err := l.function(f)
			if err != nil {
				break // not located: try another function
			}
			code, unknown, ok := l.h.code(c, f.size)
			at := r.off - f.value
			if !ok || at+width > uint64(len(code)) || len(unknown) == len(code) && slices.Contains(unknown[at:at+width], true) {
				break
			}
			var field int64
			if width == 8 {
				field = int64(binary.LittleEndian.Uint64(code[at:]))
			} else if r.typ == elf.R_X86_64_32 {
				field = int64(binary.LittleEndian.Uint32(code[at:]))
			} else {
				field = int64(int32(binary.LittleEndian.Uint32(code[at:])))
			}
			// field = S + A (- P): S is where the symbol of the relocation is.
			sym := uint64(field - r.addend)
			if r.pcRelative() {
				sym += c.Addr + at
			}
			for _, cand := range cands {
				if cand.Addr == sym+base {
					return cand, true
				}
			}
		}
	}
	return kimage.Symbol{}, false
}

// nearest picks, among cands, the definition that lies among the object's
// other symbols of the same kind in the guest: the linker keeps one
// object's .text, .data and .bss together, so the object's uniquely named
// symbols (anchors) bracket its statics.
func (l *locator) nearest(name string, cands []kimage.Symbol, k byte) (kimage.Symbol, error) {
	var anchors []uint64
	for _, s := range l.orig.syms {
		if !s.defined() || (s.typ != elf.STT_FUNC && s.typ != elf.STT_OBJECT) || s.name == name || sectionKind(s.sec) != k {
			continue
		}
		g := l.h.lookup(s.name)
		if len(g) == 1 && matches(g[0], k) {
			anchors = append(anchors, g[0].Addr)
		}
	}
	if len(anchors) == 0 {
		return kimage.Symbol{}, fmt.Errorf("%w: %s defines %s %d times and nothing else of %s locates this object's: cannot tell which one is meant", ErrAmbiguous, l.h.name, name, len(cands), l.orig.path)
	}
	dist := func(a uint64) uint64 {
		d := ^uint64(0)
		for _, x := range anchors {
			d = min(d, max(a, x)-min(a, x))
		}
		return d
	}
	slices.SortFunc(cands, func(a, b kimage.Symbol) int {
		da, db := dist(a.Addr), dist(b.Addr)
		if da < db {
			return -1
		} else if da > db {
			return 1
		}
		return 0
	})
	best, next := dist(cands[0].Addr), dist(cands[1].Addr)
	if best > 4<<20 || next < 4*best+64 {
		var where []string
		for i, c := range cands {
			if i == 4 {
				where = append(where, "...")
				break
			}
			if l.h.where != nil {
				where = append(where, l.h.where(c.Addr))
			} else {
				where = append(where, fmt.Sprintf("%#x", c.Addr))
			}
		}
		return kimage.Symbol{}, fmt.Errorf("%w: %s defines %s %d times (%s) and the object's neighbours do not tell which is %s's", ErrAmbiguous, l.h.name, name, len(cands), strings.Join(where, ", "), l.orig.path)
	}
	return cands[0], nil
}
