package srcdiff

import (
	"fmt"

	"github.com/cilium/ebpf/btf"

	"github.com/lucos/lucos/kimage"
)

// table is a section of fixed-size entries the kernel (or the loader)
// reads, each entry about one place in code: its first field is
// relocated against that place. A function taken into a patch takes its
// entries along; a function's entries are part of what it means, so they
// are compared with it where they can change it.
type table struct {
	name  string
	entry uint64 // bytes per entry
	// compare: entries count in the comparison (alternatives, exception
	// fixups, static keys, WARN flags); the others follow from the code.
	compare bool
	// ignore are byte ranges of an entry left out of the comparison: the
	// line number of a WARN/BUG site.
	ignore [][2]uint64
	// parallel names a second section whose i-th entry belongs to this
	// one's i-th (.orc_unwind beside .orc_unwind_ip).
	parallel      string
	parallelEntry uint64
}

// tables are the per-site tables of a Linux 6.1 x86-64 object, sized from
// the guest kernel's BTF where the entry is a struct.
func tables(img *kimage.Image) (map[string]*table, error) {
	size := func(name string) (uint64, error) {
		n, err := img.Sizeof(name)
		if err != nil {
			return 0, fmt.Errorf("the kernel's BTF: %w", err)
		}
		return n, nil
	}
	bug, err := size("struct bug_entry")
	if err != nil {
		return nil, err
	}
	line, err := img.FieldOffset("bug_entry", "line")
	if err != nil {
		return nil, fmt.Errorf("the kernel's BTF: %w", err)
	}
	ex, err := size("struct exception_table_entry")
	if err != nil {
		return nil, err
	}
	jump, err := size("struct jump_entry")
	if err != nil {
		return nil, err
	}
	alt, err := size("struct alt_instr")
	if err != nil {
		return nil, err
	}
	sc, err := size("struct static_call_site")
	if err != nil {
		return nil, err
	}
	orc, err := size("struct orc_entry")
	if err != nil {
		return nil, err
	}
	t := []*table{
		{name: ".altinstructions", entry: alt, compare: true},
		{name: "__ex_table", entry: ex, compare: true},
		{name: "__jump_table", entry: jump, compare: true},
		{name: "__bug_table", entry: bug, compare: true, ignore: [][2]uint64{{line, line + 2}}},
		{name: ".static_call_sites", entry: sc, compare: true},
		{name: "__mcount_loc", entry: 8},
		{name: ".return_sites", entry: 4},
		{name: ".retpoline_sites", entry: 4},
		{name: ".call_sites", entry: 4},
		{name: ".ibt_endbr_seal", entry: 4},
		{name: ".smp_locks", entry: 4},
		{name: ".orc_unwind_ip", entry: 4, parallel: ".orc_unwind", parallelEntry: orc},
	}
	if pv, err := img.Sizeof("struct paravirt_patch_site"); err == nil {
		t = append(t, &table{name: ".parainstructions", entry: pv, compare: true})
	}
	m := map[string]*table{}
	for _, x := range t {
		m[x.name] = x
	}
	return m, nil
}

// siteIgnore are the byte ranges of per-site data that hold a line
// number, by section: a pr_debug descriptor's lineno (struct _ddebug, a
// bitfield: its 32-bit word). A diff that only moves a pr_debug changes
// nothing else of it.
func siteIgnore(img *kimage.Image) map[string][][2]uint64 {
	var s *btf.Struct
	if img.BTF == nil || img.BTF.TypeByName("_ddebug", &s) != nil {
		return nil
	}
	for _, m := range s.Members {
		if m.Name == "lineno" {
			w := uint64(m.Offset) / 32 * 4
			return map[string][][2]uint64{"__dyndbg": {{w, w + 4}}}
		}
	}
	return nil
}

// entry is one entry of a table: its offset in the section and the place
// in code it is about.
type entry struct {
	off   uint64
	owner *section
	at    uint64 // offset of the place in owner
}

// entries lists a table section's entries that are about code.
func (o *object) entries(sec *section, t *table) []entry {
	var out []entry
	for _, r := range sec.relocs {
		if r.off%t.entry != 0 {
			continue // a later field of an entry
		}
		ts, off, ok := o.target(sec, r)
		if !ok || !ts.exec() {
			continue
		}
		out = append(out, entry{off: r.off, owner: ts, at: off})
	}
	return out
}
