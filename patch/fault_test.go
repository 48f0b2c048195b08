package patch_test

import (
	"context"
	"errors"
	"net"
	"os"
	"os/exec"
	"regexp"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/patch"
)

// Faults injected into a running update (issue 14): the gdbstub connection
// drops in the middle of the switch, QEMU dies while an update
// transitions, the host is loaded. Each time the engine says what
// happened, nothing hangs, and what `patch list` says is what the guest
// holds.

// dropper drops the gdbstub connection at the nth 5-byte memory write
// ('M' packet of an entry's jump) after it is armed: the packets before
// it in the same write reach QEMU, it and the rest do not. (The switch
// sends every jump in one write, a batch.)
type dropper struct {
	left  atomic.Int32 // entry writes to let through; <= 0: disarmed
	fired atomic.Bool
}

var entryWrite = regexp.MustCompile(`\$M[0-9a-f]+,5:`)

func (d *dropper) wrap(c net.Conn) net.Conn { return &dropConn{Conn: c, d: d} }

type dropConn struct {
	net.Conn
	d *dropper
}

func (c *dropConn) Write(b []byte) (int, error) {
	if c.d.left.Load() <= 0 {
		return c.Conn.Write(b)
	}
	for _, m := range entryWrite.FindAllIndex(b, -1) {
		if c.d.left.Add(-1) == 0 {
			c.d.fired.Store(true)
			n, _ := c.Conn.Write(b[:m[0]])
			c.Conn.Close()
			return n, errors.New("injected: connection dropped")
		}
	}
	return c.Conn.Write(b)
}

// entries reads the first 5 bytes of each function.
func (r *rig) entries(t *testing.T, funcs []patch.Func) [][]byte {
	t.Helper()
	var out [][]byte
	for _, f := range funcs {
		b := make([]byte, 5)
		if err := r.k.ReadVirt(f.OldAddr, b); err != nil {
			t.Fatal(err)
		}
		out = append(out, b)
	}
	return out
}

// The connection drops after two of the eleven jumps of hot-paths are
// written: the apply fails saying so, the two are undone over a new
// connection, the guest runs on unchanged, and the next apply works.
func TestGDBStubDropsMidSwitch(t *testing.T) {
	var d dropper
	o := testvm.Options(t)
	o.VM.WrapGDB = d.wrap
	r := newRigWith(t, o)
	hot := buildPatch(t, "examples/patches/hot-paths")

	// A clean apply names the functions and their entries.
	p := r.apply(t, hot)
	funcs := p.Info().Funcs
	r.rollback(t, p)
	before := r.entries(t, funcs)

	d.left.Store(3)
	_, err := r.e.Apply(context.Background(), hot, patch.Options{Wait: true, Timeout: time.Minute})
	if !d.fired.Load() {
		t.Fatalf("the connection was never dropped (apply: %v)", err)
	}
	if err == nil || !strings.Contains(err.Error(), "injected: connection dropped") {
		t.Fatalf("apply with the connection dropped mid-switch: %v; want the drop reported", err)
	}
	t.Logf("apply: %v", err)
	after := r.entries(t, funcs)
	for i := range funcs {
		if string(after[i]) != string(before[i]) {
			t.Errorf("%s: entry % x after the failed apply, % x before", funcs[i].Name, after[i], before[i])
		}
	}
	list := r.e.List()
	last := list[len(list)-1]
	if last.State != patch.StateFailed {
		t.Errorf("patch list says %s for the failed apply", last.State)
	}
	if out := r.sh(t, "echo alive"); out != "alive\n" {
		t.Fatalf("guest after the drop: %q", out)
	}
	if n := r.m.GDBReconnects(); n != 1 {
		t.Errorf("%d gdbstub reconnections, want 1", n)
	}
	old := r.sh(t, "cat /proc/cmdline")
	p = r.apply(t, buildPatch(t, "examples/patches/cmdline-string"))
	if out := r.sh(t, "cat /proc/cmdline"); out == old {
		t.Errorf("apply after the reconnection: /proc/cmdline still %q", out)
	}
	r.rollback(t, p)
}

// QEMU is killed while an update transitions (a reader holds it in the old
// pipe_read): the engine stops checking, the patch is failed with the
// reason, and every call returns at once with an error.
func TestQEMUDiesMidTransition(t *testing.T) {
	r := newRig(t)
	pid := r.reader(t)
	p, err := r.e.Apply(context.Background(), buildPatch(t, "patch/testdata/hold-pipe-read"), patch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	if st := p.State(); st != patch.StateTransitioning {
		t.Fatalf("with reader %s blocked the patch is %s", pid, st)
	}
	if err := r.m.Kill(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.e.Wait(ctx, p, time.Minute); err != nil {
		t.Fatalf("wait after QEMU died: %v", err)
	}
	in := p.Info()
	if in.State != patch.StateFailed || !strings.Contains(in.History[len(in.History)-1].Note, "QEMU exited") {
		t.Fatalf("after QEMU died the patch is %s: %+v", in.State, in.History[len(in.History)-1])
	}
	if _, err := r.e.Rollback(ctx, p.ID(), patch.Options{Wait: true}); err == nil {
		t.Error("rollback on a dead VM succeeded")
	}
	if _, err := r.e.Apply(ctx, buildPatch(t, "examples/patches/cmdline-string"), patch.Options{}); err == nil || !strings.Contains(err.Error(), "QEMU exited") {
		t.Errorf("apply on a dead VM: %v", err)
	}
}

// With every host CPU busy beside the guest, apply, commit and rollback
// still work and the guest sees each step.
func TestApplyWithHostLoaded(t *testing.T) {
	r := newRig(t)
	stop := make(chan struct{})
	var wg sync.WaitGroup
	for range runtime.NumCPU() {
		wg.Go(func() {
			for {
				select {
				case <-stop:
					return
				default:
				}
				for i := 0; i < 1e6; i++ {
				}
			}
		})
	}
	// And a process outside Go's scheduler, as another tenant would be.
	hog := exec.Command("sh", "-c", "while :; do :; done")
	if err := hog.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() {
		close(stop)
		wg.Wait()
		hog.Process.Signal(os.Kill)
		hog.Wait()
	}()
	ko := buildPatch(t, "examples/patches/cmdline-string")
	old := r.sh(t, "cat /proc/cmdline")
	for i := range 5 {
		p := r.apply(t, ko)
		if out := r.sh(t, "cat /proc/cmdline"); out == old {
			t.Fatalf("cycle %d: patch not in effect", i)
		}
		r.rollback(t, p)
		if out := r.sh(t, "cat /proc/cmdline"); out != old {
			t.Fatalf("cycle %d: after rollback /proc/cmdline is %q", i, out)
		}
	}
}
