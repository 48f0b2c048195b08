package kimage_test

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/kimage"
)

func TestReadSystemMap(t *testing.T) {
	in := `ffffffff81000000 T _text
ffffffff81000000 T startup_64
0000000000000000 A fixed_percpu_data

ffffffff813f5980 t cmdline_proc_show
                 U undefined_symbol_line_is_skipped
ffffffffc0000000 t helper	[ext4]
ffffffff82a1aa40 D init_task` // no final newline
	got, err := kimage.ReadSystemMap(strings.NewReader(in))
	if err != nil {
		t.Fatal(err)
	}
	want := []kimage.RawSymbol{
		{"_text", 0xffffffff81000000, 'T'},
		{"startup_64", 0xffffffff81000000, 'T'},
		{"fixed_percpu_data", 0, 'A'},
		{"cmdline_proc_show", 0xffffffff813f5980, 't'},
		{"init_task", 0xffffffff82a1aa40, 'D'},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}
}

func TestReadSystemMapErrors(t *testing.T) {
	// Debian's own stub, verbatim.
	stub := "ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"
	if _, err := kimage.ReadSystemMap(strings.NewReader(stub)); !errors.Is(err, kimage.ErrStubSystemMap) {
		t.Errorf("stub: %v", err)
	}
	for name, in := range map[string]string{
		"empty":        "",
		"two fields":   "ffffffff81000000 T\n",
		"bad address":  "ffffffff8100000g T x\n",
		"long address": "1ffffffff81000000 T x\n",
		"long type":    "ffffffff81000000 TT x\n",
		"extra field":  "ffffffff81000000 T x y\n",
		"long line":    "ffffffff81000000 T " + strings.Repeat("x", 8192) + "\n",
	} {
		_, err := kimage.ReadSystemMap(strings.NewReader("ffffffff81000000 T ok\n" + in))
		if name == "empty" {
			_, err = kimage.ReadSystemMap(strings.NewReader(in))
		}
		var fe *kimage.FormatError
		if !errors.As(err, &fe) {
			t.Errorf("%s: %v, want a FormatError", name, err)
			continue
		}
		if name != "empty" && fe.Off != int64(len("ffffffff81000000 T ok\n")) {
			t.Errorf("%s: offset %d, want that of line 2", name, fe.Off)
		}
	}
}

// TestELFSymbols reads the .symtab of an unstripped vmlinux and types its
// symbols as nm does.
func TestELFSymbols(t *testing.T) {
	const (
		local, global, weak = 0 << 4, 1 << 4, 2 << 4
		object, fn, section = 1, 2, 3
	)
	secs := []synthSection{
		{name: ".text", typ: 1, flags: 6, addr: 0xffffffff81000000, data: make([]byte, 0x100)},
		{name: ".rodata", typ: 1, flags: 2, addr: 0xffffffff82000000, data: []byte(synthBanner + "\x00")},
		{name: ".data", typ: 1, flags: 3, addr: 0xffffffff82a00000, data: make([]byte, 0x100)},
		{name: ".bss", typ: 8, flags: 3, addr: 0xffffffff83000000, size: 0x100},
	}
	syms := []synthSym{
		{name: ".text", value: 0xffffffff81000000, info: local | section, shndx: 1},
		{name: "_text", value: 0xffffffff81000000, info: global, shndx: 1},
		{name: "helper", value: 0xffffffff81000040, info: local | fn, shndx: 1},
		{name: "weak_fn", value: 0xffffffff81000080, info: weak | fn, shndx: 1},
		{name: "linux_banner", value: 0xffffffff82000000, info: global | object, shndx: 2},
		{name: "init_task", value: 0xffffffff82a00000, info: global | object, shndx: 3},
		{name: "counter", value: 0xffffffff83000000, info: local | object, shndx: 4},
		{name: "undefined", info: global},
		{name: "abs", value: 0x1234, info: global, shndx: uint16(elf.SHN_ABS)},
	}
	vmlinux := synthELF(secs, syms...)
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	got, err := kimage.ELFSymbols(f)
	if err != nil {
		t.Fatal(err)
	}
	want := []kimage.RawSymbol{
		{"_text", 0xffffffff81000000, 'T'},
		{"helper", 0xffffffff81000040, 't'},
		{"weak_fn", 0xffffffff81000080, 'W'},
		{"linux_banner", 0xffffffff82000000, 'R'},
		{"init_task", 0xffffffff82a00000, 'D'},
		{"counter", 0xffffffff83000000, 'b'},
		{"abs", 0x1234, 'A'},
	}
	if !slices.Equal(got, want) {
		t.Errorf("got %v\nwant %v", got, want)
	}

	// Without kallsyms, an image's symbols come from its .symtab.
	img, err := kimage.Parse(context.Background(), vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	if img.SymbolSource != "symtab" || img.Kallsyms != nil || img.Release != "6.1.0-99-synthetic" {
		t.Errorf("source %q, tables %v, release %q", img.SymbolSource, img.Kallsyms, img.Release)
	}
	if s, err := img.Symbols.Find("helper", 0); err != nil || s.Size != 0x40 {
		t.Errorf("helper: %v %v", s, err)
	}

	// A System.map replaces them, sized by the image's sections.
	if err := img.UseSystemMap(strings.NewReader("ffffffff81000000 T _text\nffffffff81000010 t other\n")); err != nil {
		t.Fatal(err)
	}
	if s, err := img.Symbols.Find("other", 0); img.SymbolSource != "System.map" || err != nil || s.Size != 0xf0 {
		t.Errorf("after UseSystemMap: %s, %v, %v", img.SymbolSource, s, err)
	}
	if err := img.UseSystemMap(strings.NewReader("")); err == nil {
		t.Error("empty System.map accepted")
	}
}
