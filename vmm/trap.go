package vmm

import (
	"context"

	"github.com/lucos/lucos/gdbstub"
)

// TrapHandler handles a stop nobody asked for: a breakpoint or watchpoint
// that lucos itself set (a data watch, a function callback). It runs with
// every vCPU stopped and the Machine's lock held, may use g freely —
// including ContinueThread and Step for guest calls — and must return with
// the VM stopped; the VM then resumes.
type TrapHandler func(g *gdbstub.Client, ev gdbstub.StopEvent)

// SetTrapHandler installs h (nil removes it). While a handler is set, the
// Machine watches every run of the VM for stops it did not cause and hands
// them to h; a Pause whose stop turns out to be such a trap hands it to h
// before the caller gets the paused VM. WaitStop must not be used while a
// handler is set: the handler takes the stops it would wait for.
func (m *Machine) SetTrapHandler(h TrapHandler) {
	m.mu.Lock()
	defer m.mu.Unlock()
	m.trap = h
	if h != nil && m.trapKick == nil {
		m.trapKick = make(chan struct{}, 1)
		ctx, cancel := context.WithCancel(context.Background())
		m.trapStop = cancel
		go m.trapLoop(ctx, m.trapKick)
	}
	if !m.paused {
		m.kickTrapLoop()
	}
}

// kickTrapLoop tells the trap loop that a new run began.
// Precondition: m.mu is held.
func (m *Machine) kickTrapLoop() {
	if m.trapKick == nil {
		return
	}
	select {
	case m.trapKick <- struct{}{}:
	default:
	}
}

// trapLoop waits for the end of each run of the VM. A run that ends with
// nobody holding the VM paused ended at a trap: the loop claims the pause,
// dispatches the stop and resumes.
func (m *Machine) trapLoop(ctx context.Context, kick <-chan struct{}) {
	for {
		select {
		case <-kick:
		case <-ctx.Done():
			return
		case <-m.exited:
			return
		}
		if _, err := m.gdb.Wait(ctx); err != nil {
			if ctx.Err() != nil {
				return
			}
			continue // not running (already claimed), or the connection died
		}
		m.mu.Lock()
		if m.trap != nil && !m.paused && !m.gdb.Running() && m.alive() == nil {
			// A lost hit's error leaves ev as QEMU reported it, which
			// the handler can still take.
			ev, _ := m.gdb.RecoverLostWatches(m.gdb.LastStop())
			m.paused, m.stop = true, ev
			m.trap(m.gdb, ev)
			m.resumeLocked()
		}
		m.mu.Unlock()
	}
}

// isTrap reports whether a stop came from a breakpoint or watchpoint rather
// than from lucos's own interrupt, or carries watch hits of other vCPUs
// recovered at lucos's interrupt.
func isTrap(ev gdbstub.StopEvent) bool {
	return !ev.Exited && (ev.Signal == gdbstub.SignalTrap || len(ev.Others) > 0)
}
