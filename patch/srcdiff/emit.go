package srcdiff

import (
	"debug/elf"
	"fmt"
	"slices"
	"strings"
)

// The patch's code object is assembled from the patched objects: the
// functions the analysis takes (with their .cold parts), every table entry
// about them, and what their relocations need that the kernel cannot give:
// strings, constants, per-site data (WARN_ONCE flags, pr_debug
// descriptors), alternatives' replacements, new read-only data. Everything
// else they refer to — unchanged functions, the kernel's data, even the
// file's statics — becomes an undefined symbol that the loader resolves in
// the running kernel, with a sympos where the name is not unique.

// emitter assembles one code object from several analyses.
type emitter struct {
	out *outObject
	// placed maps a range of an input section to where it went.
	placed map[*section][]placement
	work   []placement // ranges whose relocations are still to be done
	// sympos the loader needs, by undefined name.
	sympos map[string]int
	// funcs are the redirects: old (guest) name, its sympos, the new
	// function's global alias.
	funcs []redirect
	next  int
	// provided maps names of the diff's code to what a companion file
	// defines for them.
	provided map[string]string
	errs     []string
}

type placement struct {
	a      *analysis
	in     *section
	lo, hi uint64
	out    *outSection
	at     uint64 // offset of lo in out
}

type redirect struct {
	oldName string
	sympos  int
	alias   string
	change  *Change
}

func newEmitter(provided map[string]string) *emitter {
	return &emitter{out: newOutObject(), placed: map[*section][]placement{}, sympos: map[string]int{}, provided: provided}
}

// add takes one file's functions and their tables.
func (e *emitter) add(a *analysis, loc *locator) error {
	var changes []*Change
	for _, ch := range a.changes {
		if ch.sym != nil {
			changes = append(changes, ch)
		}
	}
	for _, ch := range changes {
		p := e.placeFunction(a, ch.sym)
		for _, c := range ch.cold {
			e.placeFunction(a, c)
		}
		if ch.Kind != "changed" || ch.orig == nil {
			continue
		}
		g, err := loc.function(ch.orig)
		if err != nil {
			return err
		}
		pos := 0
		if len(loc.h.lookup(g.Name)) > 1 {
			pos = g.Pos
		}
		ch.Sympos = pos
		alias := fmt.Sprintf("__lucos_new_%d", e.next)
		e.next++
		e.out.define(alias, elf.STB_GLOBAL, elf.STT_FUNC, p.out, p.at, ch.sym.size)
		e.funcs = append(e.funcs, redirect{oldName: loc.h.qualify(g.Name), sympos: pos, alias: alias, change: ch})
	}
	e.takeEntries(a)
	for len(e.work) > 0 {
		p := e.work[0]
		e.work = e.work[1:]
		if err := e.relocate(p, loc); err != nil {
			return err
		}
	}
	if len(e.errs) > 0 {
		return &RefusedError{File: a.unit.Path, Reasons: e.errs}
	}
	return nil
}

// placeFunction copies a function into a section of its own, named as in
// the patched object when the function had that section to itself.
func (e *emitter) placeFunction(a *analysis, f *symbol) placement {
	name := f.sec.name
	if f.value != 0 || f.size != f.sec.hdr.Size || !strings.HasPrefix(name, ".text") {
		name = ".text.lucos." + f.name
	}
	s := &outSection{name: name, typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, align: max(f.sec.hdr.Addralign, 16)}
	s.sym = &outSymbol{bind: elf.STB_LOCAL, typ: elf.STT_SECTION, sec: s}
	e.out.secs = append(e.out.secs, s)
	e.out.syms = append(e.out.syms, s.sym)
	at := s.appendBytes(f.sec.bytesOf(f.value, f.value+f.size), f.size, 1)
	// A new global function keeps its name global: another file of the
	// diff may call it (kpatch's new-globals); it was in no object before,
	// so nothing in the kernel has that name. Others are local: the
	// kernel's function of the name stays the one other code calls.
	bind := elf.STB_LOCAL
	if f.bind == elf.STB_GLOBAL && a.counterpart(f) == nil {
		bind = elf.STB_GLOBAL
	}
	e.out.define(f.name, bind, elf.STT_FUNC, s, at, f.size)
	return e.place(a, f.sec, f.value, f.value+f.size, s, at)
}

func (e *emitter) place(a *analysis, in *section, lo, hi uint64, out *outSection, at uint64) placement {
	p := placement{a: a, in: in, lo: lo, hi: hi, out: out, at: at}
	e.placed[in] = append(e.placed[in], p)
	e.work = append(e.work, p)
	return p
}

// find returns the placement holding off of in.
func (e *emitter) find(in *section, off uint64) (placement, bool) {
	for _, p := range e.placed[in] {
		if off >= p.lo && off < p.hi || off == p.lo {
			return p, true
		}
	}
	return placement{}, false
}

// copyPiece places [lo, hi) of in into the output section of in's name
// (pieces of one input section share one output section).
func (e *emitter) copyPiece(a *analysis, in *section, lo, hi uint64) placement {
	if p, ok := e.find(in, lo); ok && p.lo <= lo && hi <= p.hi {
		return p
	}
	name := in.name
	flags := in.hdr.Flags &^ (elf.SHF_MERGE | elf.SHF_STRINGS | elf.SHF_GROUP)
	out := e.out.section(name, in.hdr.Type, flags, in.hdr.Addralign)
	align := in.hdr.Addralign
	if in.strings() {
		align = 1
	}
	at := out.appendBytes(in.bytesOf(lo, hi), hi-lo, align)
	return e.place(a, in, lo, hi, out, at)
}

// takeEntries copies every table entry about a placed function.
func (e *emitter) takeEntries(a *analysis) {
	o := a.patched
	for _, s := range o.secs {
		t, ok := a.tables[s.name]
		if !ok {
			continue
		}
		var par *section
		if t.parallel != "" {
			par = o.section(t.parallel)
		}
		for _, en := range o.entries(s, t) {
			if _, ok := e.find(en.owner, en.at); !ok {
				continue
			}
			out := e.out.section(s.name, s.hdr.Type, s.hdr.Flags&^elf.SHF_GROUP, s.hdr.Addralign)
			at := out.appendBytes(s.bytesOf(en.off, en.off+t.entry), t.entry, 1)
			e.place(a, s, en.off, en.off+t.entry, out, at)
			if par != nil {
				i := en.off / t.entry
				pout := e.out.section(par.name, par.hdr.Type, par.hdr.Flags&^elf.SHF_GROUP, par.hdr.Addralign)
				pout.appendBytes(par.bytesOf(i*t.parallelEntry, (i+1)*t.parallelEntry), t.parallelEntry, 1)
			}
		}
	}
}

// relocate redoes the relocations of one placed range.
func (e *emitter) relocate(p placement, loc *locator) error {
	a := p.a
	o := a.patched
	for _, r := range p.in.relocsIn(p.lo, p.hi) {
		off := p.at + (r.off - p.lo)
		if !r.sym.defined() {
			name, err := e.external(r.sym.name, loc)
			if err != nil {
				return err
			}
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: e.out.undefined(name), addend: r.addend})
			continue
		}
		ts, toff, _ := o.target(p.in, r)
		adj := int64(toff) - (int64(r.sym.value) + r.addend) // what the CPU adds beyond the addend
		if q, ok := e.find(ts, toff); ok {
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: q.out.sym, addend: int64(q.at+(toff-q.lo)) - adj})
			continue
		}
		n := o.symbolAt(ts, toff)
		switch {
		case n == nil:
			// Anonymous: a string, a constant, a replacement.
			lo, hi := o.piece(ts, toff)
			q := e.copyPiece(a, ts, lo, hi)
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: q.out.sym, addend: int64(q.at+(toff-q.lo)) - adj})
		case n.typ == elf.STT_OBJECT && (perSite(n) || a.fresh[n]):
			q := e.copyPiece(a, ts, n.value, n.value+n.size)
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: q.out.sym, addend: int64(q.at+(toff-q.lo)) - adj})
		case e.provided[n.name] != "":
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: e.out.undefined(e.provided[n.name]), addend: int64(toff-n.value) - adj})
		default:
			name, err := e.kernelName(a, n, loc)
			if err != nil {
				return err
			}
			p.out.relocs = append(p.out.relocs, outReloc{off: off, typ: r.typ, sym: e.out.undefined(name), addend: int64(toff-n.value) - adj})
		}
	}
	return nil
}

// kernelName is the guest's name for a symbol of the patched object that
// the patch refers to rather than carries, with its sympos recorded.
func (e *emitter) kernelName(a *analysis, n *symbol, loc *locator) (string, error) {
	if n.typ == elf.STT_FUNC {
		if strings.HasPrefix(n.sec.name, ".init.") {
			e.errs = append(e.errs, fmt.Sprintf("a patched function refers to %s, boot-time code that is freed after boot", n.name))
			return n.name, nil
		}
	} else if st := a.dataStatus[n]; st == added && n.sec.write() {
		// Allowed by the analysis only when unused by patched code.
		e.errs = append(e.errs, fmt.Sprintf("a patched function uses new writable data %s: define it in a companion file", n.name))
		return n.name, nil
	}
	o1 := a.counterpart(n)
	if o1 == nil {
		if n.typ == elf.STT_FUNC {
			e.errs = append(e.errs, fmt.Sprintf("a patched function calls %s, which the original object does not have and the patch does not carry", n.name))
			return n.name, nil
		}
		o1 = n
	}
	own := o1.bind == elf.STB_LOCAL || o1.bind == elf.STB_WEAK
	pos, err := loc.sympos(o1.name, sectionKind(o1.sec), own)
	if err != nil {
		return "", fmt.Errorf("%s: %w", a.unit.Path, err)
	}
	name := loc.h.qualify(o1.name)
	if err := e.needSympos(name, pos); err != nil {
		return "", err
	}
	return name, nil
}

// external is the loader's name for an undefined symbol of the patched
// object — a global of another object: of the module itself (qualified),
// else of the kernel — with its sympos recorded where the guest has several
// definitions of the name.
func (e *emitter) external(name string, loc *locator) (string, error) {
	if to := e.provided[name]; to != "" {
		return to, nil
	}
	h := loc.h
	if h.module && len(h.lookup(name)) == 0 {
		if loc.kernel == nil {
			return name, nil // another module's export: the loader finds it
		}
		h = loc.kernel
	}
	qname := h.qualify(name)
	if _, ok := e.sympos[qname]; ok {
		return qname, nil
	}
	all := h.lookup(name)
	if len(all) <= 1 {
		e.sympos[qname] = 0
		return qname, nil // unique, or left to the loader (weak, runtime, __fentry__)
	}
	var globals []int
	for _, s := range all {
		if s.Global() {
			globals = append(globals, s.Pos)
		}
	}
	if len(globals) != 1 {
		return "", fmt.Errorf("%w: %s has %d definitions of %s, %d of them global: cannot tell which the patch calls", ErrAmbiguous, h.name, len(all), name, len(globals))
	}
	return qname, e.needSympos(qname, globals[0])
}

func (e *emitter) needSympos(name string, pos int) error {
	if old, ok := e.sympos[name]; ok && old != pos {
		return fmt.Errorf("%w: the patch refers to two different kernel symbols named %s (sympos %d and %d); split the diff", ErrAmbiguous, name, old, pos)
	}
	e.sympos[name] = pos
	return nil
}

// symposList is the sympos the loader needs, sorted by name.
func (e *emitter) symposList() [][2]any {
	var names []string
	for n, p := range e.sympos {
		if p != 0 {
			names = append(names, n)
		}
	}
	slices.Sort(names)
	var out [][2]any
	for _, n := range names {
		out = append(out, [2]any{n, e.sympos[n]})
	}
	return out
}
