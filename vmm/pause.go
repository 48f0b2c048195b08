package vmm

import (
	"context"
	"fmt"
	"sort"
	"sync"
	"time"

	"github.com/lucos/lucos/gdbstub"
)

// Pause stops every vCPU. The guest-visible pause runs from the moment QEMU
// reports the stop until Resume sends the continue.
func (m *Machine) Pause(ctx context.Context) error {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.pauseLocked(ctx)
}

func (m *Machine) pauseLocked(ctx context.Context) error {
	// Gone first: a pause whose resume failed because QEMU died leaves
	// paused set.
	if err := m.alive(); err != nil {
		return err
	}
	if m.paused {
		return ErrPaused
	}
	ev, err := m.gdb.Stop(ctx)
	if err != nil {
		return fmt.Errorf("pause: %w", m.whyBroken(err))
	}
	m.paused, m.stop = true, ev
	if m.trap != nil && isTrap(ev) {
		// A trap beat the interrupt: handle it first, then the caller
		// has its pause.
		m.trap(m.gdb, ev)
	}
	return nil
}

// Resume restarts every vCPU and returns how long the guest was paused.
func (m *Machine) Resume() (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	return m.resumeLocked()
}

func (m *Machine) resumeLocked() (time.Duration, error) {
	if !m.paused {
		return 0, ErrNotPaused
	}
	sent, err := m.gdb.Continue()
	if err != nil {
		return 0, fmt.Errorf("resume: %w", err)
	}
	m.paused = false
	m.kickTrapLoop()
	d := sent.Sub(m.stop.At)
	m.pauses.Add(d)
	return d, nil
}

// LostWatches counts the watch hits QEMU dropped at a pause and lucos
// recovered (gdbstub.Client.Stop).
func (m *Machine) LostWatches() int64 { return m.gdb.LostWatches() }

// WithPaused runs fn with every vCPU stopped and resumes them afterwards,
// even if fn fails. fn may use the gdbstub client freely but must not
// resume the VM. It returns the guest-visible pause.
func (m *Machine) WithPaused(ctx context.Context, fn func(g *gdbstub.Client) error) (time.Duration, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	if err := m.pauseLocked(ctx); err != nil {
		return 0, err
	}
	ferr := fn(m.gdb)
	d, err := m.resumeLocked()
	if ferr != nil {
		return d, ferr
	}
	return d, err
}

// WaitStop waits for the running VM to stop by itself (a breakpoint or
// watchpoint). The VM is then paused: call Resume to go on.
// Precondition: no Pause or WithPaused runs meanwhile (the stop they cause
// would be taken for the one awaited).
func (m *Machine) WaitStop(ctx context.Context) (gdbstub.StopEvent, error) {
	// The gdbstub client serialises itself; m.mu is not held while waiting
	// so that other callers see the VM as running meanwhile.
	ev, err := m.gdb.Wait(ctx)
	if err != nil {
		return ev, err
	}
	m.mu.Lock()
	m.paused, m.stop = true, ev
	m.mu.Unlock()
	return ev, nil
}

// ReadPhys reads guest-physical memory through the shared RAM mapping. It
// needs no pause and no round trip to QEMU; a concurrent guest write may be
// seen half done, as with any racing reader.
func (m *Machine) ReadPhys(gpa uint64, buf []byte) error {
	if m.ram == nil {
		return fmt.Errorf("read guest-physical %#x: guest RAM is not mapped", gpa)
	}
	return m.ram.read(gpa, buf)
}

// whyBroken is err, a failure of the gdbstub connection, or, when QEMU
// died (and so broke it), why QEMU died: its exit comes within moments of
// the connection's end.
func (m *Machine) whyBroken(err error) error {
	select {
	case <-m.exited:
		return fmt.Errorf("%w: %w", ErrExited, m.exitError())
	case <-time.After(time.Second):
		return err
	}
}

// alive reports ErrExited once QEMU has gone.
func (m *Machine) alive() error {
	select {
	case <-m.exited:
		return fmt.Errorf("%w: %w", ErrExited, m.exitError())
	default:
		return nil
	}
}

// PauseLog records guest-visible pauses.
type PauseLog struct {
	mu    sync.Mutex
	d     []time.Duration
	total time.Duration // the sum of d
}

func NewPauseLog() *PauseLog { return &PauseLog{} }

func (l *PauseLog) Add(d time.Duration) {
	l.mu.Lock()
	l.d = append(l.d, d)
	l.total += d
	l.mu.Unlock()
}

// Total is the sum of every pause recorded so far.
func (l *PauseLog) Total() time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.total
}

// Samples returns a copy of every duration recorded, in order.
func (l *PauseLog) Samples() []time.Duration {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]time.Duration(nil), l.d...)
}

// PauseStats summarises a PauseLog.
type PauseStats struct {
	Count int           `json:"count"`
	P50   time.Duration `json:"p50_ns"`
	P99   time.Duration `json:"p99_ns"`
	Max   time.Duration `json:"max_ns"`
	Last  time.Duration `json:"last_ns"`
}

func (l *PauseLog) Stats() PauseStats {
	l.mu.Lock()
	d := append([]time.Duration(nil), l.d...)
	l.mu.Unlock()
	if len(d) == 0 {
		return PauseStats{}
	}
	s := PauseStats{Count: len(d), Last: d[len(d)-1]}
	sort.Slice(d, func(i, j int) bool { return d[i] < d[j] })
	s.P50, s.P99, s.Max = Quantile(d, 0.50), Quantile(d, 0.99), d[len(d)-1]
	return s
}

// Quantile returns the q-quantile of sorted durations (nearest rank).
func Quantile(sorted []time.Duration, q float64) time.Duration {
	if len(sorted) == 0 {
		return 0
	}
	i := int(q*float64(len(sorted))+0.5) - 1
	if i < 0 {
		i = 0
	}
	if i >= len(sorted) {
		i = len(sorted) - 1
	}
	return sorted[i]
}

// Pauses summarises every pause of this VM so far.
func (m *Machine) Pauses() PauseStats { return m.pauses.Stats() }

// PausedTotal is how long the VM has been paused in all since it started:
// the guest's clock stood still that long, so between two readings guest
// time advances by the host time elapsed minus the growth of PausedTotal.
// (A guest call that a trap handler makes counts as paused, though its
// vCPU runs meanwhile.)
func (m *Machine) PausedTotal() time.Duration { return m.pauses.Total() }

// GDB returns the gdbstub client for direct use while the VM is paused
// (after Pause or WaitStop, or inside WithPaused). Never resume through it:
// use Resume, which times the pause.
func (m *Machine) GDB() *gdbstub.Client { return m.gdb }
