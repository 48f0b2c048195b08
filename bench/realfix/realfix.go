// Package realfix is the corpus of the real-fix evaluation (`lucos bench
// realfix`): real upstream stable fixes, as unified diffs against Debian's
// linux-source-6.1 6.1.190-1 (the source of the 6.1.0-54 image), split out
// of Debian's 6.1.190-1 → 6.1.192-1 update (fixes/README.md has the table
// and their kinds), and the in-guest checks that show a fix live where one
// can be observed simply (lucos-fixcheck, src/lucos-fixcheck.c).
//
// Any directory of diffs can stand in for the corpus (Load), so fixes
// never shown to lucos can be tried the same way.
package realfix

import (
	"bufio"
	"bytes"
	"context"
	"debug/elf"
	"embed"
	"fmt"

	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"slices"
	"strings"

	"github.com/lucos/lucos/initramfs"
)

// Release is the guest kernel the corpus is for.
const Release = "6.1.0-54-cloud-amd64"

//go:embed fixes/*.patch
var corpus embed.FS

//go:embed src/lucos-fixcheck.c
var checkSource []byte

// CheckPath is where lucos-fixcheck sits in the guest.
const CheckPath = "/usr/bin/lucos-fixcheck"

// checks are the in-guest checks of the corpus, by file name: a command
// that exits 0 when the kernel behaves as fixed and 1 when it does not.
// A diff of another directory may name its own with a "# Check: CMD"
// header line.
var checks = map[string]string{
	"01-timens-nsec-validate.patch": CheckPath + " timens",
}

// Fix is one diff of the corpus.
type Fix struct {
	File    string // base name: "01-timens-nsec-validate.patch"
	Path    string // on the host (a corpus fix is written out by Load)
	Subject string
	CVE     string
	Kind    string // A, B or C (the corpus README's kinds), "" if not said
	// Check is the in-guest command that shows the fix live (exit 0:
	// fixed, 1: not fixed); "" when the fix is not observable simply.
	Check string
	// Test is the header's description of how the fix could be seen.
	Test string
}

// Load returns the fixes of dir (every *.patch and *.diff in it, sorted by
// name), or of the built-in corpus when dir is "", written into tmp.
func Load(dir, tmp string) ([]Fix, error) {
	var fsys fs.FS = corpus
	sub := "fixes"
	if dir != "" {
		fsys, sub = os.DirFS(dir), "."
	}
	entries, err := fs.ReadDir(fsys, sub)
	if err != nil {
		return nil, fmt.Errorf("real fixes: %w", err)
	}
	var fixes []Fix
	for _, e := range entries {
		name := e.Name()
		if e.IsDir() || !(strings.HasSuffix(name, ".patch") || strings.HasSuffix(name, ".diff")) {
			continue
		}
		b, err := fs.ReadFile(fsys, filepath.Join(sub, name))
		if err != nil {
			return nil, err
		}
		path := filepath.Join(dir, name)
		if dir == "" {
			path = filepath.Join(tmp, name)
			if err := os.WriteFile(path, b, 0o644); err != nil {
				return nil, err
			}
		}
		f := Fix{File: name, Path: path, Check: checks[name]}
		f.parseHeader(b)
		fixes = append(fixes, f)
	}
	if len(fixes) == 0 {
		return nil, fmt.Errorf("real fixes: no *.patch or *.diff in %s", dir)
	}
	slices.SortFunc(fixes, func(a, b Fix) int { return strings.Compare(a.File, b.File) })
	return fixes, nil
}

var headerLine = regexp.MustCompile(`^#\s*([A-Za-z-]+):\s*(.*)$`)

// parseHeader reads the "# Key: value" lines before the diff.
func (f *Fix) parseHeader(b []byte) {
	sc := bufio.NewScanner(bytes.NewReader(b))
	for sc.Scan() {
		line := sc.Text()
		if strings.HasPrefix(line, "--- ") {
			return
		}
		m := headerLine.FindStringSubmatch(line)
		if m == nil {
			if s, ok := strings.CutPrefix(line, "Subject: "); ok && f.Subject == "" {
				f.Subject = strings.TrimSpace(s) // a git format-patch mail
			}
			continue
		}
		switch strings.ToLower(m[1]) {
		case "subject":
			f.Subject = m[2]
		case "cve":
			f.CVE = m[2]
		case "kind":
			f.Kind, _, _ = strings.Cut(m[2], " ")
		case "test":
			f.Test = m[2]
		case "check":
			if f.Check == "" {
				f.Check = m[2]
			}
		}
	}
}

// BuildCheck compiles lucos-fixcheck (static) into dir and returns its path.
func BuildCheck(ctx context.Context, dir string) (string, error) {
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", fmt.Errorf("build lucos-fixcheck: gcc: %w", err)
	}
	src := filepath.Join(dir, "lucos-fixcheck.c")
	bin := filepath.Join(dir, "lucos-fixcheck")
	if err := os.WriteFile(src, checkSource, 0o644); err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, gcc, "-static", "-O2", "-Wall", "-Wextra", "-o", bin, src)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build lucos-fixcheck: %w\n%s", err, out.String())
	}
	f, err := elf.Open(bin)
	if err != nil {
		return "", err
	}
	defer f.Close()
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return "", fmt.Errorf("build lucos-fixcheck: not static (no static libc? apt-get install libc6-dev)")
		}
	}
	return bin, nil
}

// Extend adds lucos-fixcheck (bin) to the guest's initramfs after prev.
func Extend(bin string, prev func(*initramfs.Archive) error) func(*initramfs.Archive) error {
	return func(a *initramfs.Archive) error {
		if err := a.AddHostFile(CheckPath, bin, 0o755); err != nil {
			return err
		}
		if prev != nil {
			return prev(a)
		}
		return nil
	}
}
