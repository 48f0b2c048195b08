package main

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"
	"golang.org/x/term"

	"github.com/lucos/lucos/api"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/guestmod"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// escapeKey ends an interactive console session (Ctrl-], as in telnet and virsh).
const escapeKey = 0x1d

// guestFlags are the flags that choose and size a guest, shared by run, demo and bench.
type guestFlags struct {
	cpus    int
	memory  string
	accel   string
	kernel  string
	initrd  string
	flavour string
	release string
	icount  bool
	threads string
}

func (f *guestFlags) add(cmd *cobra.Command) {
	fl := cmd.Flags()
	fl.IntVar(&f.cpus, "cpus", vmm.DefaultCPUs, "number of vCPUs")
	fl.StringVar(&f.memory, "memory", "1G", "guest RAM (e.g. 1G, 768M; at least 512M)")
	fl.StringVar(&f.accel, "accel", "tcg", "accelerator: tcg, kvm, or auto (kvm only if a probe shows it can run a stock kernel)")
	fl.StringVar(&f.kernel, "kernel", "", "boot this bzImage instead of the cached Debian kernel")
	fl.StringVar(&f.initrd, "initrd", "", "boot this initramfs instead of lucos's (no lucos exec then)")
	fl.StringVar(&f.flavour, "flavour", "cloud", "Debian kernel flavour: cloud or generic")
	fl.StringVar(&f.release, "release", "", "the kernel release (6.1.0-57-cloud-amd64, 6.12.118+deb12-cloud-amd64) or a series (6.12: its current release); default: the current 6.1")
	fl.StringVar(&f.threads, "tcg-threads", "auto", "TCG's vCPU threads: single (all vCPUs in turn on one host thread), multi (one each), or auto (single for kernels from 6.12 on, whose text patching QEMU 7.2's multi-threaded TCG can run stale; multi below)")
	fl.BoolVar(&f.icount, "icount", false, "guest clock counts executed instructions (QEMU -icount shift=0,sleep=off; TCG and --cpus 1 only): rates measured in the guest no longer depend on the host's speed, the guest runs several times slower")
}

func (f *guestFlags) options() (launch.Options, error) {
	accel, err := vmm.ParseAccel(f.accel)
	if err != nil {
		return launch.Options{}, err
	}
	threads, err := vmm.ParseTCGThreads(f.threads)
	if err != nil {
		return launch.Options{}, err
	}
	mem, err := vmm.ParseSize(f.memory)
	if err != nil {
		return launch.Options{}, err
	}
	if f.flavour != "cloud" && f.flavour != "generic" {
		return launch.Options{}, fmt.Errorf("--flavour %q: want cloud or generic", f.flavour)
	}
	return launch.Options{
		Image:  guest.Options{Flavour: f.flavour, Release: f.release, Progress: os.Stderr},
		Kernel: f.kernel,
		Initrd: f.initrd,
		VM:     vmm.Config{CPUs: f.cpus, Memory: mem, Accel: accel, TCGThreads: threads, ICount: f.icount, Log: logger()},
	}, nil
}

func newRunCmd() *cobra.Command {
	var gf guestFlags
	var apiSock string
	var bugs bool
	cmd := &cobra.Command{
		Use:   "run [flags] [-- CMD ARGS...]",
		Short: "Boot a guest; run CMD in it, or attach its console",
		Long: `Boot a guest under QEMU with lucos in control of it.

With CMD, lucos waits for the guest's shell, runs CMD, prints its output,
powers the guest off and exits with CMD's exit status.

Without CMD, the guest's serial console is attached to this terminal until the
guest powers off or you press Ctrl-] (which stops the VM). Meanwhile the VM
is served on the control API socket (--api-sock; by default api.sock in the
VM's run directory, printed at start): "lucos exec" and "lucos status" use it.

The guest kernel is the stock Debian bookworm kernel, fetched on first use
(see "lucos guest fetch"). Guest-physical memory at 256 MiB..+16 MiB is
reserved (memmap=) for patch code.

Every stock module of the kernel release can be loaded in the guest with
modprobe (or by the kernel itself, by alias): the release's modules
directory, with a modules.dep and modules.alias lucos writes, is a read-only
ext4 disk (NVMe) mounted on /lib/modules/<release>; it is built once per
release in the guest cache (needs mke2fs, package e2fsprogs) and costs the
guest no RAM until a module is loaded. With --initrd there is none.`,
		Example: `  lucos run --cpus 2 -- grep -c ^processor /proc/cpuinfo
  lucos run -- sh -c 'modprobe nfsd && grep ^nfsd /proc/modules'
  lucos run --api-sock /tmp/vm.sock          # interactive; from another shell:
  lucos exec --api-sock /tmp/vm.sock -- uname -r
  lucos run --bugs --api-sock /tmp/vm.sock   # with the module the data and callback examples fix`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := gf.options()
			if err != nil {
				return err
			}
			if bugs {
				if opts, err = withBugs(cmd.Context(), opts); err != nil {
					return err
				}
			}
			return run(cmd.Context(), opts, apiSock, args)
		},
	}
	gf.add(cmd)
	cmd.Flags().BoolVar(&bugs, "bugs", false, "build the lucos_bugs test module (examples/guestmod) and load it at boot: the examples deadlock-fix, data-layout, shadow-newfield and callbacks patch it")
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "serve the control API on this unix socket (default: api.sock in the run directory)")
	return cmd
}

// withBugs adds the lucos_bugs module, built for the guest's release (once:
// guestmod.Cached), to opts's initramfs.
func withBugs(ctx context.Context, opts launch.Options) (launch.Options, error) {
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return opts, err
	}
	ko, err := guestmod.Cached(ctx, img, os.Stderr)
	if err != nil {
		return opts, err
	}
	opts.Extend = guestmod.Extend(ko, opts.Extend)
	return opts, nil
}

func run(ctx context.Context, opts launch.Options, apiSock string, argv []string) error {
	if apiSock != "" {
		if err := api.Claim(apiSock); err != nil {
			return err
		}
	}
	if len(argv) > 0 && opts.Initrd != "" {
		return fmt.Errorf("cannot run a command with a custom --initrd: it has no lucos control channel")
	}
	interactive := len(argv) == 0
	fmt.Fprintln(os.Stderr, "lucos: booting the guest…")
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer m.Close()
	accel, why := m.Accel()
	if accel == vmm.AccelTCG {
		why += ", " + string(m.TCGThreads()) + "-threaded"
	}
	fmt.Fprintf(os.Stderr, "lucos: guest %s up in %.1f s (%d vCPUs, %s, %s)\n", m.Release(), m.BootTime().Seconds(), m.CPUs(), accel, why)

	srv, apiSock, err := listenAPI(apiSock, m)
	if err != nil {
		return err
	}
	defer srv.Close()
	go srv.Serve()

	if !interactive {
		res, err := m.Exec(ctx, argv...)
		if err != nil {
			return fmt.Errorf("run %q in the guest: %w", argv, err)
		}
		os.Stdout.Write(res.Stdout)
		os.Stderr.Write(res.Stderr)
		if res.Status != 0 {
			return exitCode(res.Status)
		}
		return nil
	}
	fmt.Fprintf(os.Stderr, "lucos: API on %s\nlucos: console attached; press Ctrl-] to stop the VM\n", apiSock)
	return attachConsole(ctx, m)
}

// attachConsole relays the terminal to the guest's serial console until the
// guest exits, the user presses the escape key, or ctx ends.
func attachConsole(ctx context.Context, m *vmm.Machine) error {
	in := m.Console(os.Stdout)
	defer m.Console(nil)
	if fd := int(os.Stdin.Fd()); term.IsTerminal(fd) {
		old, err := term.MakeRaw(fd)
		if err != nil {
			return fmt.Errorf("terminal raw mode: %w", err)
		}
		defer term.Restore(fd, old)
	}
	escaped := make(chan struct{})
	go relayInput(os.Stdin, in, escaped)
	select {
	case <-m.Done():
		fmt.Fprintln(os.Stderr, "\r\nlucos: guest powered off")
		return nil
	case <-escaped:
		fmt.Fprintln(os.Stderr, "\r\nlucos: stopping the VM")
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}

// relayInput copies keystrokes to the guest until the escape key or EOF.
func relayInput(r io.Reader, w io.Writer, escaped chan<- struct{}) {
	buf := make([]byte, 256)
	for {
		n, err := r.Read(buf)
		for i := 0; i < n; i++ {
			if buf[i] == escapeKey {
				w.Write(buf[:i])
				close(escaped)
				return
			}
		}
		if n > 0 {
			w.Write(buf[:n])
		}
		if err != nil {
			// stdin closed (not a terminal): keep the VM until it exits.
			return
		}
	}
}

// listenAPI claims the control API socket of m: sock, or api.sock in m's
// run directory when sock is empty. It returns the server (not yet
// serving) and the socket's path.
func listenAPI(sock string, m *vmm.Machine) (*api.Server, string, error) {
	if sock == "" {
		sock = filepath.Join(m.RunDir(), "api.sock")
	}
	srv, err := api.Listen(sock, m)
	return srv, sock, err
}
