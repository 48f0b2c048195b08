package gdbstub

import (
	"encoding/hex"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func readTestdata(annex string) ([]byte, error) {
	return os.ReadFile(filepath.Join("testdata", annex))
}

func qemu72Layout(t testing.TB) *Layout {
	t.Helper()
	l, err := ReadLayout(readTestdata)
	if err != nil {
		t.Fatal(err)
	}
	return l
}

// The layout of QEMU 7.2's x86_64 'g' packet, as measured on the real thing.
func TestLayoutQEMU72(t *testing.T) {
	l := qemu72Layout(t)
	if l.Arch() != "i386:x86-64" {
		t.Errorf("Arch = %q", l.Arch())
	}
	if l.Size() != 608 {
		t.Errorf("Size = %d, want 608", l.Size())
	}
	for _, want := range []Register{
		{Name: "rax", Num: 0, Offset: 0, Size: 8},
		{Name: "rsp", Num: 7, Offset: 56, Size: 8},
		{Name: "rdi", Num: 5, Offset: 40, Size: 8},
		{Name: "rip", Num: 0x10, Offset: 128, Size: 8},
		{Name: "eflags", Num: 0x11, Offset: 136, Size: 4},
		{Name: "cs", Num: 0x12, Offset: 140, Size: 4},
		{Name: "gs", Num: 0x17, Offset: 160, Size: 4},
		{Name: "fs_base", Num: 0x18, Offset: 164, Size: 8},
		{Name: "gs_base", Num: 0x19, Offset: 172, Size: 8},
		{Name: "k_gs_base", Num: 0x1a, Offset: 180, Size: 8},
		{Name: "cr0", Num: 0x1b, Offset: 188, Size: 8},
		{Name: "cr2", Num: 0x1c, Offset: 196, Size: 8},
		{Name: "cr3", Num: 0x1d, Offset: 204, Size: 8},
		{Name: "cr4", Num: 0x1e, Offset: 212, Size: 8},
		{Name: "cr8", Num: 0x1f, Offset: 220, Size: 8},
		{Name: "efer", Num: 0x20, Offset: 228, Size: 8},
		{Name: "st0", Num: 0x21, Offset: 236, Size: 10},
		{Name: "xmm0", Num: 0x31, Offset: 348, Size: 16},
		{Name: "mxcsr", Num: 0x41, Offset: 604, Size: 4},
	} {
		got, ok := l.Lookup(want.Name)
		if !ok {
			t.Errorf("no register %s", want.Name)
			continue
		}
		if got.Num != want.Num || got.Offset != want.Offset || got.Size != want.Size {
			t.Errorf("%s: num %#x offset %d size %d, want num %#x offset %d size %d",
				want.Name, got.Num, got.Offset, got.Size, want.Num, want.Offset, want.Size)
		}
	}
	// Commented out in QEMU 7.2's XML, and not in its 'g' packet.
	for _, name := range []string{"cs_base", "ss_base", "ds_base", "es_base"} {
		if _, ok := l.Lookup(name); ok {
			t.Errorf("register %s should not exist", name)
		}
	}
	if n := len(l.Registers()); n != 0x42 {
		t.Errorf("%d registers, want 66", n)
	}
}

// The 'g' reply of a vCPU at reset, captured from QEMU 7.2.
func TestRegistersGolden(t *testing.T) {
	l := qemu72Layout(t)
	raw, err := os.ReadFile("testdata/g-reset.hex")
	if err != nil {
		t.Fatal(err)
	}
	b, err := hex.DecodeString(strings.TrimSpace(string(raw)))
	if err != nil {
		t.Fatal(err)
	}
	r, err := l.NewRegisters(b)
	if err != nil {
		t.Fatal(err)
	}
	for name, want := range map[string]uint64{
		"rip": 0xfff0, "eflags": 2, "cs": 0xf000, "cr0": 0x60000010, "rdx": 0x60fb1,
		"cr3": 0, "efer": 0, "fs_base": 0, "rsp": 0,
	} {
		got, err := r.Get(name)
		if err != nil || got != want {
			t.Errorf("Get(%s) = %#x, %v; want %#x", name, got, err, want)
		}
	}
	saved := r.Clone()
	if err := r.Set("cr3", 0x1234000); err != nil {
		t.Fatal(err)
	}
	if v, _ := r.Get("cr3"); v != 0x1234000 {
		t.Errorf("cr3 after Set = %#x", v)
	}
	if b[204] != 0x00 || b[205] != 0x40 || b[206] != 0x23 || b[207] != 0x01 {
		t.Errorf("cr3 bytes % x, want little-endian 00 40 23 01", b[204:212])
	}
	if v, _ := saved.Get("cr3"); v != 0 {
		t.Errorf("Clone shares memory: cr3 %#x", v)
	}
	if err := r.Set("eflags", 1<<32); err == nil {
		t.Error("Set of a 33-bit value into eflags succeeded")
	}
	if _, err := r.Get("st0"); err == nil {
		t.Error("Get of 10-byte st0 succeeded")
	}
	if raw, err := r.Raw("xmm1"); err != nil || len(raw) != 16 {
		t.Errorf("Raw(xmm1) = %d bytes, %v", len(raw), err)
	}
	if _, err := r.Get("cs_base"); err == nil || !strings.Contains(err.Error(), "no register") {
		t.Errorf("Get(cs_base) error %v", err)
	}
	if _, err := l.NewRegisters(b[:600]); err == nil {
		t.Error("NewRegisters accepted 600 bytes")
	}
}

func TestReadLayoutErrors(t *testing.T) {
	files := func(m map[string]string) func(string) ([]byte, error) {
		return func(a string) ([]byte, error) {
			s, ok := m[a]
			if !ok {
				return nil, os.ErrNotExist
			}
			return []byte(s), nil
		}
	}
	for name, tc := range map[string]struct {
		files map[string]string
		err   string
	}{
		"missing include": {map[string]string{"target.xml": `<target><xi:include href="x.xml"/></target>`}, "x.xml"},
		"include cycle":   {map[string]string{"target.xml": `<target><xi:include href="target.xml"/></target>`}, "nested deeper"},
		"bad bitsize":     {map[string]string{"target.xml": `<target><feature><reg name="a" bitsize="7"/></feature></target>`}, "bitsize"},
		"no name":         {map[string]string{"target.xml": `<target><reg bitsize="8"/></target>`}, "without a name"},
		"duplicate":       {map[string]string{"target.xml": `<target><reg name="a" bitsize="8"/><reg name="a" bitsize="8"/></target>`}, "twice"},
		"same number":     {map[string]string{"target.xml": `<target><reg name="a" bitsize="8" regnum="1"/><reg name="b" bitsize="8" regnum="1"/></target>`}, "share number"},
		"no registers":    {map[string]string{"target.xml": `<target/>`}, "no registers"},
		"bad xml":         {map[string]string{"target.xml": `<target><reg`}, "parse"},
	} {
		if _, err := ReadLayout(files(tc.files)); err == nil || !strings.Contains(err.Error(), tc.err) {
			t.Errorf("%s: error %v, want %q", name, err, tc.err)
		}
	}
}

// Registers the 'g' packet does not carry are left to 'p'.
func TestLayoutFitG(t *testing.T) {
	l := qemu72Layout(t)
	l.fitG(236)
	if l.Size() != 236 {
		t.Fatalf("Size = %d", l.Size())
	}
	if r, _ := l.Lookup("st0"); r.Offset != -1 {
		t.Errorf("st0 offset %d, want -1", r.Offset)
	}
	regs, err := l.NewRegisters(make([]byte, 236))
	if err != nil {
		t.Fatal(err)
	}
	if _, err := regs.Get("efer"); err != nil {
		t.Error(err)
	}
	if _, err := regs.Raw("xmm0"); err == nil || !strings.Contains(err.Error(), "not in the 'g' packet") {
		t.Errorf("Raw(xmm0) error %v", err)
	}
}

func FuzzReadLayout(f *testing.F) {
	target, _ := readTestdata("target.xml")
	core, _ := readTestdata("i386-64bit.xml")
	f.Add(target, core)
	f.Add([]byte(`<target><reg name="a" bitsize="64" regnum="3"/><xi:include href="i386-64bit.xml"/></target>`), []byte(`<feature><reg name="b" bitsize="32"/></feature>`))
	f.Fuzz(func(t *testing.T, target, included []byte) {
		l, err := ReadLayout(func(a string) ([]byte, error) {
			if a == "target.xml" {
				return target, nil
			}
			return included, nil
		})
		if err != nil {
			return
		}
		off := 0
		for _, r := range l.Registers() {
			if r.Offset != off || r.Size <= 0 {
				t.Fatalf("register %+v, want offset %d", r, off)
			}
			off += r.Size
		}
		if off != l.Size() {
			t.Fatalf("Size %d, registers end at %d", l.Size(), off)
		}
	})
}
