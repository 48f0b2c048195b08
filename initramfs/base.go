package initramfs

import (
	"bytes"
	"context"
	"debug/elf"
	"embed"
	"errors"
	"fmt"
	"io/fs"
	"os/exec"
	"path"
	"strings"
	"time"
)

// rootfs is the guest's own files: busybox init's table, the start-up
// script and the host's control channel (sbin/lucos-ctl).
//
//go:embed all:rootfs
var rootfs embed.FS

// executableDirs hold the rootfs files that are programs; embed.FS keeps no
// modes, so this decides which files are 0755.
var executableDirs = []string{"bin/", "sbin/", "usr/bin/", "usr/sbin/", "etc/init.d/"}

// rootfsMode is the mode of the embedded rootfs file name.
func rootfsMode(name string, _ fs.FileInfo) fs.FileMode {
	for _, dir := range executableDirs {
		if strings.HasPrefix(name, dir) {
			return 0o755
		}
	}
	return 0o644
}

// Base returns the standard lucos guest, built around the static busybox
// at busyboxPath (guest.Image.Busybox):
//   - /bin/busybox and a symlink to it for every applet it has;
//   - /init, a symlink to busybox, which then runs as init(8): the kernel
//     execs /init and busybox picks the applet by name;
//   - the embedded rootfs: /etc/inittab, /etc/init.d/rcS, /sbin/lucos-ctl;
//   - the mount points and directories the start-up script expects, and
//     /etc/lucos.d for hooks of later stages;
//   - /dev/console and /dev/null, which the kernel and init need before
//     devtmpfs is mounted;
//   - /etc/passwd and /etc/group with root.
func Base(busyboxPath string) (*Archive, error) {
	if err := checkStatic(busyboxPath); err != nil {
		return nil, err
	}
	applets, err := listApplets(busyboxPath)
	if err != nil {
		return nil, err
	}

	a := New()
	if err := a.AddHostFile("bin/busybox", busyboxPath, 0o755); err != nil {
		return nil, err
	}
	for _, p := range applets {
		if p != "bin/busybox" {
			a.AddSymlink(p, "/bin/busybox")
		}
	}
	a.AddSymlink("init", "bin/busybox")

	for _, d := range []struct {
		path string
		mode fs.FileMode
	}{
		{"proc", 0o555}, {"sys", 0o555}, {"dev", 0o755}, {"run", 0o755},
		{"tmp", 0o777 | fs.ModeSticky}, {"root", 0o700}, {"etc/lucos.d", 0o755},
	} {
		a.AddDir(d.path, d.mode)
	}
	a.AddCharDevice("dev/console", 0o600, 5, 1)
	a.AddCharDevice("dev/null", 0o666, 1, 3)
	a.AddFile("etc/passwd", 0o644, []byte("root:x:0:0:root:/root:/bin/sh\n"))
	a.AddFile("etc/group", 0o644, []byte("root:x:0:\n"))

	sub, err := fs.Sub(rootfs, "rootfs")
	if err != nil {
		return nil, err
	}
	if err := a.addTree("/", sub, rootfsMode); err != nil {
		return nil, err
	}
	return a, nil
}

// checkStatic makes sure the guest can run the binary: x86-64 and no
// program interpreter (dynamic loader).
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return fmt.Errorf("initramfs: busybox %s: %w", bin, err)
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("initramfs: busybox %s is for %v: %w", bin, f.Machine, errNotStatic)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("initramfs: busybox %s is dynamically linked: %w", bin, errNotStatic)
		}
	}
	return nil
}

// errNotStatic: Base was given a busybox the guest could not run.
var errNotStatic = errors.New("not a static x86-64 executable (the guest has no libc: use Debian's busybox-static)")

// listApplets asks busybox where each of its applets belongs
// ("bin/sh", "usr/bin/[", ...). It runs on the host: the guest's busybox is
// a static x86-64 binary like the host.
func listApplets(bin string) ([]string, error) {
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	cmd := exec.CommandContext(ctx, bin, "--list-full")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	out, err := cmd.Output()
	if err != nil {
		return nil, fmt.Errorf("initramfs: `%s --list-full`: %w: %s", bin, err, strings.TrimSpace(stderr.String()))
	}
	var applets []string
	for _, line := range strings.Fields(string(out)) {
		p, err := cleanPath(line)
		if err != nil || p != line || path.Base(p) == "busybox" && p != "bin/busybox" {
			return nil, fmt.Errorf("initramfs: `%s --list-full` gave %q, not an applet path", bin, line)
		}
		applets = append(applets, p)
	}
	if len(applets) == 0 {
		return nil, fmt.Errorf("initramfs: `%s --list-full` listed no applets", bin)
	}
	return applets, nil
}
