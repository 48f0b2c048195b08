package patch

import (
	"context"
	"errors"
	"fmt"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/vmm"
)

// Rollback undoes patch id: in one pause the old functions' entries get
// their original bytes back; once no thread runs patch code any more, its
// module shell leaves the guest's modules and the slot is unmapped and
// freed. Patches form a stack: the newest can always
// be rolled back, an older one only if no later live patch redirects one of
// its functions.
func (e *Engine) Rollback(ctx context.Context, id string, o Options) (*Patch, error) {
	p, err := e.rollback(ctx, id, o)
	if err != nil {
		return nil, err
	}
	return p, e.wait(p, o)
}

func (e *Engine) rollback(ctx context.Context, id string, o Options) (*Patch, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	var p *Patch
	for i, q := range e.patches {
		if q.id != id {
			continue
		}
		p = q
		for _, later := range e.patches[i+1:] {
			if st := later.State(); st == StateRolledBack || st == StateFailed {
				continue
			}
			if f, ok := overlap(p.funcs, later.funcs); ok {
				return nil, fmt.Errorf("rollback %s: %w: patch %s also changes %s; roll it back first", id, ErrStackOrder, later.id, f)
			}
		}
	}
	if p == nil {
		return nil, fmt.Errorf("rollback: %w: %q", ErrNotFound, id)
	}
	p.mu.Lock()
	st := p.state
	p.mu.Unlock()
	if st != StateTransitioning && st != StateCommitted {
		return nil, fmt.Errorf("rollback %s: %w (it is %s)", id, ErrBadState, st)
	}
	if p.orphanData > 0 {
		return nil, fmt.Errorf("rollback %s: %w: it has %d data updates and was applied by an earlier lucos; the guest keeps no record of its instances, so only that lucos could roll it back", id, ErrBadState, p.orphanData)
	}
	switchAt := time.Now()
	pause, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		return e.switchOut(ctx, g, p, st == StateTransitioning)
	})
	if err != nil {
		return nil, fmt.Errorf("rollback %s: %w", id, err)
	}
	p.mu.Lock()
	p.pause = pause
	p.kickAfter = o.kickAfter()
	p.setState(StateReverting, fmt.Sprintf("%d functions restored in a %.0f µs pause", len(p.funcs), us(pause)))
	if st == StateTransitioning {
		close(p.done) // the apply transition is over: it was reverted
		p.done = make(chan struct{})
	}
	p.mu.Unlock()
	e.log.Info("patch reverted", "id", p.id, "pause", pause)
	go e.release(p, switchAt)
	return p, nil
}

// release waits until no thread runs patch code, runs the cleanup
// callbacks, unregisters the module shell, waits again (the shell's
// kworker returns through patch code), then unmaps the slot.
func (e *Engine) release(p *Patch, switchAt time.Time) {
	if err := e.waitClear(e.ctx, p, p.text); err != nil {
		e.log.Warn("rollback: stack check stopped; slot stays mapped", "id", p.id, "err", err)
		if errors.Is(err, vmm.ErrExited) {
			e.mu.Lock()
			p.mu.Lock()
			p.holders = nil
			p.setState(StateFailed, "the VM went away while the rollback drained: "+err.Error())
			close(p.done)
			p.done = make(chan struct{})
			p.mu.Unlock()
			e.mu.Unlock()
		}
		return
	}
	var cerr error
	_, err := e.m.WithPaused(e.ctx, func(g *gdbstub.Client) error {
		if err := e.traps.dropWatches(g, p); err != nil {
			return err
		}
		// A cleanup that fails is reported, but the patch goes anyway.
		cerr = e.cleanup(e.ctx, g, p)
		p.saveHookRuns()
		return nil
	})
	what := "drop watches"
	if err == nil {
		what, err = "module shell", e.unregisterShell(e.ctx, p)
	}
	if err == nil && p.shellTouched {
		what, err = "stack check after unregistering the module shell", e.waitClear(e.ctx, p, p.text)
	}
	freed := false
	if err == nil {
		what = "unmap slot"
		_, err = e.m.WithPaused(e.ctx, func(g *gdbstub.Client) (err error) {
			freed, err = e.unload(g, p)
			return err
		})
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	p.mu.Lock()
	defer p.mu.Unlock()
	switch {
	case err != nil:
		p.setState(StateFailed, what+": "+err.Error())
	case cerr != nil:
		p.trapErr = cerr.Error()
		p.setState(StateFailed, "rolled back, but "+cerr.Error())
	default:
		p.commitAfter = time.Since(switchAt)
		p.holders = nil
		p.setState(StateRolledBack, "no thread in patch code; slot freed")
	}
	if err == nil && freed {
		e.slots[p.slot.index] = nil
	}
	close(p.done)
	p.done = make(chan struct{})
}

// overlap finds a function both lists redirect.
func overlap(a, b []Func) (string, bool) {
	for _, x := range a {
		for _, y := range b {
			if x.OldAddr == y.OldAddr {
				return x.Name, true
			}
		}
	}
	return "", false
}
