package patch

import (
	"encoding/binary"
	"fmt"
	"maps"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch/loader"
)

// State is where a patch is in its life.
type State string

const (
	StateLoading       State = "loading"       // linked; pages being written to its slot
	StateTransitioning State = "transitioning" // jumps in place; threads may still run old code
	StateCommitted     State = "committed"     // no thread inside an old function
	StateReverting     State = "reverting"     // jumps removed; threads may still run patch code
	StateRolledBack    State = "rolled-back"   // slot unmapped and free
	StateFailed        State = "failed"        // a transition failed and was undone
)

// transitions lists the legal moves of the state machine.
var transitions = map[State][]State{
	StateLoading:       {StateTransitioning, StateFailed},
	StateTransitioning: {StateCommitted, StateReverting, StateFailed},
	StateCommitted:     {StateReverting},
	StateReverting:     {StateRolledBack, StateFailed},
}

// Event is one state change of a patch.
type Event struct {
	State State     `json:"state"`
	At    time.Time `json:"at"`
	Note  string    `json:"note,omitempty"`
}

// Func is one redirected function.
type Func struct {
	Name    string `json:"name"`
	Pos     int    `json:"sympos"`
	OldAddr uint64 `json:"old_addr"`
	OldSize uint64 `json:"old_size"`
	New     uint64 `json:"new_addr"`
	// Hook: the jump goes to a function-callback stub, and the old body
	// still runs after it; threads inside it do not hold the update.
	Hook bool `json:"hook,omitempty"`
	// Orig is the 5 bytes a rollback restores: the ftrace NOP, or the jump
	// of the patch below (Below); Expect, the 5 bytes the entry holds when
	// the jump is written (the same, except under Options.Replace, which
	// chains over the patches below but rolls back to the original).
	Orig   []byte `json:"-"`
	Expect []byte `json:"-"`
	// NewSize is the replacement's size in the patch.
	NewSize uint64 `json:"new_size,omitempty"`
	// Below is the committed patch whose replacement this one chains over
	// (patch stacking): its rollback restores that patch's jump.
	Below string `json:"chains_over,omitempty"`
	// BelowNew is that replacement's address, BelowSize its size: the
	// function a thread must have left for this patch to commit.
	BelowNew  uint64 `json:"-"`
	BelowSize uint64 `json:"-"`
}

// Patch is one loaded patch. Its fields are guarded by mu; read them
// through Info.
type Patch struct {
	mu          sync.Mutex
	id          string
	name        string
	description string
	buildID     string
	release     string
	funcs       []Func
	slot        *slot
	text        []introspect.Range // the patch's executable pages
	syms        []loader.Symbol    // the patch's own symbols, at their runtime addresses
	state       State
	history     []Event
	loadPause   time.Duration // the longest of the load's pauses
	pause       time.Duration // the switch pause of the last transition
	commitAfter time.Duration // from the switch to commit (or to rolled-back)
	holders     []introspect.Holder
	checks      int
	checkErr    string               // the last stack check's failure, if it failed
	kickAfter   time.Duration        // the transition's grace period before kicking holders; 0: never
	kicked      map[uint64]time.Time // holders kicked, by task_struct: when last
	kicks       int                  // kicks sent, over every transition
	warnings    []string             // WARN sites of the patch that lucos turned into NOPs
	done        chan struct{}        // closed when a transition settles; replaced per transition

	// Data updates and callbacks (data.go).
	rt loader.Runtime // the patch runtime's entry points
	// The module shell (shell.go), nil without the runtime. shellUp (under
	// mu) is true while it is registered in the guest. shellTouched and
	// shellStuck belong to the transition that owns the patch: a shell
	// operation ran (its kworker returns through patch code: wait before
	// unmapping), and one never finished (the slot must stay).
	shell        *loader.Shell
	shellUp      bool
	shellTouched bool
	shellStuck   bool
	data         []*dataItem
	callbacks    []loader.Callback
	threadSeen   map[uint64]bool    // tasks the thread callbacks have run for
	callbackRuns map[string]int     // by kind (function callbacks: see hooks)
	hooks        []hook             // function-callback stubs, whose run counters are in the guest
	k            *introspect.Kernel // reads the counters
	shadowsFreed int
	watching     bool         // its watches are in the guest
	trapErr      string       // the last failure while handling a trap
	traps        atomic.Int64 // trapped writes to watched instances
	transfers    atomic.Int64 // state-transfer calls (forward and reverse)
	// orphanData counts the data updates of a patch taken over from an
	// earlier lucos (record.go): their instances are not recorded, so it
	// cannot be rolled back.
	orphanData int
	replaces   bool // applied with Options.Replace: it took over every patch below
}

// countCallback counts one run of a callback of kind.
func (p *Patch) countCallback(kind string) {
	p.mu.Lock()
	p.callbackRuns[kind]++
	p.mu.Unlock()
}

// hookRuns reads how often the function callbacks ran. Once the slot is
// unmapped the counters are gone: rollback saves them in callbackRuns first
// and clears hooks.
// Precondition: p.mu is held.
func (p *Patch) hookRuns() int {
	n := 0
	for _, h := range p.hooks {
		var b [8]byte
		if p.k.ReadVirt(h.count, b[:]) == nil {
			n += int(binary.LittleEndian.Uint64(b[:]))
		}
	}
	return n
}

// saveHookRuns keeps the function callbacks' counts before the slot that
// holds them goes.
func (p *Patch) saveHookRuns() {
	p.mu.Lock()
	defer p.mu.Unlock()
	if n := p.hookRuns(); n > 0 {
		p.callbackRuns["func"] += n
	}
	p.hooks = nil
}

func (p *Patch) setWatching(on bool) {
	p.mu.Lock()
	p.watching = on
	p.mu.Unlock()
}

// noteTrapError records a failure in the guest-side work of the patch.
func (p *Patch) noteTrapError(err error) {
	p.mu.Lock()
	p.trapErr = err.Error()
	p.mu.Unlock()
}

// Info is a patch as the API and CLI show it.
type Info struct {
	ID          string `json:"id"`
	Name        string `json:"name"`
	Description string `json:"description,omitempty"`
	BuildID     string `json:"build_id"`
	Release     string `json:"kernel_release"`
	State       State  `json:"state"`
	Funcs       []Func `json:"funcs"`
	SlotBase    string `json:"slot_va"`
	// Module is the patch's module shell in the guest (lsmod,
	// /proc/kallsyms), while it is registered.
	Module      string              `json:"module,omitempty"`
	LoadPauseUS float64             `json:"load_pause_us"`
	PauseUS     float64             `json:"pause_us"`
	CommitMS    float64             `json:"commit_ms"`
	Checks      int                 `json:"stack_checks"`
	CheckError  string              `json:"check_error,omitempty"`
	Warnings    []string            `json:"warnings,omitempty"`
	HeldBy      []introspect.Holder `json:"held_by,omitempty"`
	// Kicks counts the kicks sent to tasks that held a transition past
	// its grace period (kick.go).
	Kicks int `json:"kicks,omitempty"`
	// Data updates and callbacks.
	Data         []DataInfo     `json:"data,omitempty"`
	Watching     bool           `json:"watching,omitempty"`  // watches are in place (the coherence window is open)
	Traps        int64          `json:"traps"`               // trapped writes to watched instances
	Transfers    int64          `json:"transfers"`           // state-transfer calls run in the guest
	Callbacks    map[string]int `json:"callbacks,omitempty"` // runs by kind
	ShadowsFreed int            `json:"shadows_freed,omitempty"`
	TrapError    string         `json:"trap_error,omitempty"`
	History      []Event        `json:"history"`
}

// DataInfo is one LUCOS_DATA as the API shows it.
type DataInfo struct {
	Name    string `json:"name"`
	OldAddr uint64 `json:"old_addr"`
	NewAddr uint64 `json:"new_addr"`
	OldSize uint64 `json:"old_size"`
	NewSize uint64 `json:"new_size"`
}

// Info snapshots the patch.
func (p *Patch) Info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := Info{
		ID: p.id, Name: p.name, Description: p.description, BuildID: p.buildID, Release: p.release,
		State: p.state, Funcs: append([]Func(nil), p.funcs...),
		LoadPauseUS: us(p.loadPause), PauseUS: us(p.pause),
		CommitMS: float64(p.commitAfter.Microseconds()) / 1e3, Checks: p.checks, CheckError: p.checkErr, Warnings: p.warnings, Kicks: p.kicks,
		HeldBy: append([]introspect.Holder(nil), p.holders...), History: append([]Event(nil), p.history...),
		Traps: p.traps.Load(), Transfers: p.transfers.Load(), ShadowsFreed: p.shadowsFreed, TrapError: p.trapErr,
	}
	for _, d := range p.data {
		in.Data = append(in.Data, DataInfo{Name: d.name, OldAddr: d.oldAddr, NewAddr: d.newAddr, OldSize: d.oldSize, NewSize: d.newSize})
	}
	if len(p.callbackRuns) > 0 || len(p.hooks) > 0 {
		in.Callbacks = maps.Clone(p.callbackRuns)
		if in.Callbacks == nil {
			in.Callbacks = map[string]int{}
		}
		if n := p.hookRuns(); n > 0 {
			in.Callbacks["func"] += n
		}
	}
	in.Watching = p.watching
	if p.shellUp {
		in.Module = p.shell.Name
	}
	if p.slot != nil {
		in.SlotBase = fmt.Sprintf("%#x", p.slot.va)
	}
	return in
}

func us(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// ID is the patch's id in this VM ("1", "2", ...).
func (p *Patch) ID() string { return p.id }

// State is the patch's current state.
func (p *Patch) State() State {
	p.mu.Lock()
	defer p.mu.Unlock()
	return p.state
}

// setState moves the patch along the state machine; an illegal move is a
// bug in the engine and is reported, not taken.
// Precondition: p.mu is held.
func (p *Patch) setState(s State, note string) error {
	ok := false
	for _, next := range transitions[p.state] {
		ok = ok || next == s
	}
	if !ok {
		return fmt.Errorf("patch %s: illegal transition %s -> %s", p.id, p.state, s)
	}
	p.state = s
	p.history = append(p.history, Event{State: s, At: time.Now(), Note: note})
	return nil
}

// settled reports whether the patch is in a state no transition is running from.
// Precondition: p.mu is held.
func (p *Patch) settled() bool {
	switch p.state {
	case StateCommitted, StateRolledBack, StateFailed:
		return true
	}
	return false
}
