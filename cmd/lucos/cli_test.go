package main

// These tests run the real lucos binary, as a user would, against real QEMU
// guests, and check exit statuses, messages and that no QEMU is left behind.

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/lucos/lucos/api"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/vmm"
)

var lucosBin string

func TestMain(m *testing.M) {
	dir, err := os.MkdirTemp("", "lucos-cli-test-")
	if err != nil {
		panic(err)
	}
	lucosBin = filepath.Join(dir, "lucos")
	if out, err := exec.Command("go", "build", "-o", lucosBin, ".").CombinedOutput(); err != nil {
		fmt.Fprintf(os.Stderr, "build lucos: %v\n%s", err, out)
		os.Exit(1)
	}
	code := m.Run()
	os.RemoveAll(dir)
	os.Exit(code)
}

type result struct {
	stdout, stderr string
	code           int
}

// lucos runs the binary to completion with a deadline.
func lucos(t *testing.T, env []string, args ...string) result {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, lucosBin, args...)
	cmd.Env = append(os.Environ(), env...)
	var out, errb bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &errb
	err := cmd.Run()
	r := result{stdout: out.String(), stderr: errb.String()}
	var ee *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &ee):
		r.code = ee.ExitCode()
	default:
		t.Fatalf("lucos %v: %v", args, err)
	}
	if ctx.Err() != nil {
		t.Fatalf("lucos %v hung (killed after 5 min); stderr:\n%s", args, r.stderr)
	}
	return r
}

func TestRunCommandCPUs(t *testing.T) {
	testvm.Options(t)
	r := lucos(t, nil, "run", "--cpus", "2", "--", "grep", "-c", "^processor", "/proc/cpuinfo")
	if r.code != 0 || r.stdout != "2\n" {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

func TestRunWithBugsModule(t *testing.T) {
	testvm.Options(t)
	r := lucos(t, nil, "run", "--bugs", "--", "cat", "/proc/lucos_bugs/stats")
	if r.code != 0 || r.stdout != "count=0 total_ms=0\n" {
		t.Fatalf("exit %d, stdout %q, stderr:\n%s", r.code, r.stdout, r.stderr)
	}
}

func TestRunCommandExitStatus(t *testing.T) {
	testvm.Options(t)
	r := lucos(t, nil, "run", "--", "sh", "-c", "echo to-stderr >&2; exit 3")
	if r.code != 3 || !strings.Contains(r.stderr, "to-stderr") {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
}

// TestBadInput: each mistake gets a clear message, exit status 1, no hang.
func TestBadInput(t *testing.T) {
	testvm.Options(t)
	empty := t.TempDir()
	aptConf := filepath.Join(t.TempDir(), "apt.conf")
	os.WriteFile(aptConf, []byte("Acquire::http::Proxy \"http://127.0.0.1:9\";\nAcquire::Retries \"0\";\n"), 0o644)
	cases := []struct {
		name string
		env  []string
		args []string
		want string
	}{
		{"qemu missing", []string{"PATH=" + empty}, []string{"run", "--", "true"}, "qemu-system-x86_64 not found"},
		{"not a bzImage", nil, []string{"run", "--kernel", "/bin/true", "--", "true"}, "not a bzImage"},
		{"no kernel file", nil, []string{"run", "--kernel", "/nonexistent/vmlinuz", "--", "true"}, "no such file"},
		{"memory too small", nil, []string{"run", "--memory", "256M", "--", "true"}, "below the minimum"},
		{"bad accel", nil, []string{"run", "--accel", "xen", "--", "true"}, "unknown accelerator"},
		{"no apt access", []string{"LUCOS_CACHE=" + t.TempDir(), "APT_CONFIG=" + aptConf}, []string{"guest", "fetch"}, "cannot reach the Debian archive"},
		{"exec without a VM", nil, []string{"exec", "--api-sock", filepath.Join(empty, "none.sock"), "--", "true"}, "no lucos VM on this API socket"},
	}
	if vmm.ProbeKVM() != nil {
		cases = append(cases, struct {
			name string
			env  []string
			args []string
			want string
		}{"kvm here", nil, []string{"run", "--accel", "kvm", "--", "true"}, "KVM cannot run a stock guest kernel on this host"})
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			tmp := t.TempDir()
			r := lucos(t, append(c.env, "TMPDIR="+tmp), c.args...)
			if r.code != 1 || !strings.Contains(r.stderr, c.want) {
				t.Errorf("exit %d, stderr:\n%s\nwant exit 1 and %q", r.code, r.stderr, c.want)
			}
			if left := qemuUnder(tmp); len(left) > 0 {
				t.Errorf("QEMU processes left behind: %v", left)
			}
		})
	}
}

// vmProcess is an interactive `lucos run` started in the background.
type vmProcess struct {
	cmd   *exec.Cmd
	stdin io.WriteCloser
	out   *syncBuffer
	sock  string
	info  *api.VMInfo
}

func startVM(t *testing.T, extra ...string) *vmProcess {
	t.Helper()
	testvm.Options(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	v := &vmProcess{sock: sock, out: &syncBuffer{}}
	v.cmd = exec.Command(lucosBin, append([]string{"run", "--api-sock", sock}, extra...)...)
	v.cmd.Stdout, v.cmd.Stderr = v.out, v.out
	var err error
	if v.stdin, err = v.cmd.StdinPipe(); err != nil {
		t.Fatal(err)
	}
	if err := v.cmd.Start(); err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { v.cmd.Process.Kill(); v.cmd.Wait() })
	deadline := time.Now().Add(3 * time.Minute)
	for time.Now().Before(deadline) {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Second)
		info, err := api.NewClient(sock).VM(ctx)
		cancel()
		if err == nil && info.State == vmm.StateRunning {
			v.info = info
			return v
		}
		time.Sleep(100 * time.Millisecond)
	}
	t.Fatalf("lucos run never served %s; output:\n%s", sock, v.out.String())
	return nil
}

// waitExit waits for the lucos process and returns its exit code.
func (v *vmProcess) waitExit(t *testing.T) int {
	t.Helper()
	done := make(chan error, 1)
	go func() { done <- v.cmd.Wait() }()
	select {
	case err := <-done:
		var ee *exec.ExitError
		if errors.As(err, &ee) {
			return ee.ExitCode()
		}
		return 0
	case <-time.After(30 * time.Second):
		t.Fatalf("lucos did not exit; output:\n%s", v.out.String())
		return -1
	}
}

func TestInteractiveRunExecStatusAndSecondRun(t *testing.T) {
	v := startVM(t)
	if v.info.CPUs != 2 || v.info.Accel != vmm.AccelTCG || v.info.Release == "" || v.info.QEMUPID == 0 {
		t.Errorf("GET /vm: %+v", v.info)
	}
	// lucos exec against it.
	r := lucos(t, nil, "exec", "--api-sock", v.sock, "--", "sh", "-c", "uname -r; exit 5")
	if r.code != 5 || strings.TrimSpace(r.stdout) != v.info.Release {
		t.Errorf("lucos exec: exit %d stdout %q stderr %q", r.code, r.stdout, r.stderr)
	}
	r = lucos(t, nil, "exec", "--api-sock", v.sock, "--json", "--", "echo", "hi")
	var js struct {
		Stdout string `json:"stdout"`
		Status int    `json:"status"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &js); err != nil || js.Stdout != "hi\n" || js.Status != 0 {
		t.Errorf("lucos exec --json: %q (%v)", r.stdout, err)
	}
	r = lucos(t, nil, "status", "--api-sock", v.sock, "--json")
	if r.code != 0 || !strings.Contains(r.stdout, `"state": "running"`) {
		t.Errorf("lucos status --json: %d %q", r.code, r.stdout)
	}
	// lucos ps and sym see the guest from outside; the guest's own
	// /proc/kallsyms is the oracle for the address.
	r = lucos(t, nil, "ps", "--api-sock", v.sock, "--json")
	var ps api.TasksReply
	if err := json.Unmarshal([]byte(r.stdout), &ps); err != nil || len(ps.Tasks) < 20 || ps.Tasks[0].Comm == "" {
		t.Errorf("lucos ps --json: %v, %d tasks; stderr %s", err, len(ps.Tasks), r.stderr)
	}
	r = lucos(t, nil, "ps", "--api-sock", v.sock)
	if !strings.Contains(r.stdout, "[kthreadd]") || !strings.Contains(r.stdout, "init") {
		t.Errorf("lucos ps:\n%s%s", r.stdout, r.stderr)
	}
	oracle := lucos(t, nil, "exec", "--api-sock", v.sock, "--", "grep", " cmdline_proc_show$", "/proc/kallsyms")
	r = lucos(t, nil, "sym", "--api-sock", v.sock, "cmdline_proc_show")
	if f := strings.Fields(oracle.stdout); len(f) < 1 || !strings.HasPrefix(r.stdout, "0x"+f[0]+" t cmdline_proc_show") {
		t.Errorf("lucos sym: %q; guest kallsyms: %q", r.stdout, oracle.stdout)
	}
	if r := lucos(t, nil, "sym", "--api-sock", v.sock, "no_such_symbol_here"); r.code != 1 || !strings.Contains(r.stderr, "not found") {
		t.Errorf("unknown symbol: exit %d %q", r.code, r.stderr)
	}
	// The API socket is private to its owner.
	if st, err := os.Stat(v.sock); err != nil || st.Mode().Perm() != 0o600 {
		t.Errorf("API socket mode: %v %v", st.Mode(), err)
	}
	// A second lucos run on the same socket is refused before it boots.
	tmp := t.TempDir()
	r = lucos(t, []string{"TMPDIR=" + tmp}, "run", "--api-sock", v.sock, "--", "true")
	if r.code != 1 || !strings.Contains(r.stderr, "in use") {
		t.Errorf("second run: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if left := qemuUnder(tmp); len(left) > 0 {
		t.Errorf("second run left QEMU processes: %v", left)
	}
	// The interactive console: a command typed on stdin runs in the guest's shell.
	fmt.Fprintf(v.stdin, "echo console-$((6*7))\n")
	waitFor(t, func() bool { return strings.Contains(v.out.String(), "console-42") }, "console echo; output:\n%s", v.out)
	// Ctrl-] stops the VM.
	v.stdin.Write([]byte{escapeKey})
	if code := v.waitExit(t); code != 0 {
		t.Errorf("exit %d after Ctrl-]", code)
	}
	waitGone(t, v.info.QEMUPID)
	if _, err := os.Stat(v.sock); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("API socket not removed: %v", err)
	}
}

func TestKilledLucosTakesQEMUWithIt(t *testing.T) {
	v := startVM(t)
	v.cmd.Process.Signal(syscall.SIGKILL)
	v.waitExit(t)
	waitGone(t, v.info.QEMUPID)
	if _, err := os.Stat(v.info.RunDir); err != nil {
		t.Fatalf("the killed lucos's run directory: %v", err)
	}
	// The dead lucos's socket is stale: a new run may take it; and the
	// next lucos removes the run directory it left.
	r := lucos(t, nil, "run", "--api-sock", v.sock, "--", "true")
	if r.code != 0 {
		t.Errorf("run on a stale socket: exit %d, stderr:\n%s", r.code, r.stderr)
	}
	if _, err := os.Stat(v.info.RunDir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("the killed lucos's run directory %s is still there: %v", v.info.RunDir, err)
	}
}

func TestInterruptStopsQEMU(t *testing.T) {
	v := startVM(t)
	v.cmd.Process.Signal(os.Interrupt)
	if code := v.waitExit(t); code != 130 {
		t.Errorf("exit %d after SIGINT, want 130", code)
	}
	waitGone(t, v.info.QEMUPID)
}

func TestInterruptDuringCommand(t *testing.T) {
	testvm.Options(t)
	sock := filepath.Join(t.TempDir(), "api.sock")
	cmd := exec.Command(lucosBin, "run", "--api-sock", sock, "--", "sleep", "600")
	out := &syncBuffer{}
	cmd.Stdout, cmd.Stderr = out, out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer cmd.Process.Kill()
	var pid int
	waitFor(t, func() bool {
		info, err := api.NewClient(sock).VM(context.Background())
		if err == nil {
			pid = info.QEMUPID
		}
		return err == nil
	}, "VM never came up:\n%s", out)
	cmd.Process.Signal(os.Interrupt)
	err := cmd.Wait()
	var ee *exec.ExitError
	if !errors.As(err, &ee) || ee.ExitCode() != 130 {
		t.Errorf("exit %v after SIGINT, want 130; output:\n%s", err, out)
	}
	waitGone(t, pid)
}

func TestGuestPowerOffEndsRun(t *testing.T) {
	v := startVM(t)
	fmt.Fprintf(v.stdin, "poweroff -f\n")
	if code := v.waitExit(t); code != 0 {
		t.Errorf("exit %d after the guest powered off", code)
	}
	waitGone(t, v.info.QEMUPID)
	if !strings.Contains(v.out.String(), "guest powered off") {
		t.Errorf("no power-off message; output:\n%s", v.out.String())
	}
}

func waitFor(t *testing.T, cond func() bool, format string, args ...any) {
	t.Helper()
	deadline := time.Now().Add(2 * time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting: "+format, args...)
		}
		time.Sleep(50 * time.Millisecond)
	}
}

// waitGone fails unless process pid exits within 10 s.
func waitGone(t *testing.T, pid int) {
	t.Helper()
	for i := 0; i < 200; i++ {
		if !alive(pid) {
			return
		}
		time.Sleep(50 * time.Millisecond)
	}
	t.Errorf("QEMU (pid %d) is still running", pid)
}

func alive(pid int) bool {
	b, err := os.ReadFile(fmt.Sprintf("/proc/%d/stat", pid))
	if err != nil {
		return false
	}
	// A zombie has exited; its parent just has not reaped it yet.
	f := strings.Fields(string(b[bytes.LastIndexByte(b, ')')+1:]))
	return len(f) > 0 && f[0] != "Z"
}

// qemuUnder lists live QEMU processes whose command line names dir: the
// ones a lucos run with TMPDIR=dir started (its run directory is there).
// Tests in other packages boot guests at the same time; this ignores them.
func qemuUnder(dir string) []int {
	var pids []int
	ents, _ := os.ReadDir("/proc")
	for _, e := range ents {
		var pid int
		if _, err := fmt.Sscan(e.Name(), &pid); err != nil {
			continue
		}
		cmdline, err := os.ReadFile(fmt.Sprintf("/proc/%d/cmdline", pid))
		if err == nil && bytes.HasPrefix(cmdline, []byte("qemu-system-x86")) && bytes.Contains(cmdline, []byte(dir)) && alive(pid) {
			pids = append(pids, pid)
		}
	}
	return pids
}

// syncBuffer is a bytes.Buffer safe for a writer and a reader at once.
type syncBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *syncBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

func (b *syncBuffer) String() string {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.String()
}

// TestPatchCommands drives a live patch through the CLI: build, apply,
// list, rollback, as the README shows.
func TestPatchCommands(t *testing.T) {
	v := startVM(t)
	ko := filepath.Join(t.TempDir(), "cmdline-string.ko")
	if r := lucos(t, nil, "patch", "build", "../../examples/patches/cmdline-string", "-o", ko); r.code != 0 {
		t.Fatalf("patch build: exit %d\n%s", r.code, r.stderr)
	}
	before := lucos(t, nil, "exec", "--api-sock", v.sock, "--", "cat", "/proc/cmdline").stdout
	r := lucos(t, nil, "patch", "apply", "--api-sock", v.sock, ko, "--wait", "--json")
	var in struct {
		ID      string  `json:"id"`
		State   string  `json:"state"`
		PauseUS float64 `json:"pause_us"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &in); err != nil || in.State != "committed" || in.PauseUS <= 0 {
		t.Fatalf("patch apply: %v %q %s", err, r.stdout, r.stderr)
	}
	after := lucos(t, nil, "exec", "--api-sock", v.sock, "--", "cat", "/proc/cmdline").stdout
	if after != strings.TrimSuffix(before, "\n")+" lucos-patched\n" {
		t.Errorf("/proc/cmdline after apply: %q", after)
	}
	if r := lucos(t, nil, "patch", "list", "--api-sock", v.sock); !strings.Contains(r.stdout, "cmdline-string  committed") {
		t.Errorf("patch list:\n%s", r.stdout)
	}
	if r := lucos(t, nil, "patch", "apply", "--api-sock", v.sock, "/bin/true"); r.code != 1 || !strings.Contains(r.stderr, "ELF") && !strings.Contains(r.stderr, "patch") {
		t.Errorf("apply of a program: exit %d %q", r.code, r.stderr)
	}
	if r := lucos(t, nil, "patch", "rollback", "--api-sock", v.sock, in.ID, "--wait"); r.code != 0 || !strings.Contains(r.stdout, "rolled-back") {
		t.Errorf("patch rollback: exit %d %q %q", r.code, r.stdout, r.stderr)
	}
	if again := lucos(t, nil, "exec", "--api-sock", v.sock, "--", "cat", "/proc/cmdline").stdout; again != before {
		t.Errorf("/proc/cmdline after rollback: %q, want %q", again, before)
	}
	if r := lucos(t, nil, "patch", "rollback", "--api-sock", v.sock, "42"); r.code != 1 || !strings.Contains(r.stderr, "no such patch") {
		t.Errorf("rollback of an unknown id: exit %d %q", r.code, r.stderr)
	}
	if r := lucos(t, nil, "detach", "--api-sock", v.sock); r.code != 1 || !strings.Contains(r.stderr, "started by lucos run") {
		t.Errorf("detach from a lucos run VM: exit %d %q", r.code, r.stderr)
	}
}

// TestDemo runs the tour: the deadlock bug reproduces (a reader spins),
// the live fix frees the stuck reader, the bug is gone, and the code patch
// changes /proc/cmdline and is rolled back.
func TestDemo(t *testing.T) { testvm.EachKernel(t, testDemo) }

func testDemo(t *testing.T, release string) {
	testvm.OptionsOf(t, release)
	args := []string{"demo"}
	if release != "" {
		args = append(args, "--release", release)
	}
	r := lucos(t, nil, args...)
	if r.code != 0 {
		t.Fatalf("exit %d\nstdout:\n%s\nstderr:\n%s", r.code, r.stdout, r.stderr)
	}
	want := release
	if want == "" {
		want = guest.DefaultSeries
	}
	if !strings.Contains(r.stdout, "kernel "+want+".") {
		t.Errorf("the tour does not run on %s:\n%s", want, r.stdout)
	}
	for _, want := range []string{
		"is stuck: spinning on the leaked lock (state R)",
		"committed: startup callback ran 1 time(s)",
		"cat /tmp/reader.out\n    ok 1\n",
		"cat /proc/lucos_bugs/deadlock\n    ok 2\n",
		" lucos-patched\n",
		"rolled-back",
	} {
		if !strings.Contains(r.stdout, want) {
			t.Errorf("the tour does not show %q:\n%s", want, r.stdout)
		}
	}
}
