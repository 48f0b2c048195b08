package testvm

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/examples"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/launch"
)

// Where the lucos_bugs test module (examples/guestmod/lucos_bugs) and its
// boot hook live in a guest booted with WithBugs.
const (
	BugsKOPath = "/lib/lucos/lucos_bugs.ko"
	BugsHook   = "/etc/lucos.d/50-lucos-bugs.sh"
	BugsProc   = "/proc/lucos_bugs" // the module's files
)

// bugsHook runs in rcS before the guest announces itself ready. A failed
// insmod is said on the console; tests then find no BugsProc.
const bugsHook = "insmod " + BugsKOPath + " || echo 'lucos: insmod " + BugsKOPath + " failed' > /dev/ttyS0\n"

var bugs struct {
	once sync.Once
	ko   string
	err  error
}

// BugsKO builds examples/guestmod/lucos_bugs for the default guest's
// release, once per test process, and returns the .ko's path, in a
// temporary directory that outlives the test so later tests reuse it.
// Without the guest image, make or the kernel's compiler it skips (fails
// under CI); a compiler error or warning fails the test.
func BugsKO(t testing.TB) string {
	t.Helper()
	img := Image(t)
	cc, err := img.Compiler()
	if err != nil {
		t.Fatalf("lucos_bugs: %v", err)
	}
	testreq.Tools(t, "make", cc)
	bugs.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		bugs.ko, bugs.err = buildBugs(ctx, img)
	})
	if bugs.err != nil {
		t.Fatalf("lucos_bugs: %v", bugs.err)
	}
	return bugs.ko
}

// buildBugs runs kbuild on the module directly: package patch/build's
// BuildModule would do, but patch/build's and patch/loader's own tests
// import testvm, so testvm cannot import them.
func buildBugs(ctx context.Context, img *guest.Image) (ko string, err error) {
	tmp, err := os.MkdirTemp("", "lucos-guestmod-")
	if err != nil {
		return "", err
	}
	defer func() {
		if err != nil {
			os.RemoveAll(tmp)
		}
	}()
	dir, err := examples.Extract("guestmod/lucos_bugs", tmp)
	if err != nil {
		return "", err
	}
	defer os.RemoveAll(dir) // kbuild's intermediate files; the .ko moves out
	cmd := exec.CommandContext(ctx, "make", "-C", img.BuildDir, "M="+dir, "-j"+fmt.Sprint(runtime.NumCPU()), "modules")
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
		return "", fmt.Errorf("kbuild against %s: %w\n%s", img.BuildDir, err, out.String())
	}
	if strings.Contains(out.String(), "warning:") {
		return "", fmt.Errorf("kbuild against %s: the module must build without warnings:\n%s", img.BuildDir, out.String())
	}
	ko = filepath.Join(tmp, "lucos_bugs.ko")
	if err := os.Rename(filepath.Join(dir, "lucos_bugs.ko"), ko); err != nil {
		return "", fmt.Errorf("kbuild made no module: %w\n%s", err, out.String())
	}
	return ko, nil
}

// WithBugs returns o with the lucos_bugs module added to the guest's
// initramfs at BugsKOPath and insmod'ed at boot by BugsHook, before the
// guest is ready; whatever o.Extend adds is kept.
func WithBugs(t testing.TB, o launch.Options) launch.Options {
	t.Helper()
	ko := BugsKO(t)
	prev := o.Extend
	o.Extend = func(a *initramfs.Archive) error {
		if prev != nil {
			if err := prev(a); err != nil {
				return err
			}
		}
		if err := a.AddHostFile(BugsKOPath, ko, 0o644); err != nil {
			return err
		}
		a.AddFile(BugsHook, 0o755, []byte(bugsHook))
		return nil
	}
	return o
}
