package guest_test

import (
	"bufio"
	"context"
	"io"
	"net"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// TestSystemDiskBootsOnPlainQEMU builds (or takes from the cache) the
// system disk of the current 6.1 kernel and boots it with a plain QEMU
// command line, the one docs/ATTACH.md shows: no -kernel, no lucos
// parameter, no gdbstub, no shared memory. Root must be logged in on the
// serial console, running the disk's kernel with a command line free of
// memmap=. lucos attaches to it (QMP only) and detaches, and the shell
// still answers.
func TestSystemDiskBootsOnPlainQEMU(t *testing.T) {
	if testing.Short() {
		t.Skip("builds a Debian system and boots it")
	}
	testreq.Tools(t, "qemu-system-x86_64", "qemu-img", "mmdebstrap", "mkfs.ext4")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	d, err := guest.BuildSystemDisk(ctx, guest.SystemDiskOptions{Options: guest.Options{Progress: testWriter{t}}})
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	overlay := filepath.Join(dir, "disk.qcow2")
	if out, err := exec.Command("qemu-img", "create", "-q", "-f", "qcow2", "-b", d.Path, "-F", "qcow2", overlay).CombinedOutput(); err != nil {
		t.Fatalf("qemu-img create: %v: %s", err, out)
	}
	sock := filepath.Join(dir, "console.sock")
	ln, err := net.Listen("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	qmp := filepath.Join(dir, "qmp.sock")
	qemu := exec.CommandContext(ctx, "qemu-system-x86_64", "-machine", "q35", "-accel", "tcg", "-m", "1G", "-smp", "2",
		"-nodefaults", "-display", "none", "-no-reboot",
		"-drive", "file="+overlay+",format=qcow2,if=virtio",
		"-serial", "unix:"+sock, "-qmp", "unix:"+qmp+",server=on,wait=off")
	qemu.Stderr = testWriter{t}
	if err := qemu.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { qemu.Process.Kill(); qemu.Wait() }()
	conn, err := ln.Accept()
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close()
	context.AfterFunc(ctx, func() { conn.Close() })
	var console strings.Builder
	r := bufio.NewReader(io.TeeReader(conn, &console))
	expect := func(what string) {
		t.Helper()
		if err := readUntil(r, what); err != nil {
			t.Fatalf("console: no %q (%v); console so far:\n%s", what, err, tail(console.String(), 3000))
		}
	}
	booted := time.Now()
	expect("root@lucos-guest")
	t.Logf("root's shell after %.0f s", time.Since(booted).Seconds())
	// The terminal echoes the command: only its output has END.
	if _, err := io.WriteString(conn, "echo REL=$(uname -r) CMD=$(cat /proc/cmdline) E''ND\n"); err != nil {
		t.Fatal(err)
	}
	expect(" END\r\n")
	out := console.String()
	i := strings.LastIndex(out, "REL=")
	line := out[i:]
	if !strings.HasPrefix(line, "REL="+d.Release+" ") {
		t.Errorf("the guest runs %q, want %s", line, d.Release)
	}
	if !strings.Contains(line, "root=LABEL=") || strings.Contains(line, "memmap") {
		t.Errorf("kernel command line %q: want the disk's own, with no lucos parameter", line)
	}
	if strings.Contains(out, "Kernel panic") || strings.Contains(out, "Oops") {
		t.Errorf("the boot oopsed:\n%s", tail(out, 3000))
	}

	// lucos attaches to the running system, finds its kernel from the
	// banner, sees systemd as PID 1, and detaches; the shell still answers.
	m, k, err := launch.AttachQEMU(ctx, launch.AttachOptions{VM: vmm.AttachConfig{QMP: qmp}})
	if err != nil {
		t.Fatalf("attach: %v", err)
	}
	tasks, err := k.Tasks(ctx)
	m.Close()
	if err != nil {
		t.Fatalf("tasks: %v", err)
	}
	if k.Release() != d.Release {
		t.Errorf("attach found kernel %s, the disk has %s", k.Release(), d.Release)
	}
	systemd := false
	for _, task := range tasks {
		systemd = systemd || task.PID == 1 && task.Comm == "systemd"
	}
	if !systemd {
		t.Errorf("attach: no systemd as PID 1 among %d tasks", len(tasks))
	}
	if _, err := io.WriteString(conn, "echo AFTER-DETACH-$((6*7))\n"); err != nil {
		t.Fatal(err)
	}
	expect("AFTER-DETACH-42")
}

// readUntil reads r until s has gone by.
func readUntil(r *bufio.Reader, s string) error {
	var seen []byte
	for {
		b, err := r.ReadByte()
		if err != nil {
			return err
		}
		seen = append(seen, b)
		if len(seen) > len(s) {
			seen = seen[1:]
		}
		if string(seen) == s {
			return nil
		}
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}

type testWriter struct{ t *testing.T }

func (w testWriter) Write(b []byte) (int, error) {
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}
