package testvm

import (
	"context"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/bzimage"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// Plain is a guest booted by a plain QEMU command line, as a user starts
// one: no lucos sockets, gdbstub or shared RAM, only a QMP socket.
type Plain struct {
	QMP     string // QMP socket path
	PID     int    // QEMU's process id
	Release string // the kernel release it boots
	Cmdline string // the kernel command line
	Console string // console log file
	cmd     *exec.Cmd
	exited  chan struct{}
	ctl     *vmm.Control
}

// BootPlain boots the default guest of o (kernel, lucos's initramfs and
// modules disk) under a plain qemu-system-x86_64 with a QMP socket, with
// the kernel command line cmdline, and returns once the guest's init has
// announced itself on the second serial port. QEMU is killed when the test
// ends.
func BootPlain(t testing.TB, o launch.Options, cmdline string) *Plain {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cfg, err := launch.Guest(ctx, o)
	if err != nil {
		t.Fatalf("guest: %v", err)
	}
	hdr, err := bzimage.ParseFile(cfg.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	cfg.Memory, cfg.CPUs = max(cfg.Memory, 1<<30), max(cfg.CPUs, 1)
	cfg.TCGThreads, _ = cfg.TCGThreads.Resolve(hdr.Release())
	dir, err := os.MkdirTemp("", "lucos-plain-")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	ctl := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", ctl)
	if err != nil {
		t.Fatal(err)
	}
	defer ln.Close()
	p := &Plain{QMP: filepath.Join(dir, "qmp.sock"), Release: hdr.Release(), Cmdline: cmdline, Console: filepath.Join(dir, "console.log"), exited: make(chan struct{})}
	args := append(vmm.PlainArgs(cfg, cmdline, p.Console, ctl), "-qmp", "unix:"+p.QMP+",server=on,wait=off")
	p.cmd = exec.Command("qemu-system-x86_64", args...)
	var stderr strings.Builder
	p.cmd.Stderr = &stderr
	if err := p.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	p.PID = p.cmd.Process.Pid
	go func() { p.cmd.Wait(); close(p.exited) }()
	t.Cleanup(func() {
		p.cmd.Process.Kill()
		<-p.exited
		if p.ctl != nil {
			p.ctl.Close()
		}
	})
	// The control channel's first line says init is up.
	ready := make(chan error, 1)
	go func() {
		c, err := ln.Accept()
		if err != nil {
			ready <- err
			return
		}
		p.ctl = vmm.NewControl(c)
		_, err = p.ctl.WaitReady(ctx)
		ready <- err
	}()
	select {
	case err = <-ready:
	case <-p.exited:
		err = fmt.Errorf("QEMU exited: %s", stderr.String())
	case <-ctx.Done():
		err = ctx.Err()
	}
	if err != nil {
		log, _ := os.ReadFile(p.Console)
		t.Fatalf("plain QEMU boot: %v\nconsole:\n%s", err, tail(string(log), 2000))
	}
	return p
}

// Exec runs a shell script in the guest through its control channel and
// fails the test on a transport error.
func (p *Plain) Exec(t testing.TB, script string) *vmm.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := p.ctl.ExecScript(ctx, script)
	if err != nil {
		log, _ := os.ReadFile(p.Console)
		t.Fatalf("exec %q: %v\nconsole:\n%s", script, err, tail(string(log), 2000))
	}
	return res
}

// Running reports whether QEMU is still running.
func (p *Plain) Running() bool {
	select {
	case <-p.exited:
		return false
	default:
		return true
	}
}

func tail(s string, n int) string {
	if len(s) > n {
		return s[len(s)-n:]
	}
	return s
}
