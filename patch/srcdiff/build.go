package srcdiff

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/patch/build"
	"github.com/lucos/lucos/sdk"
)

// Options say which diffs to build into a patch, for which guest kernel.
type Options struct {
	Diffs []string // unified diffs against the kernel source, applied in order
	// Release is the guest kernel release; empty = the default guest's.
	// Its image is fetched, and its source prepared, if needed.
	Release  string
	CacheDir string // guest cache; empty = guest.DefaultCacheDir()
	// Output is the .ko to write; empty = <name>.ko in the working directory.
	Output string
	// Name of the patch (LUCOS_PATCH); empty = the first diff's file name.
	Name string
	// Companions are C files compiled into the patch beside the extracted
	// code: LUCOS_DATA, callbacks, shadow variables, or new data the diff
	// needs, which the patched code then uses by name.
	Companions []string
	Progress   io.Writer // progress lines; nil = silent
}

// Result describes a patch built from diffs.
type Result struct {
	*build.Result
	Source  string    `json:"source"`  // "linux-source-6.1 6.1.190-1"
	Files   []string  `json:"files"`   // the .c files compared
	Changes []*Change `json:"changes"` // what the patch carries, file by file
	// Skipped are files that use a changed header but are not built into
	// this kernel, or whose objects did not change.
	Skipped []string `json:"skipped,omitempty"`
}

type progress struct{ w io.Writer }

func (p progress) Printf(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}

// Build makes a lucos patch module out of source diffs: it applies them to
// a copy of the files of the guest kernel's own source, compiles each
// changed file before and after with kbuild's exact commands, compares the
// objects function by function, and links the changed functions — with
// descriptors redirecting the guest's old ones — into an ordinary patch
// module that `lucos patch apply` takes.
func Build(ctx context.Context, o Options) (*Result, error) {
	start := time.Now()
	p := progress{o.Progress}
	if len(o.Diffs) == 0 {
		return nil, fmt.Errorf("patch build --diff: no diff given")
	}
	img, err := openImage(ctx, o)
	if err != nil {
		return nil, err
	}
	src, err := guest.Source(ctx, img, guest.SourceOptions{CacheDir: o.CacheDir, Progress: o.Progress})
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp("", "lucos-diff-")
	if err != nil {
		return nil, err
	}
	if os.Getenv("LUCOS_KEEP_WORK") != "" {
		p.Printf("patch build: keeping the work directory %s (LUCOS_KEEP_WORK)", work)
	} else {
		defer os.RemoveAll(work)
	}

	// 1. The patched copies of what the diffs touch.
	touched, subject, err := applyDiffs(ctx, src.Dir, filepath.Join(work, "src"), o.Diffs)
	if err != nil {
		return nil, err
	}
	var lines []*lineChange
	var cfiles []string
	for _, path := range touched {
		before, err := os.ReadFile(filepath.Join(src.Dir, path))
		if err != nil {
			return nil, err
		}
		after, err := os.ReadFile(filepath.Join(work, "src", path))
		if err != nil {
			return nil, err
		}
		lc := compareLines(path, before, after)
		lines = append(lines, lc)
		switch {
		case strings.HasSuffix(path, ".c"):
			cfiles = append(cfiles, path)
		case strings.HasSuffix(path, ".h"):
			users, err := headerUsers(src.Dir, path, after, lc)
			if err != nil {
				return nil, err
			}
			if len(users) > 0 {
				p.Printf("patch build: %s changed: %d files use what changed in it", path, len(users))
			}
			cfiles = append(cfiles, users...)
		default:
			return nil, fmt.Errorf("%w: %s: only C sources and headers can be live-patched", ErrRefused, path)
		}
	}
	slices.Sort(cfiles)
	cfiles = slices.Compact(cfiles)
	named := map[string]bool{}
	for _, path := range touched {
		named[path] = true
	}
	// Files a header change drags in need a copy in the patched tree too.
	for _, path := range cfiles {
		if named[path] {
			continue
		}
		if err := copyFile(filepath.Join(src.Dir, path), filepath.Join(work, "src", path)); err != nil {
			return nil, err
		}
	}

	if err := copyBytes(sdk.PatchHeader, filepath.Join(work, "sdk", "include", "lucos", "patch.h")); err != nil {
		return nil, err
	}

	// 2. Both builds of each file this configuration builds.
	res := &Result{Source: src.Package + " " + src.Version}
	cfg, err := readKconfig(filepath.Join(src.Dir, ".config"))
	if err != nil {
		return nil, err
	}
	var configured []string
	for _, path := range cfiles {
		off := leftOut(src.Dir, cfg, path)
		switch {
		case off == "":
			configured = append(configured, path)
		case named[path]:
			return nil, fmt.Errorf("%w: %s is not built into this kernel: %s is not set in its configuration", ErrNotBuilt, path, off)
		default:
			res.Skipped = append(res.Skipped, fmt.Sprintf("%s (not in this configuration: %s is not set)", path, off))
		}
	}
	cfiles = configured
	units, log, err := compileOriginals(ctx, src, cfiles, p)
	if err != nil {
		return nil, err
	}
	var built []string
	for _, path := range cfiles {
		switch {
		case units[path] != nil:
			built = append(built, path)
		case named[path]:
			return nil, fmt.Errorf("%w: kbuild cannot build the original %s:\n%s", ErrCompile, path, linesAbout(log, path))
		default:
			res.Skipped = append(res.Skipped, path+" (does not build alone in this configuration)")
		}
	}
	cfiles = built
	res.Files = cfiles
	p.Printf("patch build: compiling the patched %d file(s)", len(cfiles))
	patchedObj := map[string]string{}
	for _, path := range cfiles {
		obj, err := compilePatched(ctx, src.Dir, work, units[path])
		if err != nil {
			return nil, err
		}
		patchedObj[path] = obj
	}

	// 3. Compare, locate in the guest, and assemble the code.
	k, err := kimage.Load(ctx, img.Kernel, img.KImageCache())
	if err != nil {
		return nil, err
	}
	tabs, err := tables(k)
	if err != nil {
		return nil, err
	}
	ignore := siteIgnore(k)
	provided, companionObjs, err := companions(o)
	if err != nil {
		return nil, err
	}
	var vmlinux *home
	modules := map[string]*home{}
	em := newEmitter(provided)
	for _, path := range cfiles {
		u := units[path]
		orig, err := readObject(u.Obj)
		if err != nil {
			return nil, err
		}
		patched, err := readObject(patchedObj[path])
		if err != nil {
			return nil, err
		}
		if vmlinux == nil {
			if vmlinux, err = loadVmlinux(ctx, img, k); err != nil {
				return nil, err
			}
		}
		h := vmlinux
		if u.Module != "" {
			if h = modules[u.Module]; h == nil {
				ko, err := findModule(img.ModulesDir, u.Module)
				if err != nil {
					return nil, err
				}
				if h, err = moduleHome(u.Module, ko); err != nil {
					return nil, err
				}
				modules[u.Module] = h
			}
		}
		if !builtInto(orig, h) {
			if named[path] {
				return nil, fmt.Errorf("%w: %s is not built into %s with this kernel's configuration", ErrNotBuilt, path, h.name)
			}
			res.Skipped = append(res.Skipped, path+" (not built into this kernel)")
			continue
		}
		c := newComparison(orig, patched, tabs, lines)
		c.siteIgnore = ignore
		a, err := analyze(u, c, provided)
		if err != nil {
			return nil, err
		}
		if len(a.changes) == 0 {
			if !named[path] {
				res.Skipped = append(res.Skipped, path+" (its object did not change)")
			}
			continue
		}
		explain(a)
		if err := em.add(a, &locator{h: h, orig: orig, kernel: vmlinux}); err != nil {
			return nil, err
		}
		res.Changes = append(res.Changes, a.changes...)
	}
	if len(em.funcs) == 0 {
		return nil, fmt.Errorf("%w: compared %s; nothing that runs changed", ErrNoChange, strings.Join(cfiles, ", "))
	}
	for _, ch := range res.Changes {
		p.Printf("  %s", ch)
	}
	code, err := em.out.bytes()
	if err != nil {
		return nil, err
	}

	// 4. The module: descriptors in C, the code as a prebuilt object.
	name := o.Name
	if name == "" {
		name = patchName(o.Diffs[0])
	}
	dir := filepath.Join(work, "module", name)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(dir, "lucos_diff_stub.c"), stub(name, subject, o.Diffs, em), 0o644); err != nil {
		return nil, err
	}
	for _, c := range companionObjs {
		if err := copyFile(c, filepath.Join(dir, filepath.Base(c))); err != nil {
			return nil, err
		}
	}
	out := o.Output
	if out == "" {
		out = name + ".ko"
	}
	br, err := build.Build(ctx, dir, build.Options{Release: img.Release, CacheDir: o.CacheDir, Output: out,
		Objects: map[string][]byte{"lucos_diff.o": code}, Progress: o.Progress})
	if err != nil {
		return nil, err
	}
	res.Result = br
	p.Printf("patch build: %s from %s: %d function(s) replaced, in %v", br.KO, strings.Join(o.Diffs, ", "), len(em.funcs), time.Since(start).Round(100*time.Millisecond))
	return res, nil
}

// openImage returns the cached image of the release to build for.
func openImage(ctx context.Context, o Options) (*guest.Image, error) {
	if o.Release != "" {
		return guest.Fetch(ctx, guest.Options{Release: o.Release, CacheDir: o.CacheDir, Progress: o.Progress})
	}
	return guest.Fetch(ctx, guest.Options{CacheDir: o.CacheDir, Progress: o.Progress})
}

// applyDiffs copies the files the diffs touch from the tree into dir and
// applies the diffs there, in order. It returns the touched files and the
// first diff's subject.
func applyDiffs(ctx context.Context, tree, dir string, diffs []string) ([]string, string, error) {
	var touched []string
	subject := ""
	for _, d := range diffs {
		b, err := os.ReadFile(d)
		if err != nil {
			return nil, "", err
		}
		files, err := diffFiles(b)
		if err != nil {
			return nil, "", fmt.Errorf("%s: %w", d, err)
		}
		for _, f := range files {
			if f.New || f.Deleted {
				return nil, "", fmt.Errorf("%w: %s adds or removes %s: a live patch replaces functions of existing files", ErrRefused, d, f.Path)
			}
			if slices.Contains(touched, f.Path) {
				continue
			}
			if err := copyFile(filepath.Join(tree, f.Path), filepath.Join(dir, f.Path)); err != nil {
				return nil, "", fmt.Errorf("%s: %w: the kernel source has no %s", d, ErrDoesNotApply, f.Path)
			}
			touched = append(touched, f.Path)
		}
		if err := mirrorHeaders(tree, dir, files); err != nil {
			return nil, "", err
		}
		if err := applyDiff(ctx, dir, d, b); err != nil {
			return nil, "", err
		}
		if subject == "" {
			subject = diffSubject(b)
		}
	}
	return touched, subject, nil
}

// mirrorHeaders copies the headers beside each touched file into dir: a
// patched file's quoted includes find their neighbours there, so a
// neighbour that includes a patched header gets the patched one too
// (fs/ext4/ext4_jbd2.h includes "ext4.h").
func mirrorHeaders(tree, dir string, files []diffFile) error {
	for _, f := range files {
		d := filepath.Dir(f.Path)
		hs, _ := filepath.Glob(filepath.Join(tree, d, "*.h"))
		for _, h := range hs {
			to := filepath.Join(dir, d, filepath.Base(h))
			if _, err := os.Stat(to); err == nil {
				continue
			}
			if err := copyFile(h, to); err != nil {
				return err
			}
		}
	}
	return nil
}

var subjectLine = regexp.MustCompile(`^(?:# )?Subject:\s*(?:\[PATCH[^\]]*\]\s*)?(.+)$`)

// diffSubject is the diff's "Subject:" header, if it has one.
func diffSubject(b []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "--- ") {
			break
		}
		if m := subjectLine.FindStringSubmatch(sc.Text()); m != nil {
			return strings.TrimSpace(m[1])
		}
	}
	return ""
}

// patchName makes a patch name of a diff's file name.
func patchName(path string) string {
	base := strings.TrimSuffix(strings.TrimSuffix(filepath.Base(path), ".patch"), ".diff")
	var b strings.Builder
	for _, r := range base {
		if r < 0x80 && (r == '.' || r == '_' || r == '-' || r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9') {
			b.WriteRune(r)
		} else {
			b.WriteByte('-')
		}
	}
	name := strings.TrimLeft(b.String(), ".-_")
	if name == "" {
		name = "diff"
	}
	if len(name) > 48 {
		name = name[:48]
	}
	return name
}

// stub is the patch's C part: LUCOS_PATCH and one descriptor per redirect
// and per sympos, written with patch.h's structures (the ABI's one owner).
func stub(name, subject string, diffs []string, em *emitter) []byte {
	var b bytes.Buffer
	desc := subject
	var bases []string
	for _, d := range diffs {
		bases = append(bases, filepath.Base(d))
	}
	if desc == "" {
		desc = "from " + strings.Join(bases, ", ")
	}
	fmt.Fprintf(&b, "// Generated by lucos patch build --diff %s. DO NOT EDIT.\n", strings.Join(bases, " --diff "))
	b.WriteString("#include <lucos/patch.h>\n\n")
	fmt.Fprintf(&b, "LUCOS_PATCH(%s, %s);\n\n", cQuote(name), cQuote(desc))
	for i, r := range em.funcs {
		fmt.Fprintf(&b, "extern char %s[];\n", r.alias)
		fmt.Fprintf(&b, "static const struct lucos_func __lucos_diff_func_%d __used __section(\".lucos.funcs\") __aligned(8) = {\n", i)
		fmt.Fprintf(&b, "\t.old_name = %s, .sympos = %d, .new_func = %s,\n};\n", cQuote(r.oldName), r.sympos, r.alias)
	}
	for i, sp := range em.symposList() {
		fmt.Fprintf(&b, "static const struct lucos_sympos __lucos_diff_sympos_%d __used __section(\".lucos.sympos\") __aligned(8) = {\n", i)
		fmt.Fprintf(&b, "\t.name = %s, .sympos = %d,\n};\n", cQuote(sp[0].(string)), sp[1].(int))
	}
	return b.Bytes()
}

// cQuote makes a C string literal.
func cQuote(s string) string {
	var b strings.Builder
	b.WriteByte('"')
	for _, r := range s {
		switch {
		case r == '"' || r == '\\':
			b.WriteByte('\\')
			b.WriteRune(r)
		case r < 0x20 || r >= 0x7f:
			fmt.Fprintf(&b, "\\x%02x", r&0xff)
		default:
			b.WriteRune(r)
		}
	}
	b.WriteByte('"')
	return b.String()
}

// loadVmlinux decompresses the guest's image for its code.
func loadVmlinux(ctx context.Context, img *guest.Image, k *kimage.Image) (*home, error) {
	f, err := os.Open(img.Kernel)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	vmlinux, _, err := kimage.ExtractVmlinux(ctx, f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", img.Kernel, err)
	}
	return vmlinuxHome(k, vmlinux)
}

// builtInto reports whether the guest has the object's global functions.
func builtInto(o *object, h *home) bool {
	any := false
	for _, f := range o.functions() {
		if f.bind != 1 || strings.HasPrefix(f.sec.name, ".init.") { // STB_GLOBAL
			continue
		}
		any = true
		if len(h.lookup(f.name)) > 0 {
			return true
		}
	}
	if !any {
		for _, f := range o.functions() {
			if len(h.lookup(f.name)) > 0 {
				return true
			}
		}
	}
	return false
}

// companions reads the companion files: the names they define at file
// scope with external linkage, which the diff's code then uses instead of
// the kernel's (new data), and their LUCOS_DATA declarations, whose old
// variable the diff's code uses under the new one's name. It returns the
// map and the files to compile into the module.
func companions(o Options) (map[string]string, []string, error) {
	provided := map[string]string{}
	for _, c := range o.Companions {
		if !strings.HasSuffix(c, ".c") {
			return nil, nil, fmt.Errorf("companion %s: want a .c file", c)
		}
		b, err := os.ReadFile(c)
		if err != nil {
			return nil, nil, err
		}
		statics := map[string]bool{}
		for _, m := range globalDef.FindAllSubmatch(b, -1) {
			line, name := string(m[0]), string(m[1])
			switch {
			case strings.HasPrefix(line, "static"):
				statics[name] = true
			case strings.HasPrefix(line, "extern"), strings.HasPrefix(line, "typedef"), strings.HasPrefix(line, "return"):
			default:
				provided[name] = name
			}
		}
		for _, m := range defineMacro.FindAllSubmatch(b, -1) {
			if len(m[1]) == 0 {
				provided[string(m[2])] = string(m[2])
			} else {
				statics[string(m[2])] = true
			}
		}
		for _, m := range lucosData.FindAllSubmatch(b, -1) {
			old, nw := string(m[1]), string(m[2])
			if statics[nw] {
				return nil, nil, fmt.Errorf("companion %s: LUCOS_DATA(%s, %s, ...): declare %s without static, so that the code built from the diff can use it", c, old, nw, nw)
			}
			provided[old] = nw
		}
	}
	return provided, o.Companions, nil
}

// globalDef finds file-scope definitions and declarations (at the start of
// a line: function bodies are indented) and the name each introduces.
var globalDef = regexp.MustCompile(`(?m)^(?:[A-Za-z_][\w \t\*]*?[ \t\*])([A-Za-z_]\w*)\s*(?:\[[^\]]*\]\s*)?(?:=|;|\()`)

// defineMacro finds the kernel's DEFINE_SPINLOCK(name)-style definitions.
var defineMacro = regexp.MustCompile(`(?m)^(static\s+)?DEFINE_[A-Z_]+\s*\(\s*(\w+)`)

// lucosData finds LUCOS_DATA(old, new, ...) and LUCOS_DATA_POS(old, pos, new, ...).
var lucosData = regexp.MustCompile(`LUCOS_DATA(?:_POS)?\s*\(\s*(\w+)\s*,\s*(?:\d+\s*,\s*)?(\w+)`)

// linesAbout picks the lines of a build log that name path, and the
// compiler's context after them.
func linesAbout(log, path string) string {
	var out []string
	lines := strings.Split(log, "\n")
	for i, l := range lines {
		if strings.Contains(l, path) {
			out = append(out, lines[i:min(i+4, len(lines))]...)
		}
	}
	if len(out) == 0 {
		return lastLines(log, 15)
	}
	if len(out) > 30 {
		out = out[:30]
	}
	return strings.Join(out, "\n")
}

func copyFile(from, to string) error {
	b, err := os.ReadFile(from)
	if err != nil {
		return err
	}
	return copyBytes(b, to)
}

func copyBytes(b []byte, to string) error {
	if err := os.MkdirAll(filepath.Dir(to), 0o755); err != nil {
		return err
	}
	return os.WriteFile(to, b, 0o644)
}
