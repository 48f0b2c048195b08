package loader

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
)

// refusal checks that err is a *RefusedError about section and symbol
// whose message contains each of words.
func refusal(t *testing.T, err error, section, symbol string, words ...string) *RefusedError {
	t.Helper()
	var re *RefusedError
	if !errors.As(err, &re) || !errors.Is(err, ErrRefused) {
		t.Fatalf("got %v, want a refusal", err)
	}
	if re.Section != section || (re.Symbol != symbol && !(symbol == "*" && re.Symbol != "")) {
		t.Errorf("refusal names section %q symbol %q, want %q %q: %v", re.Section, re.Symbol, section, symbol, err)
	}
	for _, w := range words {
		if !strings.Contains(err.Error(), w) {
			t.Errorf("refusal %q does not say %q", err, w)
		}
	}
	return re
}

func TestRefuseUnknownSymbol(t *testing.T) {
	m, k, base := offline(t, "unknown")
	_, err := m.Link(k, base, slot)
	refusal(t, err, ".text", "lucos_no_such_function", "unknown symbol")
	if !errors.Is(err, kimage.ErrNotFound) {
		t.Errorf("%v does not wrap kimage.ErrNotFound", err)
	}
}

func TestRefuseAmbiguousStatic(t *testing.T) {
	m, k, base := offline(t, "ambiguous")
	_, err := m.Link(k, base, slot)
	refusal(t, err, ".text", "default_read_file", "2 definitions", "LUCOS_SYMPOS(default_read_file")
	var amb *kimage.AmbiguousError
	if !errors.As(err, &amb) || len(amb.Candidates) != 2 {
		t.Errorf("%v: no candidates", err)
	}

	// With LUCOS_SYMPOS(default_read_file, 1) it links to the first.
	m, _, _ = offline(t, "ambiguous_sympos")
	if len(m.SymPos) != 1 || m.SymPos[0] != (SymPos{"default_read_file", 1}) {
		t.Fatalf("sympos %+v", m.SymPos)
	}
	im := mustLink(t, m, k, base)
	first, _ := k.img.Symbols.Find("default_read_file", 1)
	all := append(targets(t, im, "new_cmdline_proc_show", 0), immediates(t, im, "new_cmdline_proc_show")...)
	if count(all, first.Addr) != 1 {
		t.Errorf("no reference to default_read_file sympos 1 (%#x) in %x", first.Addr, all)
	}
}

func TestRefuseExTable(t *testing.T) {
	_, err := Parse(testModules(t)["extable"])
	refusal(t, err, "__ex_table", "new_cmdline_proc_show", "inline user", "exception table")
	// The committed object, without kbuild.
	_, err = Parse(golden(t, "extable"))
	refusal(t, err, "__ex_table", "new_cmdline_proc_show")
}

func TestRefuseThisModule(t *testing.T) {
	m, k, base := offline(t, "thismodule")
	_, err := m.Link(k, base, slot)
	refusal(t, err, ".text", "__this_module", "THIS_MODULE")
}

func TestInitExitIgnored(t *testing.T) {
	m, k, base := offline(t, "initexit")
	k.put32(k.addr(t, "sched_schedstats"), 1)
	im := mustLink(t, m, k, base)
	for _, s := range im.Sections {
		if strings.HasPrefix(s.Name, ".init") || strings.HasPrefix(s.Name, ".exit") || s.Name == ".gnu.linkonce.this_module" {
			t.Errorf("section %s loaded", s.Name)
		}
	}
	if len(im.JumpSites) != 0 {
		t.Errorf("jump sites of init code kept: %+v", im.JumpSites)
	}
	if _, ok := im.Symbol("lucos_init"); ok {
		t.Error("lucos_init is in the image")
	}
}

func TestWarnSites(t *testing.T) {
	m, k, base := offline(t, "warn")
	im := mustLink(t, m, k, base)
	if len(im.Warnings) != 1 {
		t.Fatalf("warnings %+v, want the one WARN_ON", im.Warnings)
	}
	w := im.Warnings[0]
	if !strings.HasSuffix(w.File, "warn.c") || w.Line != 11 {
		t.Errorf("warning at %s:%d, want warn.c:11", w.File, w.Line)
	}
	if b, _ := im.Read(w.Addr, 2); string(b) != string(x86NOPs[2]) {
		t.Errorf("WARN site % x, want a 2-byte NOP", b)
	}
	// BUG_ON keeps its ud2.
	ud2s := 0
	for _, in := range disasm(t, im, "new_cmdline_proc_show") {
		if in.Op.String() == "UD2" {
			ud2s++
		}
	}
	if ud2s != 1 {
		t.Errorf("%d ud2 left, want BUG_ON's", ud2s)
	}
}

func TestRefuseWrongRelease(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	k.release = "6.1.0-99-cloud-amd64"
	_, err := m.Link(k, base, slot)
	if !errors.Is(err, ErrWrongRelease) || !strings.Contains(err.Error(), "patch built for "+m.Release+", guest runs 6.1.0-99-cloud-amd64") {
		t.Errorf("got %v", err)
	}
}

func TestRefuseOldEntry(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	old := k.addr(t, "cmdline_proc_show")
	for _, tc := range []struct {
		entry []byte
		words string
	}{
		{[]byte{0xe8, 1, 2, 3, 4}, "traced by ftrace or patched by Linux livepatch"},
		{append([]byte{0xe9}, le32(uint32(base-(old+5)))...), "already redirected (by lucos?)"},
		{append([]byte{0xe9}, le32(uint32(0xffffffffc0001000-(old+5)))...), "outside the kernel image"},
		{[]byte{0x55, 0x48, 0x89, 0xe5, 0x41}, "not a patchable function entry"},
	} {
		k.mem[old] = tc.entry
		_, err := m.Link(k, base, slot)
		refusal(t, err, ".lucos.funcs", "cmdline_proc_show", tc.words)
		// The same after an endbr64 (an IBT kernel): checked at the site after it.
		k.mem[old] = append(append([]byte(nil), endbr64[:]...), tc.entry...)
		_, err = m.Link(k, base, slot)
		refusal(t, err, ".lucos.funcs", "cmdline_proc_show", tc.words)
	}
	delete(k.mem, old)

	// Not a function; too short.
	k2 := &renamed{Target: k, from: "cmdline_proc_show", to: "saved_command_line"}
	_, err := m.Link(k2, base, slot)
	refusal(t, err, ".lucos.funcs", "cmdline_proc_show", "not a function")
	k3 := &renamed{Target: k, from: "cmdline_proc_show", to: "__x86_return_thunk"} // 2 bytes
	_, err = m.Link(k3, base, slot)
	refusal(t, err, ".lucos.funcs", "cmdline_proc_show", "too short")
}

// renamed answers Symbol(from) with the symbol to.
type renamed struct {
	Target
	from, to string
}

func (r *renamed) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	if name == r.from {
		name = r.to
	}
	return r.Target.Symbol(name, pos)
}

func le32(v uint32) []byte { return []byte{byte(v), byte(v >> 8), byte(v >> 16), byte(v >> 24)} }

func TestNoSpace(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	_, err := m.Link(k, base, 2*PageSize)
	if !errors.Is(err, ErrNoSpace) {
		t.Errorf("3 pages into 2: %v", err)
	}
	if _, err := m.Link(k, base+1, slot); err == nil {
		t.Error("unaligned base accepted")
	}
}

func TestRelocationOverflow(t *testing.T) {
	m, k, _ := offline(t, "cmdline")
	// The direct map is far more than 2 GiB from kernel text.
	_, err := m.Link(k, 0xffff888000000000, slot)
	re := refusal(t, err, ".text", "*", "does not fit in 32")
	if re.Offset < 0 {
		t.Errorf("overflow refusal without place or symbol: %v", err)
	}
}

// On a kernel built with IBT the jump goes after the function's endbr64 (or
// the NOP the kernel sealed it with), over the ftrace NOP there; the
// function counts from that site.
func TestEntryAfterEndbr(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	old := k.addr(t, "cmdline_proc_show")
	sym, _ := k.img.Symbols.Find("cmdline_proc_show", 0)
	for _, head := range [][4]byte{endbr64, endbrPoison} {
		k.mem[old] = append(append([]byte(nil), head[:]...), ftraceNOP[:]...)
		im := mustLink(t, m, k, base)
		f := im.Funcs[0]
		if f.OldAddr != old+4 || f.OldSize != sym.Size-4 || f.OldEntry != ftraceNOP {
			t.Errorf("after % x: site %#x size %d entry % x; want %#x, %d, the ftrace NOP", head, f.OldAddr, f.OldSize, f.OldEntry, old+4, sym.Size-4)
		}
	}
}

// TestCallSitesUnderCallDepthTracking links a patch built for the 6.12
// kernel, whose kbuild records the patch's direct calls in .call_sites
// (CONFIG_MITIGATION_CALL_DEPTH_TRACKING): a guest that did not turn the
// accounting thunks on takes it, one that did (retbleed=stuff sets
// thunks_initialized) refuses it, naming why.
func TestCallSitesUnderCallDepthTracking(t *testing.T) {
	img := testvm.ImageOf(t, "6.12")
	mods, skip, err := buildModules(img, "cmdline")
	if skip != "" {
		testreq.Unavailable(t, "%s", skip)
	}
	if err != nil {
		t.Fatal(err)
	}
	m, err := Parse(mods["cmdline"])
	if err != nil {
		t.Fatal(err)
	}
	var calls *SectionInfo
	for i := range m.Sections {
		if m.Sections[i].Name == ".call_sites" {
			calls = &m.Sections[i]
		}
	}
	if calls == nil || calls.Treatment != Consume {
		t.Fatalf("a 6.12 patch has no consumed .call_sites: %+v", m.Sections)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	kimg, err := kimage.Load(ctx, img.Kernel, img.Dir)
	if err != nil {
		t.Fatal(err)
	}
	k := newFakeKernel(t, kimg)
	base := alignUp(k.addr(t, "_end"), slot)
	mustLink(t, m, k, base)

	k.mem[k.addr(t, "thunks_initialized")] = []byte{1}
	_, err = m.Link(k, base, slot)
	refusal(t, err, ".call_sites", "thunks_initialized", "call-depth tracking", "retbleed=stuff")
}
