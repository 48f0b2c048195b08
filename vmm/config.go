package vmm

import (
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"os"
	"strconv"
	"strings"
	"time"

	"github.com/lucos/lucos/internal/layout"
)

// Config describes a VM to launch.
type Config struct {
	Kernel string // bzImage
	Initrd string // initramfs (cpio)
	// Control says the initramfs runs lucos-ctl on the second serial port
	// (initramfs.Base does); Start then waits for it and Exec works.
	Control bool
	CPUs    int
	Memory  uint64 // bytes
	Accel   Accel
	// ICount makes the guest's clock count executed instructions (QEMU
	// -icount shift=0,sleep=off: one guest nanosecond per instruction, no
	// waiting in idle): guest time, and so any rate a workload measures on
	// it, is then independent of how fast the host runs. TCG only; the
	// guest runs on one host thread and several times slower.
	ICount bool
	// TCGThreads is how TCG maps vCPUs onto host threads (TCGThreadsAuto
	// when empty). See TCGThreads.
	TCGThreads TCGThreads
	// RunDir holds the VM's sockets and logs; empty means a new directory
	// under os.TempDir(), removed by Close.
	RunDir string
	// Append is added to the kernel command line lucos builds.
	Append string
	// Disks are attached read-only, each as an NVMe controller.
	Disks []Disk
	// Console receives the guest's serial console (ttyS0) as it arrives,
	// besides RunDir/console.log. Nil means the log only.
	Console io.Writer
	// QEMU is the emulator binary; empty means qemu-system-x86_64 from PATH.
	QEMU string
	// WrapGDB, if set, wraps each connection to the gdbstub (the first and
	// any made again after one broke): fault-injection tests drop it at a
	// chosen packet. Nil: used as is.
	WrapGDB func(net.Conn) net.Conn
	// BootTimeout bounds the wait for the guest's control channel.
	BootTimeout time.Duration
	Log         *slog.Logger
}

// Disk is a raw disk image the guest sees read-only, as the namespace of an
// NVMe controller (/dev/nvmeNn1): the cloud kernel has NVMe built in but
// virtio-blk only as a module. Read-only, one image serves any number of
// VMs at once.
type Disk struct {
	Path string
	// Serial is the controller's serial number, which the guest reads in
	// /sys/class/nvme/nvmeN/serial: 1 to 20 letters, digits, '.', '_' or '-'.
	Serial string
}

// QEMUArgs are the QEMU options that attach d as disk number i.
func (d Disk) QEMUArgs(i int) []string {
	id := fmt.Sprintf("disk%d", i)
	return []string{
		"-drive", "if=none,id=" + id + ",format=raw,readonly=on,file=" + strings.ReplaceAll(d.Path, ",", ",,"),
		"-device", "nvme,drive=" + id + ",serial=" + d.Serial,
	}
}

func (d Disk) validate() error {
	if len(d.Serial) == 0 || len(d.Serial) > 20 || strings.TrimFunc(d.Serial, func(r rune) bool {
		return 'a' <= r && r <= 'z' || 'A' <= r && r <= 'Z' || '0' <= r && r <= '9' || r == '.' || r == '_' || r == '-'
	}) != "" {
		return fmt.Errorf("disk %s: serial %q: want 1 to 20 letters, digits, '.', '_' or '-'", d.Path, d.Serial)
	}
	fi, err := os.Stat(d.Path)
	if err != nil {
		return fmt.Errorf("disk: %w", err)
	}
	if !fi.Mode().IsRegular() {
		return fmt.Errorf("disk %s: not a regular file", d.Path)
	}
	return nil
}

// errICountKVM: an instruction clock is a TCG feature.
var errICountKVM = errors.New("--icount needs TCG (QEMU counts instructions only when it translates them): use --accel tcg")

// Defaults for Config fields left zero.
const (
	DefaultCPUs        = 2
	DefaultBootTimeout = 3 * time.Minute
)

func (c *Config) setDefaults() {
	if c.CPUs == 0 {
		c.CPUs = DefaultCPUs
	}
	if c.Memory == 0 {
		c.Memory = layout.DefaultGuestMemory
	}
	if c.Accel == "" {
		c.Accel = AccelTCG
	}
	if c.TCGThreads == "" {
		c.TCGThreads = TCGThreadsAuto
	}
	if c.QEMU == "" {
		c.QEMU = "qemu-system-x86_64"
	}
	if c.BootTimeout == 0 {
		c.BootTimeout = DefaultBootTimeout
	}
	if c.Log == nil {
		c.Log = slog.New(slog.DiscardHandler)
	}
}

func (c *Config) validate() error {
	if c.Kernel == "" {
		return fmt.Errorf("no kernel given")
	}
	if c.CPUs < 1 || c.CPUs > 64 {
		return fmt.Errorf("--cpus %d: want 1..64", c.CPUs)
	}
	if c.Memory%(1<<20) != 0 {
		return fmt.Errorf("guest memory must be a whole number of MiB")
	}
	if c.ICount && c.Accel == AccelKVM {
		return errICountKVM
	}
	if c.ICount && c.TCGThreads == TCGThreadsMulti {
		return fmt.Errorf("--icount needs --tcg-threads single or auto: QEMU counts instructions only on one thread")
	}
	if c.ICount && c.CPUs > 1 {
		// Measured: the boot stops at "smp: Bringing up secondary CPUs"
		// with shift=0, shift=3 and shift=auto alike.
		return fmt.Errorf("--icount needs --cpus 1: QEMU 7.2's instruction clock does not bring up this kernel's second vCPU (the boot hangs)")
	}
	for _, d := range c.Disks {
		if err := d.validate(); err != nil {
			return err
		}
	}
	return layout.CheckMemory(c.Memory)
}

// ParseSize reads a memory size such as "1G", "512M" or "768" (MiB).
func ParseSize(s string) (uint64, error) {
	t := strings.ToUpper(strings.TrimSpace(s))
	t = strings.TrimSuffix(strings.TrimSuffix(t, "B"), "I")
	mult := uint64(1 << 20)
	switch {
	case strings.HasSuffix(t, "G"):
		mult, t = 1<<30, t[:len(t)-1]
	case strings.HasSuffix(t, "M"):
		t = t[:len(t)-1]
	case strings.HasSuffix(t, "K"):
		mult, t = 1<<10, t[:len(t)-1]
	}
	n, err := strconv.ParseUint(t, 10, 64)
	if err != nil || n == 0 {
		return 0, fmt.Errorf("bad memory size %q (want e.g. 1G or 512M)", s)
	}
	return n * mult, nil
}
