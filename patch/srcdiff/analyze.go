package srcdiff

import (
	"debug/elf"
	"fmt"
	"slices"
	"strings"
)

// Change is what the comparison found about one function or datum of a
// changed source file.
type Change struct {
	File   string `json:"file"`   // the source file: "net/ipv4/fib_semantics.c"
	Object string `json:"object"` // where it runs: "vmlinux" or the module's name
	Name   string `json:"name"`   // the symbol: "fib_rebalance", "fib_sync_up.part.0"
	// Kind: "changed" (replaced by its new version), "new" (a function
	// the patch adds, called by changed ones), "data" (read-only data the
	// patch carries a new copy of).
	Kind   string `json:"kind"`
	Reason string `json:"reason,omitempty"` // why it changed, when not its own lines
	Sympos int    `json:"sympos,omitempty"` // among same-named kernel statics, 0 = unique

	sym  *symbol   // in the patched object
	orig *symbol   // in the original object (changed only)
	cold []*symbol // its .cold parts, taken along
}

func (ch *Change) String() string {
	s := ch.Kind + ": " + ch.Name
	if ch.Reason != "" {
		s += " (" + ch.Reason + ")"
	}
	return s
}

// analysis is the comparison of one source file's two objects.
type analysis struct {
	*comparison
	unit    *unit
	changes []*Change
	// include: functions of the patched object that go into the patch.
	include map[*symbol]*Change
	// fresh: read-only data copied into the patch (changed or new).
	fresh map[*symbol]bool
}

// analyze compares the original and patched objects of u and decides what
// the patch carries. provided maps names the diff's code uses to what a
// companion file defines for them (new data, or a LUCOS_DATA's new version).
func analyze(u *unit, c *comparison, provided map[string]string) (*analysis, error) {
	a := &analysis{comparison: c, unit: u, include: map[*symbol]*Change{}, fresh: map[*symbol]bool{}}
	object := "vmlinux"
	if u.Module != "" {
		object = u.Module
	}
	add := func(f2, f1 *symbol, kind, reason string) *Change {
		ch := &Change{File: u.Path, Object: object, Name: f2.name, Kind: kind, Reason: reason, sym: f2, orig: f1}
		if cold := c.patched.lookup(f2.name + ".cold"); cold != nil {
			ch.cold = append(ch.cold, cold)
		}
		a.include[f2] = ch
		a.changes = append(a.changes, ch)
		return ch
	}
	var refused []string
	for _, f2 := range c.patched.functions() {
		if strings.HasSuffix(f2.name, ".cold") {
			continue
		}
		f1 := c.orig.lookup(f2.name)
		if f1 != nil && f1.typ != elf.STT_FUNC {
			f1 = nil
		}
		switch {
		case f1 == nil:
			if initSection(f2.sec) {
				continue // new boot-time code never runs
			}
			add(f2, nil, "new", "")
		case !c.sameFunction(f1, f2) || !c.sameCold(f1, f2):
			if initSection(f2.sec) || initSection(f1.sec) {
				refused = append(refused, fmt.Sprintf("%s is boot-time code (%s) and changed: it ran when the guest booted and is freed; a live patch cannot re-run it", f2.name, f2.sec.name))
				continue
			}
			if strings.HasPrefix(f2.sec.name, ".exit.") {
				refused = append(refused, fmt.Sprintf("%s is module exit code (%s) and changed: it runs only when the module is unloaded, which a live patch cannot redirect", f2.name, f2.sec.name))
				continue
			}
			add(f2, f1, "changed", "")
		}
	}

	// A changed function without an ftrace entry (notrace, or the
	// out-of-line copy of an inline: __do_sys_newuname) cannot be
	// redirected; the patch carries its new version and replaces its
	// callers instead, up to functions that can be redirected.
	for i := 0; i < len(a.changes); i++ {
		ch := a.changes[i]
		if ch.Kind != "changed" || ch.orig == nil || hasFentry(c.orig, ch.orig) {
			continue
		}
		if ch.orig.bind != elf.STB_LOCAL {
			refused = append(refused, fmt.Sprintf("%s changed, has no ftrace entry to redirect (notrace), and is global: code of other files calls it", ch.Name))
			continue
		}
		if where := addressTaken(c.patched, ch.sym); where != "" {
			refused = append(refused, fmt.Sprintf("%s changed, has no ftrace entry to redirect (notrace or inline), and its address is taken (%s)", ch.Name, where))
			continue
		}
		ch.Kind, ch.Reason = "new", "changed, but has no ftrace entry to redirect (notrace or inline): carried for its callers"
		for _, f := range a.users(ch.sym) {
			if _, ok := a.include[f]; ok || f == ch.sym {
				continue
			}
			add(f, c.orig.lookup(f.name), "changed", "calls "+ch.Name+", which has no ftrace entry")
		}
	}

	c.compareData()
	for _, d := range sortedData(c.dataStatus) {
		st := c.dataStatus[d]
		if st == same || perSite(d) {
			continue
		}
		what := map[status]string{changed: "changed", added: "new"}[st]
		users := a.users(d)
		if held := a.heldByData(d, c.dataStatus); st == changed && !d.sec.write() && len(held) > 0 {
			refused = append(refused, fmt.Sprintf("changed constant %s is referenced by %s, which the diff leaves as is: the kernel reaches the old %s through it, so a copy in the patch would not be live there (an ops table or netlink policy reached through a registered structure); change the referencing data in the diff too, or replace the functions that read it", d.name, strings.Join(held, ", "), d.name))
			continue
		}
		switch {
		case !d.sec.write():
			a.fresh[d] = true
			for _, f := range users {
				if _, ok := a.include[f]; ok {
					continue
				}
				if initSection(f.sec) {
					continue
				}
				add(f, c.orig.lookup(f.name), "changed", fmt.Sprintf("uses %s constant %s", what, d.name))
			}
			a.changes = append(a.changes, &Change{File: u.Path, Object: object, Name: d.name, Kind: "data", Reason: what + " read-only data, carried by the patch"})
		case provided[d.name] != "":
			// The companion file defines it.
		case st == added && d.size == 0:
			// Nothing to share (an empty lock_class_key without lockdep);
			// the patch carries it, so it has an address.
			a.fresh[d] = true
		case st == added && numbered.MatchString(d.name) && d.bind == elf.STB_LOCAL && !strings.HasPrefix(d.sec.name, ".data..percpu"):
			// A new function-local static: state of new code only, which
			// no old code has; the patch carries it, initialised as
			// compiled (function-local statics need no init code).
			a.fresh[d] = true
			a.changes = append(a.changes, &Change{File: u.Path, Object: object, Name: d.name, Kind: "data", Reason: "new function-local static, carried by the patch"})
		case st == added && strings.HasPrefix(d.sec.name, ".data..percpu"):
			refused = append(refused, fmt.Sprintf("new per-CPU data %s: a patch cannot allocate per-CPU space", d.name))
		case st == added && a.onlyPatchedUsers(users):
			// New data that only the patch's own code uses: no old code
			// knows it, so the patch carries it, initialised as compiled
			// (as kpatch does). What boot-time code would have set up
			// cannot be: that case is refused below.
			a.fresh[d] = true
			a.changes = append(a.changes, &Change{File: u.Path, Object: object, Name: d.name, Kind: "data", Reason: "new data, carried by the patch"})
		case st == added && !a.usedByIncluded(users):
			// New data no patched function uses.
		case strings.HasPrefix(d.sec.name, ".init.") || strings.HasPrefix(d.sec.name, ".exit."):
		default:
			why := "the kernel's instance holds live state that a new copy would not share"
			if st == added {
				why = "code the patch does not carry uses it too (boot-time code that would set it up, or code of the unchanged kernel)"
			}
			refused = append(refused, fmt.Sprintf("%s data %s (%s, %d bytes) is writable and %s; define it in a companion file (--companion FILE.c) with LUCOS_DATA for a changed layout or as the new variable, or use shadow variables (docs/PATCH-FORMAT.md)", what, d.name, d.sec.name, d.size, why))
		}
	}
	if len(refused) > 0 {
		return nil, &RefusedError{File: u.Path, Reasons: refused}
	}
	return a, nil
}

// sameCold compares the .cold parts of two functions.
func (c *comparison) sameCold(f1, f2 *symbol) bool {
	c1, c2 := c.orig.lookup(f1.name+".cold"), c.patched.lookup(f2.name+".cold")
	if c1 == nil || c2 == nil {
		return c1 == nil && c2 == nil
	}
	return c.sameFunction(c1, c2)
}

// users lists the functions of the patched object that refer to d.
func (a *analysis) users(d *symbol) []*symbol {
	var out []*symbol
	for _, f := range a.patched.functions() {
		for _, r := range f.sec.relocsIn(f.value, f.value+f.size) {
			if a.patched.named(f.sec, r) == d {
				if p := parentOf(a.patched, f); p != nil {
					f = p
				}
				if !slices.Contains(out, f) {
					out = append(out, f)
				}
				break
			}
		}
	}
	return out
}

// heldByData names the unchanged data of the patched object (compareData's
// named kernel data), other than boot-time data, that points to d: the kernel's copies of it point to the
// kernel's d.
func (a *analysis) heldByData(d *symbol, status map[*symbol]status) []string {
	var out []string
	for _, e := range a.patched.syms {
		if st, ok := status[e]; !ok || st != same || e == d || // named kernel data only, as compareData has it
			strings.HasPrefix(e.sec.name, ".init.") || strings.HasPrefix(e.sec.name, ".exit.") {
			continue
		}
		for _, r := range e.sec.relocsIn(e.value, e.value+max(e.size, 1)) {
			if a.patched.named(e.sec, r) == d {
				out = append(out, e.name)
				break
			}
		}
	}
	return out
}

// parentOf returns the function a .cold part belongs to.
func parentOf(o *object, f *symbol) *symbol {
	if name, ok := strings.CutSuffix(f.name, ".cold"); ok {
		return o.lookup(name)
	}
	return nil
}

// onlyPatchedUsers reports whether every user is a function the patch
// carries (none boot-time code), and there is one.
func (a *analysis) onlyPatchedUsers(users []*symbol) bool {
	for _, f := range users {
		if _, ok := a.include[f]; !ok || initSection(f.sec) {
			return false
		}
	}
	return len(users) > 0
}

func (a *analysis) usedByIncluded(users []*symbol) bool {
	for _, f := range users {
		if _, ok := a.include[f]; ok {
			return true
		}
	}
	return false
}

func initSection(s *section) bool {
	return strings.HasPrefix(s.name, ".init.") || strings.HasPrefix(s.name, ".head.text")
}

func sortedData(m map[*symbol]status) []*symbol {
	var out []*symbol
	for s := range m {
		out = append(out, s)
	}
	slices.SortFunc(out, func(a, b *symbol) int { return a.idx - b.idx })
	return out
}

// hasFentry reports whether f starts with its `call __fentry__` (after an
// endbr64, when the kernel has IBT).
func hasFentry(o *object, f *symbol) bool {
	for _, r := range f.sec.relocsIn(f.value, f.value+16) {
		if r.sym != nil && !r.sym.defined() && r.sym.name == "__fentry__" {
			return true
		}
	}
	return false
}

// addressTaken names a datum of o that holds f's address, or "".
func addressTaken(o *object, f *symbol) string {
	for _, s := range o.secs {
		if !dataSection(s) {
			continue
		}
		for _, r := range s.relocs {
			if n := o.named(s, r); n == f {
				if d := o.symbolAt(s, r.off); d != nil {
					return d.name
				}
				return s.name
			}
		}
	}
	return ""
}
