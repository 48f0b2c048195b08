package api

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"sync"
	"time"

	"github.com/lucos/lucos/vmm"
)

// ErrSocketInUse means another live lucos already serves the API socket.
var ErrSocketInUse = errors.New("API socket is in use by another lucos")

// Server serves the control API of one Machine.
type Server struct {
	m    *vmm.Machine
	path string
	ln   net.Listener
	srv  *http.Server

	kernel *kernelView
	engine *engineView

	detach     chan struct{} // closed by POST /detach
	detachOnce sync.Once
}

// Listen claims the socket at path: a live socket is refused with
// ErrSocketInUse, a stale one (its lucos died) is replaced.
func Listen(path string, m *vmm.Machine) (*Server, error) {
	if err := claim(path); err != nil {
		return nil, err
	}
	ln, err := net.Listen("unix", path)
	if err != nil {
		return nil, fmt.Errorf("listen on API socket: %w", err)
	}
	if err := os.Chmod(path, 0o600); err != nil {
		ln.Close()
		return nil, fmt.Errorf("API socket: %w", err)
	}
	s := &Server{m: m, path: path, ln: ln, kernel: &kernelView{m: m}, detach: make(chan struct{})}
	s.engine = &engineView{kernel: s.kernel}
	mux := http.NewServeMux()
	mux.HandleFunc("GET /vm", s.getVM)
	mux.HandleFunc("POST /exec", s.postExec)
	mux.HandleFunc("POST /detach", s.postDetach)
	mux.HandleFunc("GET /tasks", s.getTasks)
	mux.HandleFunc("GET /sym", s.getSym)
	mux.HandleFunc("POST /patches", s.postPatch)
	mux.HandleFunc("GET /patches", s.getPatches)
	mux.HandleFunc("POST /patches/{id}/rollback", s.postRollback)
	s.srv = &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	return s, nil
}

// Claim checks that no live lucos serves path, so a second `lucos run` can
// fail before it boots anything; a stale socket is removed.
func Claim(path string) error { return claim(path) }

func claim(path string) error {
	if _, err := os.Lstat(path); errors.Is(err, os.ErrNotExist) {
		return nil
	}
	c, err := net.DialTimeout("unix", path, time.Second)
	if err == nil {
		c.Close()
		return fmt.Errorf("%w: %s (stop that VM first, or choose another --api-sock)", ErrSocketInUse, path)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("remove stale API socket: %w", err)
	}
	return nil
}

// Serve answers requests until Close.
func (s *Server) Serve() error {
	err := s.srv.Serve(s.ln)
	if errors.Is(err, http.ErrServerClosed) {
		return nil
	}
	return err
}

// Close stops serving and removes the socket.
func (s *Server) Close() error {
	ctx, cancel := context.WithTimeout(context.Background(), time.Second)
	defer cancel()
	err := s.srv.Shutdown(ctx)
	os.Remove(s.path)
	return err
}

// Info describes m as GET /vm does.
func Info(m *vmm.Machine) VMInfo {
	accel, why := m.Accel()
	return VMInfo{
		State:       m.State(),
		CPUs:        m.CPUs(),
		MemoryMiB:   m.Memory() >> 20,
		Accel:       accel,
		AccelReason: why,
		Release:     m.Release(),
		RunDir:      m.RunDir(),
		ConsoleLog:  m.ConsoleLog(),
		QEMUPID:     m.PID(),
		ServerPID:   os.Getpid(),
		BootMillis:  float64(m.BootTime().Microseconds()) / 1000,
		Pauses:      m.Pauses(),
		Attached:    m.Attached(),
		RAM:         m.RAMSource(),
	}
}

func (s *Server) getVM(w http.ResponseWriter, r *http.Request) {
	writeJSON(w, http.StatusOK, Info(s.m))
}

func (s *Server) postExec(w http.ResponseWriter, r *http.Request) {
	var req ExecRequest
	if !decode(w, r, &req, 1<<20) {
		return
	}
	if (len(req.Argv) == 0) == (req.Script == "") {
		fail(w, http.StatusBadRequest, errors.New("give exactly one of argv and script"))
		return
	}
	timeout := time.Duration(req.Timeout)
	if timeout <= 0 {
		timeout = 10 * time.Minute
	}
	ctx, cancel := context.WithTimeout(r.Context(), timeout)
	defer cancel()
	script := req.Script
	if script == "" {
		script = "exec " + vmm.ShellQuote(req.Argv)
	}
	res, err := s.m.ExecScript(ctx, script)
	switch {
	case errors.Is(err, vmm.ErrNoControl):
		fail(w, http.StatusConflict, err)
	case errors.Is(err, context.DeadlineExceeded):
		fail(w, http.StatusGatewayTimeout, fmt.Errorf("command still running after %v", timeout))
	case err != nil:
		fail(w, http.StatusBadGateway, err)
	default:
		writeJSON(w, http.StatusOK, res)
	}
}

// decode reads a JSON body of at most limit bytes, replying 400 on error.
func decode(w http.ResponseWriter, r *http.Request, v any, limit int64) bool {
	if err := json.NewDecoder(http.MaxBytesReader(w, r.Body, limit)).Decode(v); err != nil {
		fail(w, http.StatusBadRequest, fmt.Errorf("bad %s %s request: %w", r.Method, r.URL.Path, err))
		return false
	}
	return true
}

func writeJSON(w http.ResponseWriter, code int, v any) {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(code)
	json.NewEncoder(w).Encode(v)
}

func fail(w http.ResponseWriter, code int, err error) {
	writeJSON(w, code, errorBody{Error: err.Error()})
}
