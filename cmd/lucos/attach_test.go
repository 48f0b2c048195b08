package main

import (
	"bufio"
	"encoding/json"
	"fmt"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lucos/lucos/api"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/vmm"
)

// attached is a running `lucos attach`.
type attached struct {
	cmd    *exec.Cmd
	report attachReport
	stderr *strings.Builder
	done   chan error
}

// startAttach runs lucos attach --json on qmp and returns once it
// serves the API (its JSON report is printed then).
func startAttach(t *testing.T, qmp, sock string) *attached {
	t.Helper()
	a := &attached{cmd: exec.Command(lucosBin, "attach", "--qmp", qmp, "--api-sock", sock, "--json"), stderr: &strings.Builder{}, done: make(chan error, 1)}
	a.cmd.Stderr = a.stderr
	out, err := a.cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	if err := a.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	decoded := make(chan error, 1)
	go func() { decoded <- json.NewDecoder(bufio.NewReader(out)).Decode(&a.report) }()
	select {
	case err = <-decoded:
	case <-time.After(5 * time.Minute):
		err = fmt.Errorf("no report in 5 minutes")
	}
	go func() { a.done <- a.cmd.Wait() }()
	t.Cleanup(func() { a.cmd.Process.Kill(); <-a.done })
	if err != nil {
		a.cmd.Process.Kill()
		t.Fatalf("lucos attach: %v; stderr:\n%s", err, a.stderr)
	}
	return a
}

// stop sends sig and waits for lucos attach to exit.
func (a *attached) stop(t *testing.T, sig syscall.Signal) error {
	t.Helper()
	a.cmd.Process.Signal(sig)
	select {
	case err := <-a.done:
		a.done <- err // for the cleanup
		return err
	case <-time.After(time.Minute):
		t.Fatalf("lucos attach did not exit on %v; stderr:\n%s", sig, a.stderr)
	}
	return nil
}

// TestAttachPlainQEMU attaches to a guest that a plain QEMU command line
// booted (no lucos sockets, gdbstub, shared RAM or memmap=): lucos finds
// the kernel from its banner, serves status/ps/sym/patch list, refuses to
// patch a guest with no patch region and refuses a second lucos; the
// guest runs on after a clean detach and after lucos is killed, and
// attaching again works both times.
func TestAttachPlainQEMU(t *testing.T) {
	vm := testvm.BootPlain(t, testvm.Options(t), "console=ttyS0 panic=-1")
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	a := startAttach(t, vm.QMP, sock)
	r := a.report
	if r.Release != vm.Release || r.QEMUPID != vm.PID || r.RAM != fmt.Sprintf("/proc/%d/mem", vm.PID) || r.APISock != sock {
		t.Errorf("report %+v; want release %s, pid %d", r, vm.Release, vm.PID)
	}
	if !strings.Contains(r.Patching, "memmap=16M$0x10000000") || !strings.Contains(r.Patching, vm.Cmdline) {
		t.Errorf("patching: %q; want the missing memmap= and the guest's command line", r.Patching)
	}

	st := lucos(t, nil, "status", "--api-sock", sock, "--json")
	var info api.VMInfo
	if err := json.Unmarshal([]byte(st.stdout), &info); err != nil || !info.Attached || info.State != "running" || info.CPUs != 2 || info.Release != vm.Release {
		t.Errorf("status: %v %+v", err, info)
	}
	ps := lucos(t, nil, "ps", "--api-sock", sock, "--json")
	var tasks api.TasksReply
	init := false
	if err := json.Unmarshal([]byte(ps.stdout), &tasks); err != nil || len(tasks.Tasks) < 20 {
		t.Errorf("ps --json: %v, %d tasks; stderr %s", err, len(tasks.Tasks), ps.stderr)
	}
	for _, task := range tasks.Tasks {
		init = init || task.PID == 1 && task.Comm == "init"
	}
	if !init {
		t.Errorf("ps --json: no init (pid 1) among %d tasks", len(tasks.Tasks))
	}
	if s := lucos(t, nil, "sym", "--api-sock", sock, "cmdline_proc_show"); s.code != 0 || !strings.Contains(s.stdout, " t cmdline_proc_show") {
		t.Errorf("sym: %d %q %q", s.code, s.stdout, s.stderr)
	}

	// No patch region: refused before anything is written.
	ko := filepath.Join(dir, "cmdline-string.ko")
	if b := lucos(t, nil, "patch", "build", "../../examples/patches/cmdline-string", "-o", ko); b.code != 0 {
		t.Fatalf("patch build: exit %d\n%s", b.code, b.stderr)
	}
	if ap := lucos(t, nil, "patch", "apply", "--api-sock", sock, ko); ap.code == 0 || !strings.Contains(ap.stderr, "no lucos patch region") {
		t.Errorf("apply on a guest without a patch region: exit %d, %q", ap.code, ap.stderr)
	}
	if l := lucos(t, nil, "patch", "list", "--api-sock", sock, "--json"); l.code != 0 || strings.TrimSpace(l.stdout) != "[]" {
		t.Errorf("patch list: %d %q %q", l.code, l.stdout, l.stderr)
	}

	// One lucos per VM: QEMU serves one QMP client.
	if two := lucos(t, nil, "attach", "--qmp", vm.QMP, "--api-sock", filepath.Join(dir, "two.sock")); two.code == 0 || !strings.Contains(two.stderr, "QMP socket busy") {
		t.Errorf("second attach: exit %d, %q", two.code, two.stderr)
	}

	if err := a.stop(t, syscall.SIGINT); err != nil || !strings.Contains(a.stderr.String(), "detached; the VM runs on") {
		t.Fatalf("detach: %v; stderr:\n%s", err, a.stderr)
	}
	if !vm.Running() {
		t.Fatal("QEMU exited after the detach")
	}
	// Attach again, then die as a crash would: the VM runs on, and the
	// next lucos attaches and sees it running.
	b := startAttach(t, vm.QMP, sock)
	b.stop(t, syscall.SIGKILL)
	c := startAttach(t, vm.QMP, sock)
	st = lucos(t, nil, "status", "--api-sock", sock, "--json")
	if err := json.Unmarshal([]byte(st.stdout), &info); err != nil || info.State != "running" || info.QEMUPID != vm.PID {
		t.Errorf("status after a killed lucos: %v %+v %s", err, info, st.stderr)
	}
	if p := lucos(t, nil, "ps", "--api-sock", sock); !strings.Contains(p.stdout, "[kthreadd]") {
		t.Errorf("ps after a killed lucos: %q %q", p.stdout, p.stderr)
	}
	if err := c.stop(t, syscall.SIGTERM); err != nil || !vm.Running() {
		t.Fatalf("detach: %v, QEMU running %v; stderr:\n%s", err, vm.Running(), c.stderr)
	}
}

// TestAttachPatchesAVMWithPatchRegion attaches to a plain QEMU whose
// owner booted the kernel with lucos's patch region: a patch applies and
// commits, and the guest's own /proc/cmdline shows it. lucos is killed
// with SIGKILL: the patch stays, and the next lucos takes it over from the
// record kept in the guest, lists it and rolls it back. A patch committed
// before a clean detach is taken over the same way. The guest runs
// throughout, with no oops or warning in its log.
func TestAttachPatchesAVMWithPatchRegion(t *testing.T) {
	vm := testvm.BootPlain(t, testvm.Options(t), vmm.KernelCmdline(""))
	before := string(vm.Exec(t, "cat /proc/cmdline").Stdout)
	patched := strings.TrimSuffix(before, "\n") + " lucos-patched\n"
	cmdline := func(want, when string) {
		t.Helper()
		if got := string(vm.Exec(t, "cat /proc/cmdline").Stdout); got != want {
			t.Fatalf("/proc/cmdline %s: %q, want %q", when, got, want)
		}
	}
	dir := t.TempDir()
	sock := filepath.Join(dir, "api.sock")
	ko := filepath.Join(dir, "cmdline-string.ko")
	if b := lucos(t, nil, "patch", "build", "../../examples/patches/cmdline-string", "-o", ko); b.code != 0 {
		t.Fatalf("patch build: exit %d\n%s", b.code, b.stderr)
	}
	apply := func() string {
		t.Helper()
		r := lucos(t, nil, "patch", "apply", "--api-sock", sock, ko, "--wait", "--json")
		var in struct{ ID, State string }
		if err := json.Unmarshal([]byte(r.stdout), &in); err != nil || in.State != "committed" {
			t.Fatalf("patch apply: %v %q %s", err, r.stdout, r.stderr)
		}
		return in.ID
	}
	list := func() []struct{ ID, Name, State string } {
		t.Helper()
		r := lucos(t, nil, "patch", "list", "--api-sock", sock, "--json")
		var l []struct{ ID, Name, State string }
		if err := json.Unmarshal([]byte(r.stdout), &l); err != nil {
			t.Fatalf("patch list: %v %q %s", err, r.stdout, r.stderr)
		}
		return l
	}

	a := startAttach(t, vm.QMP, sock)
	if a.report.Patching != "ok" || a.report.ForeignSlots != 0 {
		t.Fatalf("report %+v", a.report)
	}
	id := apply()
	cmdline(patched, "after apply")
	a.stop(t, syscall.SIGKILL)
	cmdline(patched, "after lucos was killed (the patch stays)")

	b := startAttach(t, vm.QMP, sock)
	if b.report.ForeignSlots != 0 || b.report.TakenOver != 1 {
		t.Errorf("second attach: %d slots not taken over; stderr:\n%s", b.report.ForeignSlots, b.stderr)
	}
	if l := list(); len(l) != 1 || l[0].ID != id || l[0].Name != "cmdline-string" || l[0].State != "transitioning" && l[0].State != "committed" {
		t.Fatalf("patch list after taking over: %+v", l)
	}
	if r := lucos(t, nil, "patch", "rollback", "--api-sock", sock, id, "--wait"); r.code != 0 || !strings.Contains(r.stdout, "rolled-back") {
		t.Fatalf("rollback of the patch taken over: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	cmdline(before, "after the rollback")
	// Its slot is free again: the next apply gets a new id and commits.
	next := apply()
	if next == id {
		t.Errorf("new patch reuses id %s", id)
	}
	cmdline(patched, "after the second apply")
	// lucos detach from another shell, as Ctrl-C would.
	if r := lucos(t, nil, "detach", "--api-sock", sock); r.code != 0 || !strings.Contains(r.stderr, "detached; the VM runs on") {
		t.Fatalf("lucos detach: exit %d %q", r.code, r.stderr)
	}
	if err := <-b.done; err != nil {
		t.Fatalf("lucos attach after lucos detach: %v\n%s", err, b.stderr)
	}
	b.done <- nil // for the cleanup
	cmdline(patched, "after detaching (the committed patch stays)")

	c := startAttach(t, vm.QMP, sock)
	if l := list(); len(l) != 1 || l[0].ID != next {
		t.Fatalf("patch list after a clean detach: %+v", l)
	}
	if r := lucos(t, nil, "patch", "apply", "--api-sock", sock, ko); r.code == 0 {
		t.Errorf("the same patch applied twice: %q", r.stdout)
	}
	if r := lucos(t, nil, "patch", "rollback", "--api-sock", sock, next, "--wait"); r.code != 0 {
		t.Fatalf("rollback: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	cmdline(before, "after the last rollback")
	if res := vm.Exec(t, "dmesg | grep -cE 'Oops|BUG:|WARNING:|general protection' || true"); strings.TrimSpace(string(res.Stdout)) != "0" {
		t.Errorf("guest log: %s oops/warning lines:\n%s", res.Stdout, vm.Exec(t, "dmesg | tail -40").Stdout)
	}
	if err := c.stop(t, syscall.SIGINT); err != nil || !vm.Running() {
		t.Fatalf("detach: %v; running %v", err, vm.Running())
	}
}
