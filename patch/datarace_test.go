package patch_test

import (
	"context"
	"fmt"
	"sync"
	"sync/atomic"
	"testing"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/patch"
)

// TestDataCoherentUnderPauses: while the data-layout patch's coherence
// window is open, the new code writes its instance again and again while
// the host pauses the VM as fast as it can — a pause that meets a watch
// hit is where QEMU 7.2 drops the hit's report (gdbstub.Client.Stop).
// After every batch of writes the old instance must equal the new one,
// converted: a write that went unseen leaves the old one behind. (Before
// the lost-hit recovery worked in physical memory mode this failed in the
// first round; TestDataLayout failed so about once in five CI runs.) With
// a writer on each vCPU, two hits can come at once, and QEMU reports only
// one of them (gdbstub.StopEvent.Others); the writers race each other on
// count++ as unlocked kernel code does, so only coherence is checked.
func TestDataCoherentUnderPauses(t *testing.T) {
	t.Run("one writer", func(t *testing.T) { testDataCoherentUnderPauses(t, 1) })
	t.Run("a writer per vCPU", func(t *testing.T) { testDataCoherentUnderPauses(t, 2) })
}

func testDataCoherentUnderPauses(t *testing.T, writers int) {
	r := newBugsRig(t)
	if n := r.m.CPUs(); n < writers {
		t.Fatalf("the guest has %d vCPUs, want %d", n, writers)
	}
	ko := r.build(t, "examples/patches/data-layout")
	const stats = "/proc/lucos_bugs/stats"
	r.holdStats(t, 10)
	p, err := r.e.Apply(context.Background(), ko, patch.Options{})
	if err != nil {
		t.Fatal(err)
	}
	in := p.Info()
	if in.State != patch.StateTransitioning || !in.Watching {
		t.Fatalf("with a task in the old code: state %s, watching %v", in.State, in.Watching)
	}
	old, nw := in.Data[0].OldAddr, in.Data[0].NewAddr

	stop := make(chan struct{})
	var pauses atomic.Int64
	var wg sync.WaitGroup
	wg.Add(1)
	go func() {
		defer wg.Done()
		for {
			select {
			case <-stop:
				return
			default:
			}
			if _, err := r.m.WithPaused(context.Background(), func(*gdbstub.Client) error { return nil }); err == nil {
				pauses.Add(1)
			}
		}
	}()
	defer func() { close(stop); wg.Wait() }()
	const rounds, writes = 3, 10
	for round := 1; round <= rounds; round++ {
		r.sh(t, fmt.Sprintf(`for w in $(seq %d); do (i=0; while [ $i -lt %d ]; do echo 'add 1' > %s; i=$((i+1)); done) & done; wait`, writers, writes, stats))
		oc, oms := r.readStats(t, old)
		nc, nus := r.readStats(t, nw)
		in := p.Info()
		if oc != nc || oms*1000 != nus {
			t.Fatalf("round %d: old instance count=%d total_ms=%d, new count=%d total_us=%d (%d pauses, %d traps, trap error %q, %d lost watch hits recovered)",
				round, oc, oms, nc, nus, pauses.Load(), in.Traps, in.TrapError, r.m.LostWatches())
		}
		if writers == 1 && nc != uint64(round*writes) {
			t.Fatalf("round %d: the new instance counts %d writes, want %d", round, nc, round*writes)
		}
		t.Logf("round %d: count %d, %d pauses, %d traps, %d lost watch hits recovered", round, nc, pauses.Load(), in.Traps, r.m.LostWatches())
	}
	if r.m.LostWatches() == 0 {
		t.Errorf("no pause met a watch hit in %d pauses: the test did not test the recovery", pauses.Load())
	}
	noKernelComplaints(t, r.m)
}
