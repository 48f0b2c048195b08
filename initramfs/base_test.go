package initramfs

import (
	"bytes"
	"io/fs"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testreq"
)

func requireTools(t *testing.T, names ...string) { testreq.Tools(t, names...) }

// hostBusybox is the host's static busybox (Debian's busybox-static).
func hostBusybox(t *testing.T) string {
	t.Helper()
	return testreq.File(t, "/bin/busybox", "apt-get install -y busybox-static")
}

// The applets the guest's scripts (rootfs/) run.
var scriptApplets = []string{
	"sh", "mount", "umount", "stty", "base64", "sed", "setsid", "poweroff",
	"grep", "uname", "hostname", "init", "mkdir", "rmdir", "rm", "usleep",
}

func TestBase(t *testing.T) {
	bb := hostBusybox(t)
	a, err := Base(bb)
	if err != nil {
		t.Fatal(err)
	}
	byName := map[string]newcEntry{}
	for _, e := range mustDecode(t, a) {
		byName[e.Name] = e
	}

	want, _ := os.ReadFile(bb)
	if e := byName["bin/busybox"]; !bytes.Equal(e.Data, want) || e.Mode != 0o100755 {
		t.Errorf("bin/busybox: mode %o, %d bytes; want 100755 and the host's %d bytes", e.Mode, len(e.Data), len(want))
	}
	if e := byName["init"]; e.Mode != 0o120777 || string(e.Data) != "bin/busybox" {
		t.Errorf("init: mode %o -> %q", e.Mode, e.Data)
	}
	for _, applet := range scriptApplets {
		found := false
		for _, dir := range []string{"bin/", "sbin/", "usr/bin/", "usr/sbin/"} {
			if e, ok := byName[dir+applet]; ok && string(e.Data) == "/bin/busybox" && e.Mode == 0o120777 {
				found = true
			}
		}
		if !found {
			t.Errorf("no applet %s in bin, sbin, usr/bin or usr/sbin", applet)
		}
	}

	for name, mode := range map[string]uint64{
		"proc": 0o40555, "sys": 0o40555, "dev": 0o40755, "tmp": 0o41777, "run": 0o40755,
		"root": 0o40700, "etc/lucos.d": 0o40755,
		"etc/passwd": 0o100644, "etc/group": 0o100644,
		"dev/console": 0o20600, "dev/null": 0o20666,
	} {
		if e, ok := byName[name]; !ok || e.Mode != mode {
			t.Errorf("%s: mode %o (present %v), want %o", name, e.Mode, ok, mode)
		}
	}
	if e := byName["dev/console"]; e.RdevMajor != 5 || e.RdevMinor != 1 {
		t.Errorf("dev/console is (%d, %d), want (5, 1)", e.RdevMajor, e.RdevMinor)
	}
	if e := byName["dev/null"]; e.RdevMajor != 1 || e.RdevMinor != 3 {
		t.Errorf("dev/null is (%d, %d), want (1, 3)", e.RdevMajor, e.RdevMinor)
	}
	if e := byName["etc/passwd"]; !strings.HasPrefix(string(e.Data), "root:x:0:0:") {
		t.Errorf("etc/passwd: %q", e.Data)
	}

	// The embedded rootfs, with the same contents and executable bits as
	// the files in the repository.
	err = filepath.WalkDir("rootfs", func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		name := strings.TrimPrefix(filepath.ToSlash(p), "rootfs/")
		data, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		fi, _ := d.Info()
		e, ok := byName[name]
		if !ok || !bytes.Equal(e.Data, data) {
			t.Errorf("%s: missing or different from rootfs/%s", name, name)
		}
		if (e.Mode&0o111 != 0) != (fi.Mode()&0o111 != 0) {
			t.Errorf("%s: mode %o in the archive, %v in the repository", name, e.Mode, fi.Mode())
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}

	// Reproducible.
	b, err := Base(bb)
	if err != nil {
		t.Fatal(err)
	}
	var x, y bytes.Buffer
	a.WriteTo(&x)
	b.WriteTo(&y)
	if !bytes.Equal(x.Bytes(), y.Bytes()) {
		t.Error("two Base archives differ")
	}
	t.Logf("Base: %d entries, %d bytes", len(byName), x.Len())
}

func TestBaseRefusesDynamicBusybox(t *testing.T) {
	// Any dynamically linked host program stands in for a non-static busybox.
	sh, err := exec.LookPath("sh")
	if err != nil {
		t.Skip(err)
	}
	sh, _ = filepath.EvalSymlinks(sh)
	if _, err := Base(sh); err == nil || !strings.Contains(err.Error(), "busybox-static") {
		t.Errorf("Base(%s) = %v, want a busybox-static error", sh, err)
	}
	if _, err := Base(filepath.Join(t.TempDir(), "none")); err == nil {
		t.Error("Base of a missing file succeeded")
	}
}
