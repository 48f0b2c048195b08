package patch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/vmm"
)

// Stack-check pacing: the first checks come fast (most updates commit at
// once), then back off so a long-blocked task does not keep pausing the guest.
const (
	firstCheckDelay = 200 * time.Microsecond
	maxCheckDelay   = 100 * time.Millisecond
)

// waitClear checks, with the VM paused for each snapshot, until no vCPU and
// no kernel stack holds an address inside ranges. It records who holds them
// up on the patch for the API. It returns ctx's error if ctx ends first,
// and vmm.ErrExited if the VM goes away.
func (e *Engine) waitClear(ctx context.Context, p *Patch, ranges []introspect.Range) error {
	delay := firstCheckDelay
	start := time.Now()
	for {
		snap, err := e.k.Snapshot(ctx)
		if ctx.Err() != nil {
			return ctx.Err()
		}
		if errors.Is(err, vmm.ErrExited) {
			return fmt.Errorf("stack check: %w", err)
		}
		p.mu.Lock()
		p.checks++
		if err != nil {
			// A failed check proves nothing either way: say so and try again.
			p.checkErr = err.Error()
			e.log.Warn("stack check failed", "id", p.id, "err", err)
		} else {
			p.checkErr = ""
			p.holders = snap.Scan(ranges)
		}
		clear := err == nil && len(p.holders) == 0
		holders := p.holders
		p.mu.Unlock()
		if clear {
			return nil
		}
		if p.State() == StateTransitioning {
			e.threadCallbacks(ctx, p, holders)
		}
		e.kick(ctx, p, holders, time.Since(start))
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, maxCheckDelay)
	}
}

// oldRanges are the old functions' bodies — for a function chained over
// another patch, that patch's replacement: while a thread is inside one,
// the update has not terminated.
func oldRanges(funcs []Func) []introspect.Range {
	var r []introspect.Range
	for _, f := range funcs {
		switch {
		case f.Hook:
		case f.Below != "":
			// Chained: the function being replaced is the patch below's.
			r = append(r, introspect.Range{Start: f.BelowNew, End: f.BelowNew + f.BelowSize})
		default:
			r = append(r, introspect.Range{Start: f.OldAddr, End: f.OldAddr + f.OldSize})
		}
	}
	return r
}
