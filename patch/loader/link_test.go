package loader

import (
	"bytes"
	"encoding/binary"
	"errors"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

const slot = 2 << 20

// offline links module name against the fake kernel at the first 2 MiB
// slot above _end.
func offline(t *testing.T, name string) (*Module, *fakeKernel, uint64) {
	t.Helper()
	img := testKernel(t)
	mods := testModules(t)
	m, err := Parse(mods[name])
	if err != nil {
		t.Fatalf("Parse %s: %v", name, err)
	}
	k := newFakeKernel(t, img)
	end := k.addr(t, "_end")
	return m, k, alignUp(end, slot)
}

func mustLink(t *testing.T, m *Module, k Target, base uint64) *Image {
	t.Helper()
	im, err := m.Link(k, base, slot)
	if err != nil {
		t.Fatalf("Link %s: %v", m.Name, err)
	}
	return im
}

// insn is one decoded instruction of linked patch code.
type insn struct {
	addr uint64
	x86asm.Inst
}

// dest is the branch target or RIP-relative memory address of i.
func (i insn) dest() (uint64, bool) {
	for _, a := range i.Args {
		switch a := a.(type) {
		case x86asm.Rel:
			return i.addr + uint64(i.Len) + uint64(int64(a)), true
		case x86asm.Mem:
			if a.Base == x86asm.RIP {
				return i.addr + uint64(i.Len) + uint64(a.Disp), true
			}
		}
	}
	return 0, false
}

func (i insn) String() string { return x86asm.GNUSyntax(i.Inst, i.addr, nil) }

// disasm decodes the patch symbol fn.
func disasm(t *testing.T, im *Image, fn string) []insn {
	t.Helper()
	s, ok := im.Symbol(fn)
	if !ok || s.Size == 0 {
		t.Fatalf("no function %s in the image", fn)
	}
	code, ok := im.Read(s.Addr, int(s.Size))
	if !ok {
		t.Fatalf("%s at %#x+%d is outside the image", fn, s.Addr, s.Size)
	}
	var out []insn
	for off := 0; off < len(code); {
		in, err := x86asm.Decode(code[off:], 64)
		if err != nil {
			t.Fatalf("%s+%#x: decode % x: %v", fn, off, code[off:min(off+8, len(code))], err)
		}
		out = append(out, insn{s.Addr + uint64(off), in})
		off += in.Len
	}
	return out
}

// targets lists the destinations of fn's calls and jumps and RIP-relative
// operands.
func targets(t *testing.T, im *Image, fn string, op x86asm.Op) []uint64 {
	var out []uint64
	for _, in := range disasm(t, im, fn) {
		if d, ok := in.dest(); ok && (op == 0 || in.Op == op) {
			out = append(out, d)
		}
	}
	return out
}

// immediates lists fn's immediate operands, sign-extended.
func immediates(t *testing.T, im *Image, fn string) []uint64 {
	var out []uint64
	for _, in := range disasm(t, im, fn) {
		for _, a := range in.Args {
			if v, ok := a.(x86asm.Imm); ok {
				out = append(out, uint64(int64(int32(v))))
			}
		}
	}
	return out
}

func count(xs []uint64, v uint64) int {
	n := 0
	for _, x := range xs {
		if x == v {
			n++
		}
	}
	return n
}

func TestLinkCmdline(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	im := mustLink(t, m, k, base)

	if m.Name != "cmdline" || m.Release != k.release || len(m.BuildID) != 40 {
		t.Errorf("module: name %q release %q build id %q", m.Name, m.Release, m.BuildID)
	}
	// Layout: text, then read-only data, then data, each from a page.
	var perms []Perm
	for _, p := range im.Pages {
		perms = append(perms, p.Perm)
		if len(p.Data) != PageSize {
			t.Errorf("page %#x holds %d bytes", p.Addr, len(p.Data))
		}
	}
	if want := []Perm{RX, RO, RW}; !equal(perms, want) {
		t.Errorf("page permissions %v, want %v", perms, want)
	}
	for _, s := range im.Sections {
		if got := im.PermAt(s.Addr); s.Size > 0 && got != s.Perm {
			t.Errorf("section %s at %#x: page is %v, section %v", s.Name, s.Addr, got, s.Perm)
		}
	}
	if im.Base != base || im.Size != 3*PageSize || im.Pages[0].Addr != base {
		t.Errorf("image %#x+%#x", im.Base, im.Size)
	}
	if len(im.Text) != 1 || im.Text[0].Start != base {
		t.Errorf("text ranges %v", im.Text)
	}

	// The redirect.
	if len(im.Funcs) != 1 {
		t.Fatalf("funcs %+v", im.Funcs)
	}
	f := im.Funcs[0]
	newFn, _ := im.Symbol("new_cmdline_proc_show")
	if f.Old.Name != "cmdline_proc_show" || f.OldAddr != k.addr(t, "cmdline_proc_show") || f.New != newFn.Addr ||
		f.NewName != "new_cmdline_proc_show" || f.OldEntry != ftraceNOP {
		t.Errorf("func %+v, new function at %#x", f, newFn.Addr)
	}
	if !im.Text[0].Contains(f.New) {
		t.Errorf("new function %#x outside text %v", f.New, im.Text)
	}

	code := disasm(t, im, "new_cmdline_proc_show")
	// The fentry call became the ftrace NOP.
	if first, _ := im.Read(newFn.Addr, 5); !bytes.Equal(first, ftraceNOP[:]) {
		t.Errorf("first bytes % x, want the ftrace NOP; code:\n%s", first, listing(code))
	}
	// Both calls go to seq_puts; saved_command_line is read RIP-relative;
	// returns go through x86_return_thunk.
	calls := targets(t, im, "new_cmdline_proc_show", x86asm.CALL)
	if n := count(calls, k.addr(t, "seq_puts")); n != 2 || len(calls) != 2 {
		t.Errorf("calls %x, want 2 to seq_puts %#x:\n%s", calls, k.addr(t, "seq_puts"), listing(code))
	}
	all := targets(t, im, "new_cmdline_proc_show", 0)
	if count(all, k.addr(t, "saved_command_line")) != 1 {
		t.Errorf("no RIP-relative access to saved_command_line %#x:\n%s", k.addr(t, "saved_command_line"), listing(code))
	}
	// No return thunk chosen (x86_return_thunk is __x86_return_thunk): the
	// return is a plain ret, as the kernel's patch_return makes its own.
	if count(targets(t, im, "new_cmdline_proc_show", x86asm.JMP), k.addr(t, "__x86_return_thunk")) != 0 || !hasOp(code, x86asm.RET) {
		t.Errorf("the return is not a ret:\n%s", listing(code))
	}
	// lucos_calls (.bss) is incremented RIP-relative, lucos_marker (.data) read.
	for _, v := range []string{"lucos_calls", "lucos_marker"} {
		s, ok := im.Symbol(v)
		if !ok || im.PermAt(s.Addr) != RW || count(all, s.Addr) != 1 {
			t.Errorf("%s at %#x (%v): not accessed by the code:\n%s", v, s.Addr, im.PermAt(s.Addr), listing(code))
		}
	}
	// lucos_marker points at its string in read-only data.
	marker, _ := im.Symbol("lucos_marker")
	p, _ := im.Read(marker.Addr, 8)
	str, ok := im.Read(binary.LittleEndian.Uint64(p), 8)
	if !ok || string(str) != " lucos\n\x00" || im.PermAt(binary.LittleEndian.Uint64(p)) != RO {
		t.Errorf("lucos_marker -> %q", str)
	}
	// The descriptors are loaded read-only, relocated.
	meta, _ := im.Symbol("__lucos_meta")
	mb, _ := im.Read(meta.Addr, metaSize)
	name, _ := im.Read(binary.LittleEndian.Uint64(mb[8:]), 8)
	if im.PermAt(meta.Addr) != RO || string(name) != "cmdline\x00" {
		t.Errorf("meta at %#x (%v) names %q", meta.Addr, im.PermAt(meta.Addr), name)
	}
}

func equal[T comparable](a, b []T) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

func listing(code []insn) string {
	var b strings.Builder
	for _, in := range code {
		b.WriteString("\t")
		b.WriteString(in.String())
		b.WriteString("\n")
	}
	return b.String()
}

func TestLinkOrig(t *testing.T) {
	m, k, base := offline(t, "orig")
	im := mustLink(t, m, k, base)
	calls := targets(t, im, "new_cmdline_proc_show", x86asm.CALL)
	if count(calls, k.addr(t, "cmdline_proc_show")+5) != 1 {
		t.Errorf("calls %x: none to cmdline_proc_show+5 (%#x)", calls, k.addr(t, "cmdline_proc_show")+5)
	}
	// LUCOS_ORIG needs the ftrace NOP at fn's entry.
	k.mem[k.addr(t, "cmdline_proc_show")] = []byte{0xcc, 0x1f, 0x44, 0x00, 0x00}
	_, err := m.Link(k, base, slot)
	var re *RefusedError
	if !errors.As(err, &re) || re.Symbol != "__lucos_orig__cmdline_proc_show" || re.Section != ".text" {
		t.Errorf("LUCOS_ORIG of a function without the NOP: %v", err)
	}
}

func TestLinkJumpLabels(t *testing.T) {
	m, k, base := offline(t, "jump")
	schedstats, initOnAlloc := k.addr(t, "sched_schedstats"), k.addr(t, "init_on_alloc")
	for _, tc := range []struct {
		schedstats, initOnAlloc uint32
	}{{0, 1}, {1, 0}, {1, 1}, {0, 0}} {
		k.put32(schedstats, tc.schedstats)
		k.put32(initOnAlloc, tc.initOnAlloc)
		im := mustLink(t, m, k, base)
		if len(im.JumpSites) != 4 {
			t.Fatalf("%d jump sites, want 4", len(im.JumpSites))
		}
		ownTrue, _ := im.Symbol("lucos_own_true")
		ownFalse, _ := im.Symbol("lucos_own_false")
		want := map[uint64]struct {
			enabled, branch, kernel bool
		}{
			schedstats:    {tc.schedstats == 1, false, true}, // static_branch_unlikely(false key)
			initOnAlloc:   {tc.initOnAlloc == 1, true, true}, // static_branch_likely(true key)
			ownTrue.Addr:  {true, true, false},
			ownFalse.Addr: {false, false, false},
		}
		for _, js := range im.JumpSites {
			w, ok := want[js.Key]
			if !ok {
				t.Errorf("jump site %+v: unexpected key", js)
				continue
			}
			if js.Enabled != w.enabled || js.Branch != w.branch || js.KernelKey != w.kernel || js.Jump != (w.enabled != w.branch) {
				t.Errorf("%+v: jump site of key %#x %+v, want %+v", tc, js.Key, js, w)
			}
			b, _ := im.Read(js.Addr, js.Len)
			in, err := x86asm.Decode(b, 64)
			switch {
			case err != nil:
				t.Errorf("site %#x: % x: %v", js.Addr, b, err)
			case js.Jump:
				d, _ := insn{js.Addr, in}.dest()
				if in.Op != x86asm.JMP || d != js.Target {
					t.Errorf("site %#x: % x, want a jmp to %#x", js.Addr, b, js.Target)
				}
			case in.Op != x86asm.NOP && !(in.Op == x86asm.XCHG && len(b) == 2):
				t.Errorf("site %#x: % x, want a NOP", js.Addr, b)
			}
		}
	}
}

func TestLinkAlternatives(t *testing.T) {
	m, k, base := offline(t, "alt")
	for _, tc := range []struct{ avx2, cx16 bool }{{false, true}, {true, true}, {true, false}, {false, false}} {
		avx2 := tc.avx2
		k.setFeatures(t, map[int]bool{featureAlways: true, featureCX16: tc.cx16, featureAVX2: avx2})
		im := mustLink(t, m, k, base)
		read := func(sym string, n int) []byte {
			s, ok := im.Symbol(sym)
			if !ok {
				// asm labels are NOTYPE symbols: find them in the module.
				for _, ms := range m.syms {
					if ms.name == sym {
						s.Addr = im.Sections[0].Addr + ms.value
						ok = true
					}
				}
			}
			b, _ := im.Read(s.Addr, n)
			if !ok || b == nil {
				t.Fatalf("no %s", sym)
			}
			return b
		}
		if b := read("lucos_alt_always", 2); !bytes.Equal(b, []byte{0x90, 0x90}) {
			t.Errorf("ALTERNATIVE(ud2, nop, ALWAYS): % x, want 90 90", b)
		}
		if b := read("lucos_alt_never", 3); !bytes.Equal(b, []byte{0x90, 0x90, 0x90}) {
			t.Errorf("ALTERNATIVE(nop;nop;nop, ud2, ALT_NOT(ALWAYS)): % x, want it kept", b)
		}
		callSite := read("lucos_alt_call", 5)
		target, _ := im.Symbol("lucos_alt_target")
		if in, err := x86asm.Decode(callSite, 64); err != nil || in.Op != x86asm.CALL ||
			rel32Dest(base+0xe+5, callSite[1:]) != target.Addr {
			t.Errorf("call replacement: % x, want call %#x", callSite, target.Addr)
		}
		jmpSite := read("lucos_alt_jmp", 5)
		if jmpSite[0] != 0xeb || !bytes.Equal(jmpSite[2:], x86NOPs[3]) {
			t.Errorf("jmp replacement: % x, want a short jmp and a 3-byte NOP", jmpSite)
		}
		if d := int8(jmpSite[1]); d != 5 {
			// lucos_alt_jmp: a 5-byte site, then a 2-byte ud2, then the label.
			t.Errorf("jmp replacement jumps %d bytes ahead, want over the ud2", int8(jmpSite[1]))
		}
		if im.AltApplied+im.AltKept != 8 {
			t.Errorf("%d applied + %d kept alternatives, want 8 entries", im.AltApplied, im.AltKept)
		}
		// static_cpu_has(): an absent feature leaves a jmp over its
		// seq_puts, a present one a NOP; nothing jumps to .altinstr_aux.
		code := disasm(t, im, "new_cmdline_proc_show")
		want := 1 // lucos_alt_jmp
		for _, has := range []bool{tc.avx2, tc.cx16} {
			if !has {
				want++
			}
		}
		jumps := 0
		for _, in := range code {
			d, ok := in.dest()
			if !ok || in.Op != x86asm.JMP || d == k.addr(t, "__x86_return_thunk") {
				continue
			}
			jumps++
			if s, _ := im.Symbol("new_cmdline_proc_show"); d < s.Addr || d >= s.Addr+s.Size {
				t.Errorf("%+v: %s leaves the function", tc, in)
			}
		}
		if jumps != want {
			t.Errorf("%+v: %d jumps, want %d:\n%s", tc, jumps, want, listing(code))
		}
	}
}

// hasOp reports whether code has an instruction op.
func hasOp(code []insn, op x86asm.Op) bool {
	for _, in := range code {
		if in.Op == op {
			return true
		}
	}
	return false
}

// The patch's returns follow the kernel's choice of return thunk, as
// patch_return rewrites the kernel's own: through the chosen thunk; with
// ITS's its_return_thunk only from the lower half of a 64-byte line.
func TestReturnSites(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	thunk := k.addr(t, "seq_puts") // any address outside the patch will do as "the chosen thunk"
	k.put64(k.addr(t, "x86_return_thunk"), thunk)
	im := mustLink(t, m, k, base)
	code := disasm(t, im, "new_cmdline_proc_show")
	if count(targets(t, im, "new_cmdline_proc_show", x86asm.JMP), thunk) != 1 || hasOp(code, x86asm.RET) {
		t.Errorf("with a chosen return thunk %#x the return does not jump to it:\n%s", thunk, listing(code))
	}

	if _, _, err := k.Symbol("its_return_thunk", 0); err != nil {
		t.Skipf("the test kernel has no its_return_thunk: %v", err)
	}
	its := k.addr(t, "its_return_thunk")
	k.put64(k.addr(t, "x86_return_thunk"), its)
	im = mustLink(t, m, k, base)
	for _, in := range disasm(t, im, "new_cmdline_proc_show") {
		d, _ := in.dest()
		switch {
		case in.Op == x86asm.JMP && d == its && in.addr&0x20 != 0:
			t.Errorf("%#x (upper half of its line) jumps to its_return_thunk", in.addr)
		case in.Op == x86asm.RET && in.addr&0x20 == 0:
			t.Errorf("%#x (lower half of its line) returns without its_return_thunk", in.addr)
		}
	}
}
