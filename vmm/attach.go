package vmm

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"os"
	"regexp"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"golang.org/x/sys/unix"
)

// AttachConfig says how to reach a QEMU that lucos did not start.
type AttachConfig struct {
	// QMP is the path of the VM's QMP socket (QEMU's -qmp
	// unix:PATH,server=on,wait=off, or a -chardev socket with -mon
	// mode=control). It must be free: QEMU serves one QMP client per
	// socket.
	QMP string
	// PID is QEMU's process id; 0 takes the process at the other end of
	// the QMP socket.
	PID int
	// RunDir holds the gdbstub socket lucos asks QEMU to open; empty means
	// a new directory under os.TempDir(), removed by Close.
	RunDir string
	Log    *slog.Logger
}

// Errors of Attach that callers may branch on.
var (
	// ErrNoAccess: the QMP socket or the QEMU process is not this user's
	// to use.
	ErrNoAccess = errors.New("no access")
	// ErrNotQEMU: the QMP socket or PID does not lead to an x86-64 QEMU.
	ErrNotQEMU = errors.New("not an x86-64 QEMU")
)

// Attach takes control of a QEMU that is already running a guest: it
// connects to its QMP socket, asks QEMU for a gdbstub (HMP gdbserver on a
// socket in lucos's run directory; one the VM was started with, or a
// killed lucos left, is shut first), and reads guest RAM through the QEMU process's memory
// (/proc/PID/mem at the host addresses QEMU reports for guest-physical 0
// and 4 GiB; refused if that cannot be opened or RAM is not one block). The
// guest keeps running; its kernel is not known yet (Release is empty until
// SetKernel). Close detaches and leaves QEMU and the guest running.
func Attach(ctx context.Context, ac AttachConfig) (m *Machine, err error) {
	if ac.QMP == "" {
		return nil, fmt.Errorf("attach: no QMP socket given")
	}
	if ac.Log == nil {
		ac.Log = slog.New(slog.DiscardHandler)
	}
	start := time.Now()
	pid := ac.PID
	if pid == 0 {
		if pid, err = peerPID(ac.QMP); err != nil {
			return nil, err
		}
	}
	if err := checkQEMUProcess(pid); err != nil {
		return nil, err
	}
	m = &Machine{
		cfg:      Config{RunDir: ac.RunDir, Log: ac.Log, Accel: AccelAuto},
		exited:   make(chan struct{}),
		pauses:   NewPauseLog(),
		attached: &attachment{pid: pid},
	}
	defer func() {
		if err != nil {
			m.Close()
			m = nil
		}
	}()
	if err := m.makeRunDir(); err != nil {
		return m, err
	}
	if err := shareRunDir(m.runDir, pid); err != nil {
		return m, err
	}
	go m.watchProcess(pid)
	if err := m.dialQMP(ctx, ac.QMP); err != nil {
		return m, err
	}
	if err := m.describeAttached(); err != nil {
		return m, err
	}
	// The gdbstub stops the VM when lucos connects; it runs again below.
	// A gdbstub QEMU already serves (the VM's own -gdb, or that of a lucos
	// that was killed) is shut first: QEMU 7.2 cannot open a second one
	// over it ("duplicate yank instance").
	if _, err := m.HumanMonitor("gdbserver none"); err != nil {
		return m, fmt.Errorf("stop QEMU's gdbstub: %w", err)
	}
	gdbSock := m.sock("gdb.sock")
	out, err := m.HumanMonitor("gdbserver unix:" + gdbSock + ",server=on,wait=off")
	if err != nil {
		return m, fmt.Errorf("start QEMU's gdbstub: %w", err)
	}
	if !strings.Contains(out, "Waiting for gdb connection") {
		return m, fmt.Errorf("start QEMU's gdbstub: QEMU said %q", strings.TrimSpace(out))
	}
	m.attached.gdbStarted = true
	if err := m.connectGDB(ctx); err != nil {
		return m, err
	}
	// Introspection reads guest RAM without pausing; through the gdbstub
	// every read would be a pause, so that is not offered.
	ram, why := m.processRAM(pid)
	if ram == nil {
		return m, fmt.Errorf("read guest RAM from QEMU (pid %d): %s", pid, why)
	}
	m.ram = ram
	if _, err := m.gdb.Continue(); err != nil {
		return m, fmt.Errorf("resume the guest: %w", err)
	}
	m.ready = time.Since(start)
	ac.Log.Info("attached", "pid", pid, "cpus", m.cfg.CPUs, "memory_mib", m.cfg.Memory>>20, "accel", m.accel, "ram", m.RAMSource())
	return m, nil
}

// attachment is what a Machine made by Attach knows of the QEMU it did
// not start.
type attachment struct {
	pid        int
	gdbStarted bool // lucos asked for the gdbstub: Close stops it
	ramVia     string
	detached   atomic.Bool
}

// Attached reports whether lucos attached to m rather than starting it.
func (m *Machine) Attached() bool { return m.attached != nil }

// SetKernel tells an attached Machine which bzImage its guest runs
// (identified from the guest's memory and fetched by the caller):
// KernelPath and Release report it from then on.
func (m *Machine) SetKernel(path, release string) {
	m.cfg.Kernel, m.release = path, release
}

// peerPID is the process listening on the unix socket path (SO_PEERCRED
// of a connection to it).
func peerPID(path string) (int, error) {
	c, err := net.DialTimeout("unix", path, 5*time.Second)
	if err != nil {
		if errors.Is(err, os.ErrPermission) {
			return 0, fmt.Errorf("QMP socket %s: %w: it belongs to %s; run lucos as that user or root", path, ErrNoAccess, ownerOf(path))
		}
		return 0, fmt.Errorf("QMP socket %s: %w", path, err)
	}
	defer c.Close()
	raw, err := c.(*net.UnixConn).SyscallConn()
	if err != nil {
		return 0, err
	}
	var cred *unix.Ucred
	var credErr error
	if err := raw.Control(func(fd uintptr) {
		cred, credErr = unix.GetsockoptUcred(int(fd), unix.SOL_SOCKET, unix.SO_PEERCRED)
	}); err != nil {
		return 0, err
	}
	if credErr != nil {
		return 0, fmt.Errorf("QMP socket %s: whose is it: %w (pass --pid)", path, credErr)
	}
	return int(cred.Pid), nil
}

func ownerOf(path string) string {
	var st unix.Stat_t
	if unix.Stat(path, &st) != nil {
		return "another user"
	}
	return fmt.Sprintf("uid %d", st.Uid)
}

// checkQEMUProcess refuses a PID that is not a QEMU for x86-64, or whose
// memory this user may not open.
func checkQEMUProcess(pid int) error {
	exe, err := os.Readlink(fmt.Sprintf("/proc/%d/exe", pid))
	if err != nil {
		if errors.Is(err, os.ErrNotExist) {
			return fmt.Errorf("process %d: no such process", pid)
		}
		return fmt.Errorf("process %d: %w: %v; run lucos as QEMU's user or root", pid, ErrNoAccess, err)
	}
	if !strings.Contains(exe, "qemu-system-x86_64") {
		return fmt.Errorf("process %d (%s): %w", pid, exe, ErrNotQEMU)
	}
	return nil
}

// shareRunDir gives the run directory to the user QEMU (pid) runs as, when
// that is not lucos's: QEMU creates the gdbstub socket in it. libvirt runs
// its QEMUs as libvirt-qemu, and a lucos run directory is lucos's alone
// (0700), where QEMU could not create the socket ("Failed to unlink
// socket ... Permission denied"). Only root may hand it over, and only
// root may read another user's /proc/PID/mem anyway.
func shareRunDir(dir string, pid int) error {
	uid, gid, err := processIDs(pid)
	if err != nil {
		return err
	}
	if uid == os.Geteuid() {
		return nil
	}
	if os.Geteuid() != 0 {
		return fmt.Errorf("QEMU (pid %d) runs as uid %d, lucos as uid %d: %w; run lucos as that user or as root", pid, uid, os.Geteuid(), ErrNoAccess)
	}
	if err := os.Chown(dir, uid, gid); err != nil {
		return fmt.Errorf("give the run directory %s to QEMU's user (uid %d): %w", dir, uid, err)
	}
	return nil
}

// processIDs reads the effective uid and gid of process pid.
func processIDs(pid int) (uid, gid int, err error) {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/status", pid))
	if err != nil {
		return 0, 0, fmt.Errorf("process %d: %w", pid, err)
	}
	uid, gid = -1, -1
	for _, line := range strings.Split(string(b), "\n") {
		// "Uid:\treal\teffective\tsaved\tfs"
		f := strings.Fields(line)
		if len(f) < 3 {
			continue
		}
		switch f[0] {
		case "Uid:":
			uid, _ = strconv.Atoi(f[2])
		case "Gid:":
			gid, _ = strconv.Atoi(f[2])
		}
	}
	if uid < 0 || gid < 0 {
		return 0, 0, fmt.Errorf("process %d: no Uid/Gid in /proc/%d/status", pid, pid)
	}
	return uid, gid, nil
}

// watchProcess closes m.exited when process pid ends (or m closes).
func (m *Machine) watchProcess(pid int) {
	fd, err := unix.PidfdOpen(pid, 0)
	if err != nil {
		m.exitErr = fmt.Errorf("process %d: %w", pid, err)
		close(m.exited)
		return
	}
	defer unix.Close(fd)
	for {
		fds := []unix.PollFd{{Fd: int32(fd), Events: unix.POLLIN}}
		n, err := unix.Poll(fds, 200)
		if n > 0 {
			m.exitErr = fmt.Errorf("QEMU (pid %d) ended", pid)
			close(m.exited)
			return
		}
		if err != nil && !errors.Is(err, unix.EINTR) {
			m.exitErr = fmt.Errorf("watch QEMU (pid %d): %w", pid, err)
			close(m.exited)
			return
		}
		if m.attached.detached.Load() {
			return
		}
	}
}

// describeAttached fills m.cfg from what QEMU reports: vCPUs, RAM size,
// and whether it runs TCG or KVM.
func (m *Machine) describeAttached() error {
	var status struct {
		Status string `json:"status"`
	}
	if err := m.qmpRun("query-status", nil, &status); err != nil {
		return err
	}
	if status.Status != "running" {
		return fmt.Errorf("the VM is %s, not running: resume it first (QMP cont)", status.Status)
	}
	var target struct {
		Arch string `json:"arch"`
	}
	if err := m.qmpRun("query-target", nil, &target); err != nil {
		return err
	}
	if target.Arch != "x86_64" {
		return fmt.Errorf("QEMU emulates %s: %w", target.Arch, ErrNotQEMU)
	}
	var cpus []struct {
		CPUIndex int `json:"cpu-index"`
	}
	if err := m.qmpRun("query-cpus-fast", nil, &cpus); err != nil {
		return err
	}
	var mem struct {
		Base uint64 `json:"base-memory"`
	}
	if err := m.qmpRun("query-memory-size-summary", nil, &mem); err != nil {
		return err
	}
	var kvm struct {
		Enabled bool `json:"enabled"`
	}
	if err := m.qmpRun("query-kvm", nil, &kvm); err != nil {
		return err
	}
	m.cfg.CPUs, m.cfg.Memory = len(cpus), mem.Base
	m.accel, m.accelWhy = AccelTCG, "the attached QEMU runs TCG"
	if kvm.Enabled {
		m.accel, m.accelWhy = AccelKVM, "the attached QEMU runs KVM"
	}
	return nil
}

var hvaRE = regexp.MustCompile(`Host virtual address for 0x[0-9a-f]+ \(([^)]*)\) is (0x[0-9a-f]+)`)

// hva asks QEMU where guest-physical gpa lives in its address space.
func (m *Machine) hva(gpa uint64) (uint64, bool) {
	out, err := m.HumanMonitor(fmt.Sprintf("gpa2hva %#x", gpa))
	if err != nil {
		return 0, false
	}
	sm := hvaRE.FindStringSubmatch(out)
	if sm == nil {
		return 0, false
	}
	v, err := strconv.ParseUint(sm[2][2:], 16, 64)
	return v, err == nil
}

// processRAM reads guest RAM from /proc/PID/mem. QEMU's RAM is one block
// in its address space with the part above 4 GiB after the part below, as
// ramLayout has it; that is checked at both ends of both parts before it
// is relied on.
func (m *Machine) processRAM(pid int) (*guestRAM, string) {
	low, ok := m.hva(0)
	if !ok {
		return nil, "QEMU reports no host address for guest-physical 0"
	}
	size := m.cfg.Memory
	lay := ramLayout{size: size, lowMem: size}
	if high, ok := m.hva(fourGiB); ok {
		if high <= low || high-low >= size {
			return nil, fmt.Sprintf("RAM above 4 GiB (host %#x) is not after RAM below it (host %#x)", high, low)
		}
		lay.lowMem = high - low
	}
	ends := []uint64{lay.lowMem - 1}
	if size > lay.lowMem {
		ends = append(ends, fourGiB, fourGiB+(size-lay.lowMem)-1)
	}
	for _, gpa := range ends {
		off, err := lay.offset(gpa, 1)
		if err != nil {
			return nil, err.Error()
		}
		if h, ok := m.hva(gpa); !ok || h != low+off {
			return nil, fmt.Sprintf("guest RAM is not one block in QEMU (guest-physical %#x)", gpa)
		}
	}
	f, err := os.Open(fmt.Sprintf("/proc/%d/mem", pid))
	if err != nil {
		return nil, fmt.Sprintf("open QEMU's memory: %v (run lucos as QEMU's user or root)", err)
	}
	m.attached.ramVia = fmt.Sprintf("/proc/%d/mem", pid)
	return &guestRAM{proc: f, procBase: low, layout: lay}, ""
}

// RAMSource says how m reads guest RAM, for logs and status.
func (m *Machine) RAMSource() string {
	if m.attached != nil {
		return m.attached.ramVia
	}
	return "shared memory backend"
}

// detach ends lucos's hold on an attached QEMU: the gdbstub connection
// goes (QEMU removes lucos's breakpoints and watchpoints and the guest
// runs on), then the gdbstub lucos asked for is stopped. QEMU runs on.
func (m *Machine) detach() {
	m.attached.detached.Store(true)
	if m.gdb != nil {
		if err := m.gdb.Detach(); err != nil {
			m.cfg.Log.Warn("detach from the gdbstub", "err", err)
			m.gdb.Close()
		}
	}
	if m.qmp != nil && m.attached.gdbStarted {
		m.HumanMonitor("gdbserver none")
		// It ran when lucos attached: a guest lucos's gdbstub left stopped
		// (its connection broke in a pause) runs again. A VM refused before
		// that (one its owner had paused) is left as it was.
		m.qmpRun("cont", nil, nil)
	}
}
