package build

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"maps"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lucos/lucos/patch/loader"
	"github.com/lucos/lucos/sdk"
)

// The SDK, embedded in the lucos binary, and where a build puts it: the
// header under include/, the runtime in a subdirectory, where no file of
// the patch can be (patchSources takes only DIR's own files).
var (
	patchHeader    = sdk.PatchHeader
	runtimeSource  = sdk.Runtime
	headerPath     = filepath.Join("include", "lucos", "patch.h")
	runtimeSrcPath = filepath.Join("runtime", "lucos_rt.c")
)

// runtimeObject is the runtime's object in the generated Kbuild.
const runtimeObject = "runtime/lucos_rt.o"

// Errors callers branch on. Build's errors wrap them, or are a
// *CompileError.
var (
	// ErrNoSource: the patch directory has no .c file.
	ErrNoSource = errors.New("no .c file")
	// ErrNoPatchMacro: no source file uses LUCOS_PATCH.
	ErrNoPatchMacro = errors.New("no LUCOS_PATCH(name, description) in any .c file")
	// ErrToolMissing: make or the kernel's compiler is not on PATH.
	ErrToolMissing = errors.New("build tool missing")
)

// Options say what to build against and where to put the result.
type Options struct {
	// Release is the guest kernel release to build for; empty means the
	// default guest's release (the one `lucos run` boots), fetched into the
	// cache if needed. A release given here must already be cached.
	Release  string
	CacheDir string // guest cache; empty = guest.DefaultCacheDir()
	// Output is the path of the .ko; empty = DIR/<base name of DIR>.ko.
	Output string
	// CFlags are extra compiler flags, e.g. "-DFOO=1".
	CFlags []string
	// Objects are prebuilt relocatable objects (name ending in .o →
	// contents) linked into the module beside the sources: the code
	// `lucos patch build --diff` extracts from the patched kernel objects.
	Objects  map[string][]byte
	Progress io.Writer // progress lines; nil = silent
}

// Result describes a built patch module.
type Result struct {
	KO      string `json:"ko"`      // path of the written .ko
	Name    string `json:"name"`    // LUCOS_PATCH's name
	Release string `json:"release"` // kernel release it targets
	BuildID string `json:"build_id"`
	// Module is the kernel module name (lucos_<DIR base name>).
	Module string `json:"module"`
	// Unexported are the kernel symbols the patch references that the
	// kernel does not export; lucos resolves them when it applies the patch.
	Unexported []string `json:"unexported,omitempty"`
	// Warnings are the compiler's and kbuild's warnings, and what lucos
	// will refuse or ignore when it applies the patch.
	Warnings []string `json:"warnings,omitempty"`
}

// Build compiles the patch in dir (its .c and .h files) into one patch
// module for the guest kernel release o.Release. Nothing is written into
// dir except the output .ko (and only once the module checks out).
func Build(ctx context.Context, dir string, o Options) (*Result, error) {
	dir = filepath.Clean(dir)
	base := filepath.Base(absOr(dir))
	srcs, err := patchSources(dir)
	if err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	mod := moduleName(base)
	kb := &kbuild{srcDir: dir, label: base, srcs: srcs, cflags: o.CFlags, progress: progress{o.Progress}}
	var objects []string
	kb.extra = map[string][]byte{headerPath: patchHeader, runtimeSrcPath: runtimeSource}
	for name, b := range o.Objects {
		if !strings.HasSuffix(name, ".o") || strings.ContainsAny(name, "/ ") {
			return nil, fmt.Errorf("patch build %s: object %q: want a plain name ending in .o", dir, name)
		}
		objects = append(objects, name)
		kb.extra[name+"_shipped"] = b // kbuild's rule for prebuilt files
		// modpost reads each object's .cmd (for modversions CRCs); a
		// prebuilt object exports nothing.
		kb.extra["."+name+".cmd"] = []byte("cmd_" + name + " := prebuilt by lucos\n")
	}
	slices.Sort(objects)
	if kb.kbuildFile, err = patchKbuild(mod, srcs, objects...); err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}

	start := time.Now()
	if err := kb.run(ctx, o); err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	defer kb.cleanup()
	ko, err := os.ReadFile(filepath.Join(kb.tmp, mod+".ko"))
	if err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	m, err := Inspect(bytes.NewReader(ko))
	if err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	if m.Release != kb.img.Release {
		return nil, fmt.Errorf("patch build %s: the module's vermagic %q does not name %s", dir, m.Vermagic, kb.img.Release)
	}
	if !patchName.MatchString(m.Name) {
		return nil, fmt.Errorf("patch build %s: LUCOS_PATCH name %q: use 1-64 letters, digits, '.', '_' or '-'", dir, m.Name)
	}
	warnings, err := moduleWarnings(m, ko, base)
	if err != nil {
		return nil, fmt.Errorf("patch build %s: the module is not loadable: %w", dir, err)
	}
	exported, err := readSymvers(filepath.Join(kb.img.BuildDir, "Module.symvers"))
	if err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	unexported, err := patchOnly(exported, filepath.Join(kb.tmp, mod+".ko"), kb.tmp, srcs, objects)
	if err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	res := &Result{Name: m.Name, Release: m.Release, BuildID: m.BuildID, Module: mod, Unexported: unexported}
	res.Warnings = append(kb.warnings, warnings...)
	res.KO = o.Output
	if res.KO == "" {
		res.KO = filepath.Join(dir, base+".ko")
	}
	if err := writeFile(res.KO, ko); err != nil {
		return nil, fmt.Errorf("patch build %s: %w", dir, err)
	}
	kb.progress.Printf("patch build: %s (%s, build id %.12s) in %v", res.KO, m.Name, m.BuildID, time.Since(start).Round(time.Millisecond))
	return res, nil
}

// BuildModule builds an ordinary out-of-tree kernel module — dir holds its
// sources and its own Kbuild (or Makefile) — against the guest kernel's
// headers, the way Build does, and returns the path of the .ko (o.Output,
// or DIR/<module>.ko). It is for modules meant to be insmod'ed in the
// guest, such as the Linux livepatch module of the side-by-side benchmark.
func BuildModule(ctx context.Context, dir string, o Options) (string, error) {
	dir = filepath.Clean(dir)
	entries, err := os.ReadDir(dir)
	if err != nil {
		return "", fmt.Errorf("module build %s: %w", dir, err)
	}
	var files []string
	hasKbuild := false
	for _, e := range entries {
		if !e.Type().IsRegular() || strings.HasSuffix(e.Name(), ".ko") {
			continue
		}
		files = append(files, e.Name())
		hasKbuild = hasKbuild || e.Name() == "Kbuild" || e.Name() == "Makefile"
	}
	if !hasKbuild {
		return "", fmt.Errorf("module build %s: no Kbuild or Makefile", dir)
	}
	kb := &kbuild{srcDir: dir, label: filepath.Base(absOr(dir)), srcs: files, cflags: o.CFlags, progress: progress{o.Progress}}
	if err := kb.run(ctx, o); err != nil {
		return "", fmt.Errorf("module build %s: %w", dir, err)
	}
	defer kb.cleanup()
	kos, _ := filepath.Glob(filepath.Join(kb.tmp, "*.ko"))
	if len(kos) != 1 {
		return "", fmt.Errorf("module build %s: kbuild made %d modules, want 1", dir, len(kos))
	}
	out := o.Output
	if out == "" {
		out = filepath.Join(dir, filepath.Base(kos[0]))
	}
	ko, err := os.ReadFile(kos[0])
	if err != nil {
		return "", fmt.Errorf("module build %s: %w", dir, err)
	}
	if err := writeFile(out, ko); err != nil {
		return "", fmt.Errorf("module build %s: %w", dir, err)
	}
	return out, nil
}

// patchSources lists the .c and .h files of dir; it fails without a .c file
// or without LUCOS_PATCH in one.
func patchSources(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var srcs []string
	nc, macro := 0, false
	for _, e := range entries {
		name := e.Name()
		ext := filepath.Ext(name)
		// Hidden files and kbuild's generated *.mod.c (from an in-place
		// make) are not the patch's sources.
		if !e.Type().IsRegular() || (ext != ".c" && ext != ".h") ||
			strings.HasPrefix(name, ".") || strings.HasSuffix(name, ".mod.c") {
			continue
		}
		srcs = append(srcs, name)
		if ext != ".c" {
			continue
		}
		nc++
		b, err := os.ReadFile(filepath.Join(dir, name))
		if err != nil {
			return nil, err
		}
		macro = macro || usesPatchMacro(string(b))
	}
	switch {
	case nc == 0:
		return nil, ErrNoSource
	case !macro:
		return nil, ErrNoPatchMacro
	}
	return srcs, nil
}

var patchMacroUse = regexp.MustCompile(`(?m)^[ \t]*LUCOS_PATCH[ \t]*\(`)

// usesPatchMacro reports whether a line of src starts with LUCOS_PATCH(.
// It is a quick check for a clear error before compiling; the built
// module's .lucos.meta is what counts.
func usesPatchMacro(src string) bool { return patchMacroUse.MatchString(src) }

// moduleName is the kernel module name of a patch directory: lucos_ and
// its base name, with what a module name may not hold turned into '_'.
func moduleName(base string) string {
	var b strings.Builder
	b.WriteString("lucos_")
	for _, r := range base {
		if r < 0x80 && (r == '_' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('_')
		}
	}
	// MODULE_NAME_LEN is 64 - sizeof(unsigned long), with the NUL.
	return truncate(b.String(), 55)
}

func truncate(s string, n int) string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

// patchKbuild is the Kbuild file linking every .c file, the prebuilt
// objects and the lucos runtime into module mod.
func patchKbuild(mod string, srcs []string, objects ...string) (string, error) {
	var objs []string
	for _, s := range srcs {
		if stem, ok := strings.CutSuffix(s, ".c"); ok {
			if stem == mod {
				// The module is a composite of the sources and the runtime:
				// a source of its name would be a part of itself.
				return "", fmt.Errorf("source %s is named like the patch module %s, which also holds the lucos runtime: rename the file", s, mod)
			}
			objs = append(objs, stem+".o")
		}
	}
	objs = append(append(objs, objects...), runtimeObject)
	var b strings.Builder
	fmt.Fprintf(&b, "# Generated by lucos patch build.\nobj-m := %s.o\n", mod)
	fmt.Fprintf(&b, "%s-y := %s\n", mod, strings.Join(objs, " "))
	b.WriteString("ccflags-y += -I$(src)/include\n")
	return b.String(), nil
}

// patchOnly returns the symbols the patch's own objects (its sources' and
// the prebuilt ones, not the runtime's) use that the module ko leaves
// undefined and vmlinux does not export: lucos resolves them from kallsyms
// when it applies the patch. (modpost's "undefined!" warnings cannot tell:
// it stops listing them after ten.)
func patchOnly(exported map[string]bool, ko, dir string, srcs, prebuilt []string) ([]string, error) {
	undef, err := undefinedIn(ko)
	if err != nil {
		return nil, err
	}
	used := map[string]bool{}
	objs := slices.Clone(prebuilt)
	for _, s := range srcs {
		if stem, ok := strings.CutSuffix(s, ".c"); ok {
			objs = append(objs, stem+".o")
		}
	}
	for _, obj := range objs {
		refs, err := undefinedIn(filepath.Join(dir, obj))
		if err != nil {
			return nil, err
		}
		for name := range refs {
			if undef[name] && !exported[name] {
				used[name] = true
			}
		}
	}
	out := slices.Collect(maps.Keys(used))
	slices.Sort(out)
	return out, nil
}

// undefinedIn returns the named undefined symbols of an ELF object.
func undefinedIn(path string) (map[string]bool, error) {
	f, err := elf.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	syms, err := f.Symbols()
	if err != nil {
		return nil, fmt.Errorf("%s: %w", filepath.Base(path), err)
	}
	out := map[string]bool{}
	for _, sym := range syms {
		if sym.Section == elf.SHN_UNDEF && sym.Name != "" {
			out[sym.Name] = true
		}
	}
	return out, nil
}

// readSymvers returns the symbols a Module.symvers exports.
func readSymvers(path string) (map[string]bool, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	out := make(map[string]bool)
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		// crc, symbol, module, export type, namespace
		if fields := strings.Split(sc.Text(), "\t"); len(fields) >= 2 {
			out[fields[1]] = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return out, nil
}

// moduleWarnings says what lucos will refuse in the module ko, or
// silently do differently from a kernel that insmods it. The loader's
// section policy (loader.Parse) is the authority; this picks the parts a
// patch author put in on purpose.
func moduleWarnings(m *Module, ko []byte, base string) ([]string, error) {
	var w []string
	if m.Name != base {
		w = append(w, fmt.Sprintf("LUCOS_PATCH names the patch %q, its directory is %q", m.Name, base))
	}
	lm, err := loader.Parse(ko)
	switch {
	case errors.Is(err, loader.ErrRefused):
		return append(w, "lucos patch apply will refuse this patch: "+err.Error()), nil
	case err != nil:
		return nil, err
	}
	if len(lm.Funcs) == 0 && len(lm.Data) == 0 && len(lm.Callbacks) == 0 {
		w = append(w, "the patch changes nothing (no LUCOS_REPLACE, LUCOS_DATA or callback)")
	}
	for _, s := range lm.Sections {
		if s.Size > 0 && noteworthySection(s.Name) {
			w = append(w, fmt.Sprintf("%s (%s): %s", s.Name, s.Treatment, s.Reason))
		}
	}
	return w, nil
}

// noteworthySection reports whether a section comes from something the
// patch's author wrote (module_init, EXPORT_SYMBOL, WARN, pr_debug...) and
// that lucos treats unlike the kernel's module loader. The routine ones
// every module has (ORC, retpoline and return-thunk sites...) are not.
func noteworthySection(name string) bool {
	for _, p := range []string{".init.", ".exit.", "__ksymtab", "__kcrctab", "__bug_table", "__dyndbg", "_kprobe_blacklist", "_error_injection_whitelist", "__jump_table"} {
		if strings.HasPrefix(name, p) {
			return true
		}
	}
	return false
}

// absOr returns the absolute form of p, or p.
func absOr(p string) string {
	if a, err := filepath.Abs(p); err == nil {
		return a
	}
	return p
}

// writeFile writes b to dst through a temporary file in dst's directory,
// so dst is never half written.
func writeFile(dst string, b []byte) error {
	tmp, err := os.CreateTemp(filepath.Dir(dst), "."+filepath.Base(dst)+".*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(b); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Chmod(0o644); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}

// lookTool finds name on PATH or fails with ErrToolMissing.
func lookTool(name, why string) error {
	if _, err := exec.LookPath(name); err != nil {
		return fmt.Errorf("%w: %s (%s) is not on PATH; on Debian: apt-get install %s", ErrToolMissing, name, why, name)
	}
	return nil
}
