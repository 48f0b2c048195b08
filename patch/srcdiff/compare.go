package srcdiff

import (
	"bytes"
	"debug/elf"
	"regexp"
	"slices"
	"strconv"
	"strings"

	"golang.org/x/arch/x86/x86asm"
)

// The comparison of an original and a patched object, function by
// function, as kpatch's create-diff-object does it:
//
//  1. Correlate symbols: the same name, except that gcc numbers
//     function-local statics (count.12) by declaration order, which a
//     patch can shift: those are paired through the relocations of
//     functions of the same name.
//  2. A function is the same when its bytes are (relocated fields
//     masked), its relocations point at equivalent things — the same
//     (correlated) symbol at the same offset, an equal string or constant,
//     an equal anonymous piece (an alternative's replacement) — its .cold
//     part is the same, and its entries in the tables that give it meaning
//     (alternatives, exception fixups, static branches, WARN flags) are.
//  3. A function whose only differences are immediates that are line
//     numbers moved by the diff (WARN, might_sleep, ext4_error pass
//     __LINE__) is the same.
//  4. Data: a named object is the same when its size, bytes and
//     relocations are. Changed or new read-only data is copied into the
//     patch and every function using it is taken along; changed or new
//     writable data cannot be (the kernel's instance holds live state).

// status of a function or object of the patched object.
type status int

const (
	same status = iota
	changed
	added
)

type comparison struct {
	orig, patched *object
	tables        map[string]*table
	lines         []*lineChange
	// local maps numbered local symbols of the patched object to their
	// original names (count.14 → count.12).
	local map[string]string
	// dataStatus of the patched object's named data.
	dataStatus map[*symbol]status
	// visiting guards the recursive comparison of anonymous pieces.
	visiting map[[2]pieceKey]bool
	// siteIgnore: line numbers in per-site data, by section (siteIgnore()).
	siteIgnore map[string][][2]uint64
}

type pieceKey struct {
	sec *section
	off uint64
}

func newComparison(orig, patched *object, tabs map[string]*table, lines []*lineChange) *comparison {
	c := &comparison{orig: orig, patched: patched, tables: tabs, lines: lines,
		local: map[string]string{}, dataStatus: map[*symbol]status{}, visiting: map[[2]pieceKey]bool{}}
	c.correlateLocals()
	return c
}

var numbered = regexp.MustCompile(`^(.+)\.(\d+)$`)

// clone reports whether a function is a compiler-made part or clone; these
// keep their names (foo.isra.0), only local statics are renumbered.
func clone(name string) bool {
	return strings.Contains(name, ".isra.") || strings.Contains(name, ".constprop.") ||
		strings.Contains(name, ".part.") || strings.HasSuffix(name, ".cold") || strings.Contains(name, ".lto_priv.")
}

// correlateLocals pairs numbered local objects through the relocations of
// functions present in both objects: the k-th relocation of foo pointing
// at count.14 in the patched object and at count.12 in the original.
func (c *comparison) correlateLocals() {
	taken := map[string]bool{}
	for _, f2 := range c.patched.functions() {
		f1 := c.orig.lookup(f2.name)
		if f1 == nil || f1.typ != elf.STT_FUNC {
			continue
		}
		r1 := f1.sec.relocsIn(f1.value, f1.value+f1.size)
		r2 := f2.sec.relocsIn(f2.value, f2.value+f2.size)
		for i := 0; i < len(r1) && i < len(r2); i++ {
			s1 := c.orig.named(f1.sec, r1[i])
			s2 := c.patched.named(f2.sec, r2[i])
			if s1 == nil || s2 == nil || s1.bind != elf.STB_LOCAL || s2.bind != elf.STB_LOCAL || clone(s2.name) {
				continue
			}
			m1, m2 := numbered.FindStringSubmatch(s1.name), numbered.FindStringSubmatch(s2.name)
			if m1 == nil || m2 == nil || m1[1] != m2[1] {
				continue
			}
			if _, ok := c.local[s2.name]; ok || taken[s1.name] {
				continue
			}
			c.local[s2.name], taken[s1.name] = s1.name, true
		}
	}
	// Then those a changed function uses, whose relocations no longer
	// pair up: the same base name, used by a function of the same name.
	u1, u2 := localUsers(c.orig), localUsers(c.patched)
	for s2, f2 := range u2 {
		if _, ok := c.local[s2.name]; ok {
			continue
		}
		base := numbered.FindStringSubmatch(s2.name)[1]
		var match *symbol
		n := 0
		for s1, f1 := range u1 {
			if taken[s1.name] || numbered.FindStringSubmatch(s1.name)[1] != base || !intersect(f1, f2) {
				continue
			}
			match, n = s1, n+1
		}
		if n == 1 {
			c.local[s2.name], taken[match.name] = match.name, true
		}
	}
}

// localUsers maps each numbered local object of o to the functions (by
// name, .cold parts as their parent) that refer to it.
func localUsers(o *object) map[*symbol][]string {
	users := map[*symbol][]string{}
	for _, f := range o.functions() {
		name := strings.TrimSuffix(f.name, ".cold")
		for _, r := range f.sec.relocsIn(f.value, f.value+f.size) {
			n := o.named(f.sec, r)
			if n == nil || n.typ != elf.STT_OBJECT || n.bind != elf.STB_LOCAL || !numbered.MatchString(n.name) {
				continue
			}
			if !slices.Contains(users[n], name) {
				users[n] = append(users[n], name)
			}
		}
	}
	return users
}

func intersect(a, b []string) bool {
	for _, x := range a {
		if slices.Contains(b, x) {
			return true
		}
	}
	return false
}

// named returns the FUNC/OBJECT symbol a relocation points into, or nil.
func (o *object) named(s *section, r reloc) *symbol {
	ts, off, ok := o.target(s, r)
	if !ok {
		return nil
	}
	return o.symbolAt(ts, off)
}

// origName is the original object's name for a patched symbol.
func (c *comparison) origName(s *symbol) string {
	if n, ok := c.local[s.name]; ok {
		return n
	}
	return s.name
}

// counterpart returns the original object's symbol for a patched one.
func (c *comparison) counterpart(s *symbol) *symbol {
	o := c.orig.lookup(c.origName(s))
	if o == nil || o.typ != s.typ {
		return nil
	}
	if n := numbered.FindStringSubmatch(s.name); n != nil && s.bind == elf.STB_LOCAL && !clone(s.name) && s.typ == elf.STT_OBJECT {
		if _, ok := c.local[s.name]; !ok {
			// An uncorrelated numbered local: only the same number
			// counts, and only if nothing else claimed that name.
			for _, v := range c.local {
				if v == o.name {
					return nil
				}
			}
		}
	}
	return o
}

// compareData records the status of every named datum of the patched
// object.
func (c *comparison) compareData() {
	for _, s := range c.patched.syms {
		if s.typ != elf.STT_OBJECT || !s.defined() || !dataSection(s.sec) {
			continue
		}
		o := c.counterpart(s)
		switch {
		case o == nil:
			c.dataStatus[s] = added
		case o.size != s.size || !c.sameRange(o.sec, o.value, o.value+o.size, s.sec, s.value, s.value+s.size):
			c.dataStatus[s] = changed
		default:
			c.dataStatus[s] = same
		}
	}
}

// dataSection: sections of named data that live in the kernel (not the
// per-site tables, exports or discarded sections).
func dataSection(s *section) bool {
	if !s.alloc() || s.exec() {
		return false
	}
	for _, p := range []string{".data", ".bss", ".rodata", ".ref.data", ".meminit.", "__dyndbg"} {
		if strings.HasPrefix(s.name, p) {
			return true
		}
	}
	return false
}

// sameFunction compares a function of the original object with one of the
// patched object, with their .cold parts and table entries.
func (c *comparison) sameFunction(f1, f2 *symbol) bool {
	if f1.size != f2.size {
		return false
	}
	if !c.sameRange(f1.sec, f1.value, f1.value+f1.size, f2.sec, f2.value, f2.value+f2.size) {
		return false
	}
	for name, t := range c.tables {
		if !t.compare {
			continue
		}
		if !c.sameEntries(name, t, f1, f2) {
			return false
		}
	}
	return true
}

// sameEntries compares the entries of one table that are about f1 and f2.
func (c *comparison) sameEntries(name string, t *table, f1, f2 *symbol) bool {
	var e1, e2 []entry
	if s := c.orig.section(name); s != nil {
		e1 = within(c.orig.entries(s, t), f1)
	}
	if s := c.patched.section(name); s != nil {
		e2 = within(c.patched.entries(s, t), f2)
	}
	if len(e1) != len(e2) {
		return false
	}
	s1, s2 := c.orig.section(name), c.patched.section(name)
	for i := range e1 {
		if e1[i].at-f1.value != e2[i].at-f2.value {
			return false
		}
		if !c.sameEntry(s1, e1[i].off, s2, e2[i].off, t) {
			return false
		}
	}
	return true
}

// sameEntry compares two table entries, leaving out the ignored fields
// and the first (the place, compared by the caller).
func (c *comparison) sameEntry(s1 *section, off1 uint64, s2 *section, off2 uint64, t *table) bool {
	b1 := slices.Clone(s1.bytesOf(off1, off1+t.entry))
	b2 := slices.Clone(s2.bytesOf(off2, off2+t.entry))
	for _, ig := range t.ignore {
		clear(b1[ig[0]:ig[1]])
		clear(b2[ig[0]:ig[1]])
	}
	r1 := s1.relocsIn(off1, off1+t.entry)
	r2 := s2.relocsIn(off2, off2+t.entry)
	mask(b1, r1, off1)
	mask(b2, r2, off2)
	if !bytes.Equal(b1, b2) || len(r1) != len(r2) {
		return false
	}
	for i := 1; i < len(r1); i++ {
		if r1[i].off-off1 != r2[i].off-off2 || r1[i].typ != r2[i].typ || !c.sameRef(s1, r1[i], s2, r2[i]) {
			return false
		}
	}
	return true
}

// within keeps the entries about places inside function f.
func within(es []entry, f *symbol) []entry {
	var out []entry
	for _, e := range es {
		if e.owner == f.sec && e.at >= f.value && e.at < f.value+f.size {
			out = append(out, e)
		}
	}
	return out
}

func (o *object) section(name string) *section {
	for _, s := range o.secs {
		if s.name == name {
			return s
		}
	}
	return nil
}

// mask zeroes the fields relocations write, in b, which starts at offset
// base of its section.
func mask(b []byte, rs []reloc, base uint64) {
	for _, r := range rs {
		lo := int(r.off - base)
		hi := min(lo+r.size(), len(b))
		if lo >= 0 && lo < hi {
			clear(b[lo:hi])
		}
	}
}

// sameRange compares [a1, b1) of s1 (original) with [a2, b2) of s2
// (patched): bytes with relocated fields masked, and relocations.
func (c *comparison) sameRange(s1 *section, a1, b1 uint64, s2 *section, a2, b2 uint64) bool {
	if b1-a1 != b2-a2 {
		return false
	}
	d1 := slices.Clone(s1.bytesOf(a1, b1))
	d2 := slices.Clone(s2.bytesOf(a2, b2))
	r1, r2 := s1.relocsIn(a1, b1), s2.relocsIn(a2, b2)
	mask(d1, r1, a1)
	mask(d2, r2, a2)
	if len(r1) != len(r2) {
		return false
	}
	for i := range r1 {
		if r1[i].off-a1 != r2[i].off-a2 || r1[i].typ != r2[i].typ || !c.sameRef(s1, r1[i], s2, r2[i]) {
			return false
		}
	}
	if bytes.Equal(d1, d2) {
		return true
	}
	if s1.strings() {
		return c.stringLinesOnly(d1, d2)
	}
	return s1.exec() && c.lineNumbersOnly(d1, d2)
}

var digits = regexp.MustCompile(`[0-9]+`)

// stringLinesOnly reports whether two strings differ only in numbers that
// are line numbers the diff moved: __stringify(__LINE__) in a message
// (fortify's "... (line 8495)").
func (c *comparison) stringLinesOnly(d1, d2 []byte) bool {
	n1, n2 := digits.FindAllIndex(d1, -1), digits.FindAllIndex(d2, -1)
	if len(n1) != len(n2) || len(n1) == 0 {
		return false
	}
	var rest1, rest2 []byte
	p1, p2 := 0, 0
	for i := range n1 {
		a, b := d1[n1[i][0]:n1[i][1]], d2[n2[i][0]:n2[i][1]]
		rest1 = append(rest1, d1[p1:n1[i][0]]...)
		rest2 = append(rest2, d2[p2:n2[i][0]]...)
		p1, p2 = n1[i][1], n2[i][1]
		if bytes.Equal(a, b) {
			continue
		}
		x, err1 := strconv.ParseInt(string(a), 10, 64)
		y, err2 := strconv.ParseInt(string(b), 10, 64)
		if err1 != nil || err2 != nil || !c.movedLine(x, y) {
			return false
		}
	}
	return bytes.Equal(append(rest1, d1[p1:]...), append(rest2, d2[p2:]...))
}

// sameRef reports whether two relocations point at equivalent things.
func (c *comparison) sameRef(s1 *section, r1 reloc, s2 *section, r2 reloc) bool {
	if !r1.sym.defined() || !r2.sym.defined() {
		return !r1.sym.defined() && !r2.sym.defined() && r1.sym.name == r2.sym.name && r1.addend == r2.addend
	}
	t1, off1, _ := c.orig.target(s1, r1)
	t2, off2, _ := c.patched.target(s2, r2)
	n1, n2 := c.orig.symbolAt(t1, off1), c.patched.symbolAt(t2, off2)
	switch {
	case n1 != nil && n2 != nil:
		if off1-n1.value != off2-n2.value {
			return false
		}
		if perSite(n2) {
			if ig := c.siteIgnore[t2.name]; ig != nil && n1.size == n2.size {
				return c.sameSite(t1, n1, t2, n2, ig)
			}
			return c.samePiece(t1, n1.value, n1.value+n1.size, t2, n2.value, n2.value+n2.size)
		}
		return c.origName(n2) == n1.name
	case n1 == nil && n2 == nil:
		if pieceName(t1.name) != pieceName(t2.name) {
			return false
		}
		a1, e1 := c.orig.piece(t1, off1)
		a2, e2 := c.patched.piece(t2, off2)
		return c.samePiece(t1, a1, e1, t2, a2, e2)
	}
	return false
}

// sameSite compares two per-site objects leaving out their line numbers
// (ranges ig, from the object's start): bytes, then relocations.
func (c *comparison) sameSite(t1 *section, n1 *symbol, t2 *section, n2 *symbol, ig [][2]uint64) bool {
	d1 := slices.Clone(t1.bytesOf(n1.value, n1.value+n1.size))
	d2 := slices.Clone(t2.bytesOf(n2.value, n2.value+n2.size))
	r1, r2 := t1.relocsIn(n1.value, n1.value+n1.size), t2.relocsIn(n2.value, n2.value+n2.size)
	mask(d1, r1, n1.value)
	mask(d2, r2, n2.value)
	for _, r := range ig {
		if r[1] <= uint64(len(d1)) {
			clear(d1[r[0]:r[1]])
			clear(d2[r[0]:r[1]])
		}
	}
	if !bytes.Equal(d1, d2) || len(r1) != len(r2) {
		return false
	}
	key := [2]pieceKey{{t1, n1.value}, {t2, n2.value}}
	if c.visiting[key] {
		return true
	}
	c.visiting[key] = true
	defer delete(c.visiting, key)
	for i := range r1 {
		if r1[i].off-n1.value != r2[i].off-n2.value || r1[i].typ != r2[i].typ || !c.sameRef(t1, r1[i], t2, r2[i]) {
			return false
		}
	}
	return true
}

// samePiece compares anonymous or per-site pieces, guarding against cycles.
func (c *comparison) samePiece(t1 *section, a1, e1 uint64, t2 *section, a2, e2 uint64) bool {
	key := [2]pieceKey{{t1, a1}, {t2, a2}}
	if c.visiting[key] {
		return true
	}
	c.visiting[key] = true
	defer delete(c.visiting, key)
	return c.sameRange(t1, a1, e1, t2, a2, e2)
}

// perSite reports whether a named object belongs to one place in the code
// rather than being state of the kernel: a WARN_ONCE flag, a pr_debug
// descriptor, __func__. Such objects are compared by content and copied
// into a patch, never shared with the kernel.
func perSite(s *symbol) bool {
	if s.sec.strings() || strings.HasPrefix(s.sec.name, ".data.once") || strings.HasPrefix(s.sec.name, ".data..once") || s.sec.name == "__dyndbg" {
		return true
	}
	for _, p := range []string{"__func__.", "__FUNCTION__.", "__PRETTY_FUNCTION__.", "__UNIQUE_ID_ddebug"} {
		if strings.HasPrefix(s.name, p) {
			return true
		}
	}
	return false
}

// pieceName is a section name without gcc's per-function part (string
// sections are .rodata.<function>.str1.1 with -fdata-sections) or the
// number of a local static it is named after (.rodata.offsets.67).
func pieceName(name string) string {
	if i := strings.Index(name, ".str"); i >= 0 && strings.HasPrefix(name, ".rodata") {
		return ".rodata" + name[i:]
	}
	if m := numbered.FindStringSubmatch(name); m != nil {
		return m[1]
	}
	return name
}

// lineNumbersOnly reports whether two equally long pieces of code differ
// only in immediates that are line numbers the diff moved: the same
// instructions, and wherever an immediate differs, the original value is a
// line of a changed file that the diff moved to the patched value.
func (c *comparison) lineNumbersOnly(d1, d2 []byte) bool {
	if len(c.lines) == 0 {
		return false
	}
	for pc := 0; pc < len(d1); {
		i1, err1 := x86asm.Decode(d1[pc:], 64)
		i2, err2 := x86asm.Decode(d2[pc:], 64)
		if err1 != nil || err2 != nil || i1.Len != i2.Len || i1.Op != i2.Op {
			return false
		}
		if !bytes.Equal(d1[pc:pc+i1.Len], d2[pc:pc+i2.Len]) {
			for k := range i1.Args {
				a1, a2 := i1.Args[k], i2.Args[k]
				if a1 == a2 {
					continue
				}
				m1, ok1 := a1.(x86asm.Imm)
				m2, ok2 := a2.(x86asm.Imm)
				if !ok1 || !ok2 || !c.movedLine(int64(m1), int64(m2)) {
					return false
				}
			}
		}
		pc += i1.Len
	}
	return true
}

// movedLine reports whether the diff moved line old of some changed file
// to line new.
func (c *comparison) movedLine(old, new int64) bool {
	if old <= 0 || new <= 0 || old > 1<<20 {
		return false
	}
	for _, lc := range c.lines {
		if n, ok := lc.newLine(int(old)); ok && int64(n) == new {
			return true
		}
	}
	return false
}
