package patch

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"log/slog"
	"strconv"
	"sync"
	"sync/atomic"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch/loader"
	"github.com/lucos/lucos/vmm"
)

// Page and its permissions are the loader's.
type (
	Page = loader.Page
	Perm = loader.Perm
)

const (
	PermRX = loader.RX
	PermRO = loader.RO
	PermRW = loader.RW
)

// Errors callers branch on.
var (
	ErrNotFound   = errors.New("no such patch")
	ErrBadState   = errors.New("patch is not in a state that allows this")
	ErrStackOrder = errors.New("a later patch touches the same functions")
)

// Engine applies and rolls back patches on one VM.
type Engine struct {
	m   *vmm.Machine
	k   *introspect.Kernel
	win *window
	log *slog.Logger

	ctx    context.Context // ends background termination checks on Close
	cancel context.CancelFunc

	mu      sync.Mutex // serialises transitions; guards the fields below
	patches []*Patch   // in the order they were applied
	slots   [layout.Slots]*Patch
	// foreign: slots an earlier lucos left mapped (index → VA); never
	// allocated.
	foreign map[int]uint64
	nextID  int

	// Only touched with the VM stopped and the Machine's lock held (in
	// WithPaused or in the trap handler), which serialises them.
	traps trapSet    // watches and breakpoints lucos keeps in the guest
	stray *strayCall // a guest call that timed out and has not returned

	entryText introspect.Range // the kernel's entry code: no guest call there

	calls, slowCalls atomic.Int64  // guest calls made; those that needed every vCPU
	trapTimes        *vmm.PauseLog // per trapped write: its stop to the end of its handling
}

// Options for Apply and Rollback.
type Options struct {
	// Wait blocks until the transition settles (committed, rolled back) or
	// Timeout passes; the transition goes on in the background either way.
	Wait    bool
	Timeout time.Duration
	// Replace (apply only) makes the patch cumulative, as klp's atomic
	// replace: in its switch pause it takes over every live patch — the
	// functions it replaces chain over theirs, the ones it does not are
	// restored to the original — and those patches are released (freed
	// once no thread runs their code). Rolling it back restores the
	// original kernel.
	Replace bool
	// KickAfter is how long the transition waits for the tasks that hold
	// it (asleep in an old function, or in patch code while rolling back)
	// before it kicks them (kick.go); 0 or negative: never. The API and
	// the CLI kick after DefaultKickAfter unless told otherwise; the
	// engine itself only when asked, so that a caller that holds a
	// transition open on purpose (a coherence window) keeps it.
	KickAfter time.Duration
}

// DefaultTimeout bounds Wait when Options.Timeout is zero.
const DefaultTimeout = 30 * time.Second

// kickAfter is o's grace period before kicking; 0 for never.
func (o Options) kickAfter() time.Duration { return max(o.KickAfter, 0) }

// New prepares an engine for the kernel k of machine m.
func New(m *vmm.Machine, k *introspect.Kernel, log *slog.Logger) (*Engine, error) {
	if log == nil {
		log = slog.New(slog.DiscardHandler)
	}
	if err := checkPatchRegion(m, k); err != nil {
		return nil, err
	}
	win, err := findWindow(k)
	if err != nil {
		return nil, fmt.Errorf("patch engine: %w", err)
	}
	var entry introspect.Range
	if entry.Start, err = k.Addr("__entry_text_start", 0); err == nil {
		entry.End, err = k.Addr("__entry_text_end", 0)
	}
	if err != nil {
		return nil, fmt.Errorf("patch engine: %w", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	// Termination checks unwind with the kernel's ORC tables: read them
	// now, not in the first update's first check.
	if err := k.PrepareUnwind(); err != nil {
		log.Warn("no exact stacks: termination checks scan every stack word", "err", err)
	}
	e := &Engine{entryText: entry, m: m, k: k, win: win, log: log, ctx: ctx, cancel: cancel, trapTimes: vmm.NewPauseLog(), foreign: map[int]uint64{}}
	if err := e.findForeignSlots(); err != nil {
		cancel()
		return nil, fmt.Errorf("patch engine: %w", err)
	}
	m.SetTrapHandler(e.onTrap)
	e.adoptForeign()
	return e, nil
}

// Close stops background termination checks and trap handling.
func (e *Engine) Close() {
	e.cancel()
	e.m.SetTrapHandler(nil)
}

// Apply links the patch module ko for the running kernel, loads it into a
// free slot, redirects its old functions in one pause of all vCPUs, and
// tracks the update until it commits. Refusals happen before anything is
// written to the guest; a failure after that undoes what was written.
func (e *Engine) Apply(ctx context.Context, ko []byte, o Options) (*Patch, error) {
	p, err := e.apply(ctx, ko, o)
	if err != nil {
		return nil, err
	}
	return p, e.wait(p, o)
}

func (e *Engine) apply(ctx context.Context, ko []byte, o Options) (*Patch, error) {
	mod, err := loader.Parse(ko)
	if err != nil {
		return nil, fmt.Errorf("apply: %w", err)
	}
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, q := range e.patches {
		if st := q.State(); (st == StateTransitioning || st == StateCommitted) && q.buildID == mod.BuildID && mod.BuildID != "" {
			return nil, fmt.Errorf("apply %s: %w: the same patch (build id %s) is live as patch %s: its functions are already redirected", mod.Name, ErrTargetChanged, mod.BuildID, q.id)
		}
	}
	s, err := e.allocSlot()
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	t, err := e.newTarget()
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	img, err := mod.Link(t, s.va+4096, layout.SlotSize-4096-recordArea)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	funcs, err := e.checkFuncs(img)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	var replaced []*Patch
	var unredirect []Func
	if o.Replace {
		if replaced, unredirect, err = e.replacing(funcs); err != nil {
			return nil, fmt.Errorf("apply %s --replace: %w", mod.Name, err)
		}
	}
	// Function callbacks: stubs on the two pages after the patch's own.
	end := s.va + 4096
	for _, pg := range img.Pages {
		end = max(end, pg.Addr+loader.PageSize)
	}
	if end+2*loader.PageSize > s.va+layout.SlotSize-recordArea {
		return nil, fmt.Errorf("apply %s: no room in the slot for function-callback stubs", mod.Name)
	}
	entry := func(va uint64) ([]byte, error) { return readEntry(e.k, va) }
	stubs, funcs, hooks, err := buildHooks(img.Callbacks, funcs, entry, end, end+loader.PageSize)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	if len(funcs) == 0 && len(img.Data) == 0 && len(img.Callbacks) == 0 {
		return nil, fmt.Errorf("apply %s: the patch replaces no function and has no data updates or callbacks", mod.Name)
	}
	text := textRanges(img.Text)
	if len(stubs) > 0 {
		text = append(text, introspect.Range{Start: end, End: end + loader.PageSize})
	}
	e.nextID++
	p := &Patch{
		id: strconv.Itoa(e.nextID), name: mod.Name, description: mod.Description, buildID: mod.BuildID,
		release: mod.Release, funcs: funcs, slot: s, text: text, syms: img.Symbols, state: StateLoading,
		history: []Event{{State: StateLoading, At: time.Now()}}, done: make(chan struct{}),
		rt: img.Runtime, shell: img.Shell, data: dataItems(img), callbacks: img.Callbacks,
		threadSeen: map[uint64]bool{}, callbackRuns: map[string]int{},
		hooks: hooks, k: e.k, kickAfter: o.kickAfter(), kicked: map[uint64]time.Time{}, replaces: o.Replace,
	}
	for _, w := range img.Warnings {
		p.warnings = append(p.warnings, fmt.Sprintf("WARN at %s:%d in patch code is a NOP: the kernel knows no bug table for patch code", w.File, w.Line))
	}
	rec, err := encodeRecord(p)
	if err != nil {
		return nil, fmt.Errorf("apply %s: %w", mod.Name, err)
	}
	e.slots[s.index] = p
	e.patches = append(e.patches, p)

	// Load: the pages, the record and their mapping, one short pause per
	// step. Nothing refers to them until the switch.
	steps, err := e.loadSteps(s, append(img.Pages, stubs...), rec)
	for _, step := range steps {
		if err != nil {
			break
		}
		var d time.Duration
		d, err = e.m.WithPaused(ctx, step)
		p.loadPause = max(p.loadPause, d)
	}
	if err != nil {
		return nil, e.abort(ctx, p, fmt.Errorf("apply %s: load into slot %d: %w", p.name, s.index, err))
	}
	// The module shell before anything runs patch code: a fault in it
	// must find the patch's exception table.
	if err := e.registerShell(ctx, p); err != nil {
		return nil, e.abort(ctx, p, fmt.Errorf("apply %s: %w", p.name, err))
	}
	if err := e.startup(ctx, p); err != nil {
		return nil, e.abort(ctx, p, fmt.Errorf("apply %s: %w", p.name, err))
	}
	// Switch: transfers, watches, hooks and jumps, all in one pause.
	switchAt := time.Now()
	p.pause, err = e.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		if err := e.switchIn(ctx, g, p); err != nil {
			return err
		}
		if err := e.restore(g, unredirect); err != nil {
			e.traps.dropWatches(g, p)
			return e.undoInstall(g, p.funcs, err)
		}
		return nil
	})
	if err != nil {
		return nil, e.abort(ctx, p, fmt.Errorf("apply %s: %w", p.name, err))
	}
	p.mu.Lock()
	note := fmt.Sprintf("%d functions redirected in a %.0f µs pause", len(funcs), us(p.pause))
	if o.Replace {
		note += fmt.Sprintf(", replacing %d patch(es), %d function(s) restored", len(replaced), len(unredirect))
	}
	p.setState(StateTransitioning, note)
	p.mu.Unlock()
	for _, q := range replaced {
		q.mu.Lock()
		q.setState(StateReverting, "replaced by patch "+p.id)
		q.mu.Unlock()
		go e.release(q, switchAt)
	}
	e.log.Info("patch applied", "id", p.id, "name", p.name, "pause", p.pause, "load_pause", p.loadPause)

	go e.terminate(p, switchAt)
	return p, nil
}

// checkFuncs turns the linked functions into redirects, refusing a function
// another live patch already redirects.
// Precondition: e.mu is held.
func (e *Engine) checkFuncs(img *loader.Image) ([]Func, error) {
	live := e.liveFuncs()
	var funcs []Func
	for _, f := range img.Funcs {
		nf := Func{Name: f.Old.Name, Pos: f.Old.Pos, OldAddr: f.OldAddr, OldSize: f.OldSize, New: f.New, NewSize: f.NewSize,
			Orig: append([]byte(nil), f.OldEntry[:]...)}
		if id, ok := live[f.OldAddr]; ok {
			below := e.byID(id)
			bf, top := below.topFunc(f.OldAddr)
			switch {
			case below.State() != StateCommitted:
				return nil, fmt.Errorf("%w: %s is redirected by patch %s, which is still %s: apply again once it has committed", ErrTargetChanged, f.Old.Name, id, below.State())
			case !top || !bytes.Equal(nf.Orig, mustJmp(f.OldAddr, bf.New)):
				return nil, fmt.Errorf("%w: %s is already redirected by patch %s", ErrTargetChanged, f.Old.Name, id)
			}
			nf.Below, nf.BelowNew, nf.BelowSize = id, bf.New, bf.NewSize
		}
		funcs = append(funcs, nf)
	}
	for _, cb := range img.Callbacks {
		if id, ok := live[cb.SymAddr]; ok && cb.Spec.Kind == loader.CallbackFunc {
			return nil, fmt.Errorf("%w: %s, which a function callback hooks, is already redirected by patch %s", ErrTargetChanged, cb.Spec.Symbol, id)
		}
	}
	return funcs, nil
}

// liveFuncs maps the entry of every function a live patch redirects (or
// hooks) to that patch's id.
// Precondition: e.mu is held.
// A reverting patch's jumps are gone already: its functions are free
// for the next patch while its code drains.
func (e *Engine) liveFuncs() map[uint64]string {
	live := map[uint64]string{}
	for _, q := range e.patches {
		if st := q.State(); st == StateTransitioning || st == StateCommitted {
			for _, f := range q.funcs {
				live[f.OldAddr] = q.id
			}
		}
	}
	return live
}

// replacing prepares a cumulative apply of funcs: every live patch is
// replaced. It returns them and the redirects of theirs that funcs does not
// take over, to restore to the original (the bottom patch's Orig) in the
// switch pause; funcs' chained entries roll back to the original too.
// Precondition: e.mu is held.
func (e *Engine) replacing(funcs []Func) ([]*Patch, []Func, error) {
	var replaced []*Patch
	for _, q := range e.patches {
		switch q.State() {
		case StateCommitted:
		case StateTransitioning:
			return nil, nil, fmt.Errorf("%w: patch %s is still transitioning: apply again once it has committed", ErrBadState, q.id)
		default:
			continue
		}
		if len(q.data) > 0 {
			return nil, nil, fmt.Errorf("%w: patch %s has data updates (LUCOS_DATA), whose new instances a cumulative patch cannot take over: roll it back first", ErrBadState, q.id)
		}
		replaced = append(replaced, q)
	}
	taken := map[uint64]bool{}
	for i := range funcs {
		taken[funcs[i].OldAddr] = true
	}
	bottom := map[uint64][]byte{} // the original entry of each redirected function
	top := map[uint64]Func{}      // and the redirect in place now
	var order []uint64
	for _, q := range replaced {
		for _, f := range q.funcs {
			if _, ok := bottom[f.OldAddr]; !ok {
				bottom[f.OldAddr] = f.expect()
				order = append(order, f.OldAddr)
			}
			top[f.OldAddr] = f
		}
	}
	for i := range funcs {
		if b, ok := bottom[funcs[i].OldAddr]; ok {
			funcs[i].Expect, funcs[i].Orig = funcs[i].Orig, b
		}
	}
	var restore []Func
	for _, addr := range order {
		if !taken[addr] {
			f := top[addr]
			f.Orig = bottom[addr] // restore checks the jump to f.New, writes the original
			restore = append(restore, f)
		}
	}
	return replaced, restore, nil
}

// byID is the patch id. Precondition: e.mu is held.
func (e *Engine) byID(id string) *Patch {
	for _, q := range e.patches {
		if q.id == id {
			return q
		}
	}
	return nil
}

// topFunc is p's redirect of the function at addr; ok is false for a
// function callback's hook, which nothing may chain over.
func (p *Patch) topFunc(addr uint64) (Func, bool) {
	for _, f := range p.funcs {
		if f.OldAddr == addr && !f.Hook {
			return f, true
		}
	}
	return Func{}, false
}

// mustJmp is jmpTo for addresses known to be in range (both in the
// kernel-image window), or nil.
func mustJmp(from, to uint64) []byte {
	b, _ := jmpTo(from, to)
	return b
}

// terminate runs in the background after a switch: once no thread is inside
// an old function, the patch is committed.
func (e *Engine) terminate(p *Patch, switchAt time.Time) {
	err := e.waitClear(e.ctx, p, oldRanges(p.funcs))
	// e.mu keeps a rollback from starting between the watches' removal
	// and the commit.
	e.mu.Lock()
	defer e.mu.Unlock()
	if err == nil && p.State() == StateTransitioning {
		// The coherence window closes with the update.
		if uerr := e.unwatch(e.ctx, p); uerr != nil {
			p.noteTrapError(fmt.Errorf("drop watches at commit: %w", uerr))
		}
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	if p.state != StateTransitioning {
		return // rolled back meanwhile
	}
	if errors.Is(err, vmm.ErrExited) {
		// Nothing is left to commit or roll back.
		p.holders = nil
		p.setState(StateFailed, "the VM went away while the update transitioned: "+err.Error())
		close(p.done)
		p.done = make(chan struct{})
		return
	}
	if err != nil {
		e.log.Warn("termination check stopped", "id", p.id, "err", err)
		return
	}
	p.commitAfter = time.Since(switchAt)
	p.holders = nil
	p.setState(StateCommitted, fmt.Sprintf("no thread inside an old function after %d stack checks", p.checks))
	close(p.done)
	p.done = make(chan struct{})
}

// abort undoes a failed apply: the module shell is unregistered, and the
// slot unmapped and freed once no thread is in patch code (the shell's
// kworker returns through it); p is marked failed with err. A guest call
// or shell operation of p's that did not finish may still run in the
// slot: then the slot stays mapped, and taken.
// Precondition: e.mu is held.
func (e *Engine) abort(ctx context.Context, p *Patch, err error) error {
	ctx = context.WithoutCancel(ctx)
	var notes []string
	keep := p.shellStuck
	if serr := e.unregisterShell(ctx, p); serr != nil {
		notes = append(notes, serr.Error())
		keep = true
	}
	if !keep && p.shellTouched {
		if werr := e.waitClear(e.ctx, p, p.text); werr != nil {
			notes = append(notes, "waiting for patch code to be left: "+werr.Error())
			keep = true
		}
	}
	freed := false
	if !keep {
		var uerr error
		_, uerr = e.m.WithPaused(ctx, func(g *gdbstub.Client) (err error) {
			freed, err = e.unload(g, p)
			return err
		})
		switch {
		case uerr != nil:
			notes = append(notes, "unmapping its slot failed too: "+uerr.Error())
			freed = false
		case !freed:
			notes = append(notes, "its slot stays mapped until the guest call returns")
		}
	} else {
		notes = append(notes, "its slot stays mapped")
	}
	p.mu.Lock()
	note := err.Error()
	for _, n := range notes {
		note += "; " + n
	}
	p.holders = nil
	p.setState(StateFailed, note)
	p.mu.Unlock()
	if freed {
		e.slots[p.slot.index] = nil
	}
	return err
}

// unload unmaps p's slot and reports whether it is free now. While a guest
// call that timed out still runs inside the slot, it is left mapped; when
// the call returns, the trap handler unmaps it, and the slot stays taken
// for the engine's life (at most one such slot per late call).
// Precondition: the VM is paused.
func (e *Engine) unload(g *gdbstub.Client, p *Patch) (bool, error) {
	if s := e.stray; s != nil && p.slot.contains(s.rt.Done) {
		s.then = func(g *gdbstub.Client) {
			if err := e.unmapSlot(g, p.slot); err != nil {
				e.log.Warn("unmap a slot after a late guest call", "id", p.id, "err", err)
				return
			}
			// The slot stays taken: a stop for its done word may still be
			// on its way, and must not match a later call's in this slot.
		}
		return false, nil
	}
	return true, e.unmapSlot(g, p.slot)
}

// wait blocks per o until p settles; a timeout is not an error: the patch
// stays in its transitional state, visible in List.
func (e *Engine) wait(p *Patch, o Options) error {
	if !o.Wait {
		return nil
	}
	timeout := o.Timeout
	if timeout <= 0 {
		timeout = DefaultTimeout
	}
	deadline := time.After(timeout)
	for {
		p.mu.Lock()
		if p.settled() {
			p.mu.Unlock()
			return nil
		}
		done := p.done
		p.mu.Unlock()
		select {
		case <-done:
		case <-deadline:
			return nil
		}
	}
}

// Wait blocks until p's transition settles (committed, rolled back,
// failed), timeout passes, or ctx ends.
func (e *Engine) Wait(ctx context.Context, p *Patch, timeout time.Duration) error {
	done := make(chan error, 1)
	go func() { done <- e.wait(p, Options{Wait: true, Timeout: timeout}) }()
	select {
	case err := <-done:
		return err
	case <-ctx.Done():
		return ctx.Err()
	}
}

// List returns every patch, oldest first.
func (e *Engine) List() []Info {
	e.mu.Lock()
	ps := append([]*Patch(nil), e.patches...)
	e.mu.Unlock()
	out := make([]Info, len(ps))
	for i, p := range ps {
		out[i] = p.Info()
	}
	return out
}

// Get finds a patch by id.
func (e *Engine) Get(id string) (*Patch, error) {
	e.mu.Lock()
	defer e.mu.Unlock()
	for _, p := range e.patches {
		if p.id == id {
			return p, nil
		}
	}
	return nil, fmt.Errorf("%w: %q", ErrNotFound, id)
}

// textRanges are the runtime ranges of a patch's code: while a thread is
// inside one, the patch's slot must stay mapped.
func textRanges(text []loader.Range) []introspect.Range {
	r := make([]introspect.Range, len(text))
	for i, t := range text {
		r[i] = introspect.Range{Start: t.Start, End: t.End}
	}
	return r
}
