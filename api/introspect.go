package api

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"sync"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// TaskInfo is one task in the reply to GET /tasks.
type TaskInfo struct {
	introspect.Task
	Frames []string `json:"frames"` // innermost first, symbol+offset
	// Inexact says why the frames are the stack words that look like
	// return addresses rather than the ORC unwind's; empty when exact.
	Inexact string `json:"inexact,omitempty"`
}

// TasksReply is the reply to GET /tasks.
type TasksReply struct {
	Tasks   []TaskInfo        `json:"tasks"`
	VCPUs   []introspect.VCPU `json:"vcpus"`
	PauseUS float64           `json:"pause_us"`
	Slide   string            `json:"kaslr_slide"`
}

// SymbolReply is the reply to GET /sym?q=NAME|ADDR.
type SymbolReply struct {
	Name     string `json:"name"`
	Type     string `json:"type"`
	Pos      int    `json:"sympos"`
	Addr     string `json:"addr"`      // runtime (slide applied)
	LinkAddr string `json:"link_addr"` // in the image
	Size     uint64 `json:"size"`
	Offset   uint64 `json:"offset"` // of the queried address, for an address query
}

// kernelView attaches introspection to the VM once, on first use: loading
// the image's symbols and types takes a moment, and most VMs never need it.
type kernelView struct {
	m    *vmm.Machine
	once sync.Once
	k    *introspect.Kernel
	err  error
}

func (v *kernelView) get(ctx context.Context) (*introspect.Kernel, error) {
	// The result is kept: a request that gives up must not leave its
	// cancellation behind for every later one.
	ctx = context.WithoutCancel(ctx)
	v.once.Do(func() {
		v.k, v.err = launch.AttachKernel(ctx, v.m, "")
	})
	return v.k, v.err
}

// framesShown is how many frames GET /tasks gives per task.
const framesShown = 6

func (s *Server) getTasks(w http.ResponseWriter, r *http.Request) {
	k, err := s.kernel.get(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	snap, err := k.Snapshot(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	reply := TasksReply{VCPUs: snap.VCPUs, PauseUS: float64(snap.Pause.Nanoseconds()) / 1e3, Slide: fmt.Sprintf("%#x", k.Slide)}
	for _, t := range snap.Tasks {
		ti := TaskInfo{Task: t, Frames: []string{}}
		if tr := snap.Unwind(t.Addr); tr.Err != nil {
			ti.Inexact = tr.Err.Error()
		}
		for _, f := range snap.Frames(t.Addr, framesShown) {
			ti.Frames = append(ti.Frames, k.FormatAddr(f))
		}
		reply.Tasks = append(reply.Tasks, ti)
	}
	writeJSON(w, http.StatusOK, reply)
}

func (s *Server) getSym(w http.ResponseWriter, r *http.Request) {
	q := r.URL.Query().Get("q")
	pos, _ := strconv.Atoi(r.URL.Query().Get("pos"))
	if q == "" {
		fail(w, http.StatusBadRequest, errors.New("give q=NAME or q=ADDRESS"))
		return
	}
	k, err := s.kernel.get(r.Context())
	if err != nil {
		fail(w, http.StatusInternalServerError, err)
		return
	}
	if hex, ok := strings.CutPrefix(q, "0x"); ok {
		addr, err := strconv.ParseUint(hex, 16, 64)
		if err != nil {
			fail(w, http.StatusBadRequest, fmt.Errorf("bad address %q", q))
			return
		}
		sym, off, ok := k.Symbolize(addr)
		if !ok {
			fail(w, http.StatusNotFound, fmt.Errorf("no kernel symbol holds %#x", addr))
			return
		}
		writeJSON(w, http.StatusOK, symbolReply(k, sym, off))
		return
	}
	sym, err := k.Image.Symbols.Find(q, pos)
	switch {
	case errors.Is(err, kimage.ErrNotFound):
		fail(w, http.StatusNotFound, err)
	case err != nil:
		fail(w, http.StatusConflict, err)
	default:
		writeJSON(w, http.StatusOK, symbolReply(k, sym, 0))
	}
}

func symbolReply(k *introspect.Kernel, s kimage.Symbol, off uint64) SymbolReply {
	addr := s.Addr + k.Slide
	if s.Type == 'A' {
		addr = s.Addr
	}
	return SymbolReply{Name: s.Name, Type: string(s.Type), Pos: s.Pos, Addr: fmt.Sprintf("%#x", addr),
		LinkAddr: fmt.Sprintf("%#x", s.Addr), Size: s.Size, Offset: off}
}
