package patch

import (
	"fmt"
	"sync"
	"time"

	"github.com/lucos/lucos/introspect"
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
	// Orig is the 5 bytes the jump replaced (the ftrace NOP).
	Orig []byte `json:"-"`
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
	state       State
	history     []Event
	loadPause   time.Duration // the longest of the load's pauses
	pause       time.Duration // the switch pause of the last transition
	commitAfter time.Duration // from the switch to commit (or to rolled-back)
	holders     []introspect.Holder
	checks      int
	checkErr    string        // the last stack check's failure, if it failed
	warnings    []string      // WARN sites of the patch that lucos turned into NOPs
	done        chan struct{} // closed when a transition settles; replaced per transition
}

// Info is a patch as the API and CLI show it.
type Info struct {
	ID          string              `json:"id"`
	Name        string              `json:"name"`
	Description string              `json:"description,omitempty"`
	BuildID     string              `json:"build_id"`
	Release     string              `json:"kernel_release"`
	State       State               `json:"state"`
	Funcs       []Func              `json:"funcs"`
	SlotBase    string              `json:"slot_va"`
	LoadPauseUS float64             `json:"load_pause_us"`
	PauseUS     float64             `json:"pause_us"`
	CommitMS    float64             `json:"commit_ms"`
	Checks      int                 `json:"stack_checks"`
	CheckError  string              `json:"check_error,omitempty"`
	Warnings    []string            `json:"warnings,omitempty"`
	HeldBy      []introspect.Holder `json:"held_by,omitempty"`
	History     []Event             `json:"history"`
}

// Info snapshots the patch.
func (p *Patch) Info() Info {
	p.mu.Lock()
	defer p.mu.Unlock()
	in := Info{
		ID: p.id, Name: p.name, Description: p.description, BuildID: p.buildID, Release: p.release,
		State: p.state, Funcs: append([]Func(nil), p.funcs...),
		LoadPauseUS: us(p.loadPause), PauseUS: us(p.pause),
		CommitMS: float64(p.commitAfter.Microseconds()) / 1e3, Checks: p.checks, CheckError: p.checkErr, Warnings: p.warnings,
		HeldBy: append([]introspect.Holder(nil), p.holders...), History: append([]Event(nil), p.history...),
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
