package vmm

import (
	"bytes"
	"encoding/json"
	"fmt"
	"os"
	"os/exec"
	"strings"
	"syscall"
	"time"

	"github.com/lucos/lucos/internal/layout"
)

// KernelCmdline is the command line lucos gives the guest kernel: console on
// the first serial port, reboot (and so exit, with -no-reboot) on panic, the
// patch region hidden from the guest. KASLR stays on.
func KernelCmdline(extra string) string {
	args := []string{"console=ttyS0", "panic=-1", layout.ReserveArg()}
	if extra != "" {
		args = append(args, extra)
	}
	return strings.Join(args, " ")
}

// PlainArgs is a QEMU command line for cfg as a user would write it, with
// none of lucos's sockets, shared RAM or gdbstub: q35 under TCG with
// cfg.TCGThreads (resolved), cfg's kernel and initramfs booted with
// cmdline, its disks, the console to the file consoleLog and the second
// serial port (the default initramfs's control channel) to the unix socket
// ctl, which the caller listens on. The boot benchmark and the attach tests
// run it.
func PlainArgs(cfg Config, cmdline, consoleLog, ctl string) []string {
	args := []string{
		"-machine", "q35", "-accel", "tcg,thread=" + string(cfg.TCGThreads), "-m", fmt.Sprintf("%dM", cfg.Memory>>20), "-smp", fmt.Sprint(cfg.CPUs),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", cfg.Kernel, "-initrd", cfg.Initrd, "-append", cmdline,
		"-serial", "file:" + consoleLog,
		"-serial", "unix:" + ctl,
	}
	for i, d := range cfg.Disks {
		args = append(args, d.QEMUArgs(i)...)
	}
	return args
}

// accelArg is QEMU's -accel, with TCG's threading (m.tcgThreads) chosen
// at Start.
func (m *Machine) accelArg() string {
	if m.accel == AccelTCG {
		return "tcg,thread=" + string(m.tcgThreads)
	}
	return string(m.accel)
}

// qemuArgs builds the QEMU command line. q35 boots the stock kernel a little
// faster than pc here (docs/BENCHMARKS.md) and needs no extra devices
// (disks are NVMe controllers on its PCIe root).
// -S creates the VM stopped, so no console output is lost before lucos
// connects and the gdbstub sees the guest from its first instruction.
func (m *Machine) qemuArgs() []string {
	mem := fmt.Sprintf("%dM", m.cfg.Memory>>20)
	args := []string{
		"-name", "lucos," + "debug-threads=on",
		"-machine", "q35,memory-backend=ram0",
		"-accel", m.accelArg(),
		"-m", mem,
		"-smp", fmt.Sprint(m.cfg.CPUs),
		"-object", fmt.Sprintf("memory-backend-file,id=ram0,size=%s,mem-path=%s,share=on", mem, m.ramPath()),
		"-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
		"-kernel", m.cfg.Kernel,
		"-append", KernelCmdline(m.cfg.Append),
		"-chardev", "socket,id=con0,path=" + m.sock("console.sock") + ",server=on,wait=off",
		"-serial", "chardev:con0",
		"-chardev", "socket,id=ctl0,path=" + m.sock("control.sock") + ",server=on,wait=off",
		"-serial", "chardev:ctl0",
		"-chardev", "socket,id=gdb0,path=" + m.sock("gdb.sock") + ",server=on,wait=off",
		"-gdb", "chardev:gdb0",
		"-qmp", "unix:" + m.sock("qmp.sock") + ",server=on,wait=off",
		"-S",
	}
	if m.accel == AccelKVM {
		args = append(args, "-cpu", "host")
	}
	if m.cfg.ICount {
		args = append(args, "-icount", "shift=0,sleep=off")
	}
	if m.cfg.Initrd != "" {
		args = append(args, "-initrd", m.cfg.Initrd)
	}
	for i, d := range m.cfg.Disks {
		args = append(args, d.QEMUArgs(i)...)
	}
	return args
}

// launch starts QEMU. It dies with lucos: the parent-death signal kills it
// even when lucos is killed with SIGKILL, and it runs in its own process
// group so a terminal's Ctrl-C reaches lucos, which then shuts it down.
func (m *Machine) launch() error {
	stderr, err := os.Create(m.sock("qemu.log"))
	if err != nil {
		return fmt.Errorf("create qemu.log: %w", err)
	}
	m.proc = exec.Command(m.cfg.QEMU, m.qemuArgs()...)
	m.proc.Stdout, m.proc.Stderr = stderr, stderr
	m.proc.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL, Setpgid: true}
	m.cfg.Log.Debug("launch", "qemu", m.cfg.QEMU, "args", m.proc.Args)
	m.started = time.Now()
	if err := m.proc.Start(); err != nil {
		stderr.Close()
		close(m.exited)
		m.exitErr = err
		return fmt.Errorf("start %s: %w", m.cfg.QEMU, err)
	}
	go func() {
		m.exitErr = m.proc.Wait()
		stderr.Close()
		close(m.exited)
	}()
	return nil
}

// exitError describes why QEMU exited, with the end of its stderr.
// Precondition: m.exited is closed.
func (m *Machine) exitError() error {
	log, _ := os.ReadFile(m.sock("qemu.log"))
	log = bytes.TrimSpace(log)
	// QEMU's last words start at its "qemu: fatal:" or assertion line,
	// before a register dump longer than the tail kept.
	if i := max(bytes.LastIndex(log, []byte("fatal:")), bytes.LastIndex(log, []byte("Assertion"))); i >= 0 && len(log)-i <= 4000 {
		if j := bytes.LastIndexByte(log[:i], '\n'); j >= 0 {
			i = j + 1
		} else {
			i = 0
		}
		log = log[i:]
	} else if len(log) > 2000 {
		log = log[len(log)-2000:]
	}
	if len(log) == 0 {
		return fmt.Errorf("QEMU exited: %v", m.exitErr)
	}
	return fmt.Errorf("QEMU exited: %v: %s", m.exitErr, log)
}

// qmpRun runs one QMP command and decodes its "return" into out (if non-nil).
func (m *Machine) qmpRun(cmd string, args any, out any) error {
	req := map[string]any{"execute": cmd}
	if args != nil {
		req["arguments"] = args
	}
	b, _ := json.Marshal(req)
	raw, err := m.qmp.Run(b)
	if err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	if out == nil {
		return nil
	}
	if err := decodeQMPReturn(raw, out); err != nil {
		return fmt.Errorf("QMP %s: %w", cmd, err)
	}
	return nil
}

// decodeQMPReturn decodes the "return" member of a QMP reply into out; a
// reply without one (an "error" reply comes back from the library as an
// error, so this would be QEMU saying something else) is an error.
func decodeQMPReturn(raw []byte, out any) error {
	// A map, not a struct: encoding/json matches struct fields without
	// regard to case, and QMP's member names are exact ("reTurn" is not a
	// return; found by FuzzDecodeQMPReturn).
	var resp map[string]json.RawMessage
	if err := json.Unmarshal(raw, &resp); err != nil {
		return err
	}
	ret, ok := resp["return"]
	if !ok || ret == nil {
		return fmt.Errorf("reply has no return value: %.200q", raw)
	}
	return json.Unmarshal(ret, out)
}

// HumanMonitor runs an HMP command (such as "gva2gpa 0xffffffff81000000")
// through QMP and returns its output.
func (m *Machine) HumanMonitor(cmd string) (string, error) {
	var out string
	err := m.qmpRun("human-monitor-command", map[string]string{"command-line": cmd}, &out)
	return out, err
}

// Close shuts the VM down: QMP quit, then SIGKILL if QEMU has not exited
// within 5 s, then the run directory is removed (if lucos made it). An
// attached VM (Attach) is not shut down but detached from: lucos's
// gdbstub goes and the guest runs on. It is safe to call more than once
// and on a half-started Machine.
func (m *Machine) Close() error {
	m.closeOnce.Do(func() {
		if m.trapStop != nil {
			m.trapStop()
		}
		if m.attached != nil {
			m.detach()
		}
		if m.proc != nil && m.proc.Process != nil {
			select {
			case <-m.exited:
			default:
				if m.qmp != nil {
					go m.qmpRun("quit", nil, nil)
				} else {
					m.proc.Process.Kill()
				}
				select {
				case <-m.exited:
				case <-time.After(5 * time.Second):
					m.proc.Process.Kill()
					<-m.exited
				}
			}
		}
		if m.gdb != nil {
			m.gdb.Close()
		}
		if m.qmp != nil {
			m.qmp.Disconnect()
		}
		if m.ctl != nil {
			m.ctl.close()
		}
		if m.console != nil {
			m.console.close()
		}
		m.ram.unmap()
		if m.attached == nil {
			os.Remove(m.ramPath())
		}
		if m.ownsDir {
			os.RemoveAll(m.runDir)
		}
	})
	return nil
}
