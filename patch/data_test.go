package patch_test

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/patch"
)

// Data updates and callbacks, each example on a fresh guest with the
// lucos_bugs test module (examples/guestmod/lucos_bugs) loaded.

// newBugsRig boots a guest with the lucos_bugs module.
func newBugsRig(t *testing.T) *rig {
	t.Helper()
	return newBugsRigOf(t, "")
}

// newBugsRigOf boots a guest of release ("" for the default) with the
// lucos_bugs module.
func newBugsRigOf(t *testing.T, release string) *rig {
	t.Helper()
	return newRigWith(t, testvm.WithBugs(t, testvm.OptionsOf(t, release)))
}

// waitFor polls cond until it holds or a minute passes.
func waitFor(t *testing.T, what string, cond func() bool) {
	t.Helper()
	deadline := time.Now().Add(time.Minute)
	for !cond() {
		if time.Now().After(deadline) {
			t.Fatalf("timed out waiting for %s", what)
		}
		time.Sleep(20 * time.Millisecond)
	}
}

// holdStats starts `echo 'hold N' > /proc/lucos_bugs/stats` in the
// background and returns its pid once it sleeps inside
// lucos_bugs_stats_hold (in write(2), state S).
func (r *rig) holdStats(t *testing.T, ms int) string {
	t.Helper()
	return strings.TrimSpace(r.sh(t, fmt.Sprintf(`sh -c 'echo "hold %d" > /proc/lucos_bugs/stats' & p=$!
until grep -q '^1 ' /proc/$p/syscall 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$p/stat)" = S ]; do sleep 0.05; done; echo $p`, ms)))
}

// gone waits (in the guest, up to 5 s) for process pid to exit and reports
// whether it did.
func (r *rig) gone(t *testing.T, pid string) bool {
	t.Helper()
	out := r.sh(t, fmt.Sprintf(`i=0; while [ -d /proc/%s ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; [ -d /proc/%[1]s ] && echo alive || echo gone`, pid))
	return strings.TrimSpace(out) == "gone"
}

// TestDeadlockFix: the LUCOS paper's example. The bug leaks a spinlock and
// a reader spins on it; the patch's startup callback releases the lock
// inside the guest, the stuck reader completes, the bug no longer
// reproduces, and rollback brings back the old code.
func TestDeadlockFix(t *testing.T) {
	forKernels(t, newBugsRigOf, testDeadlockFix)
}

func testDeadlockFix(t *testing.T, r *rig) {
	ko := r.build(t, "examples/patches/deadlock-fix")

	if out := r.sh(t, "echo ok > /proc/lucos_bugs/deadlock; cat /proc/lucos_bugs/deadlock"); !strings.HasPrefix(out, "ok ") {
		t.Fatalf("lucos_bugs before the bug: %q", out)
	}
	// The bug: a task that has exited leaves the lock held.
	r.sh(t, `sh -c 'echo trigger > /proc/lucos_bugs/deadlock'`)
	pid := strings.TrimSpace(r.sh(t, `cat /proc/lucos_bugs/deadlock > /tmp/reader.out 2>&1 & echo $!`))
	if r.gone(t, pid) {
		t.Fatalf("the reader finished with the lock leaked: %q", r.sh(t, "cat /tmp/reader.out"))
	}
	if st := strings.TrimSpace(r.sh(t, "cut -d' ' -f3 /proc/"+pid+"/stat")); st != "R" {
		t.Fatalf("the stuck reader is in state %q, want R (spinning)", st)
	}

	p := r.apply(t, ko)
	in := p.Info()
	if in.State != patch.StateCommitted || in.Callbacks["startup"] != 1 {
		t.Fatalf("after apply: state %s, callbacks %v (trap error %q)", in.State, in.Callbacks, in.TrapError)
	}
	if !r.gone(t, pid) {
		t.Fatalf("the reader is still stuck after the fix")
	}
	if out := r.sh(t, "cat /tmp/reader.out"); !regexp.MustCompile(`^ok \d+\n$`).MatchString(out) {
		t.Errorf("the freed reader printed %q", out)
	}
	// Fixed: the error path no longer leaks the lock.
	out := r.sh(t, `sh -c 'echo trigger > /proc/lucos_bugs/deadlock'; cat /proc/lucos_bugs/deadlock`)
	if !strings.HasPrefix(out, "ok ") {
		t.Errorf("after the fix, trigger then read gives %q", out)
	}
	r.rollback(t, p)
	if out := r.sh(t, "echo ok > /proc/lucos_bugs/deadlock; cat /proc/lucos_bugs/deadlock"); !strings.HasPrefix(out, "ok ") {
		t.Errorf("after rollback: %q", out)
	}
	t.Logf("switch pause %.0f µs, startup callback ran %d time(s)", in.PauseUS, in.Callbacks["startup"])
	noKernelComplaints(t, r.m)
}

// readStats reads the module's old instance, struct lucos_bugs_stats
// { count; total_ms; }, from guest memory.
func (r *rig) readStats(t *testing.T, addr uint64) (count, totalMS uint64) {
	t.Helper()
	var b [16]byte
	if err := r.k.ReadVirt(addr, b[:]); err != nil {
		t.Fatal(err)
	}
	return binary.LittleEndian.Uint64(b[:8]), binary.LittleEndian.Uint64(b[8:])
}

// TestDataLayout: lucos_bugs_stats changes units. While a task sleeps in
// the old lucos_bugs_stats_hold, old and new code both run: writes by the
// new code reach the old instance (reverse transfer) and the old code's
// write reaches the new instance (forward transfer), so both see the same
// count. At commit the watches go; rollback transfers back.
func TestDataLayout(t *testing.T) {
	forKernels(t, newBugsRigOf, testDataLayout)
}

func testDataLayout(t *testing.T, r *rig) {
	ko := r.build(t, "examples/patches/data-layout")
	const stats = "/proc/lucos_bugs/stats"

	if out := r.sh(t, "echo 'add 3' > "+stats+"; echo 'add 3' > "+stats+"; cat "+stats); out != "count=2 total_ms=6\n" {
		t.Fatalf("before: %q", out)
	}
	holder := r.holdStats(t, 10)
	p, err := r.e.Apply(context.Background(), ko, patch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Info()
	if in.State != patch.StateTransitioning || !in.Watching || len(in.Data) != 1 {
		t.Fatalf("with a task in the old code: state %s, watching %v, data %+v", in.State, in.Watching, in.Data)
	}
	old := in.Data[0].OldAddr

	// New code writes the new instance; the reverse transfer updates the old one.
	if out := r.sh(t, "echo 'add 4' > "+stats+"; cat "+stats); out != "count=3 total_us=10000\n" {
		t.Fatalf("new code after apply: %q", out)
	}
	if c, ms := r.readStats(t, old); c != 3 || ms != 10 {
		t.Fatalf("old instance after a write by new code: count=%d total_ms=%d, want 3 and 10 (%d traps, trap error %q, %d lost watch hits recovered)", c, ms, p.Info().Traps, p.Info().TrapError, r.m.LostWatches())
	}
	if in := p.Info(); in.Traps < 2 || in.State != patch.StateTransitioning {
		t.Fatalf("after a write by new code: %d traps, state %s (trap error %q; %d lost watch hits recovered)", in.Traps, in.State, in.TrapError, r.m.LostWatches())
	}

	// Old code writes the old instance; the forward transfer updates the new one.
	r.sh(t, "echo release > "+stats)
	if !r.gone(t, holder) {
		t.Fatal("the held writer did not finish")
	}
	if out := r.sh(t, "cat "+stats+" /proc/lucos_bugs/seen"); out != "count=4 total_us=20000\n4\n" {
		t.Fatalf("after the old code's write: %q (want the new view to include it, and the old code to have seen count 4)", out)
	}
	waitFor(t, "commit", func() bool { return p.State() == patch.StateCommitted })
	in = p.Info()
	if in.Watching {
		t.Fatal("watches still in place after commit")
	}
	traps := in.Traps
	if out := r.sh(t, "echo 'add 1' > "+stats+"; cat "+stats); out != "count=5 total_us=21000\n" {
		t.Fatalf("after commit: %q", out)
	}
	if got := p.Info().Traps; got != traps {
		t.Errorf("a write after commit trapped: %d traps, was %d", got, traps)
	}
	r.rollback(t, p)
	if out := r.sh(t, "cat "+stats); out != "count=5 total_ms=21\n" {
		t.Errorf("after rollback (reverse transfer): %q", out)
	}
	in = p.Info()
	t.Logf("%d traps, %d transfers; switch pause %.0f µs", in.Traps, in.Transfers, in.PauseUS)
	noKernelComplaints(t, r.m)
}

// TestShadowNewfield: a new per-task field through a shadow variable.
func TestShadowNewfield(t *testing.T) {
	forKernels(t, newBugsRigOf, testShadowNewfield)
}

func testShadowNewfield(t *testing.T, r *rig) {
	ko := r.build(t, "examples/patches/shadow-newfield")
	const sessions = "/proc/lucos_bugs/sessions"

	first := strings.TrimSpace(r.sh(t, "echo abc > "+sessions+"; echo $$"))
	p := r.apply(t, ko)
	out := r.sh(t, "echo hello > "+sessions+"; echo hi > "+sessions+"; echo $$; cat "+sessions)
	lines := strings.Split(strings.TrimSpace(out), "\n")
	pid := lines[0]
	want := map[string]*regexp.Regexp{
		first: regexp.MustCompile(`^` + first + ` \S+ 1 0$`), // created before the patch, not written since
		pid:   regexp.MustCompile(`^` + pid + ` \S+ 2 9$`),   // "hello\n" + "hi\n"
	}
	for _, l := range lines[1:] {
		f := strings.Fields(l)
		if re := want[f[0]]; re != nil && !re.MatchString(l) {
			t.Errorf("session line %q does not match %s", l, re)
		}
		if len(f) != 4 {
			t.Errorf("session line %q has no bytes field", l)
		}
	}
	r.rollback(t, p)
	if n := p.Info().ShadowsFreed; n != 1 {
		t.Errorf("rollback freed %d shadow variables, want 1", n)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.sh(t, "cat "+sessions)), "\n") {
		if len(strings.Fields(l)) != 3 {
			t.Errorf("after rollback, session line %q", l)
		}
	}
	noKernelComplaints(t, r.m)
}

// TestCallbacks: startup, thread, function (every entry and once) and
// cleanup callbacks run in the documented order, as often as documented.
func TestCallbacks(t *testing.T) {
	forKernels(t, newBugsRigOf, testCallbacks)
}

func testCallbacks(t *testing.T, r *rig) {
	ko := r.build(t, "examples/patches/callbacks")
	const stats = "/proc/lucos_bugs/stats"

	holder := r.holdStats(t, 1)
	p, err := r.e.Apply(context.Background(), ko, patch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	waitFor(t, "the thread callback", func() bool { return p.Info().Callbacks["thread"] == 1 })
	r.sh(t, "echo 'add 2' > "+stats+"; echo 'add 3' > "+stats)
	r.sh(t, "echo x > /proc/lucos_bugs/sessions; echo yy > /proc/lucos_bugs/sessions")
	r.sh(t, "echo release > "+stats)
	if !r.gone(t, holder) {
		t.Fatal("the held writer did not finish")
	}
	waitFor(t, "commit", func() bool { return p.State() == patch.StateCommitted })
	r.sh(t, "echo 'add 4' > "+stats) // committed: function callbacks stay until rollback
	r.rollback(t, p)
	r.sh(t, "echo 'add 5' > "+stats) // rolled back: no callback
	want := fmt.Sprintf("startup\nthread %s sh\nfunc stats_add 2\nfunc stats_add 3\nfunc-once session_write 2\nfunc stats_add 4\ncleanup\n", holder)
	if out := r.sh(t, "cat /proc/lucos_bugs/events"); out != want {
		t.Errorf("events:\n%s\nwant:\n%s", out, want)
	}
	in := p.Info()
	wantRuns := map[string]int{"startup": 1, "thread": 1, "func": 4, "cleanup": 1}
	for k, n := range wantRuns {
		if in.Callbacks[k] != n {
			t.Errorf("%s callbacks ran %d times, want %d (all: %v)", k, in.Callbacks[k], n, in.Callbacks)
		}
	}
	if in.TrapError != "" {
		t.Errorf("trap error: %s", in.TrapError)
	}
	noKernelComplaints(t, r.m)
}

// moduleAddr is the runtime address of a symbol of a guest module.
func (r *rig) moduleAddr(t *testing.T, name string) uint64 {
	t.Helper()
	mods, err := r.k.Modules()
	if err != nil {
		t.Fatal(err)
	}
	for _, m := range mods {
		if s, err := m.Symbol(name, 0); err == nil {
			return s.Addr
		}
	}
	t.Fatalf("no module defines %s", name)
	return 0
}

// poke32 writes v to the guest's 32-bit word at addr from the host, with the
// VM paused, and checks that it reads back before the guest runs again.
func (r *rig) poke32(t *testing.T, addr uint64, v uint32) {
	t.Helper()
	b := binary.LittleEndian.AppendUint32(nil, v)
	if _, err := r.m.WithPaused(context.Background(), func(g *gdbstub.Client) error {
		m, err := r.k.Walker.Translate(addr)
		if err != nil {
			return err
		}
		if err := g.SetPhysical(true); err != nil {
			return err
		}
		if err := g.WriteMemory(m.PA+addr-m.VA, b); err != nil {
			return err
		}
		var got [4]byte
		if err := r.k.ReadVirt(addr, got[:]); err != nil || binary.LittleEndian.Uint32(got[:]) != v {
			return fmt.Errorf("%#x reads % x after the write (%v)", addr, got, err)
		}
		return nil
	}); err != nil {
		t.Fatal(err)
	}
}

// TestGuestCallTimeout: a callback that cannot finish while the other vCPUs
// are stopped (it waits for a lock another CPU holds) finishes once every
// vCPU runs; one that outlasts the call timeout fails the apply without
// harm, and when it returns at last its vCPU is restored and its slot freed.
func TestGuestCallTimeout(t *testing.T) {
	r := newBugsRig(t)
	good := buildPatch(t, "examples/patches/cmdline-string")
	old := r.sh(t, "cat /proc/cmdline")

	t.Run("needs every vCPU", func(t *testing.T) {
		holder := r.moduleAddr(t, "lucos_bugs_lock_holder")
		// Built before the lock is taken: the holding CPU does nothing
		// else until the callback comes.
		lockStartup := buildPatch(t, "patch/testdata/lock-startup")
		slow := r.e.SlowCalls()
		// Another CPU holds lucos_bugs_lock, interrupts off, until 0.1 s
		// after the callback starts waiting for it (the event, however
		// long the apply takes to get there).
		held := make(chan error, 1)
		go func() {
			_, err := r.m.ExecScript(context.Background(), "echo 'hold 100' > /proc/lucos_bugs/deadlock")
			held <- err
		}()
		defer func() {
			// If the callback never came, end the holder's wait from here.
			if len(held) == 0 {
				r.poke32(t, r.moduleAddr(t, "lucos_bugs_waiting"), 1)
			}
			if err := <-held; err != nil {
				t.Error(err)
			}
		}()
		waitFor(t, "the lock to be held", func() bool {
			var b [4]byte
			return r.k.ReadVirt(holder, b[:]) == nil && binary.LittleEndian.Uint32(b[:]) != 0
		})
		p := r.apply(t, lockStartup)
		if r.e.SlowCalls() == slow {
			t.Errorf("the call returned while the other vCPUs were stopped; the test proves nothing")
		}
		if in := p.Info(); in.Callbacks["startup"] != 1 {
			t.Errorf("startup callbacks: %v", in.Callbacks)
		}
		if out := r.sh(t, "cat /proc/cmdline"); out == old {
			t.Errorf("patch not in effect: %q", out)
		}
		r.rollback(t, p)
	})
	t.Run("returns after the timeout", func(t *testing.T) {
		_, err := r.e.Apply(context.Background(), buildPatch(t, "patch/testdata/stuck-startup"), patch.Options{Wait: true})
		if !errors.Is(err, patch.ErrCallTimeout) {
			t.Fatalf("apply: %v; want a call timeout", err)
		}
		t.Logf("apply: %v", err)
		// The error says where the call is stuck: in the callback's loop.
		if !strings.Contains(err.Error(), "stuck-startup:wait_for_release+") {
			t.Errorf("the timeout does not name where the call spins: %v", err)
		}
		if r.e.PendingCall() == 0 {
			t.Fatal("no guest call pending after the timeout")
		}
		// Let the callback return: set the flag it spins on.
		r.poke32(t, r.moduleAddr(t, "lucos_bugs_released"), 1)
		waitFor(t, "the late call to be restored", func() bool { return r.e.PendingCall() == 0 })
		if out := r.sh(t, "cat /proc/cmdline"); out != old {
			t.Fatalf("a failed apply changed the guest: %q", out)
		}
		// Guest calls work again (the rollback frees shadows with one).
		p := r.apply(t, good)
		r.rollback(t, p)
		if out := r.sh(t, "cat /proc/cmdline"); out != old {
			t.Errorf("after all: %q", out)
		}
	})
	noKernelComplaints(t, r.m)
}
