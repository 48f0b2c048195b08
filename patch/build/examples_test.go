package build

import (
	"context"
	"debug/elf"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
)

// The examples under examples/patches build, and their modules hold what
// their READMEs say: the functions they replace, the kernel symbols they
// use — which exist in the guest kernel, once each — and the sections
// their code makes. The bad examples have exactly the defect lucos must
// refuse. (Applying them to a running guest is tested by package patch.)

// example is one directory of examples/patches and what its module holds.
type example struct {
	dir   string
	funcs []string // LUCOS_REPLACE targets (their order in .lucos.funcs means nothing)
	// uses are kernel symbols the patch references (beyond the printing
	// and locking ones every example uses).
	uses    []string
	present []string // sections it must have
	absent  []string // sections it must not have
	// bad names the defect of a refusal example; "" for a good one.
	bad string
}

// neverInGood are the sections lucos refuses or that no example needs.
var neverInGood = []string{"__ex_table", "__bug_table", ".data..percpu", ".init.text", "__jump_table"}

var examples = []example{
	{dir: "cmdline-string", funcs: []string{"cmdline_proc_show"}, uses: []string{"saved_command_line"}},
	{dir: "meminfo-string", funcs: []string{"meminfo_proc_show"}, uses: []string{"__lucos_orig__meminfo_proc_show"}},
	{dir: "uname", funcs: []string{"__x64_sys_newuname"},
		uses:    []string{"uts_sem", "override_release", "_copy_to_user", "current_task"},
		present: []string{".rodata"}, // COMPAT_UTS_MACHINE
	},
	{dir: "static-call", funcs: []string{"cmdline_proc_show"}, uses: []string{"get_nr_inodes"}},
	{dir: "multi", funcs: []string{"cmdline_proc_show", "version_proc_show", "loadavg_proc_show"},
		uses: []string{"linux_proc_banner", "get_avenrun", "nr_running", "nr_threads"}},
	{dir: "new-data", funcs: []string{"cmdline_proc_show"}, uses: []string{"saved_command_line"},
		present: []string{".smp_locks"}, // the lock prefix of atomic_long_inc_return
	},
	{dir: "hot-paths", funcs: hotPaths, uses: origs(hotPaths)},
	{dir: "bad/bad-param", funcs: []string{"cmdline_proc_show"}, present: []string{"__param"}, bad: "param"},
	{dir: "bad/bad-unknown-symbol", funcs: []string{"cmdline_proc_show"}, uses: []string{"lucos_no_such_symbol"}, bad: "unknown"},
	{dir: "bad/bad-ambiguous", funcs: []string{"cmdline_proc_show"}, uses: []string{"name_show"}, bad: "ambiguous"},
	{dir: "bad/bad-not-function", funcs: []string{"linux_proc_banner"}, bad: "not-function"},
}

// hotPaths are the functions examples/patches/hot-paths wraps.
var hotPaths = []string{"__x64_sys_getpid", "__x64_sys_write", "__x64_sys_read", "__x64_sys_clone", "__x64_sys_execve",
	"__x64_sys_openat", "__x64_sys_close", "__x64_sys_unlink", "__x64_sys_pread64", "__x64_sys_pwrite64", "__x64_sys_fcntl"}

// origs names the LUCOS_ORIG symbols of funcs.
func origs(funcs []string) []string {
	var out []string
	for _, f := range funcs {
		out = append(out, "__lucos_orig__"+f)
	}
	return out
}

var kernel struct {
	once sync.Once
	img  *kimage.Image
	err  error
}

// kernelSymbols returns the guest kernel's symbol table (kallsyms).
func kernelSymbols(t *testing.T) *kimage.Symbols {
	t.Helper()
	img := requireKbuild(t)
	kernel.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		kernel.img, kernel.err = kimage.Load(ctx, img.Kernel, img.Dir)
	})
	if kernel.err != nil {
		t.Fatal(kernel.err)
	}
	return kernel.img.Symbols
}

// undefinedSymbols lists the symbols a module leaves to the loader.
func undefinedSymbols(t *testing.T, ko string) []string {
	t.Helper()
	f, err := elf.Open(ko)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		t.Fatal(err)
	}
	var out []string
	for _, s := range syms {
		if s.Section == elf.SHN_UNDEF && s.Name != "" {
			out = append(out, s.Name)
		}
	}
	return out
}

func TestExamples(t *testing.T) {
	for _, ex := range examples {
		t.Run(ex.dir, func(t *testing.T) {
			dir := filepath.Join("examples", "patches", ex.dir)
			if _, err := os.Stat(filepath.Join("..", "..", dir, "README.md")); err != nil {
				t.Errorf("example without a README: %v", err)
			}
			res, m := buildExample(t, dir)
			syms := kernelSymbols(t)
			if want := filepath.Base(ex.dir); m.Name != want {
				t.Errorf("LUCOS_PATCH name %q, want %q", m.Name, want)
			}
			var names []string
			for _, s := range m.Sections {
				names = append(names, s.Name)
			}
			t.Logf("SHF_ALLOC sections: %s", strings.Join(names, " "))

			var olds []string
			for _, fn := range m.Funcs {
				olds = append(olds, fn.OldName)
				if fn.Sympos != 0 || fn.Flags != 0 || !strings.HasPrefix(fn.New, "patched_") {
					t.Errorf("descriptor %+v", fn)
				}
			}
			slices.Sort(olds)
			if want := slices.Sorted(slices.Values(ex.funcs)); !slices.Equal(olds, want) {
				t.Errorf(".lucos.funcs replace %q, want %q", olds, want)
			}
			for _, s := range ex.present {
				if !slices.Contains(names, s) {
					t.Errorf("no %s section", s)
				}
			}
			absent := ex.absent
			if ex.bad == "" {
				absent = append(absent, neverInGood...)
			}
			for _, s := range absent {
				if slices.Contains(names, s) {
					t.Errorf("has a %s section", s)
				}
			}
			mcount := slices.IndexFunc(m.Sections, func(s Section) bool { return s.Name == "__mcount_loc" })
			if mcount < 0 || m.Sections[mcount].Size < 8*uint64(len(m.Funcs)) {
				t.Errorf("__mcount_loc does not record an __fentry__ call per new function")
			}

			undef := undefinedSymbols(t, res.KO)
			for _, u := range ex.uses {
				if !slices.Contains(undef, u) {
					t.Errorf("the module does not reference %s (references %q)", u, undef)
				}
			}
			checkKernelSymbols(t, ex, m, undef, syms)
		})
	}
}

// checkKernelSymbols checks the example against the guest kernel's symbol
// table: a good example's targets are unique functions and everything it
// references exists once; a bad one has its defect.
func checkKernelSymbols(t *testing.T, ex example, m *Module, undef []string, syms *kimage.Symbols) {
	t.Helper()
	for _, fn := range m.Funcs {
		s, err := syms.Find(fn.OldName, int(fn.Sympos))
		switch {
		case ex.bad == "not-function":
			if err != nil || s.Text() {
				t.Errorf("%s should be a data symbol: %v %v", fn.OldName, s, err)
			}
		case err != nil:
			t.Errorf("target %s: %v", fn.OldName, err)
		case !s.Text():
			t.Errorf("target %s is not code: %v", fn.OldName, s)
		}
	}
	for _, name := range undef {
		target := strings.TrimPrefix(name, "__lucos_orig__")
		cands := syms.Lookup(target)
		switch {
		case ex.bad == "unknown" && name == "lucos_no_such_symbol":
			if len(cands) != 0 {
				t.Errorf("%s exists in the kernel: %v", name, cands)
			}
		case ex.bad == "ambiguous" && name == "name_show":
			if len(cands) < 2 || len(m.Sympos) != 0 {
				t.Errorf("%s has %d definitions (want several), LUCOS_SYMPOS %v", name, len(cands), m.Sympos)
			}
		default:
			if _, err := syms.Find(target, 0); err != nil {
				t.Errorf("reference %s: %v", name, err)
			}
		}
		if target != name && !slices.ContainsFunc(m.Funcs, func(f Func) bool { return f.OldName == target }) {
			t.Errorf("LUCOS_ORIG(%s) of a function the patch does not replace", target)
		}
	}
	if ex.dir == "static-call" {
		// The point of the example: a local (static) function, unexported.
		s, err := syms.Find("get_nr_inodes", 0)
		if err != nil || s.Type != 't' {
			t.Errorf("get_nr_inodes is %v, %v; want a unique local text symbol", s, err)
		}
	}
}

// The build warns about what lucos will refuse.
func TestExampleWarnings(t *testing.T) {
	res, _ := buildExample(t, "examples/patches/bad/bad-param")
	if !slices.ContainsFunc(res.Warnings, func(w string) bool {
		return strings.HasPrefix(w, "lucos patch apply will refuse this patch: ") && strings.Contains(w, "__param")
	}) {
		t.Errorf("warnings %q do not mention __param", res.Warnings)
	}
	for _, dir := range []string{"cmdline-string", "meminfo-string", "uname", "static-call", "multi", "new-data", "hot-paths"} {
		res, _ := buildExample(t, "examples/patches/"+dir)
		if len(res.Warnings) != 0 {
			t.Errorf("%s: warnings %q", dir, res.Warnings)
		}
	}
	res, _ = buildExample(t, "examples/patches/bad/bad-unknown-symbol")
	if !slices.Contains(res.Unexported, "lucos_no_such_symbol") {
		t.Errorf("unexported %q", res.Unexported)
	}
}

// The Linux livepatch twin of cmdline-string builds against the same
// headers as an ordinary module that the guest kernel can insmod: a
// livepatch module, linked only against exported symbols.
func TestKLPExample(t *testing.T) {
	img := requireKbuild(t)
	start := time.Now()
	ko, err := BuildModule(context.Background(), "../../examples/klp/cmdline-klp", Options{Output: filepath.Join(outDir, "cmdline_klp.ko")})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("cmdline_klp.ko built in %v", time.Since(start).Round(time.Millisecond))
	o := openObject(t, ko)
	for key, want := range map[string]string{"livepatch": "Y", "name": "cmdline_klp", "license": "GPL"} {
		if v, err := o.modinfo(key); err != nil || v != want {
			t.Errorf("modinfo %s = %q, %v; want %q", key, v, err, want)
		}
	}
	if v, _ := o.modinfo("vermagic"); !strings.HasPrefix(v, img.Release+" ") {
		t.Errorf("vermagic %q", v)
	}
	exported, err := readSymvers(filepath.Join(img.BuildDir, "Module.symvers"))
	if err != nil {
		t.Fatal(err)
	}
	for _, u := range undefinedSymbols(t, ko) {
		if !exported[u] {
			t.Errorf("%s is not exported: insmod would fail", u)
		}
	}
}

func openObject(t *testing.T, path string) *object {
	t.Helper()
	f, err := elf.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	o, err := newObject(f)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// The livepatch module does in the guest what cmdline-string does from the
// host: insmod adds the marker once the transition ends, disabling removes
// it, and the line is then exactly as before.
func TestKLPExampleInGuest(t *testing.T) {
	requireKbuild(t)
	ko, err := BuildModule(context.Background(), "../../examples/klp/cmdline-klp", Options{Output: filepath.Join(t.TempDir(), "cmdline_klp.ko")})
	if err != nil {
		t.Fatal(err)
	}
	o := testvm.Options(t)
	o.Extend = func(a *initramfs.Archive) error { return a.AddHostFile("/lib/lucos/cmdline_klp.ko", ko, 0o644) }
	m := testvm.Boot(t, o)

	const settle = `i=0; while [ "$(cat /sys/kernel/livepatch/cmdline_klp/transition)" != 0 ] && [ $i -lt 300 ]; do sleep 0.05; i=$((i+1)); done`
	script := strings.Join([]string{
		"cat /proc/cmdline",
		"insmod /lib/lucos/cmdline_klp.ko",
		settle,
		"cat /proc/cmdline",
		"echo 0 > /sys/kernel/livepatch/cmdline_klp/enabled",
		settle,
		"cat /proc/cmdline",
		"rmmod cmdline_klp",
	}, " && ")
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := m.ExecScript(ctx, script)
	if err != nil {
		t.Fatal(err)
	}
	if res.Status != 0 {
		t.Fatalf("status %d\nstdout:\n%s\nstderr:\n%s\nconsole:\n%s", res.Status, res.Stdout, res.Stderr, m.ConsoleTail(20))
	}
	lines := strings.Split(strings.TrimSuffix(string(res.Stdout), "\n"), "\n")
	if len(lines) != 3 || lines[1] != lines[0]+" lucos-patched" || lines[2] != lines[0] {
		t.Errorf("/proc/cmdline before, patched, disabled:\n%s", res.Stdout)
	}
}
