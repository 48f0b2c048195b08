package api

import (
	"context"
	"errors"
	"net/http"
	"sync"
	"time"

	"github.com/lucos/lucos/patch"
)

// ApplyRequest is the body of POST /patches.
type ApplyRequest struct {
	KO      []byte   `json:"ko"` // the patch module (base64 in JSON)
	Wait    bool     `json:"wait,omitempty"`
	Timeout Duration `json:"timeout,omitempty"`
	// KickAfter: patch.Options.KickAfter; 0 (omitted) means
	// patch.DefaultKickAfter, negative never.
	KickAfter Duration `json:"kick_after,omitempty"`
	// Replace: patch.Options.Replace, a cumulative patch that takes over
	// every live one in its switch pause.
	Replace bool `json:"replace,omitempty"`
}

// RollbackRequest is the body of POST /patches/{id}/rollback.
type RollbackRequest struct {
	Wait      bool     `json:"wait,omitempty"`
	Timeout   Duration `json:"timeout,omitempty"`
	KickAfter Duration `json:"kick_after,omitempty"`
}

// engineView creates the patch engine on first use.
type engineView struct {
	kernel *kernelView
	once   sync.Once
	mu     sync.Mutex // guards e for Settle, which must not create it
	e      *patch.Engine
	err    error
}

func (v *engineView) get(ctx context.Context) (*patch.Engine, error) {
	v.once.Do(func() {
		k, err := v.kernel.get(ctx)
		if err != nil {
			v.err = err
			return
		}
		e, err := patch.New(v.kernel.m, k, nil)
		v.mu.Lock()
		v.e, v.err = e, err
		v.mu.Unlock()
	})
	return v.e, v.err
}

// engineStatus is the HTTP status of a failure to make the engine: a
// guest without a patch region is a conflict of the request with the VM,
// not a fault of the server.
func engineStatus(err error) int {
	if errors.Is(err, patch.ErrNoPatchRegion) {
		return http.StatusConflict
	}
	return http.StatusInternalServerError
}

func (s *Server) postPatch(w http.ResponseWriter, r *http.Request) {
	var req ApplyRequest
	if !decode(w, r, &req, 64<<20) {
		return
	}
	e, err := s.engine.get(r.Context())
	if err != nil {
		fail(w, engineStatus(err), err)
		return
	}
	p, err := e.Apply(context.WithoutCancel(r.Context()), req.KO, patch.Options{Wait: req.Wait, Timeout: time.Duration(req.Timeout), KickAfter: kickAfter(req.KickAfter), Replace: req.Replace})
	if err != nil {
		fail(w, http.StatusUnprocessableEntity, err)
		return
	}
	writeJSON(w, http.StatusOK, p.Info())
}

func (s *Server) getPatches(w http.ResponseWriter, r *http.Request) {
	e, err := s.engine.get(r.Context())
	if errors.Is(err, patch.ErrNoPatchRegion) {
		// Nothing can have been applied.
		writeJSON(w, http.StatusOK, []patch.Info{})
		return
	}
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	list := e.List()
	if list == nil {
		list = []patch.Info{}
	}
	writeJSON(w, http.StatusOK, list)
}

func (s *Server) postRollback(w http.ResponseWriter, r *http.Request) {
	var req RollbackRequest
	if !decode(w, r, &req, 1<<10) {
		return
	}
	e, err := s.engine.get(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	p, err := e.Rollback(context.WithoutCancel(r.Context()), r.PathValue("id"), patch.Options{Wait: req.Wait, Timeout: time.Duration(req.Timeout), KickAfter: kickAfter(req.KickAfter)})
	switch {
	case errors.Is(err, patch.ErrNotFound):
		fail(w, http.StatusNotFound, err)
	case err != nil:
		fail(w, http.StatusConflict, err)
	default:
		writeJSON(w, http.StatusOK, p.Info())
	}
}

// kickAfter maps the API's kick_after (0: the default) to the engine's
// (0: never).
func kickAfter(d Duration) time.Duration {
	if d == 0 {
		return patch.DefaultKickAfter
	}
	return time.Duration(d)
}
