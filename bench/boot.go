package bench

import (
	"bufio"
	"context"
	"fmt"
	"io"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lucos/lucos/bzimage"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// bootRounds is how many interleaved boots of each kind Boot runs.
const bootRounds = 5

// Boot compares the time from launch to the guest's shell being ready under
// lucos (QMP, gdbstub, shared RAM, serial ports) with plain QEMU booting the
// same kernel, initramfs, modules disk and command line, alternating the two.
func Boot(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	cfg, err := launch.Guest(ctx, opts)
	if err != nil {
		return nil, err
	}
	if !cfg.Control {
		return nil, fmt.Errorf("boot benchmark needs lucos's initramfs (no --initrd)")
	}
	var withLucos, plain []float64
	for i := 0; i < bootRounds; i++ {
		fmt.Fprintf(progress, "boot: round %d/%d\n", i+1, bootRounds)
		d, err := plainBoot(ctx, cfg)
		if err != nil {
			return nil, fmt.Errorf("plain QEMU boot: %w", err)
		}
		plain = append(plain, d.Seconds()*1e3)
		m, err := vmm.Start(ctx, cfg)
		if err != nil {
			return nil, err
		}
		withLucos = append(withLucos, m.BootTime().Seconds()*1e3)
		m.Close()
	}
	a, b := distribution("plain qemu-system-x86_64", "ms", plain), distribution("lucos run", "ms", withLucos)
	a.Ratio, b.Ratio = "1.00", fmt.Sprintf("%.2f", b.P50/a.P50)
	return &Result{Scenario: "boot to shell", Rows: []Row{a, b}, Notes: []string{
		fmt.Sprintf("Launch until the guest's control channel announces itself (after init has mounted everything and started its shells); %d interleaved boots each, %d vCPUs, TCG.", bootRounds, opts.VM.CPUs),
	}}, nil
}

// plainBoot runs QEMU as a user would, without lucos's sockets and shared
// RAM, and times it until the same readiness line. It boots cfg's kernel,
// initramfs and disks.
func plainBoot(ctx context.Context, cfg vmm.Config) (time.Duration, error) {
	dir, err := os.MkdirTemp("", "lucos-plain-")
	if err != nil {
		return 0, err
	}
	defer os.RemoveAll(dir)
	ctl := filepath.Join(dir, "ctl.sock")
	ln, err := net.Listen("unix", ctl)
	if err != nil {
		return 0, err
	}
	defer ln.Close()
	mem := cfg.Memory
	if mem == 0 {
		mem = 1 << 30
	}
	cpus := max(cfg.CPUs, 1)
	ctx, cancel := context.WithTimeout(ctx, 3*time.Minute)
	defer cancel()
	hdr, err := bzimage.ParseFile(cfg.Kernel)
	if err != nil {
		return 0, err
	}
	threads, _ := cfg.TCGThreads.Resolve(hdr.Release()) // as lucos runs it
	cfg.Memory, cfg.CPUs, cfg.TCGThreads = mem, cpus, threads
	args := vmm.PlainArgs(cfg, vmm.KernelCmdline(""), filepath.Join(dir, "console.log"), ctl)
	cmd := exec.CommandContext(ctx, "qemu-system-x86_64", args...)
	start := time.Now()
	if err := cmd.Start(); err != nil {
		return 0, err
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	conn, err := ln.Accept()
	if err != nil {
		return 0, err
	}
	defer conn.Close()
	sc := bufio.NewScanner(conn)
	for sc.Scan() {
		if strings.HasPrefix(sc.Text(), "LUCOS-READY ") {
			return time.Since(start), nil
		}
	}
	return 0, fmt.Errorf("guest never became ready: %v", sc.Err())
}
