// Package vmm launches and drives the QEMU process that runs a guest: its
// lifecycle through QMP, its vCPUs, registers, breakpoints and watchpoints
// through the gdbstub, and its RAM through a shared mapping. Every later
// stage of lucos (introspection, the patch loader, the update engine) reaches
// the guest only through a Machine.
package vmm

import (
	"context"
	"errors"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strconv"
	"sync"
	"syscall"
	"time"

	"github.com/digitalocean/go-qemu/qmp"

	"github.com/lucos/lucos/bzimage"
	"github.com/lucos/lucos/gdbstub"
)

// State is where a Machine is in its life.
type State string

const (
	StateStarting State = "starting"
	StateRunning  State = "running"
	StatePaused   State = "paused"
	StateExited   State = "exited"
)

// Errors callers branch on.
var (
	ErrPaused    = errors.New("VM is already paused")
	ErrNotPaused = errors.New("VM is not paused")
	ErrExited    = errors.New("VM has exited")
	ErrNoControl = errors.New("guest has no lucos control channel (custom --initrd?)")
	// ErrQMPBusy: another client holds the QMP socket.
	ErrQMPBusy = errors.New("QMP socket busy")
)

// Machine is a running QEMU guest under lucos control.
type Machine struct {
	cfg   Config
	accel Accel
	// tcgThreads is TCG's threading (single or multi), chosen at Start.
	tcgThreads TCGThreads
	accelWhy   string
	runDir     string
	ownsDir    bool
	release    string // kernel release from the bzImage header
	started    time.Time
	ready      time.Duration // launch to guest ready

	proc    *exec.Cmd
	exited  chan struct{} // closed when QEMU has exited
	exitErr error         // QEMU's exit status; valid after exited is closed

	qmp     *qmp.SocketMonitor
	gdb     *gdbstub.Client
	ram     *guestRAM
	ctl     *controlChannel
	console *consoleTap
	// attached is set when lucos attached to a QEMU it did not start.
	attached *attachment

	// mu serialises use of the gdbstub and guards the fields below.
	mu     sync.Mutex
	paused bool
	stop   gdbstub.StopEvent // the stop that began the current pause
	pauses *PauseLog
	// trap handles stops of breakpoints and watchpoints lucos set; the
	// trap loop learns of each run through trapKick (see trap.go).
	trap     TrapHandler
	trapKick chan struct{}
	trapStop context.CancelFunc

	closeOnce sync.Once
}

// Start launches QEMU for cfg and returns when the guest is up: launch →
// connect QMP → connect the serial ports → connect the gdbstub (the VM is
// created stopped) → map RAM → run → wait for the guest's control channel.
// On any error nothing is left running.
func Start(ctx context.Context, cfg Config) (m *Machine, err error) {
	cfg.setDefaults()
	if err := cfg.validate(); err != nil {
		return nil, err
	}
	hdr, err := bzimage.ParseFile(cfg.Kernel)
	if err != nil {
		return nil, fmt.Errorf("kernel: %w", err)
	}
	if _, err := exec.LookPath(cfg.QEMU); err != nil {
		return nil, fmt.Errorf("%s not found: install Debian's qemu-system-x86 package (apt-get install qemu-system-x86): %w", cfg.QEMU, err)
	}
	m = &Machine{cfg: cfg, release: hdr.Release(), exited: make(chan struct{}), pauses: NewPauseLog()}
	m.accel, m.accelWhy, err = cfg.Accel.resolve()
	if err != nil {
		return nil, err
	}
	if cfg.ICount && m.accel != AccelTCG {
		return nil, errICountKVM
	}
	var threadsWhy string
	m.tcgThreads, threadsWhy = cfg.TCGThreads.Resolve(m.release)
	if cfg.ICount {
		// QEMU counts instructions only on one thread.
		m.tcgThreads, threadsWhy = TCGThreadsSingle, "--icount runs on one thread"
	}
	if m.accel == AccelTCG {
		cfg.Log.Info("accelerator", "accel", m.accel, "why", m.accelWhy, "threads", m.tcgThreads, "threads_why", threadsWhy)
	} else {
		cfg.Log.Info("accelerator", "accel", m.accel, "why", m.accelWhy)
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
	if err := m.launch(); err != nil {
		return m, err
	}
	if err := m.connectQMP(ctx); err != nil {
		return m, err
	}
	if err := m.connectSerial(ctx); err != nil {
		return m, err
	}
	if err := m.connectGDB(ctx); err != nil {
		return m, err
	}
	m.ram, err = mapGuestRAM(m.ramPath(), q35RAMLayout(cfg.Memory))
	if err != nil {
		return m, err
	}
	if _, err := m.gdb.Continue(); err != nil {
		return m, fmt.Errorf("start vCPUs: %w", err)
	}
	if err := m.waitReady(ctx); err != nil {
		return m, err
	}
	return m, nil
}

func (m *Machine) makeRunDir() error {
	if m.cfg.RunDir != "" {
		m.runDir = m.cfg.RunDir
		return os.MkdirAll(m.runDir, 0o700)
	}
	removeStaleRunDirs(os.TempDir())
	dir, err := os.MkdirTemp("", "lucos-vm-")
	if err != nil {
		return fmt.Errorf("create run directory: %w", err)
	}
	m.runDir, m.ownsDir = dir, true
	return os.WriteFile(filepath.Join(dir, ownerFile), []byte(strconv.Itoa(os.Getpid())), 0o600)
}

// ownerFile, in a run directory that lucos made, holds the PID of the
// process that made it.
const ownerFile = "owner.pid"

// removeStaleRunDirs removes the run directories of lucos processes that
// died without Close (SIGKILL): their QEMU died with them (PDEATHSIG),
// and only their sockets and logs remain. A directory whose owner may
// still run, or that names none, is left alone.
func removeStaleRunDirs(tmp string) {
	dirs, _ := filepath.Glob(filepath.Join(tmp, "lucos-vm-*"))
	for _, d := range dirs {
		b, err := os.ReadFile(filepath.Join(d, ownerFile))
		if err != nil {
			continue
		}
		pid, err := strconv.Atoi(string(b))
		if err != nil || pid <= 0 {
			continue
		}
		if err := syscall.Kill(pid, 0); errors.Is(err, syscall.ESRCH) {
			os.RemoveAll(d)
		}
	}
}

func (m *Machine) sock(name string) string { return filepath.Join(m.runDir, name) }

// ramPath is the shared RAM backend file; mapGuestRAM unlinks it.
func (m *Machine) ramPath() string {
	return filepath.Join("/dev/shm", "lucos-"+filepath.Base(m.runDir)+".ram")
}

func (m *Machine) connectQMP(ctx context.Context) error {
	if err := m.waitSocket(ctx, m.sock("qmp.sock")); err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	return m.dialQMP(ctx, m.sock("qmp.sock"))
}

// dialQMP connects to the QMP socket at path and negotiates capabilities.
func (m *Machine) dialQMP(ctx context.Context, path string) error {
	// QEMU binds the socket before it listens: retry a refused connection.
	var mon *qmp.SocketMonitor
	var err error
	for deadline := time.Now().Add(30 * time.Second); ; {
		mon, err = qmp.NewSocketMonitor("unix", path, 5*time.Second)
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			break
		}
		select {
		case <-m.exited:
			return m.exitError()
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
	if err != nil {
		return fmt.Errorf("QMP: %w", err)
	}
	// QEMU greets one client per QMP socket; a second one waits unheard
	// until the first leaves.
	done := make(chan error, 1)
	go func() { done <- mon.Connect() }()
	select {
	case err = <-done:
	case <-time.After(qmpGreetingTimeout):
		mon.Disconnect()
		<-done
		return fmt.Errorf("QMP socket %s: %w: QEMU did not greet in %v; it serves one client per QMP socket, and another (libvirt, another lucos) holds it", path, ErrQMPBusy, qmpGreetingTimeout)
	}
	if err != nil {
		return fmt.Errorf("QMP handshake: %w", err)
	}
	m.qmp = mon
	return nil
}

// qmpGreetingTimeout bounds the wait for QEMU's QMP greeting.
const qmpGreetingTimeout = 10 * time.Second

func (m *Machine) connectSerial(ctx context.Context) error {
	c, err := m.dial(ctx, "console.sock")
	if err != nil {
		return fmt.Errorf("serial console: %w", err)
	}
	m.console, err = newConsoleTap(c, m.sock("console.log"), m.cfg.Console)
	if err != nil {
		c.Close()
		return err
	}
	if m.cfg.Control {
		c, err := m.dial(ctx, "control.sock")
		if err != nil {
			return fmt.Errorf("control channel: %w", err)
		}
		m.ctl = newControlChannel(c)
	}
	return nil
}

func (m *Machine) connectGDB(ctx context.Context) error {
	if err := m.waitSocket(ctx, m.sock("gdb.sock")); err != nil {
		return fmt.Errorf("gdbstub: %w", err)
	}
	sock := m.sock("gdb.sock")
	g, err := gdbstub.DialFunc(ctx, sock, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		c, err := d.DialContext(ctx, "unix", sock)
		if err == nil && m.cfg.WrapGDB != nil {
			c = m.cfg.WrapGDB(c)
		}
		return c, err
	})
	if err != nil {
		return fmt.Errorf("gdbstub: %w", err)
	}
	m.gdb = g
	if n := len(g.Threads()); n != m.cfg.CPUs {
		return fmt.Errorf("gdbstub reports %d vCPUs, want %d", n, m.cfg.CPUs)
	}
	return nil
}

func (m *Machine) dial(ctx context.Context, name string) (net.Conn, error) {
	if err := m.waitSocket(ctx, m.sock(name)); err != nil {
		return nil, err
	}
	// QEMU binds the socket before it listens: a connection refused in
	// between is retried (for as long as QEMU may take to create one; a
	// loaded host can take seconds).
	var d net.Dialer
	deadline := time.Now().Add(30 * time.Second)
	for {
		c, err := d.DialContext(ctx, "unix", m.sock(name))
		if err == nil || !errors.Is(err, syscall.ECONNREFUSED) || time.Now().After(deadline) {
			return c, err
		}
		select {
		case <-m.exited:
			return nil, m.exitError()
		case <-ctx.Done():
			return nil, ctx.Err()
		case <-time.After(5 * time.Millisecond):
		}
	}
}

// waitSocket waits for QEMU to create a listening socket, failing early if
// QEMU exits (its stderr is in qemu.log).
func (m *Machine) waitSocket(ctx context.Context, path string) error {
	deadline := time.NewTimer(30 * time.Second)
	defer deadline.Stop()
	tick := time.NewTicker(5 * time.Millisecond)
	defer tick.Stop()
	for {
		if _, err := os.Stat(path); err == nil {
			return nil
		}
		select {
		case <-m.exited:
			return m.exitError()
		case <-ctx.Done():
			return ctx.Err()
		case <-deadline.C:
			return fmt.Errorf("QEMU did not create %s within 30 s", path)
		case <-tick.C:
		}
	}
}

func (m *Machine) waitReady(ctx context.Context) error {
	if m.ctl == nil {
		m.ready = time.Since(m.started)
		return nil
	}
	ctx, cancel := context.WithTimeout(ctx, m.cfg.BootTimeout)
	defer cancel()
	ch := make(chan error, 1)
	go func() {
		rel, err := m.ctl.waitReady(ctx)
		if err == nil && rel != m.release {
			err = fmt.Errorf("guest runs kernel %s, but the bzImage says %s", rel, m.release)
		}
		ch <- err
	}()
	select {
	case err := <-ch:
		if errors.Is(err, context.DeadlineExceeded) {
			return fmt.Errorf("guest did not come up within %v (console: %s):\n%s", m.cfg.BootTimeout, m.sock("console.log"), m.console.tail(15))
		}
		if err != nil {
			return err
		}
		m.ready = time.Since(m.started)
		m.cfg.Log.Info("guest ready", "release", m.release, "boot", m.ready.Round(time.Millisecond))
		return nil
	case <-m.exited:
		return fmt.Errorf("guest stopped while booting: %v; console:\n%s", m.exitError(), m.console.report(15, 80))
	}
}

// KernelPath is the bzImage the guest booted.
func (m *Machine) KernelPath() string { return m.cfg.Kernel }

// TCGThreads is TCG's threading, single or multi (meaningless under KVM).
func (m *Machine) TCGThreads() TCGThreads { return m.tcgThreads }

// Release is the guest kernel's release.
func (m *Machine) Release() string { return m.release }

// Accel is the accelerator in use and why it was chosen.
func (m *Machine) Accel() (Accel, string) { return m.accel, m.accelWhy }

// ICount says the guest's clock counts instructions (Config.ICount).
func (m *Machine) ICount() bool { return m.cfg.ICount }

// CPUs is the number of vCPUs.
func (m *Machine) CPUs() int { return m.cfg.CPUs }

// Memory is the guest RAM size in bytes.
func (m *Machine) Memory() uint64 { return m.cfg.Memory }

// RunDir is the directory holding the VM's sockets and logs.
func (m *Machine) RunDir() string { return m.runDir }

// ConsoleLog is the path of the serial console log.
func (m *Machine) ConsoleLog() string {
	if m.attached != nil {
		return "" // the console is the VM owner's
	}
	return m.sock("console.log")
}

// BootTime is the time from launching QEMU to the guest being ready.
func (m *Machine) BootTime() time.Duration { return m.ready }

// PID is QEMU's process id.
func (m *Machine) PID() int {
	if m.attached != nil {
		return m.attached.pid
	}
	if m.proc == nil || m.proc.Process == nil {
		return 0
	}
	return m.proc.Process.Pid
}

// State reports the VM's state.
func (m *Machine) State() State {
	select {
	case <-m.exited:
		return StateExited
	default:
	}
	m.mu.Lock()
	defer m.mu.Unlock()
	switch {
	case m.gdb == nil || m.ready == 0:
		return StateStarting
	case m.paused:
		return StatePaused
	}
	return StateRunning
}

// Exec runs argv in the guest through the control channel and returns its
// output and exit status. Commands run concurrently.
func (m *Machine) Exec(ctx context.Context, argv ...string) (*ExecResult, error) {
	return m.ExecScript(ctx, "exec "+ShellQuote(argv))
}

// ExecScript runs a shell script in the guest.
func (m *Machine) ExecScript(ctx context.Context, script string) (*ExecResult, error) {
	if m.ctl == nil {
		return nil, ErrNoControl
	}
	res, err := m.ctl.run(ctx, script)
	if errors.Is(err, ErrChannelClosed) {
		select {
		case <-m.exited:
			return nil, fmt.Errorf("%w: %w", ErrExited, m.exitError())
		case <-time.After(100 * time.Millisecond):
		}
	}
	return res, err
}

// Done is closed when QEMU has exited.
func (m *Machine) Done() <-chan struct{} { return m.exited }

// Wait waits for QEMU to exit and returns its exit error.
func (m *Machine) Wait() error {
	<-m.exited
	return m.exitErr
}

// ConsoleTail returns the last n lines of the serial console.
func (m *Machine) ConsoleTail(n int) string { return m.console.tail(n) }

// Kill ends QEMU at once with SIGKILL, as a crash would, and waits for it
// to exit; Close still cleans up afterwards.
func (m *Machine) Kill() error {
	if m.proc == nil || m.proc.Process == nil {
		return fmt.Errorf("kill: QEMU is not running")
	}
	if err := m.proc.Process.Kill(); err != nil {
		return fmt.Errorf("kill QEMU: %w", err)
	}
	<-m.exited
	return nil
}

// GDBReconnects counts the gdbstub connections made again after one
// broke (gdbstub.Client.Reconnects).
func (m *Machine) GDBReconnects() int { return m.gdb.Reconnects() }
