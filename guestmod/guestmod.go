// Package guestmod builds the lucos_bugs guest module
// (examples/guestmod/lucos_bugs) and installs it in a guest's initramfs: the
// module with deliberate bugs that the data-update and callback examples
// fix, used by tests, benchmarks and `lucos demo`.
//
// It runs kbuild itself rather than through package patch/build: the tests
// of patch/build and patch/loader boot guests through internal/testvm,
// which uses this package, and Go allows no import cycle through them.
package guestmod

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"

	"github.com/lucos/lucos/examples"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
)

// Where the module and its boot hook live in the guest.
const (
	KOPath = "/lib/lucos/lucos_bugs.ko"
	Hook   = "/etc/lucos.d/50-lucos-bugs.sh"
	Proc   = "/proc/lucos_bugs" // the module's files
)

// hook runs in rcS before the guest announces itself ready. A failed insmod
// is said on the console; users then find no Proc.
const hook = "insmod " + KOPath + " || echo 'lucos: insmod " + KOPath + " failed' > /dev/ttyS0\n"

// Build compiles lucos_bugs against img's kernel headers into dir and
// returns the .ko's path. The module must build without warnings.
func Build(ctx context.Context, img *guest.Image, dir string) (string, error) {
	tmp, err := os.MkdirTemp(dir, "lucos-bugs-build-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp) // kbuild's intermediate files; the .ko moves out
	src, err := examples.Extract("guestmod/lucos_bugs", tmp)
	if err != nil {
		return "", err
	}
	cmd := exec.CommandContext(ctx, "make", "-C", img.BuildDir, "M="+src, "-j"+fmt.Sprint(runtime.NumCPU()), "modules")
	for _, kv := range os.Environ() {
		switch k, _, _ := strings.Cut(kv, "="); k {
		case "MAKEFLAGS", "MFLAGS", "MAKELEVEL", "LC_ALL", "LANG", "LANGUAGE", "KCFLAGS":
		default:
			cmd.Env = append(cmd.Env, kv)
		}
	}
	cmd.Env = append(cmd.Env, "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return "", fmt.Errorf("build lucos_bugs against %s: %w\n%s", img.BuildDir, err, out.String())
	}
	if strings.Contains(out.String(), "warning:") {
		return "", fmt.Errorf("build lucos_bugs against %s: the module must build without warnings:\n%s", img.BuildDir, out.String())
	}
	ko := filepath.Join(dir, "lucos_bugs.ko")
	if err := os.Rename(filepath.Join(src, "lucos_bugs.ko"), ko); err != nil {
		return "", fmt.Errorf("build lucos_bugs: kbuild made no module: %w\n%s", err, out.String())
	}
	return ko, nil
}

// Cached returns lucos_bugs built against img's kernel headers, from img's
// cache directory: it builds the module (as Build) the first time for each
// version of its source, and reuses that .ko after. The same bytes every
// time also let launch reuse the initramfs that carries it. A build is
// announced on progress.
func Cached(ctx context.Context, img *guest.Image, progress io.Writer) (string, error) {
	digest, err := examples.Digest("guestmod/lucos_bugs")
	if err != nil {
		return "", err
	}
	path := filepath.Join(img.Dir, "lucos_bugs-"+digest[:16]+".ko")
	if _, err := os.Stat(path); err == nil {
		return path, nil
	}
	tmp, err := os.MkdirTemp(img.Dir, "lucos-bugs-")
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(tmp)
	fmt.Fprintf(progress, "lucos: building the lucos_bugs module for %s…\n", img.Release)
	ko, err := Build(ctx, img, tmp)
	if err != nil {
		return "", err
	}
	// Rename is atomic: a concurrent lucos sees no module or a whole one.
	return path, os.Rename(ko, path)
}

// Extend returns prev (which may be nil) followed by the installation of
// the module at KOPath, insmod'ed at boot by Hook before the guest is ready.
func Extend(ko string, prev func(*initramfs.Archive) error) func(*initramfs.Archive) error {
	return func(a *initramfs.Archive) error {
		if prev != nil {
			if err := prev(a); err != nil {
				return err
			}
		}
		if err := a.AddHostFile(KOPath, ko, 0o644); err != nil {
			return err
		}
		a.AddFile(Hook, 0o755, []byte(hook))
		return nil
	}
}
