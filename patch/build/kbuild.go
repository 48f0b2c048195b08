package build

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"strconv"
	"strings"

	"github.com/lucos/lucos/guest"
)

// kbuild is one run of the kernel's build system on a private copy of a
// source directory.
type kbuild struct {
	srcDir     string            // the user's directory, only read
	label      string            // what paths in debug info say instead of the temp dir
	srcs       []string          // files of srcDir to copy
	kbuildFile string            // generated Kbuild; "" = srcDir brings its own
	extra      map[string][]byte // more files to write (relative path → contents)
	cflags     []string
	progress   progress

	img      *guest.Image
	tmp      string
	warnings []string
}

// run builds the modules of the copy and collects warnings; on success
// the caller owns kb.tmp and must call cleanup.
func (kb *kbuild) run(ctx context.Context, o Options) error {
	img, err := openImage(ctx, o)
	if err != nil {
		return err
	}
	kb.img = img
	cc, err := img.Compiler()
	if err != nil {
		return err
	}
	if err := lookTool("make", "runs kbuild"); err != nil {
		return err
	}
	if err := lookTool(cc, "the compiler "+img.Release+" was built with"); err != nil {
		return err
	}
	if kb.tmp, err = os.MkdirTemp("", "lucos-build-"); err != nil {
		return err
	}
	ok := false
	defer func() {
		if !ok {
			kb.cleanup()
		}
	}()
	if err := kb.populate(); err != nil {
		return err
	}

	kb.progress.Printf("patch build: compiling %s (%s) against %s", kb.srcDir, strings.Join(kb.srcs, ", "), img.Release)
	cmd := exec.CommandContext(ctx, "make", "-C", img.BuildDir, "M="+kb.tmp,
		"-j"+strconv.Itoa(runtime.NumCPU()), "modules")
	cmd.Env = kb.env()
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return ctx.Err()
	}
	diags, text := kb.diagnose(stderr.String())
	if runErr != nil {
		if len(text) == 0 {
			text = tail(kb.rewrite(stdout.String()+stderr.String()), 20)
		}
		return &CompileError{Dir: kb.srcDir, Diagnostics: diags, Text: strings.Join(text, "\n"), Err: runErr}
	}
	ok = true
	return nil
}

func (kb *kbuild) cleanup() {
	if kb.tmp != "" {
		os.RemoveAll(kb.tmp)
	}
}

// populate copies the sources into the temp dir and writes the generated
// files.
func (kb *kbuild) populate() error {
	for _, name := range kb.srcs {
		b, err := os.ReadFile(filepath.Join(kb.srcDir, name))
		if err != nil {
			return err
		}
		if err := os.WriteFile(filepath.Join(kb.tmp, name), b, 0o644); err != nil {
			return err
		}
	}
	files := make(map[string][]byte, len(kb.extra)+1)
	for k, v := range kb.extra {
		files[k] = v
	}
	if kb.kbuildFile != "" {
		files["Kbuild"] = []byte(kb.kbuildFile)
	}
	for rel, b := range files {
		p := filepath.Join(kb.tmp, rel)
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			return err
		}
		if err := os.WriteFile(p, b, 0o644); err != nil {
			return err
		}
	}
	return nil
}

// env is make's environment: the caller's, in the C locale (plain ASCII
// quotes in diagnostics), without an outer make's jobserver, with
// undefined symbols as modpost warnings (lucos resolves them, exported or
// not) and with the temp dir and the cache's location mapped out of debug
// info and __FILE__, so that the same sources give the same module (and
// build id) wherever they are built.
func (kb *kbuild) env() []string {
	var env []string
	kcflags := ""
	for _, kv := range os.Environ() {
		k, v, _ := strings.Cut(kv, "=")
		switch k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LC_ALL", "LANG", "LANGUAGE", "KBUILD_MODPOST_WARN":
			continue
		case "KCFLAGS":
			kcflags = v
			continue
		}
		env = append(env, kv)
	}
	flags := []string{
		"-ffile-prefix-map=" + kb.tmp + "=" + kb.label,
		"-ffile-prefix-map=" + filepath.Dir(kb.img.BuildDir) + "=/usr/src",
	}
	flags = append(flags, kb.cflags...)
	if kcflags != "" {
		flags = append([]string{kcflags}, flags...)
	}
	return append(env, "LC_ALL=C", "KBUILD_MODPOST_WARN=1", "KCFLAGS="+strings.Join(flags, " "))
}

// openImage returns the cached guest image to build against: a pinned
// release must be cached; the default guest's, or a series' current
// release, is fetched if needed.
func openImage(ctx context.Context, o Options) (*guest.Image, error) {
	if o.Release != "" && !guest.IsSeries(o.Release) {
		img, err := guest.Open(o.CacheDir, o.Release)
		if err != nil {
			return nil, fmt.Errorf("%w (fetch it with: lucos guest fetch --release %s)", err, o.Release)
		}
		return img, nil
	}
	return guest.Fetch(ctx, guest.Options{CacheDir: o.CacheDir, Release: o.Release, Progress: o.Progress})
}

// Diagnostic is one compiler message about the patch's sources.
type Diagnostic struct {
	File     string // as the user names it: DIR/file.c
	Line     int
	Col      int
	Severity string // "error", "fatal error", "warning", "note"
	Message  string
}

func (d Diagnostic) String() string {
	return fmt.Sprintf("%s:%d:%d: %s: %s", d.File, d.Line, d.Col, d.Severity, d.Message)
}

// CompileError is a failed kbuild run: the compiler's or the linker's
// messages, with paths naming the patch directory, not the temp copy.
type CompileError struct {
	Dir         string
	Diagnostics []Diagnostic // errors and warnings with a file:line
	Text        string       // the relevant lines of the build's output
	Err         error        // make's exit status
}

func (e *CompileError) Error() string {
	return fmt.Sprintf("compile failed (%v):\n%s", e.Err, e.Text)
}

func (e *CompileError) Unwrap() error { return e.Err }

var (
	gccDiag      = regexp.MustCompile(`^(.+?):(\d+):(\d+): (error|fatal error|warning|note): (.*)$`)
	gccContext   = regexp.MustCompile(`^(In file included from |\s+from |.+?: In (function|member function|static function) |.+?: At top level:|cc1: |\s*\d*\s+\|)`)
	modpostUndef = regexp.MustCompile(`^WARNING: modpost: "([^"]+)" \[.*\] undefined!$`)
	// modpost names at most 10 undefined symbols, then counts the rest.
	modpostMoreUndef = regexp.MustCompile(`^WARNING: modpost: suppressed \d+ unresolved symbol warnings`)
	makeNoise        = regexp.MustCompile(`^(make(\[\d+\])?: |Skipping BTF generation|  [A-Z]+ +(\[M\] +)?/)`)
)

// diagnose picks out of kbuild's stderr what a patch author needs: the
// compiler's diagnostics with their context and source excerpts, modpost's
// and the linker's errors. It records warnings on kb
// and returns the diagnostics and the relevant lines.
func (kb *kbuild) diagnose(stderr string) ([]Diagnostic, []string) {
	var diags []Diagnostic
	var text []string
	sc := bufio.NewScanner(strings.NewReader(kb.rewrite(stderr)))
	sc.Buffer(nil, 1<<20)
	inWarning := false
	for sc.Scan() {
		line := sc.Text()
		if m := gccDiag.FindStringSubmatch(line); m != nil {
			ln, _ := strconv.Atoi(m[2])
			col, _ := strconv.Atoi(m[3])
			d := Diagnostic{File: m[1], Line: ln, Col: col, Severity: m[4], Message: m[5]}
			diags = append(diags, d)
			switch d.Severity {
			case "warning":
				kb.warnings = append(kb.warnings, d.String())
				inWarning = true
			case "error", "fatal error":
				inWarning = false
			}
			text = append(text, line)
			continue
		}
		if modpostUndef.MatchString(line) || modpostMoreUndef.MatchString(line) {
			continue // unresolved symbols are lucos's to resolve, not a warning
		}
		switch {
		case strings.HasPrefix(line, "WARNING: modpost: "):
			kb.warnings = append(kb.warnings, strings.TrimPrefix(line, "WARNING: "))
		case gccContext.MatchString(line):
			if !inWarning || strings.HasPrefix(line, "cc1: ") {
				text = append(text, line)
			}
		case makeNoise.MatchString(line), strings.TrimSpace(line) == "":
		default:
			// modpost errors, linker errors, a missing tool...
			text = append(text, line)
		}
	}
	return diags, text
}

// rewrite makes paths in kbuild's output name the user's files: the temp
// dir becomes the patch directory, the embedded header and runtime their
// places in the SDK.
func (kb *kbuild) rewrite(s string) string {
	if kb.tmp == "" {
		return s
	}
	s = strings.ReplaceAll(s, filepath.Join(kb.tmp, "include")+"/", "sdk/include/")
	s = strings.ReplaceAll(s, filepath.Join(kb.tmp, "runtime")+"/", "sdk/runtime/")
	return strings.ReplaceAll(s, kb.tmp+"/", kb.srcDir+"/")
}

// tail returns the last n lines of s that are not make's own chatter.
func tail(s string, n int) []string {
	var lines []string
	for l := range strings.Lines(s) {
		l = strings.TrimRight(l, "\n")
		if strings.TrimSpace(l) == "" || strings.HasPrefix(l, "make: Entering") || strings.HasPrefix(l, "make: Leaving") {
			continue
		}
		lines = append(lines, l)
	}
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return lines
}

// progress prints lines to an optional writer.
type progress struct{ w io.Writer }

func (p progress) Printf(format string, args ...any) {
	if p.w != nil {
		fmt.Fprintf(p.w, format+"\n", args...)
	}
}
