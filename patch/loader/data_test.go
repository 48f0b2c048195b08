package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"reflect"
	"strings"
	"testing"

	"github.com/lucos/lucos/kimage"
)

// rt_data (testdata/rt_data.c, linked with the runtime): one LUCOS_DATA
// and one callback of each kind, in declaration order.
func TestParseDataAndCallbacks(t *testing.T) {
	for name, ko := range map[string][]byte{"kbuild": testModules(t)["rt_data"], "golden": golden(t, "rt_data")} {
		t.Run(name, func(t *testing.T) {
			m, err := Parse(ko)
			if err != nil {
				t.Fatal(err)
			}
			wantData := []DataSpec{{OldName: "sysctl_sched_rr_timeslice", NewSymbol: "new_timeslice",
				Transfer: "timeslice_transfer", Reverse: "timeslice_reverse", OldSize: 4, NewSize: 8}}
			if got := specs(m.Data); !reflect.DeepEqual(got, wantData) {
				t.Errorf("data %+v, want %+v", got, wantData)
			}
			wantCB := []CallbackSpec{
				{Kind: CallbackStartup, Fn: "lucos_startup"},
				{Kind: CallbackCleanup, Fn: "lucos_cleanup"},
				{Kind: CallbackFunc, Symbol: "version_proc_show", Fn: "on_version"},
				{Kind: CallbackFunc, Once: true, Symbol: "cmdline_proc_show", Fn: "on_version"},
				{Kind: CallbackThread, Fn: "on_task"},
				{Kind: CallbackThread, NMISafe: true, Fn: "on_task"},
				{Kind: CallbackData, Symbol: "jiffies_64", Fn: "on_jiffies"},
				{Kind: CallbackData, Symbol: "new_timeslice", Fn: "on_new_timeslice"},
			}
			if got := cbSpecs(m.Callbacks); !reflect.DeepEqual(got, wantCB) {
				t.Errorf("callbacks (declaration order):\n%+v\nwant\n%+v", got, wantCB)
			}
		})
	}
}

// specs and cbSpecs drop the unexported places, to compare with literals.
func specs(ds []DataSpec) []DataSpec {
	var out []DataSpec
	for _, d := range ds {
		d.newVar, d.transfer, d.reverse = place{}, place{}, place{}
		out = append(out, d)
	}
	return out
}

func cbSpecs(cs []CallbackSpec) []CallbackSpec {
	var out []CallbackSpec
	for _, c := range cs {
		c.fn = place{}
		out = append(out, c)
	}
	return out
}

func TestLinkDataAndCallbacks(t *testing.T) {
	m, k, base := offline(t, "rt_data")
	im := mustLink(t, m, k, base)
	sym := func(name string) uint64 {
		t.Helper()
		s, ok := im.Symbol(name)
		if !ok {
			t.Fatalf("no %s in the image", name)
		}
		return s.Addr
	}
	if len(im.Data) != 1 {
		t.Fatalf("data %+v", im.Data)
	}
	d := im.Data[0]
	old := k.addr(t, "sysctl_sched_rr_timeslice")
	if d.OldAddr != old || d.Old.Name != "sysctl_sched_rr_timeslice" || d.Old.Type != 'd' ||
		d.NewAddr != sym("new_timeslice") || d.Transfer != sym("timeslice_transfer") || d.Reverse != sym("timeslice_reverse") {
		t.Errorf("data %+v", d)
	}
	if im.PermAt(d.NewAddr) != RW || im.PermAt(d.Transfer) != RX {
		t.Errorf("new variable in %v, transfer in %v", im.PermAt(d.NewAddr), im.PermAt(d.Transfer))
	}
	want := []struct {
		fn, sym string
		symAddr uint64
	}{
		{"lucos_startup", "", 0},
		{"lucos_cleanup", "", 0},
		{"on_version", "version_proc_show", k.addr(t, "version_proc_show")},
		{"on_version", "cmdline_proc_show", k.addr(t, "cmdline_proc_show")},
		{"on_task", "", 0},
		{"on_task", "", 0},
		{"on_jiffies", "jiffies_64", k.addr(t, "jiffies_64")},
		{"on_new_timeslice", "new_timeslice", d.NewAddr},
	}
	if len(im.Callbacks) != len(want) {
		t.Fatalf("callbacks %+v", im.Callbacks)
	}
	for i, w := range want {
		cb := im.Callbacks[i]
		if cb.Fn != sym(w.fn) || cb.SymAddr != w.symAddr || cb.Sym.Name != w.sym {
			t.Errorf("callback %d: %+v, want %s on %s at %#x", i, cb, w.fn, w.sym, w.symAddr)
		}
	}
	if cb := im.Callbacks[7]; cb.Sym.Size != 8 {
		t.Errorf("the patch's own instance: %+v, want 8 bytes", cb.Sym)
	}
	// The trampoline stores rax in __lucos_call_done (the write lucos
	// watches), then loops: pause; jmp back to the pause. Returned is where
	// the loop begins, right after the store.
	in := disasm(t, im, "__lucos_trampoline")
	if len(in) < 3 || in[0].Op.String() != "MOV" || in[1].Op.String() != "PAUSE" {
		t.Fatalf("trampoline: %s", listing(in))
	}
	rt := Runtime{Call: sym("__lucos_call"), Trampoline: sym("__lucos_trampoline"), Exit: sym("__lucos_rt_exit"), Done: sym("__lucos_call_done"), Kick: sym("__lucos_kick"),
		Returned: sym("__lucos_trampoline") + uint64(in[0].Len)}
	if im.Runtime != rt || rt.Call == 0 || rt.Done == 0 || rt.Kick == 0 {
		t.Errorf("runtime %+v, want %+v", im.Runtime, rt)
	}
	if dst, ok := in[2].dest(); !ok || dst != rt.Returned {
		t.Errorf("trampoline does not loop on its pause: %s", listing(in))
	}

	// The descriptors in the image point where Image says.
	sec := sectionNamed(t, im, ".lucos.data")
	desc, _ := im.Read(sec.Addr, dataSize)
	if got := binary.LittleEndian.Uint64(desc[16:]); got != d.NewAddr {
		t.Errorf("descriptor new_var %#x, want %#x", got, d.NewAddr)
	}
	if got := binary.LittleEndian.Uint64(desc[24:]); got != d.Transfer {
		t.Errorf("descriptor transfer %#x, want %#x", got, d.Transfer)
	}
}

func sectionNamed(t *testing.T, im *Image, name string) Section {
	t.Helper()
	for _, s := range im.Sections {
		if s.Name == name {
			return s
		}
	}
	t.Fatalf("no section %s", name)
	return Section{}
}

// A patch without the runtime has none: Image.Runtime is zero.
func TestLinkWithoutRuntime(t *testing.T) {
	m, k, base := offline(t, "cmdline")
	im := mustLink(t, m, k, base)
	if im.Runtime != (Runtime{}) || len(im.Data) != 0 || len(im.Callbacks) != 0 {
		t.Errorf("runtime %+v data %+v callbacks %+v", im.Runtime, im.Data, im.Callbacks)
	}
}

// Link refuses what cannot be watched or hooked, naming the symbol, before
// anything is written. The kernel's symbols are swapped under the patch's
// names (renamed) to make each case from the one real module.
func TestRefuseDataSymbols(t *testing.T) {
	m, k, base := offline(t, "rt_data")
	for _, tc := range []struct {
		from, to string
		section  string
		is       error
		words    []string
	}{
		{"sysctl_sched_rr_timeslice", "lucos_no_such_variable", ".lucos.data", kimage.ErrNotFound, []string{"not in the guest kernel"}},
		{"sysctl_sched_rr_timeslice", "name_show", ".lucos.data", kimage.ErrAmbiguous, []string{"LUCOS_DATA_POS(sysctl_sched_rr_timeslice, <pos>"}},
		{"sysctl_sched_rr_timeslice", "cmdline_proc_show", ".lucos.data", nil, []string{"a watch on memory that is not kernel data", "function"}},
		{"sysctl_sched_rr_timeslice", "linux_banner", ".lucos.data", nil, []string{"a watch on memory that is not kernel data", "read-only data (in .rodata, kallsyms type D)"}},
		{"sysctl_sched_rr_timeslice", "__init_begin", ".lucos.data", nil, []string{"a watch on memory that is not kernel data", "outside the kernel's .data and .bss"}},
		{"sysctl_sched_rr_timeslice", "current_task", ".lucos.data", nil, []string{"a watch on memory that is not kernel data", "per-CPU"}},
		{"sysctl_sched_rr_timeslice", "__start___ex_table", ".lucos.data", nil, []string{"a watch on memory that is not kernel data", "read-only"}},
		{"version_proc_show", "jiffies_64", ".lucos.callbacks", nil, []string{"LUCOS_FUNC_CALLBACK(version_proc_show, on_version)", "not a function"}},
		{"version_proc_show", "lucos_no_such_function", ".lucos.callbacks", kimage.ErrNotFound, []string{"not in the guest kernel"}},
		{"version_proc_show", "name_show", ".lucos.callbacks", kimage.ErrAmbiguous, []string{`LUCOS_CALLBACK(LUCOS_CB_FUNC, "version_proc_show", <pos>`}},
		{"jiffies_64", "cmdline_proc_show", ".lucos.callbacks", nil, []string{"LUCOS_DATA_CALLBACK(jiffies_64, on_jiffies)", "not kernel data"}},
	} {
		t.Run(tc.from+"="+tc.to, func(t *testing.T) {
			_, err := m.Link(&renamed{Target: k, from: tc.from, to: tc.to}, base, slot)
			refusal(t, err, tc.section, tc.from, tc.words...)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v does not wrap %v", err, tc.is)
			}
		})
	}
}

// The old variable's size in the patch must fit the kernel's.
func TestRefuseDataSize(t *testing.T) {
	m, k, base := offline(t, "rt_data")
	_, err := m.Link(&resized{Target: k, name: "sysctl_sched_rr_timeslice", size: 2}, base, slot)
	refusal(t, err, ".lucos.data", "sysctl_sched_rr_timeslice", "sizeof(sysctl_sched_rr_timeslice) is 4 bytes in the patch, the kernel's is at most 2")
	// A size the kernel does not know (0) is not checked.
	mustLink(t, m, &resized{Target: k, name: "sysctl_sched_rr_timeslice", size: 0}, base)
}

// resized answers Symbol(name) with the size given.
type resized struct {
	Target
	name string
	size uint64
}

func (r *resized) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	s, a, err := r.Target.Symbol(name, pos)
	if name == r.name {
		s.Size = r.size
	}
	return s, a, err
}

// A module's data is accepted when the Target resolves module symbols and
// says the address is a module's.
func TestLinkModuleData(t *testing.T) {
	m, k, base := offline(t, "rt_data")
	const addr uint64 = 0xffffffffc0012340
	mk := &moduleKernel{Target: k, name: "sysctl_sched_rr_timeslice",
		sym: kimage.Symbol{Name: "sysctl_sched_rr_timeslice", Addr: addr, Type: 'd', Size: 4, Pos: 1}}
	im := mustLink(t, m, mk, base)
	if im.Data[0].OldAddr != addr {
		t.Errorf("old at %#x, want %#x", im.Data[0].OldAddr, addr)
	}
	mk.sym.Type = 'r' // a module's read-only data
	_, err := m.Link(mk, base, slot)
	refusal(t, err, ".lucos.data", "sysctl_sched_rr_timeslice", "read-only")
	mk.sym.Type, mk.outside = 'd', true // not inside a module
	_, err = m.Link(mk, base, slot)
	refusal(t, err, ".lucos.data", "sysctl_sched_rr_timeslice", "outside the kernel's .data and .bss")
}

// moduleKernel answers Symbol(name) with a module's symbol, and ModuleData
// for it.
type moduleKernel struct {
	Target
	name    string
	sym     kimage.Symbol
	outside bool
}

func (mk *moduleKernel) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	if name == mk.name {
		return mk.sym, mk.sym.Addr, nil
	}
	return mk.Target.Symbol(name, pos)
}

func (mk *moduleKernel) ModuleData(addr, size uint64) bool {
	return !mk.outside && addr >= mk.sym.Addr && addr+size <= mk.sym.Addr+mk.sym.Size
}

// Real modules with the defect in their source.
func TestRefuseDataModules(t *testing.T) {
	for _, tc := range []struct {
		name, symbol string
		is           error
		words        []string
	}{
		{"rt_rodata", "linux_banner", nil, []string{"LUCOS_DATA(linux_banner, new_banner)", "a watch on memory that is not kernel data", "read-only"}},
		{"rt_notdata", "cmdline_proc_show", nil, []string{"a watch on memory that is not kernel data", "is a function"}},
		{"rt_missing", "lucos_no_such_variable", kimage.ErrNotFound, []string{"not in the guest kernel"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			m, k, base := offline(t, tc.name)
			_, err := m.Link(k, base, slot)
			refusal(t, err, ".lucos.data", tc.symbol, tc.words...)
			if tc.is != nil && !errors.Is(err, tc.is) {
				t.Errorf("%v does not wrap %v", err, tc.is)
			}
		})
	}
}

// Parse refuses, from the module alone: callbacks without the runtime, and
// a callback whose compiled prototype (DWARF) does not fit.
func TestRefuseCallbackModules(t *testing.T) {
	mods := testModules(t)
	_, err := Parse(mods["noruntime"])
	refusal(t, err, ".lucos.callbacks", "__lucos_call", "not the lucos runtime", "lucos patch build")
	_, err = Parse(mods["rt_badsig"])
	refusal(t, err, ".lucos.callbacks", "on_task", "thread callback", "takes 2 parameters", "void on_task(struct task_struct *t)")
	// Without debug info the prototype cannot be checked: the committed,
	// stripped object parses.
	m, err := Parse(golden(t, "rt_badsig"))
	if err != nil || len(m.Callbacks) != 1 || m.Callbacks[0].Fn != "on_task" {
		t.Errorf("stripped rt_badsig: %v %+v", err, m)
	}
}

// Descriptors made by hand (the committed rt_data, changed in place).
func TestParseDataRefusals(t *testing.T) {
	ko := golden(t, "rt_data")
	m, err := Parse(ko)
	if err != nil {
		t.Fatal(err)
	}
	// The callback entries in section order are those of declaration
	// order, reversed (as gcc emits them): entry 0 is the last declared.
	cbAt := func(f *elf.File, b []byte, i int) []byte {
		return sectionData(t, f, b, ".lucos.callbacks")[i*callbackSize:]
	}
	last := len(m.Callbacks) - 1
	for _, tc := range []struct {
		name   string
		mutate func(f *elf.File, b []byte)
		is     error
		words  []string
	}{
		{"unknown kind", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, 0), 6)
		}, ErrRefused, []string{"callback kind 6 is unknown"}},
		{"kind 0", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, 0), 0)
		}, ErrRefused, []string{"callback kind 0 is unknown"}},
		{"unknown flag", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, 0)[4:], 4)
		}, ErrRefused, []string{"unknown flags 0x4"}},
		{"once on startup", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, last)[4:], cbOnce) // lucos_startup
		}, ErrRefused, []string{"startup callback", "LUCOS_CB_ONCE applies to function callbacks only"}},
		{"startup with a symbol", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, 0), uint32(CallbackStartup)) // a data callback's entry
		}, ErrRefused, []string{"startup callback on_new_timeslice", "about no symbol"}},
		{"func without a symbol", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(cbAt(f, b, last), uint32(CallbackFunc)) // lucos_startup
		}, ErrRefused, []string{"func callback lucos_startup: names no symbol"}},
		{"data flags", func(f *elf.File, b []byte) {
			sectionData(t, f, b, ".lucos.data")[48] = 1
		}, ErrFormat, []string{"LUCOS_DATA(sysctl_sched_rr_timeslice): reserved flags"}},
		{"data size 0", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(sectionData(t, f, b, ".lucos.data")[40:], 0)
		}, ErrFormat, []string{"at least one byte"}},
		{"new size beyond the variable", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint32(sectionData(t, f, b, ".lucos.data")[44:], 9)
		}, ErrRefused, []string{"sizeof(new_timeslice) is 9 bytes, but 8 bytes are defined there"}},
		{"callbacks size", func(f *elf.File, b []byte) {
			shoff := binary.LittleEndian.Uint64(b[0x28:])
			for i, s := range f.Sections {
				if s.Name == ".lucos.callbacks" {
					binary.LittleEndian.PutUint64(b[shoff+uint64(i)*64+32:], s.Size+8)
				}
			}
		}, ErrFormat, []string{"not a multiple of 32"}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(mutate(t, ko, tc.mutate))
			if !errors.Is(err, tc.is) {
				t.Fatalf("got %v, want %v", err, tc.is)
			}
			for _, w := range tc.words {
				if !strings.Contains(err.Error(), w) {
					t.Errorf("%q does not say %q", err, w)
				}
			}
		})
	}
}

// Pointers of descriptors that must be the patch's own functions or data.
func TestParseDataPointers(t *testing.T) {
	ko := golden(t, "rt_data")
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		t.Fatal(err)
	}
	symIndex := func(name string) uint32 {
		syms, _ := f.Symbols()
		for i, s := range syms {
			if s.Name == name {
				return uint32(i + 1)
			}
		}
		t.Fatalf("no symbol %s", name)
		return 0
	}
	// retarget points the relocation filling sec+off at symbol to.
	retarget := func(sec string, off uint64, to string) []byte {
		return mutate(t, ko, func(f *elf.File, b []byte) {
			rela := sectionData(t, f, b, ".rela"+sec)
			for i := 0; i+24 <= len(rela); i += 24 {
				if binary.LittleEndian.Uint64(rela[i:]) == off {
					binary.LittleEndian.PutUint32(rela[i+12:], symIndex(to))
					binary.LittleEndian.PutUint64(rela[i+16:], 0)
					return
				}
			}
			t.Fatalf("no relocation at %s+%#x", sec, off)
		})
	}
	for _, tc := range []struct {
		name    string
		ko      []byte
		symbol  string
		section string
		words   string
	}{
		{"transfer is data", retarget(".lucos.data", 24, "lucos_counts"), "lucos_counts", ".lucos.data", "the transfer is not in the patch's loaded code"},
		{"new variable is code", retarget(".lucos.data", 16, "on_task"), "on_task", ".lucos.data", "the new variable is not in the patch's data or bss"},
		{"reverse is the kernel's", retarget(".lucos.data", 32, "seq_printf"), "seq_printf", ".lucos.data", "the reverse transfer must be a function defined in the patch"},
		{"callback is the kernel's", retarget(".lucos.callbacks", 24, "seq_printf"), "seq_printf", ".lucos.callbacks", "must be a function defined in the patch"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			_, err := Parse(tc.ko)
			refusal(t, err, tc.section, tc.symbol, tc.words)
		})
	}
}

func TestCallbackKindString(t *testing.T) {
	for k, want := range map[CallbackKind]string{CallbackStartup: "startup", CallbackCleanup: "cleanup",
		CallbackFunc: "func", CallbackThread: "thread", CallbackData: "data", 9: "CallbackKind(9)"} {
		if k.String() != want {
			t.Errorf("%d: %q, want %q", k, k.String(), want)
		}
	}
}
