package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"errors"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
)

// goldenNames are the committed patch objects that parse.
var goldenNames = []string{"alt", "ambiguous", "ambiguous_sympos", "cmdline", "initexit", "jump", "orig", "thismodule", "unknown", "warn"}

func TestParseGolden(t *testing.T) {
	for _, name := range goldenNames {
		m, err := Parse(golden(t, name))
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		if m.Name != name || !regexp.MustCompile(`^\d+\.\d+\.\d+-\d+-`).MatchString(m.Release) || len(m.BuildID) != 40 {
			t.Errorf("%s: name %q release %q build id %q", name, m.Name, m.Release, m.BuildID)
		}
		if len(m.Funcs) != 1 || m.Funcs[0].OldName != "cmdline_proc_show" || m.Funcs[0].Pos != 0 ||
			m.Funcs[0].NewSymbol != "new_cmdline_proc_show" {
			t.Errorf("%s: funcs %+v", name, m.Funcs)
		}
	}
	m, _ := Parse(golden(t, "cmdline"))
	if m.Description != "marker in /proc/cmdline" || !strings.HasPrefix(m.Vermagic, m.Release+" SMP") {
		t.Errorf("description %q vermagic %q", m.Description, m.Vermagic)
	}
	treat := map[string]Treatment{}
	for _, s := range m.Sections {
		treat[s.Name] = s.Treatment
	}
	for name, want := range map[string]Treatment{
		".text": Load, ".rodata.str1.1": Load, ".data": Load, ".bss": Load, ".lucos.funcs": Load, ".lucos.meta": Load,
		"__mcount_loc": Consume, ".return_sites": Consume, ".modinfo": Metadata, "__versions": Metadata,
		".orc_unwind": Register, ".orc_unwind_ip": Register, ".gnu.linkonce.this_module": Ignore,
	} {
		if treat[name] != want {
			t.Errorf("section %s: %v, want %v", name, treat[name], want)
		}
	}
}

// mutate returns a copy of ko changed by fn, which gets the parsed headers.
func mutate(t *testing.T, ko []byte, fn func(f *elf.File, b []byte)) []byte {
	t.Helper()
	b := bytes.Clone(ko)
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		t.Fatal(err)
	}
	fn(f, b)
	return b
}

func sectionData(t *testing.T, f *elf.File, b []byte, name string) []byte {
	t.Helper()
	s := f.Section(name)
	if s == nil {
		t.Fatalf("no section %s", name)
	}
	return b[s.Offset : s.Offset+s.Size]
}

// rename renames a section in place (same length), through its header's
// name offset: the linker shares name tails (".lucos.meta" is the end of
// ".rela.lucos.meta"), so both change.
func rename(t *testing.T, f *elf.File, b []byte, from, to string) {
	t.Helper()
	names := sectionData(t, f, b, ".shstrtab")
	shoff := binary.LittleEndian.Uint64(b[0x28:])
	for i, s := range f.Sections {
		if s.Name != from {
			continue
		}
		off := binary.LittleEndian.Uint32(b[shoff+uint64(i)*64:])
		if len(from) != len(to) || string(names[off:int(off)+len(from)]) != from {
			t.Fatalf("cannot rename %s to %s", from, to)
		}
		copy(names[off:], to)
		return
	}
	t.Fatalf("no section %s", from)
}

func TestParseRefusals(t *testing.T) {
	ko := golden(t, "cmdline")
	for _, tc := range []struct {
		name   string
		mutate func(f *elf.File, b []byte)
		is     error
		words  []string
	}{
		{"GOTPCREL", func(f *elf.File, b []byte) {
			rela := sectionData(t, f, b, ".rela.text")
			binary.LittleEndian.PutUint32(rela[24+8:], uint32(elf.R_X86_64_GOTPCREL)) // 2nd: saved_command_line
		}, ErrRefused, []string{"section .text+0x", "symbol saved_command_line", "R_X86_64_GOTPCREL"}},
		{"magic", func(f *elf.File, b []byte) {
			sectionData(t, f, b, ".lucos.meta")[0] ^= 0xff
		}, ErrFormat, []string{".lucos.meta", "magic"}},
		{"abi", func(f *elf.File, b []byte) {
			sectionData(t, f, b, ".lucos.meta")[4] = 2
		}, ErrFormat, []string{"ABI version 2"}},
		{"no meta", func(f *elf.File, b []byte) {
			rename(t, f, b, ".lucos.meta", ".lucos.mexa")
		}, ErrFormat, []string{"LUCOS_PATCH"}},
		{"unknown section", func(f *elf.File, b []byte) {
			rename(t, f, b, ".bss", ".bsz")
		}, ErrRefused, []string{".bsz", "unknown SHF_ALLOC section"}},
		{"no vermagic", func(f *elf.File, b []byte) {
			mi := sectionData(t, f, b, ".modinfo")
			copy(mi[bytes.Index(mi, []byte("vermagic=")):], "vermagix=")
		}, ErrFormat, []string{"vermagic"}},
		{"flags", func(f *elf.File, b []byte) {
			sectionData(t, f, b, ".lucos.funcs")[24] = 1
		}, ErrFormat, []string{"reserved flags"}},
		{"executable", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint16(b[16:], uint16(elf.ET_EXEC))
		}, ErrFormat, []string{"not a relocatable object"}},
		{"i386", func(f *elf.File, b []byte) {
			binary.LittleEndian.PutUint16(b[18:], uint16(elf.EM_386))
		}, ErrFormat, []string{"not x86-64"}},
		{"truncated", func(f *elf.File, b []byte) {}, ErrFormat, nil},
	} {
		t.Run(tc.name, func(t *testing.T) {
			b := mutate(t, ko, tc.mutate)
			if tc.name == "truncated" {
				b = b[:len(b)/2]
			}
			_, err := Parse(b)
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

func FuzzParse(f *testing.F) {
	files, _ := filepath.Glob(filepath.Join(testdataDir(), "*.ko"))
	for _, p := range files {
		b, err := os.ReadFile(p)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte("\x7fELF"))
	f.Fuzz(func(t *testing.T, ko []byte) {
		m, err := Parse(ko)
		if err != nil {
			if !errors.Is(err, ErrFormat) && !errors.Is(err, ErrRefused) {
				t.Fatalf("error %v is neither ErrFormat nor ErrRefused", err)
			}
			return
		}
		// Link must not panic either: against a kernel that has nothing.
		_, _ = m.Link(emptyKernel{release: m.Release}, 0xffffffff83a00000, 2<<20)
	})
}
