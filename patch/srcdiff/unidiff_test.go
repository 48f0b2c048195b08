package srcdiff

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testreq"
)

func TestDiffFiles(t *testing.T) {
	diff := []byte(`# Subject: fix it
diff --git a/fs/ext4/inode.c b/fs/ext4/inode.c
index 1..2 100644
--- a/fs/ext4/inode.c	2026-01-01 00:00:00
+++ b/fs/ext4/inode.c	2026-01-02 00:00:00
@@ -1,1 +1,1 @@
-a
+b
--- /dev/null
+++ b/fs/ext4/new.c
@@ -0,0 +1 @@
+x
--- a/fs/ext4/old.c
+++ /dev/null
@@ -1 +0,0 @@
-y
`)
	files, err := diffFiles(diff)
	if err != nil {
		t.Fatal(err)
	}
	want := []diffFile{{Path: "fs/ext4/inode.c"}, {Path: "fs/ext4/new.c", New: true}, {Path: "fs/ext4/old.c", Deleted: true}}
	if !slices.Equal(files, want) {
		t.Errorf("diffFiles = %+v, want %+v", files, want)
	}
	if got := diffSubject(diff); got != "fix it" {
		t.Errorf("diffSubject = %q", got)
	}
	for name, bad := range map[string]string{
		"no files":     "just text\n",
		"outside tree": "--- a/../etc/passwd\n+++ b/../etc/passwd\n",
	} {
		if _, err := diffFiles([]byte(bad)); err == nil {
			t.Errorf("%s: no error", name)
		}
	}
}

func TestLineChange(t *testing.T) {
	before := "a\nb\nc\nd\ne\n"
	after := "a\nB\nnew\nc\nd\ne\n"
	lc := compareLines("f.c", []byte(before), []byte(after))
	for old, want := range map[int]int{1: 1, 3: 4, 5: 6} {
		if got, ok := lc.newLine(old); !ok || got != want {
			t.Errorf("newLine(%d) = %d, %v; want %d", old, got, ok, want)
		}
	}
	if _, ok := lc.newLine(2); ok {
		t.Error("newLine of a changed line: ok")
	}
	if !lc.touches(2, 3) || lc.touches(4, 6) {
		t.Errorf("touches: changed lines are %v", lc.changed)
	}
	// A pure deletion touches where it was.
	del := compareLines("f.c", []byte(before), []byte("a\nb\nd\ne\n"))
	if !del.touches(3, 3) {
		t.Errorf("deletion: changed = %v", del.changed)
	}
}

func TestApplyDiffRejects(t *testing.T) {
	testreq.Tools(t, "patch")
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "f.c"), []byte("one\ntwo\nthree\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	good := []byte("--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n one\n-two\n+TWO\n three\n")
	if err := applyDiff(context.Background(), dir, "good.patch", good); err != nil {
		t.Fatal(err)
	}
	if b, _ := os.ReadFile(filepath.Join(dir, "f.c")); string(b) != "one\nTWO\nthree\n" {
		t.Fatalf("applied: %q", b)
	}
	bad := []byte("--- a/f.c\n+++ b/f.c\n@@ -1,3 +1,3 @@\n uno\n-dos\n+DOS\n tres\n")
	err := applyDiff(context.Background(), dir, "bad.patch", bad)
	if !errors.Is(err, ErrDoesNotApply) || !strings.Contains(err.Error(), "+DOS") || !strings.Contains(err.Error(), "FAILED") {
		t.Fatalf("a hunk that does not apply: %v; want ErrDoesNotApply showing the hunk", err)
	}
}

func TestHeaderDefinitions(t *testing.T) {
	h := `#ifndef X_H
#define X_H
#define CONST 3
#define TWICE(x) \
	((x) * 2)
static inline int inner(int x)
{
	return x + CONST;
}

static inline int outer(int x) { return inner(x) * 2; }
static inline int unrelated(int x)
{
	return x;
}
int proto(int x);
#endif
`
	var names []string
	for _, d := range definitions([]byte(h)) {
		names = append(names, d.name)
	}
	if want := []string{"X_H", "CONST", "TWICE", "inner", "outer", "unrelated"}; !slices.Equal(names, want) {
		t.Errorf("definitions = %q, want %q", names, want)
	}
	after := strings.Replace(h, "return x + CONST;", "return x + CONST + 1;", 1)
	lc := compareLines("x.h", []byte(h), []byte(after))
	if got, want := changedNames([]byte(after), lc), []string{"inner", "outer"}; !slices.Equal(got, want) {
		t.Errorf("changedNames = %q, want %q", got, want)
	}
}

func TestPatchNameAndQuote(t *testing.T) {
	for in, want := range map[string]string{
		"/x/01-timens-nsec-validate.patch": "01-timens-nsec-validate",
		"fix me.diff":                      "fix-me",
		"...":                              "diff",
	} {
		if got := patchName(in); got != want {
			t.Errorf("patchName(%q) = %q, want %q", in, got, want)
		}
	}
	if got := cQuote("a \"b\" \\ \n"); got != `"a \"b\" \\ \x0a"` {
		t.Errorf("cQuote = %s", got)
	}
}

// The object writer's output reads back with debug/elf as written.
func TestOutObjectRoundTrip(t *testing.T) {
	o := newOutObject()
	text := &outSection{name: ".text.f", typ: elf.SHT_PROGBITS, flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, align: 16}
	text.sym = &outSymbol{bind: elf.STB_LOCAL, typ: elf.STT_SECTION, sec: text}
	o.secs = append(o.secs, text)
	o.syms = append(o.syms, text.sym)
	at := text.appendBytes([]byte{0xe8, 0, 0, 0, 0, 0xc3}, 6, 1)
	o.define("f", elf.STB_LOCAL, elf.STT_FUNC, text, at, 6)
	o.define("__lucos_new_0", elf.STB_GLOBAL, elf.STT_FUNC, text, at, 6)
	text.relocs = append(text.relocs, outReloc{off: 1, typ: elf.R_X86_64_PLT32, sym: o.undefined("printk"), addend: -4})
	str := o.section(".rodata.str1.1", elf.SHT_PROGBITS, elf.SHF_ALLOC, 1)
	str.appendBytes([]byte("hi\x00"), 3, 1)
	bss := o.section(".bss.x", elf.SHT_NOBITS, elf.SHF_ALLOC|elf.SHF_WRITE, 8)
	bss.appendBytes(nil, 24, 8)
	b, err := o.bytes()
	if err != nil {
		t.Fatal(err)
	}
	f, err := elf.NewFile(bytes.NewReader(b))
	if err != nil {
		t.Fatal(err)
	}
	if f.Type != elf.ET_REL || f.Machine != elf.EM_X86_64 {
		t.Fatalf("header: %v %v", f.Type, f.Machine)
	}
	if s := f.Section(".text.f"); s == nil || s.Size != 6 || s.Addralign != 16 {
		t.Fatalf(".text.f: %+v", s)
	}
	if s := f.Section(".bss.x"); s == nil || s.Size != 24 || s.Type != elf.SHT_NOBITS {
		t.Fatalf(".bss.x: %+v", s)
	}
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	seenGlobal := false
	for _, s := range syms {
		if elf.ST_BIND(s.Info) == elf.STB_LOCAL && seenGlobal {
			t.Errorf("local %s after a global", s.Name)
		}
		seenGlobal = seenGlobal || elf.ST_BIND(s.Info) == elf.STB_GLOBAL
	}
	got, err := readObjectBytes(t, b)
	if err != nil {
		t.Fatal(err)
	}
	fs := got.section(".text.f")
	if len(fs.relocs) != 1 || fs.relocs[0].sym.name != "printk" || fs.relocs[0].addend != -4 || fs.relocs[0].typ != elf.R_X86_64_PLT32 {
		t.Errorf("relocations read back: %+v", fs.relocs)
	}
	if f := got.lookup("f"); f == nil || f.size != 6 {
		t.Errorf("symbol f: %+v", f)
	}
}

func readObjectBytes(t *testing.T, b []byte) (*object, error) {
	p := filepath.Join(t.TempDir(), "o.o")
	if err := os.WriteFile(p, b, 0o644); err != nil {
		return nil, err
	}
	return readObject(p)
}

// Hostile objects are errors, not panics.
func FuzzReadObject(f *testing.F) {
	o := newOutObject()
	s := o.section(".text.f", elf.SHT_PROGBITS, elf.SHF_ALLOC|elf.SHF_EXECINSTR, 16)
	s.appendBytes([]byte{0xc3}, 1, 1)
	b, _ := o.bytes()
	f.Add(b)
	f.Fuzz(func(t *testing.T, data []byte) {
		p := filepath.Join(t.TempDir(), "o.o")
		if err := os.WriteFile(p, data, 0o644); err != nil {
			t.Fatal(err)
		}
		readObject(p)
	})
}

func TestCompanions(t *testing.T) {
	dir := t.TempDir()
	c := filepath.Join(dir, "extra.c")
	os.WriteFile(c, []byte(`#include <lucos/patch.h>
DEFINE_SPINLOCK(new_lock);
int new_counter;
static int helper(void);
extern int kernel_thing;
struct foo_v2 foo_new = { .a = 1 };
LUCOS_DATA(foo, foo_new, xfer, rxfer);
LUCOS_DATA_POS(bar, 2, bar_new, xfer2, rxfer2);
struct bar_v2 bar_new;
`), 0o644)
	got, files, err := companions(Options{Companions: []string{c}})
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]string{"new_lock": "new_lock", "new_counter": "new_counter", "foo_new": "foo_new", "foo": "foo_new", "bar": "bar_new", "bar_new": "bar_new"}
	for k, v := range want {
		if got[k] != v {
			t.Errorf("companions[%q] = %q, want %q (all: %v)", k, got[k], v, got)
		}
	}
	if got["helper"] != "" || got["kernel_thing"] != "" {
		t.Errorf("a static or extern is not provided: %v", got)
	}
	if len(files) != 1 {
		t.Errorf("files = %v", files)
	}
	os.WriteFile(c, []byte("static struct foo_v2 foo_new;\nLUCOS_DATA(foo, foo_new, x, y);\n"), 0o644)
	if _, _, err := companions(Options{Companions: []string{c}}); err == nil || !strings.Contains(err.Error(), "without static") {
		t.Errorf("a static new variable: %v", err)
	}
}

func TestLeftOut(t *testing.T) {
	root := t.TempDir()
	write := func(p, s string) {
		os.MkdirAll(filepath.Join(root, filepath.Dir(p)), 0o755)
		os.WriteFile(filepath.Join(root, p), []byte(s), 0o644)
	}
	write("drivers/Makefile", "obj-$(CONFIG_USB_SUPPORT)\t+= usb/\nobj-y += base/\n")
	write("drivers/usb/Makefile", "obj-$(CONFIG_USB) += core/\n")
	write("drivers/usb/core/Makefile", "usbcore-y := usb.o hub.o \\\n\tmessage.o\nusbcore-$(CONFIG_OF) += of.o\nobj-$(CONFIG_USB) += usbcore.o\n")
	write("drivers/base/Makefile", "obj-y := core.o\nobj-$(CONFIG_DEVTMPFS) += devtmpfs.o\n")
	cfg := kconfig{"CONFIG_DEVTMPFS": "y"}
	for path, want := range map[string]string{
		"drivers/usb/core/message.c": "CONFIG_USB",
		"drivers/usb/core/of.c":      "CONFIG_OF",
		"drivers/base/core.c":        "",
		"drivers/base/devtmpfs.c":    "",
		"drivers/base/unknown.c":     "",
	} {
		if got := leftOut(root, cfg, path); got != want {
			t.Errorf("leftOut(%s) = %q, want %q", path, got, want)
		}
	}
	cfg["CONFIG_USB"] = "m"
	if got := leftOut(root, cfg, "drivers/usb/core/usb.c"); got != "CONFIG_USB_SUPPORT" {
		t.Errorf("with CONFIG_USB=m but no USB support: %q", got)
	}
}
