package vmm_test

import (
	"context"
	"encoding/binary"
	"strconv"
	"strings"
	"sync/atomic"
	"testing"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/launch"
)

// TestEveryWatchHitReported pauses a busy guest again and again while a
// write watch on jiffies_64 keeps firing, and QEMU must live through it.
// QEMU drops the report of a hit that meets a pause
// (gdbstub.Client.Stop): unrecovered, an instruction-clock guest's
// QEMU aborted within a few thousand pauses, and most hits went unseen.
// On the instruction clock the one vCPU takes every tick and adds one to
// jiffies_64 in each write, so the writes are counted exactly: every one
// must reach the trap handler. With two vCPUs a tick may add several (a
// vCPU catching up), so there the hits only bound the increase.
func TestEveryWatchHitReported(t *testing.T) {
	for _, tc := range []struct {
		name   string
		cpus   int
		icount bool
	}{{"icount", 1, true}, {"smp", 2, false}} {
		t.Run(tc.name, func(t *testing.T) {
			opts := testvm.Options(t)
			opts.VM.CPUs, opts.VM.ICount = tc.cpus, tc.icount
			watchEveryTick(t, opts, 5000, tc.icount)
		})
	}
}

func watchEveryTick(t *testing.T, opts launch.Options, pauses int, exact bool) {
	m := testvm.Boot(t, opts)
	ctx := context.Background()
	res := testvm.Exec(t, m, "sh", "-c", "grep ' jiffies_64$' /proc/kallsyms")
	addr, err := strconv.ParseUint(strings.Fields(string(res.Stdout))[0], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	// Busy on every vCPU, the guest takes every tick (no NOHZ catch-up
	// after idle).
	for range m.CPUs() {
		testvm.Exec(t, m, "sh", "-c", "(while :; do :; done) </dev/null >/dev/null 2>&1 &")
	}
	var hits atomic.Int64
	m.SetTrapHandler(func(g *gdbstub.Client, ev gdbstub.StopEvent) {
		if ev.Reason == "watch" && ev.Addr == addr {
			hits.Add(1)
		}
	})
	defer m.SetTrapHandler(nil)
	var j0, j1 uint64
	paused := func(fn func(g *gdbstub.Client) error) {
		t.Helper()
		if _, err := m.WithPaused(ctx, fn); err != nil {
			t.Fatal(err)
		}
	}
	read := func(g *gdbstub.Client, v *uint64) error {
		var b [8]byte
		err := g.ReadMemory(addr, b[:])
		*v = binary.LittleEndian.Uint64(b[:])
		return err
	}
	paused(func(g *gdbstub.Client) error {
		if err := read(g, &j0); err != nil {
			return err
		}
		return g.InsertWatchpoint(gdbstub.WatchWrite, addr, 8)
	})
	for range pauses {
		paused(func(*gdbstub.Client) error { return nil })
	}
	paused(func(g *gdbstub.Client) error {
		if err := g.RemoveWatchpoint(gdbstub.WatchWrite, addr, 8); err != nil {
			return err
		}
		return read(g, &j1)
	})
	t.Logf("%d pauses: jiffies_64 went up by %d, %d watch hits reported, %d of them recovered after QEMU dropped them",
		pauses, j1-j0, hits.Load(), m.LostWatches())
	switch n := uint64(hits.Load()); {
	case n == 0 || n > j1-j0:
		t.Errorf("jiffies_64 went up by %d, and the trap handler heard of %d writes", j1-j0, n)
	case exact && n != j1-j0:
		t.Errorf("jiffies_64 was written %d times, the trap handler heard of %d", j1-j0, n)
	}
}
