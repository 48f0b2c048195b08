package kimage_test

import (
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/bzimage"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
)

// TestRealKernel checks the default guest's kernel, decoded offline, against
// what is known about any x86-64 Linux and against itself.
func TestRealKernel(t *testing.T) {
	img := loadReal(t)
	syms := img.Symbols
	h, err := bzimage.ParseFile(testvmKernel(t))
	if err != nil {
		t.Fatal(err)
	}
	if img.Release != h.Release() || !strings.HasPrefix(img.Version, "Linux version "+h.Release()+" ") {
		t.Errorf("banner %q does not match the boot header's %q", img.Version, h.KernelVersion)
	}
	if img.SymbolSource != "kallsyms" || syms.Len() < 50000 {
		t.Fatalf("%d symbols from %s", syms.Len(), img.SymbolSource)
	}

	var text kimage.Region
	for _, r := range syms.Regions() {
		if r.Name == ".text" {
			text = r
		}
	}
	for _, name := range []string{"_text", "_stext", "startup_64"} {
		s, err := syms.Find(name, 0)
		if err != nil {
			t.Fatal(err)
		}
		// The x86-64 default: CONFIG_PHYSICAL_START 16 MiB above __START_KERNEL_map.
		if s.Addr != text.Start || s.Addr != 0xffffffff81000000 || s.Type != 'T' {
			t.Errorf("%v: want T at .text's start %#x (0xffffffff81000000)", s, text.Start)
		}
	}
	if k := img.Kallsyms; k.Base != text.Start || !k.BaseRelative || !k.AbsolutePercpu {
		t.Errorf("kallsyms %v: want offsets relative to _text, absolute per-CPU", k)
	}

	s, err := syms.Find("cmdline_proc_show", 0)
	if err != nil || (s.Type != 't' && s.Type != 'T') || s.Size == 0 || s.Size > 4096 || s.Addr < text.Start || s.Addr >= text.End {
		t.Errorf("cmdline_proc_show: %v, %v", s, err)
	}
	taskSize, err := img.Sizeof("task_struct")
	if err != nil {
		t.Fatal(err)
	}
	if s, err := syms.Find("init_task", 0); err != nil || s.Type != 'D' || s.Size < taskSize {
		t.Errorf("init_task: %v, %v; want D of at least sizeof(task_struct) = %d", s, err, taskSize)
	}
	if s, err := syms.Find("linux_banner", 0); err != nil || s.Addr != img.BannerAddr {
		t.Errorf("linux_banner %v, %v; banner read at %#x", s, err, img.BannerAddr)
	}
	// Per-CPU symbols hold offsets into the per-CPU area.
	if s, err := syms.Find("__per_cpu_start", 0); err != nil || s.Addr != 0 || s.Type != 'A' {
		t.Errorf("__per_cpu_start: %v, %v", s, err)
	}

	// Same-named statics: distinct sympos in address order, and Find picks each.
	counts := map[string]int{}
	zeroText := 0
	for _, s := range syms.All() {
		counts[s.Name]++
		if s.Pos != counts[s.Name] {
			t.Fatalf("%v: sympos %d, want %d", s, s.Pos, counts[s.Name])
		}
		if s.Text() && s.Size == 0 {
			zeroText++
			t.Logf("code symbol of size 0 (at the end of its section): %v", s)
		}
	}
	if zeroText > 5 {
		t.Errorf("%d code symbols of size 0", zeroText)
	}
	multi := 0
	for name, n := range counts {
		if n < 2 {
			continue
		}
		multi++
		all := syms.Lookup(name)
		for i, s := range all {
			if got, err := syms.Find(name, i+1); err != nil || got != s || (i > 0 && s.Addr < all[i-1].Addr) {
				t.Fatalf("%s sympos %d: %v, %v", name, i+1, got, err)
			}
		}
		if _, err := syms.Find(name, 0); err == nil {
			t.Fatalf("%s with %d definitions found without sympos", name, n)
		}
	}
	t.Logf("%d names have several definitions", multi)
	if multi < 100 {
		t.Errorf("only %d names with several definitions", multi)
	}

	// At is the inverse of Find within a symbol.
	if got, off, ok := syms.At(s.Addr + 5); !ok || got.Name != "cmdline_proc_show" || off != 5 {
		t.Errorf("At(cmdline_proc_show+5) = %v+%d %v", got, off, ok)
	}
}

// TestRealKernelBTF checks BTF lookups on the real kernel against each other.
func TestRealKernelBTF(t *testing.T) {
	img := loadReal(t)
	off := func(typ, path string) uint64 {
		t.Helper()
		v, err := img.FieldOffset(typ, path)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	size := func(typ string) uint64 {
		t.Helper()
		v, err := img.Sizeof(typ)
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
	task := size("task_struct")
	for _, p := range []string{"thread.sp", "tasks", "__state", "stack", "pid", "comm", "thread"} {
		if v := off("task_struct", p); v >= task {
			t.Errorf("task_struct.%s at %d, beyond sizeof %d", p, v, task)
		}
	}
	if a, b := off("task_struct", "thread.sp"), off("task_struct", "thread")+off("thread_struct", "sp"); a != b {
		t.Errorf("task_struct.thread.sp %d != thread %d + thread_struct.sp", a, b)
	}
	if a, b := off("task_struct", "tasks.prev"), off("task_struct", "tasks")+off("list_head", "prev"); a != b {
		t.Errorf("task_struct.tasks.prev %d != tasks + list_head.prev %d", a, b)
	}
	if off("task_struct", "comm[1]") != off("task_struct", "comm")+1 {
		t.Error("comm[1] is not comm+1")
	}
	if size("struct list_head") != 16 {
		t.Errorf("sizeof(struct list_head) = %d", size("struct list_head"))
	}
	// task_struct keeps flags such as sched_reset_on_fork in bitfields.
	if _, err := img.FieldOffset("task_struct", "sched_reset_on_fork"); err == nil || !strings.Contains(err.Error(), "bitfield") {
		t.Errorf("bitfield: %v", err)
	}
	t.Logf("sizeof(task_struct) %d; __state %d, stack %d, tasks %d, thread.sp %d",
		task, off("task_struct", "__state"), off("task_struct", "stack"), off("task_struct", "tasks"), off("task_struct", "thread.sp"))
}

// TestRealKernelXZ decodes the generic flavour (xz with the x86 BCJ filter)
// when it is in the cache: `lucos guest fetch --flavour generic`.
func TestRealKernelXZ(t *testing.T) {
	cloud := loadReal(t)
	rel := strings.Replace(cloud.Release, "-cloud-", "-", 1)
	g, err := guest.Open("", rel)
	if err != nil && testvm.InCI() {
		// Under CI the xz path is required: fetch the generic flavour.
		g, err = guest.Fetch(context.Background(), guest.Options{Flavour: guest.FlavourGeneric, Release: rel})
	}
	if err != nil {
		t.Skipf("generic flavour %s not cached (lucos guest fetch --flavour generic): %v", rel, err)
	}
	start := time.Now()
	img, err := kimage.Load(context.Background(), g.Kernel, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("%s: %s payload, %d symbols in %v; %v", rel, img.Compression, img.Symbols.Len(), time.Since(start), img.Kallsyms)
	if img.Compression != kimage.XZ || img.Release != rel {
		t.Errorf("compression %s, release %s", img.Compression, img.Release)
	}
	if s, err := img.Symbols.Find("init_task", 0); err != nil || s.Type != 'D' {
		t.Errorf("init_task: %v, %v", s, err)
	}
}
