package kimage_test

import (
	"errors"
	"strings"
	"testing"

	"github.com/lucos/lucos/kimage"
)

func synthTable() *kimage.Symbols {
	return kimage.NewSymbols(synthSymbols(), []kimage.Region{
		{Name: ".text", Start: 0xffffffff81000000, End: 0xffffffff81005000},
		{Name: ".data", Start: 0xffffffff82a00000, End: 0xffffffff82a01000},
		{Name: ".data..percpu", Start: 0, End: 0x34000},
	})
}

func TestSymbolsSizesAndPos(t *testing.T) {
	s := synthTable()
	cases := []struct {
		name      string
		pos       int
		addr      uint64
		typ       byte
		size      uint64
		wantDescr string
	}{
		{"_text", 1, 0xffffffff81000000, 'T', 0x160, "aliases share the size to the next address"},
		{"startup_64", 1, 0xffffffff81000000, 'T', 0x160, ""},
		{"verify_cpu", 1, 0xffffffff81000160, 't', 0x1000 - 0x160, ""},
		{"show_val", 1, 0xffffffff81001000, 't', 0x1000, "first of three statics"},
		{"show_val", 2, 0xffffffff81003000, 't', 0x1000, ""},
		{"show_val", 3, 0xffffffff82a00100, 'd', 0xf00, "cut at the end of .data"},
		{"_etext", 1, 0xffffffff81005000, 'T', 0, "a marker past the section"},
		{"fixed_percpu_data", 1, 0, 'A', 0x6000, "per-CPU offsets live in their own region"},
		{"__per_cpu_end", 1, 0x34000, 'A', 0, ""},
		{"linux_banner", 1, 0xffffffff82000000, 'D', 0, "outside every region"},
	}
	for _, c := range cases {
		got, err := s.Find(c.name, c.pos)
		if err != nil {
			t.Errorf("%s sympos %d: %v", c.name, c.pos, err)
			continue
		}
		if got.Name != c.name || got.Pos != c.pos || got.Addr != c.addr || got.Type != c.typ || got.Size != c.size {
			t.Errorf("%s sympos %d = %v; want %c %#x+%#x (%s)", c.name, c.pos, got, c.typ, c.addr, c.size, c.wantDescr)
		}
	}
	if n := len(s.Lookup("show_val")); n != 3 {
		t.Errorf("Lookup(show_val) = %d symbols", n)
	}
	if s.Len() != len(synthSymbols()) || len(s.All()) != s.Len() {
		t.Errorf("Len %d, All %d", s.Len(), len(s.All()))
	}
}

func TestSymbolsFindErrors(t *testing.T) {
	s := synthTable()
	_, err := s.Find("show_val", 0)
	var amb *kimage.AmbiguousError
	if !errors.As(err, &amb) || !errors.Is(err, kimage.ErrAmbiguous) || len(amb.Candidates) != 3 {
		t.Fatalf("Find(show_val, 0) = %v", err)
	}
	if msg := err.Error(); !strings.Contains(msg, "add sympos") || !strings.Contains(msg, "sympos 3: d 0xffffffff82a00100") {
		t.Errorf("message %q", msg)
	}
	for _, c := range []struct {
		name string
		pos  int
	}{{"no_such_symbol", 0}, {"show_val", 4}, {"show_val", -1}, {"_text", 2}} {
		if _, err := s.Find(c.name, c.pos); !errors.Is(err, kimage.ErrNotFound) {
			t.Errorf("Find(%s, %d) = %v, want ErrNotFound", c.name, c.pos, err)
		}
	}
	if got, err := s.Find("_text", 1); err != nil || got.Name != "_text" {
		t.Errorf("unique name with sympos 1: %v, %v", got, err)
	}
}

func TestSymbolsAt(t *testing.T) {
	s := synthTable()
	cases := []struct {
		addr uint64
		name string
		off  uint64
		ok   bool
	}{
		{0xffffffff81000000, "startup_64", 0, true}, // first alias in table order, as %pS
		{0xffffffff81000010, "startup_64", 0x10, true},
		{0xffffffff81002fff, "cmdline_proc_show", 0xfff, true},
		{0xffffffff81005000, "_etext", 0, true}, // exactly at a zero-size marker
		{0xffffffff81005001, "", 0, false},
		{0xffffffff82a00fff, "show_val", 0xeff, true},
		{0xffffffff82a01000, "", 0, false},
		{0x10, "__per_cpu_start", 0x10, true}, // first of the aliases at 0
		{0xffffffff80000000, "", 0, false},
		{^uint64(0), "", 0, false},
	}
	for _, c := range cases {
		sym, off, ok := s.At(c.addr)
		if ok != c.ok || sym.Name != c.name || off != c.off {
			t.Errorf("At(%#x) = %v+%#x %v; want %s+%#x %v", c.addr, sym, off, ok, c.name, c.off, c.ok)
		}
	}
	if _, _, ok := kimage.NewSymbols(nil, nil).At(0); ok {
		t.Error("empty table has a symbol")
	}
}
