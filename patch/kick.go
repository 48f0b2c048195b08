package patch

import (
	"context"
	"fmt"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/introspect"
)

// Kicks: a task asleep inside an old function (a read on an empty pipe,
// wait4) holds a transition for as long as it sleeps. Once the grace
// period (Options.KickAfter) is over, lucos does what Linux livepatch's
// klp_send_signals does, from outside: a guest call of the runtime's
// __lucos_kick gives each holding user task TIF_NOTIFY_SIGNAL — its
// interruptible sleep ends, the system call returns through the kernel's
// restart path and starts again, now through the new code, and no signal
// is delivered — and wakes each holding kernel thread from
// TASK_INTERRUPTIBLE. A system call that returns -EINTR on any pending
// signal (epoll_wait) returns it then, as with klp. A task in an
// uninterruptible sleep (D) cannot be kicked; it holds the transition
// until it wakes. A holder is kicked again after another grace period.

// DefaultKickAfter is the grace period of the API and the CLI.
const DefaultKickAfter = 250 * time.Millisecond

// kick kicks the holders of p's transition that held it for longer than
// its grace period; waited is how long the transition has waited so far.
func (e *Engine) kick(ctx context.Context, p *Patch, holders []introspect.Holder, waited time.Duration) {
	p.mu.Lock()
	grace := p.kickAfter
	p.mu.Unlock()
	if grace <= 0 || waited < grace || p.rt.Kick == 0 || p.rt.Call == 0 {
		return
	}
	now := time.Now()
	var due []introspect.Holder
	seen := map[uint64]bool{}
	p.mu.Lock()
	for _, h := range holders {
		if h.Kind == "rip" || h.Task == 0 || h.PID == 0 || seen[h.Task] {
			continue // a vCPU runs it: it leaves by itself; pid 0 is an idle task
		}
		seen[h.Task] = true
		if last, ok := p.kicked[h.Task]; ok && now.Sub(last) < grace {
			continue
		}
		p.kicked[h.Task] = now
		due = append(due, h)
	}
	p.mu.Unlock()
	if len(due) == 0 {
		return
	}
	n := 0
	_, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		for _, h := range due {
			site, err := e.pick(ctx, g, false)
			if err != nil {
				return err
			}
			ret, err := e.call(ctx, g, site, p, p.rt.Kick, uint64(h.PID), h.Task)
			if err != nil {
				return fmt.Errorf("kick pid %d (%s): %w", h.PID, h.Comm, err)
			}
			if ret == 1 {
				n++
				at := fmt.Sprintf("%#x (patch code)", h.Value)
				if e.k.IsText(h.Value) {
					at = e.k.FormatAddr(h.Value)
				}
				e.log.Info("kicked a task holding the update", "id", p.id, "pid", h.PID, "comm", h.Comm,
					"at", at, "waited", waited.Round(time.Millisecond))
			}
		}
		return nil
	})
	p.mu.Lock()
	p.kicks += n
	p.mu.Unlock()
	if err != nil {
		p.noteTrapError(err)
	}
}
