package guest

import (
	"bufio"
	"bytes"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strings"
)

// Debian's headers expect to be installed at /usr/src: the flavour's
// Makefile is the single line "include /usr/src/linux-headers-<abi>-common/Makefile",
// and lib/modules/<rel>/build and source are absolute symlinks into
// /usr/src. (The scripts/ and tools/ symlinks into usr/lib/linux-kbuild-<x.y>
// are relative and work in the cache as they are.) fixKbuild rewrites the
// absolute references to relative ones, so the cache works wherever it is
// and can be moved.

// fixKbuild makes the headers of rel unpacked under root usable by
// `make -C <BuildDir> M=... modules`.
func fixKbuild(root, rel string) error {
	makefile := filepath.Join(root, "usr", "src", "linux-headers-"+rel, "Makefile")
	b, err := os.ReadFile(makefile)
	if err != nil {
		return fmt.Errorf("kbuild headers: %w", err)
	}
	fixed, err := rewriteIncludes(b, "/usr/src/linux-headers-"+rel)
	if err != nil {
		return fmt.Errorf("kbuild headers %s: %w", makefile, err)
	}
	if err := os.WriteFile(makefile, fixed, 0o644); err != nil {
		return fmt.Errorf("kbuild headers: %w", err)
	}
	return relinkAbsolute(root)
}

// rewriteIncludes turns each "include /abs/path" of a Makefile installed in
// the directory installedDir into an include relative to the Makefile's own
// directory, wherever it is at build time. Make resolves a relative include
// against its working directory, not the including file, hence the
// $(MAKEFILE_LIST) expression (it names the current Makefile while the first
// lines are read, before anything else is included).
func rewriteIncludes(makefile []byte, installedDir string) ([]byte, error) {
	var out bytes.Buffer
	sc := bufio.NewScanner(bytes.NewReader(makefile))
	for sc.Scan() {
		line := sc.Text()
		if target, ok := strings.CutPrefix(line, "include /"); ok && !strings.ContainsAny(target, " \t$") {
			rel, err := filepath.Rel(installedDir, "/"+target)
			if err != nil {
				return nil, err
			}
			line = "include $(dir $(realpath $(lastword $(MAKEFILE_LIST))))" + rel
		}
		out.WriteString(line)
		out.WriteByte('\n')
	}
	return out.Bytes(), sc.Err()
}

// relinkAbsolute rewrites every symlink under root whose absolute target
// exists inside root into a relative one pointing there. Symlinks to places
// outside the tree are left alone.
func relinkAbsolute(root string) error {
	return filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.Type()&fs.ModeSymlink == 0 {
			return err
		}
		target, err := os.Readlink(p)
		if err != nil || !filepath.IsAbs(target) {
			return err
		}
		inTree := filepath.Join(root, target)
		if _, err := os.Lstat(inTree); err != nil {
			return nil
		}
		rel, err := filepath.Rel(filepath.Dir(p), inTree)
		if err != nil {
			return err
		}
		if err := os.Remove(p); err != nil {
			return err
		}
		return os.Symlink(rel, p)
	})
}

// Compiler returns the C compiler the kernel's kbuild invokes, as named in
// the headers' .kernelvariables: "gcc-12" for bookworm. A patch build needs
// it on PATH; kbuild's own error for a missing compiler is cryptic.
func (im *Image) Compiler() (string, error) {
	p := filepath.Join(im.BuildDir, ".kernelvariables")
	b, err := os.ReadFile(p)
	if err != nil {
		return "", fmt.Errorf("kbuild compiler: %w", err)
	}
	cc := compilerFromVariables(b)
	if cc == "" {
		return "", fmt.Errorf("kbuild compiler: no CC line in %s", p)
	}
	return cc, nil
}

// compilerFromVariables picks the compiler out of Debian's
// "CC = $(if $(DEBIAN_KERNEL_USE_CCACHE),$(CCACHE)) $(CROSS_COMPILE)gcc-12",
// with $(CROSS_COMPILE) as an unconditional "override CROSS_COMPILE =
// x86_64-linux-gnu-" sets it (6.12's headers; 6.1's set it only inside
// ifneq, for cross builds): "gcc-12" for 6.1, "x86_64-linux-gnu-gcc-12"
// for 6.12 — the name the kernel's CONFIG_CC_VERSION_TEXT starts with.
func compilerFromVariables(b []byte) string {
	var cc, cross string
	depth := 0
	for line := range strings.Lines(string(b)) {
		f := strings.Fields(line)
		switch {
		case len(f) == 0:
			continue
		case f[0] == "ifeq" || f[0] == "ifneq" || f[0] == "ifdef" || f[0] == "ifndef":
			depth++
			continue
		case f[0] == "endif":
			depth--
			continue
		}
		name, value, ok := strings.Cut(line, "=")
		if !ok {
			continue
		}
		switch n := strings.Fields(name); {
		case len(n) == 1 && n[0] == "CC":
			if v := strings.Fields(value); len(v) > 0 {
				cc = v[len(v)-1]
			}
		case depth == 0 && len(n) == 2 && n[0] == "override" && n[1] == "CROSS_COMPILE" && !strings.Contains(value, "$"):
			cross = strings.TrimSpace(value)
		}
	}
	return strings.ReplaceAll(cc, "$(CROSS_COMPILE)", cross)
}
