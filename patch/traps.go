package patch

import (
	"fmt"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/vmm"
)

// Traps are the watchpoints lucos keeps in the guest while patches need
// them: write watches on the old and new versions of changed data, and on
// instances with data callbacks. QEMU reports their hits to the Machine's
// trap handler, Engine.onTrap. (Function callbacks need no trap: hooks.go.)
//
// The trap set is only touched with the VM stopped and the Machine's lock
// held (inside WithPaused, or in the trap handler), which serialises it.

// watch is one write watch.
type watch struct {
	p          *Patch
	addr, size uint64
	data       *dataItem // the LUCOS_DATA this instance belongs to, or nil
	old        bool      // the old instance: a write runs the forward transfer
	callbacks  []uint64  // LUCOS_DATA_CALLBACK functions on this instance
}

func (w *watch) contains(a uint64) bool { return a >= w.addr && a < w.addr+w.size }

// trapSet is every trap lucos wants in the guest. placed says whether they
// are in the guest now: guest calls lift them so the call runs through.
type trapSet struct {
	watches []*watch
	lifted  bool
}

// addWatch starts watching w.
func (t *trapSet) addWatch(g *gdbstub.Client, w *watch) error {
	if !t.lifted {
		if err := g.InsertWatchpoint(gdbstub.WatchWrite, w.addr, w.size); err != nil {
			return fmt.Errorf("watch %#x+%d: %w", w.addr, w.size, err)
		}
	}
	t.watches = append(t.watches, w)
	w.p.setWatching(true)
	return nil
}

// dropWatches stops every watch of p.
func (t *trapSet) dropWatches(g *gdbstub.Client, p *Patch) error {
	var keep []*watch
	var first error
	for _, w := range t.watches {
		if w.p != p {
			keep = append(keep, w)
			continue
		}
		if !t.lifted {
			if err := g.RemoveWatchpoint(gdbstub.WatchWrite, w.addr, w.size); err != nil && first == nil {
				first = err
			}
		}
	}
	t.watches = keep
	p.setWatching(false)
	return first
}

// lift queues on b the removal of every trap from the guest (they stay
// in the set).
func (t *trapSet) lift(b *gdbstub.Batch) {
	if t.lifted {
		return
	}
	t.lifted = true
	for _, w := range t.watches {
		b.RemoveWatchpoint(gdbstub.WatchWrite, w.addr, w.size)
	}
}

// place queues on b the insertion of every trap of the set back into the
// guest.
func (t *trapSet) place(b *gdbstub.Batch) {
	if !t.lifted {
		return
	}
	t.lifted = false
	for _, w := range t.watches {
		b.InsertWatchpoint(gdbstub.WatchWrite, w.addr, w.size)
	}
}

// onTrap is the Machine's trap handler: a watch of lucos's was hit. It runs
// with the VM stopped and returns with it stopped. Besides ev's own, it
// handles the hits of other vCPUs recovered at the same stop
// (gdbstub.StopEvent.Others).
func (e *Engine) onTrap(g *gdbstub.Client, ev gdbstub.StopEvent) {
	if ev.Signal == gdbstub.SignalTrap {
		e.onStop(g, ev)
	}
	for _, o := range ev.Others {
		e.onStop(g, o)
	}
}

// onStop handles one vCPU's trap.
func (e *Engine) onStop(g *gdbstub.Client, ev gdbstub.StopEvent) {
	if e.stray != nil && returned(ev, e.stray.rt.Done) {
		e.finishStray(g, ev.Thread)
		return
	}
	if ev.Reason == "watch" {
		e.onWatch(g, ev)
		return
	}
	if ev.Reason == "" {
		// The debug interrupt a lost hit's recovery step left pending
		// (spuriousDebugStop): the vCPU stopped before running anything.
		e.log.Debug("trap: a plain debug stop", "stop", ev)
		return
	}
	rip, _ := g.ReadRegister(ev.Thread, "rip")
	e.log.Warn("trap: a stop lucos did not ask for", "stop", ev, "rip", e.k.FormatAddr(rip))
}

// TrapStats summarises the handling of trapped writes: from the stop QEMU
// reports to the end of the transfer and data callbacks (the resume that
// follows adds one gdbstub packet).
func (e *Engine) TrapStats() vmm.PauseStats { return e.trapTimes.Stats() }

// TrapTimes returns the handling time of every trapped write so far.
func (e *Engine) TrapTimes() []time.Duration { return e.trapTimes.Samples() }

// onWatch keeps the two versions of a changed instance coherent: a write to
// the old one runs the forward transfer, a write to the new one the
// reverse; then the instance's data callbacks run. All on the writing vCPU,
// right after the write.
func (e *Engine) onWatch(g *gdbstub.Client, ev gdbstub.StopEvent) {
	w := e.traps.watchAt(ev.Addr)
	if w == nil {
		e.log.Warn("trap: a watch lucos does not keep", "stop", ev)
		return
	}
	e.onHit(g, ev, w)
	if !ev.HasAlso {
		return
	}
	// A second write the stop covers (see gdbstub.StopEvent.Also): of the
	// same instance, the transfer just run saw it already; of another,
	// that one's transfer runs now.
	switch also := e.traps.watchAt(ev.Also); {
	case also == nil:
		e.log.Warn("trap: a second write outside lucos's watches", "stop", ev)
	case also == w:
		w.p.traps.Add(1)
	default:
		e.onHit(g, ev, also)
	}
}

// watchAt is the watch that holds addr, or nil.
func (t *trapSet) watchAt(addr uint64) *watch {
	for _, x := range t.watches {
		if x.contains(addr) {
			return x
		}
	}
	return nil
}

// onHit handles one trapped write to w's instance.
func (e *Engine) onHit(g *gdbstub.Client, ev gdbstub.StopEvent, w *watch) {
	p := w.p
	p.traps.Add(1)
	defer func() { e.trapTimes.Add(time.Since(ev.At)) }()
	site := callSite{tid: ev.Thread}
	if d := w.data; d != nil {
		fn, name, src, dst := d.direction(w.old)
		if _, err := e.call(e.ctx, g, site, p, fn, src, dst); err != nil {
			p.noteTrapError(fmt.Errorf("transfer %s for %s: %w", name, d.name, err))
			return
		}
		p.transfers.Add(1)
	}
	for _, fn := range w.callbacks {
		if _, err := e.call(e.ctx, g, site, p, fn, w.addr); err != nil {
			p.noteTrapError(fmt.Errorf("data callback at %#x: %w", w.addr, err))
			return
		}
		p.countCallback("data")
	}
}
