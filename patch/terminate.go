package patch

import (
	"context"
	"time"

	"github.com/lucos/lucos/introspect"
)

// Stack-check pacing: the first checks come fast (most updates commit at
// once), then back off so a long-blocked task does not keep pausing the guest.
const (
	firstCheckDelay = 200 * time.Microsecond
	maxCheckDelay   = 100 * time.Millisecond
)

// waitClear checks, with the VM paused for each snapshot, until no vCPU and
// no kernel stack holds an address inside ranges. It records who holds them
// up on the patch for the API. It returns ctx's error if ctx ends first.
func (e *Engine) waitClear(ctx context.Context, p *Patch, ranges []introspect.Range) error {
	delay := firstCheckDelay
	for {
		snap, err := e.k.Snapshot(ctx)
		if err != nil {
			return err
		}
		holders := snap.Scan(ranges)
		p.mu.Lock()
		p.checks++
		p.holders = holders
		p.mu.Unlock()
		if len(holders) == 0 {
			return nil
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, maxCheckDelay)
	}
}

// oldRanges are the old functions' bodies: while a thread is inside one,
// the update has not terminated.
func oldRanges(funcs []Func) []introspect.Range {
	r := make([]introspect.Range, len(funcs))
	for i, f := range funcs {
		r[i] = introspect.Range{Start: f.OldAddr, End: f.OldAddr + f.OldSize}
	}
	return r
}
