package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"os"
	"time"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch"
)

// UseKernel gives the server the introspection its caller already
// attached (lucos attach), instead of attaching again on first use.
func (s *Server) UseKernel(k *introspect.Kernel) {
	s.kernel.once.Do(func() { s.kernel.k = k })
}

// Settle is what lucos does before it leaves a VM that runs on without it
// (lucos attach, detaching): no guest is left half-switched. An update
// still transitioning gets grace to commit and is rolled back if it does
// not; a rollback still draining gets grace to free its slot. Committed
// patches stay in place. say reports each step.
func (s *Server) Settle(ctx context.Context, grace time.Duration, say func(string)) error {
	s.engine.mu.Lock()
	e := s.engine.e
	s.engine.mu.Unlock()
	if e == nil {
		return nil // no patch was ever applied through this server
	}
	var failed error
	for _, info := range e.List() {
		if info.State != patch.StateTransitioning && info.State != patch.StateReverting {
			continue
		}
		p, err := e.Get(info.ID)
		if err != nil {
			continue
		}
		say(fmt.Sprintf("patch %s (%s) is %s: waiting up to %v for it to settle", info.ID, info.Name, info.State, grace))
		if err := e.Wait(ctx, p, grace); err == nil && p.Info().State != patch.StateTransitioning {
			say(fmt.Sprintf("patch %s: %s", info.ID, p.Info().State))
			continue
		}
		if p.Info().State != patch.StateTransitioning {
			say(fmt.Sprintf("patch %s: still %s; its jumps are gone, its code stays mapped", info.ID, p.Info().State))
			continue
		}
		say(fmt.Sprintf("patch %s has not committed: rolling it back", info.ID))
		if _, err := e.Rollback(ctx, info.ID, patch.Options{Wait: true, Timeout: grace}); err != nil {
			failed = fmt.Errorf("roll back patch %s before detaching: %w", info.ID, err)
			say(failed.Error())
			continue
		}
		say(fmt.Sprintf("patch %s: %s", info.ID, p.Info().State))
	}
	return failed
}

// CanPatch makes the patch engine now (it is otherwise made on first use)
// and says why this VM cannot be patched, if it cannot. taken counts the
// patches an earlier lucos applied that the engine took over from their
// records in the guest; foreign, the slots it left that have none
// (patch.Engine.ForeignSlots).
func (s *Server) CanPatch(ctx context.Context) (taken, foreign int, err error) {
	e, err := s.engine.get(ctx)
	if err != nil {
		return 0, 0, err
	}
	return len(e.List()), len(e.ForeignSlots()), nil
}

// DetachRequested is closed when a client asks the server's lucos to
// detach (POST /detach, lucos detach).
func (s *Server) DetachRequested() <-chan struct{} { return s.detach }

// postDetach asks the lucos that attached to the VM to detach. A VM that
// lucos run started has nothing to detach from: it ends with its lucos.
func (s *Server) postDetach(w http.ResponseWriter, r *http.Request) {
	if !s.m.Attached() {
		fail(w, http.StatusConflict, errors.New("this VM was started by lucos run, not attached to: it ends with that lucos (Ctrl-] in its console, or power the guest off)"))
		return
	}
	s.detachOnce.Do(func() { close(s.detach) })
	writeJSON(w, http.StatusOK, DetachReply{ServerPID: os.Getpid()})
}
