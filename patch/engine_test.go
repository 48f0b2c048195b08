package patch_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/build"
	"github.com/lucos/lucos/vmm"
)

// repoDir is the repository root, found from this file.
func repoDir(t testing.TB) string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Dir(filepath.Dir(file))
}

var (
	builtMu sync.Mutex
	built   = map[string][]byte{}
)

// buildPatch builds a patch directory (relative to the repo) for the
// default guest, once per test run.
func buildPatch(t testing.TB, dir string) []byte {
	t.Helper()
	return buildPatchFor(t, dir, "")
}

// buildPatchFor builds a patch directory for release ("" for the default
// guest's), once per test run.
func buildPatchFor(t testing.TB, dir, release string) []byte {
	t.Helper()
	builtMu.Lock()
	defer builtMu.Unlock()
	key := release + "\x00" + dir
	if ko, ok := built[key]; ok {
		return ko
	}
	out := filepath.Join(t.TempDir(), filepath.Base(dir)+".ko")
	ctx, cancel := context.WithTimeout(context.Background(), 3*time.Minute)
	defer cancel()
	res, err := build.Build(ctx, filepath.Join(repoDir(t), dir), build.Options{Output: out, Release: release})
	if err != nil {
		t.Fatalf("build %s for %s: %v", dir, testvm.KernelName(release), err)
	}
	ko, err := os.ReadFile(res.KO)
	if err != nil {
		t.Fatal(err)
	}
	built[key] = ko
	return ko
}

// build builds a patch directory for the rig's kernel.
func (r *rig) build(t testing.TB, dir string) []byte {
	t.Helper()
	return buildPatchFor(t, dir, r.release)
}

// forKernels runs test on a fresh rig of each of testvm.Kernels, as
// subtests named by series ("6.1", "6.12").
func forKernels(t *testing.T, newRig func(t *testing.T, release string) *rig, test func(t *testing.T, r *rig)) {
	testvm.EachKernel(t, func(t *testing.T, rel string) { test(t, newRig(t, rel)) })
}

// testLog sends the engine's log to the test's.
type testLog struct{ t *testing.T }

func (l testLog) Write(b []byte) (int, error) {
	l.t.Log(strings.TrimSpace(string(b)))
	return len(b), nil
}

// rig is a booted guest with an attached kernel and a patch engine.
type rig struct {
	m       *vmm.Machine
	k       *introspect.Kernel
	e       *patch.Engine
	release string // what the guest was asked for: "" (the default guest), a release or a series
}

func newRig(t *testing.T) *rig {
	t.Helper()
	return newRigOf(t, "")
}

// newRigOf boots a guest of release ("" for the default guest).
func newRigOf(t *testing.T, release string) *rig {
	t.Helper()
	return newRigWith(t, testvm.OptionsOf(t, release))
}

// newRigWith boots the guest with launch options o.
func newRigWith(t *testing.T, o launch.Options) *rig {
	t.Helper()
	img := testvm.ImageOf(t, o.Image.Release)
	ki, err := kimage.Load(context.Background(), img.Kernel, img.Dir)
	if err != nil {
		t.Fatal(err)
	}
	m := testvm.Boot(t, o)
	k, err := introspect.Attach(context.Background(), m, ki)
	if err != nil {
		t.Fatal(err)
	}
	e, err := patch.New(m, k, slog.New(slog.NewTextHandler(testLog{t}, nil)))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return &rig{m: m, k: k, e: e, release: o.Image.Release}
}

func (r *rig) sh(t *testing.T, script string) string {
	t.Helper()
	res, err := r.m.ExecScript(context.Background(), script)
	if err != nil {
		t.Fatalf("guest: %s: %v\nconsole:\n%s", script, err, r.m.ConsoleTail(30))
	}
	return string(res.Stdout)
}

// reader starts `cat` reading an empty pipe in the guest and returns its
// pid once it is blocked in read(2) (syscall 0, state S). (Not
// /proc/PID/wchan: the kernel's ORC unwinder has no tables for patch code,
// so it cannot name a frame above one in a patch.)
func (r *rig) reader(t *testing.T) string {
	t.Helper()
	return strings.TrimSpace(r.sh(t, `sleep 100000 | cat >/dev/null 2>&1 & p=$!
until grep -q '^0 ' /proc/$p/syscall 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$p/stat)" = S ]; do sleep 0.05; done; echo $p`))
}

func (r *rig) apply(t *testing.T, ko []byte) *patch.Patch {
	t.Helper()
	p, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: time.Minute})
	if err != nil {
		t.Fatalf("apply: %v", err)
	}
	return p
}

func (r *rig) rollback(t *testing.T, p *patch.Patch) {
	t.Helper()
	if _, err := r.e.Rollback(context.Background(), p.ID(), patch.Options{Wait: true, Timeout: time.Minute}); err != nil {
		t.Fatalf("rollback: %v", err)
	}
	if in := p.Info(); in.State != patch.StateRolledBack {
		t.Fatalf("after rollback the patch is %s, held by %+v, after %d checks (last error: %s)", in.State, in.HeldBy, in.Checks, in.CheckError)
	}
}

// fingerprint hashes everything lucos may write: kernel text, the
// kernel-image window's page directory and the whole patch region.
func (r *rig) fingerprint(t *testing.T) [32]byte {
	t.Helper()
	h := sha256.New()
	var start, end uint64
	var err error
	if _, start, err = r.k.Symbol("_text", 0); err == nil {
		_, end, err = r.k.Symbol("_etext", 0)
	}
	if err != nil {
		t.Fatal(err)
	}
	var fp [32]byte
	_, err = r.m.WithPaused(context.Background(), func(_ *gdbstub.Client) error {
		buf := make([]byte, end-start)
		if err := r.k.ReadVirt(start, buf); err != nil {
			return err
		}
		h.Write(buf)
		steps, err := r.k.Walker.Walk(start, nil)
		if err != nil {
			return err
		}
		table := make([]byte, 4096)
		if err := r.m.ReadPhys(steps[2].Addr&^0xfff, table); err != nil {
			return err
		}
		h.Write(table)
		region := make([]byte, layout.PatchRegionSize)
		if err := r.m.ReadPhys(layout.PatchRegionBase, region); err != nil {
			return err
		}
		h.Write(region)
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	copy(fp[:], h.Sum(nil))
	return fp
}

// noKernelComplaints fails the test if the guest logged an Oops, BUG or WARNING.
func noKernelComplaints(t *testing.T, m *vmm.Machine) {
	t.Helper()
	log, err := os.ReadFile(m.ConsoleLog())
	if err != nil {
		t.Fatal(err)
	}
	for _, bad := range []string{"Oops", "BUG:", "WARNING:", "general protection", "Kernel panic"} {
		if i := bytes.Index(log, []byte(bad)); i >= 0 {
			t.Fatalf("guest kernel logged %q:\n%s", bad, log[max(0, i-200):min(len(log), i+2000)])
		}
	}
}

// TestTerminationWaitsForBlockedTask: without kicks, a task blocked
// inside pipe_read keeps the update transitioning, and the API says who;
// once it exits the update commits. Rolling back waits for tasks blocked
// in patch code.
func TestTerminationWaitsForBlockedTask(t *testing.T) {
	r := newRig(t)
	ko := buildPatch(t, "patch/testdata/hold-pipe-read")
	pid := r.reader(t)

	p, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: 2 * time.Second})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Info()
	if in.State != patch.StateTransitioning {
		t.Fatalf("with cat %s blocked inside pipe_read the patch is %s", pid, in.State)
	}
	held := false
	for _, h := range in.HeldBy {
		held = held || fmt.Sprint(h.PID) == pid
	}
	if !held {
		t.Errorf("held_by %+v does not name the blocked pid %s", in.HeldBy, pid)
	}
	if out := r.sh(t, "echo through-a-pipe | cat"); out != "through-a-pipe\n" {
		t.Errorf("a pipe through the patch: %q", out)
	}
	r.sh(t, "kill "+pid)
	if err := r.e.Wait(context.Background(), p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := p.State(); st != patch.StateCommitted {
		t.Fatalf("after the reader exited the patch is %s (held by %+v)", st, p.Info().HeldBy)
	}
	t.Logf("committed after %.1f ms and %d stack checks", p.Info().CommitMS, p.Info().Checks)

	// A reader blocked now waits inside patch code: rollback waits for it.
	pid = r.reader(t)
	if _, err := r.e.Rollback(context.Background(), p.ID(), patch.Options{Wait: true, Timeout: 2 * time.Second}); err != nil {
		t.Fatal(err)
	}
	if st := p.State(); st != patch.StateReverting {
		t.Fatalf("with a reader blocked in patch code the rollback is %s", st)
	}
	r.sh(t, "kill "+pid)
	if err := r.e.Wait(context.Background(), p, time.Minute); err != nil {
		t.Fatal(err)
	}
	if st := p.State(); st != patch.StateRolledBack {
		t.Fatalf("rollback did not finish: %s", st)
	}
	noKernelComplaints(t, r.m)
}

// TestKickReleasesBlockedTask: a sleep asleep inside the old
// hrtimer_nanosleep holds the update until the grace period ends; then it
// is kicked, its sleep restarts through hrtimer_nanosleep_restart (outside
// the old function), the update commits, and the sleep goes on unaware.
// The same for a rollback, with the sleep asleep in patch code.
func TestKickReleasesBlockedTask(t *testing.T) {
	r := newRig(t)
	ko := buildPatch(t, "patch/testdata/hold-nanosleep")
	sleeper := func() string {
		return strings.TrimSpace(r.sh(t, `sleep 100000 >/dev/null 2>&1 & p=$!
until grep -q '^230 ' /proc/$p/syscall 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$p/stat)" = S ]; do usleep 1000; done; echo $p`))
	}
	// The same process, asleep again, in restart_syscall(2) (219): the
	// kernel restarted its sleep (hrtimer_nanosleep_restart, which
	// /proc/PID/stack leaves out with the scheduler's functions).
	check := func(pid, when string) {
		t.Helper()
		out := r.sh(t, `until [ "$(cut -d' ' -f3 /proc/`+pid+`/stat)" = S ]; do usleep 1000; done; cut -d' ' -f1 /proc/`+pid+`/syscall`)
		if out != "219\n" {
			t.Errorf("%s: the kicked sleep %s is in system call %q, not restart_syscall", when, pid, out)
		}
	}
	opts := patch.Options{Wait: true, Timeout: 30 * time.Second, KickAfter: 50 * time.Millisecond}

	pid := sleeper()
	p, err := r.e.Apply(context.Background(), ko, opts)
	if err != nil {
		t.Fatal(err)
	}
	in := p.Info()
	if in.State != patch.StateCommitted || in.Kicks < 1 {
		t.Fatalf("with sleep %s in hrtimer_nanosleep and kicks after 50 ms: %s after %d kicks, held by %+v", pid, in.State, in.Kicks, in.HeldBy)
	}
	t.Logf("committed after %.1f ms, %d kick(s), %d stack checks", in.CommitMS, in.Kicks, in.Checks)
	check(pid, "after apply")

	pid = sleeper() // asleep in new_hrtimer_nanosleep, in patch code
	if _, err := r.e.Rollback(context.Background(), p.ID(), opts); err != nil {
		t.Fatal(err)
	}
	if in := p.Info(); in.State != patch.StateRolledBack || in.Kicks < 2 {
		t.Fatalf("rollback with sleep %s in patch code: %s after %d kicks, held by %+v", pid, in.State, in.Kicks, in.HeldBy)
	}
	check(pid, "after rollback")
	r.sh(t, "pkill sleep; true")
	noKernelComplaints(t, r.m)
}

// TestPatchStacking: a second patch replaces a function that a committed
// one already replaces, chaining over it; the lower one cannot be rolled
// back first; rolling back the upper one brings the lower one's version
// back, then the original. /proc/cmdline says which version runs.
func TestPatchStacking(t *testing.T) {
	r := newRig(t)
	lower := buildPatch(t, "examples/patches/cmdline-string") // " lucos-patched"
	upper := buildPatch(t, "examples/patches/static-call")    // " lucos-inodes=N"
	orig := r.sh(t, "cat /proc/cmdline")
	cmdline := func() string { return r.sh(t, "cat /proc/cmdline") }

	a := r.apply(t, lower)
	if got := cmdline(); got != strings.TrimSuffix(orig, "\n")+" lucos-patched\n" {
		t.Fatalf("with the lower patch: %q", got)
	}
	b := r.apply(t, upper)
	in := b.Info()
	if in.State != patch.StateCommitted || len(in.Funcs) != 1 || in.Funcs[0].Below != a.ID() {
		t.Fatalf("upper patch: %s, funcs %+v", in.State, in.Funcs)
	}
	if got := cmdline(); !strings.Contains(got, " lucos-inodes=") || strings.Contains(got, "lucos-patched") {
		t.Fatalf("with both patches: %q", got)
	}
	if _, err := r.e.Rollback(context.Background(), a.ID(), patch.Options{Wait: true}); !errors.Is(err, patch.ErrStackOrder) {
		t.Fatalf("rolling back the lower patch first: %v", err)
	}
	r.rollback(t, b)
	if got := cmdline(); got != strings.TrimSuffix(orig, "\n")+" lucos-patched\n" {
		t.Fatalf("after rolling back the upper patch: %q", got)
	}
	// The function is the lower patch's again: a third patch chains over it.
	c := r.apply(t, upper)
	r.rollback(t, c)
	r.rollback(t, a)
	if got := cmdline(); got != orig {
		t.Fatalf("after rolling back both: %q, want %q", got, orig)
	}
	noKernelComplaints(t, r.m)
}

// TestAtomicReplace: a cumulative patch takes over two live ones in one
// pause: the function it replaces runs its version, the one it does not
// is the original again, and both earlier patches are released; rolling
// it back restores the original kernel.
func TestAtomicReplace(t *testing.T) {
	r := newRig(t)
	cmdA := buildPatch(t, "examples/patches/cmdline-string") // cmdline_proc_show
	memX := buildPatch(t, "examples/patches/meminfo-string") // meminfo_proc_show
	cmdC := buildPatch(t, "examples/patches/static-call")    // cmdline_proc_show
	cmdline := func() string { return r.sh(t, "cat /proc/cmdline") }
	memPatched := func() bool { return strings.Contains(r.sh(t, "cat /proc/meminfo"), "LucosPatched:") }
	origCmd := cmdline()

	a := r.apply(t, cmdA)
	x := r.apply(t, memX)
	if !memPatched() || !strings.Contains(cmdline(), "lucos-patched") {
		t.Fatal("the two patches did not take effect")
	}
	c, err := r.e.Apply(context.Background(), cmdC, patch.Options{Wait: true, Timeout: time.Minute, Replace: true})
	if err != nil {
		t.Fatal(err)
	}
	if in := c.Info(); in.State != patch.StateCommitted || in.Funcs[0].Below != a.ID() {
		t.Fatalf("cumulative patch: %s, funcs %+v", in.State, in.Funcs)
	}
	if got := cmdline(); !strings.Contains(got, " lucos-inodes=") || strings.Contains(got, "lucos-patched") {
		t.Errorf("after the replace /proc/cmdline is %q", got)
	}
	if memPatched() {
		t.Error("after the replace /proc/meminfo still has the replaced patch's line")
	}
	for _, q := range []*patch.Patch{a, x} {
		if err := r.e.Wait(context.Background(), q, time.Minute); err != nil {
			t.Fatal(err)
		}
		if in := q.Info(); in.State != patch.StateRolledBack {
			t.Errorf("replaced patch %s is %s", q.ID(), in.State)
		}
	}
	r.rollback(t, c)
	if got := cmdline(); got != origCmd {
		t.Errorf("after rolling the cumulative patch back /proc/cmdline is %q, want %q", got, origCmd)
	}
	if memPatched() {
		t.Error("after rolling the cumulative patch back /proc/meminfo has the patch's line")
	}
	noKernelComplaints(t, r.m)
}
