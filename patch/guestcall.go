package patch

import (
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strings"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/patch/loader"
)

// Guest calls run a function of a patch inside the guest, on one vCPU, and
// bring that vCPU back exactly where it was. The patch runtime's
// __lucos_call(fn, a0..a4) is entered with a return address at the
// runtime's __lucos_trampoline, which stores the result in
// __lucos_call_done; a write watch on that word ends the call:
//
//	save the vCPU's registers → push the trampoline on its kernel stack →
//	rip = __lucos_call, rdi = fn, rsi.. = args → run that vCPU alone →
//	stop after the trampoline's store → read the result → restore.
//
// No breakpoints: under QEMU 7.2's TCG inserting or removing one flushes
// every translated block, and a busy guest then spends its time
// retranslating (measured: its throughput fell to a few percent when each
// call used one). A watchpoint only flushes one TLB page.
//
// __lucos_call enters RCU's watch when the vCPU was idle. The rules it
// follows were measured on these machines (see ../shared/DESIGN.md):
// never call on a vCPU in user mode, kick a vCPU halted in hlt with an
// IPI, and when the call does not come back while the other vCPUs are
// stopped (it spins on a lock one of them holds), let every vCPU run until
// it does; never restore registers of a call that has not returned.
const (
	// callAlone bounds the run of the calling vCPU alone.
	callAlone = 50 * time.Millisecond
	// callTimeout bounds the whole call, every vCPU running after callAlone.
	callTimeout = time.Second
	// pickTimeout bounds the search for a vCPU where a call may run.
	pickTimeout = 2 * time.Second
	// pickPoll is how long the guest runs between two looks for one.
	pickPoll = 2 * time.Millisecond
)

// SlowCalls counts the guest calls that did not return while their vCPU ran
// alone and needed every vCPU to run.
func (e *Engine) SlowCalls() int64 { return e.slowCalls.Load() }

// PendingCall is the vCPU of a guest call that timed out and has not
// returned yet, or 0.
func (e *Engine) PendingCall() int {
	var tid int
	e.m.WithPaused(e.ctx, func(*gdbstub.Client) error {
		if e.stray != nil {
			tid = e.stray.tid
		}
		return nil
	})
	return tid
}

// ErrCallTimeout means a guest call did not return in time.
var ErrCallTimeout = errors.New("guest call did not return")

// x86 facts the calls depend on.
const (
	eflagsIF    = 1 << 9
	opHLT       = 0xf4
	ipiVector   = 0xfd       // Linux's RESCHEDULE_VECTOR: harmless when spurious
	msiAddrBase = 0xfee00000 // a write here is an MSI to the APIC ID in bits 12-19
)

// gprs are the registers a call changes, and all that is put back after it.
var gprs = []string{"rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15", "rip", "eflags"}

// argRegs carry __lucos_call's arguments: fn, then a0..a4.
var argRegs = []string{"rdi", "rsi", "rdx", "rcx", "r8", "r9"}

// callSite is where a guest call will run.
type callSite struct {
	tid  int
	idle bool // halted in the idle loop: needs a kick
}

// call runs fn(args...) (at most 5 args) through p's runtime on the vCPU
// of site and returns fn's result. Lucos's own breakpoints and watchpoints
// are lifted for the call so that it runs uninterrupted.
// Precondition: the VM is stopped (the Machine's lock is held).
func (e *Engine) call(ctx context.Context, g *gdbstub.Client, site callSite, p *Patch, fn uint64, args ...uint64) (uint64, error) {
	rt := p.rt
	if len(args) > len(argRegs)-1 {
		return 0, fmt.Errorf("guest call: %d arguments, at most %d", len(args), len(argRegs)-1)
	}
	if rt.Call == 0 || rt.Trampoline == 0 || rt.Done == 0 {
		return 0, errors.New("guest call: the patch has no lucos runtime (built by an older lucos?)")
	}
	if e.stray != nil {
		return 0, fmt.Errorf("guest call: %w earlier (vCPU %d); no new call until it does", ErrCallTimeout, e.stray.tid)
	}
	// Three round trips to QEMU, whatever the number of traps: lift them
	// and read the vCPU's registers; set up the call; after it, put the
	// registers and the traps back.
	b := g.Batch()
	e.traps.lift(b)
	saved := b.ReadRegisters(site.tid)
	if err := b.Flush(); err != nil {
		return 0, fmt.Errorf("guest call on vCPU %d: %w", site.tid, err)
	}
	ret, err := e.callLifted(ctx, g, b, site, p, fn, args, saved)
	e.traps.place(b)
	if perr := b.Flush(); err == nil && perr != nil {
		err = fmt.Errorf("guest call on vCPU %d: restore: %w", site.tid, perr)
	}
	e.calls.Add(1)
	return ret, err
}

// callLifted runs the call with lucos's traps lifted; saved are the vCPU's
// registers. It leaves in b what puts the vCPU back (its registers, the
// call's watch removed) for the caller to send with the traps.
func (e *Engine) callLifted(ctx context.Context, g *gdbstub.Client, b *gdbstub.Batch, site callSite, p *Patch, fn uint64, args []uint64, saved *gdbstub.Registers) (uint64, error) {
	rt := p.rt
	tid := site.tid
	if cs, _ := saved.Get("cs"); cs&3 != 0 {
		return 0, fmt.Errorf("guest call on vCPU %d: it runs in user mode", tid)
	}
	rsp, err := saved.Get("rsp")
	if err != nil {
		return 0, err
	}
	// As at a call instruction: rsp+8 16-byte aligned, the return address
	// at rsp. The kernel has no red zone, so below rsp is free.
	sp := ((rsp - 8) &^ 0xf) - 8
	var ret [8]byte
	binary.LittleEndian.PutUint64(ret[:], rt.Trampoline)
	if err := e.queueVirt(b, sp, ret[:]); err != nil {
		return 0, fmt.Errorf("guest call: push the return address: %w", err)
	}
	b.WriteRegister(tid, "rip", rt.Call)
	b.WriteRegister(tid, "rsp", sp)
	vals := append([]uint64{fn}, args...)
	for i, r := range argRegs {
		v := uint64(0)
		if i < len(vals) {
			v = vals[i]
		}
		b.WriteRegister(tid, r, v)
	}
	b.InsertWatchpoint(gdbstub.WatchWrite, rt.Done, 8)
	if site.idle {
		queueKick(b, tid)
	}
	undo := func() {
		b.RemoveWatchpoint(gdbstub.WatchWrite, rt.Done, 8)
		b.WriteRegisters(tid, saved)
	}
	if err := b.Flush(); err != nil {
		undo()
		return 0, fmt.Errorf("guest call on vCPU %d: set up: %w", tid, err)
	}
	ev, err := e.runCall(ctx, g, tid, p, site.idle)
	if errors.Is(err, errNotStarted) {
		undo() // safe: nothing of the call ran
		return 0, fmt.Errorf("guest call on vCPU %d: %w (it stayed halted)", tid, err)
	}
	if err != nil {
		if errors.Is(err, ErrCallTimeout) {
			// The call still runs somewhere: its registers must not be
			// restored now. The watch stays; the trap handler finishes
			// the call when it gets there.
			e.stray = &strayCall{tid: tid, saved: saved, rt: rt}
			go e.awaitStray(e.stray)
		}
		return 0, err
	}
	b.RemoveWatchpoint(gdbstub.WatchWrite, rt.Done, 8)
	return e.finishCall(b, ev.Thread, saved, rt.Done)
}

// runCall runs vCPU tid alone until the trampoline's store to rt.Done
// stops it. A call on a kicked vCPU that has not even started is kicked
// once more. If it does not return within callAlone, every vCPU runs until
// callTimeout. A call that never started (its vCPU never woke) is reported
// as errNotStarted: its registers may then be put back.
func (e *Engine) runCall(ctx context.Context, g *gdbstub.Client, tid int, p *Patch, kicked bool) (gdbstub.StopEvent, error) {
	rt := p.rt
	ev, ok, err := e.runUntil(ctx, g, tid, tid, callAlone, rt)
	if err != nil || ok {
		return ev, err
	}
	if kicked && notStarted(g, tid, rt.Call) {
		e.log.Warn("guest call: the vCPU did not wake; kicking it again", "vcpu", tid)
		if err := kick(g, tid); err != nil {
			return ev, err
		}
		if ev, ok, err = e.runUntil(ctx, g, tid, tid, callAlone, rt); err != nil || ok {
			return ev, err
		}
	}
	e.log.Warn("guest call: running every vCPU until it returns", "vcpu", tid)
	e.slowCalls.Add(1)
	if ev, ok, err = e.runUntil(ctx, g, 0, tid, callTimeout-callAlone, rt); err != nil || ok {
		return ev, err
	}
	if notStarted(g, tid, rt.Call) {
		return ev, errNotStarted
	}
	return ev, fmt.Errorf("%w within %v on vCPU %d (%s)", ErrCallTimeout, callTimeout, tid, e.whereVCPUs(g, p))
}

// errNotStarted: the vCPU of a call never ran its first instruction.
var errNotStarted = errors.New("the vCPU never started the call")

// notStarted reports whether vCPU tid is still at the call's entry.
func notStarted(g *gdbstub.Client, tid int, entry uint64) bool {
	rip, err := g.ReadRegister(tid, "rip")
	return err == nil && rip == entry
}

// runUntil runs vCPU run (every vCPU for run 0) for at most d and reports
// whether the call on vCPU call has returned: the trampoline's store to
// rt.Done stopped it, or the vCPU is found past that store when time is up.
// QEMU reports one reason per stop, and a watch hit that coincides with the
// interrupt of the stop lucos asks for is not reported at all (the
// trampoline then loops without storing again): the vCPU's own RIP tells.
// The VM is stopped when it returns. Another stop ends it with an error.
func (e *Engine) runUntil(ctx context.Context, g *gdbstub.Client, run, call int, d time.Duration, rt loader.Runtime) (gdbstub.StopEvent, bool, error) {
	wctx, cancel := context.WithTimeout(ctx, d)
	defer cancel()
	for spurious := 0; ; spurious++ {
		var err error
		if run == 0 {
			_, err = g.Continue()
		} else {
			_, err = g.ContinueThread(run)
		}
		if err != nil {
			return gdbstub.StopEvent{}, false, err
		}
		ev, err := g.Wait(wctx)
		if err != nil {
			// Time is up: stop. The stop may be the trampoline after all.
			if ev, err = g.Stop(context.WithoutCancel(ctx)); err != nil {
				return ev, false, err
			}
			if ev.Signal == gdbstub.SignalInterrupt {
				if inTrampoline(g, call, rt) {
					e.log.Warn("guest call: found returned past its trampoline's store (the watch was not reported)", "vcpu", call)
					clearLostWatch(g, call)
					ev.Thread = call
					return ev, true, nil
				}
				return ev, false, nil
			}
		}
		if returned(ev, rt.Done) {
			return ev, true, nil
		}
		if spuriousDebugStop(ev) && spurious < maxSpurious {
			continue
		}
		return ev, false, fmt.Errorf("guest call: stopped elsewhere (%s)", ev)
	}
}

// A step that recovers a lost watch hit (gdbstub.Client.Stop) leaves
// QEMU's debug interrupt pending on its vCPU when the stepped instruction
// touched a page with a watchpoint: QEMU raises it at such an access
// while a hit is recorded, and the step's own debug stop reports the hit
// without taking the interrupt. The vCPU's next run then stops at once,
// before its first instruction, with a plain SIGTRAP. A call's run that
// ends so — on the call's vCPU, or on another when every vCPU runs — is
// resumed; lucos sets no breakpoints, so nothing else stops a vCPU with a
// plain SIGTRAP.
func spuriousDebugStop(ev gdbstub.StopEvent) bool {
	return !ev.Exited && ev.Signal == gdbstub.SignalTrap && ev.Reason == ""
}

// maxSpurious bounds the spurious debug stops one run of a call absorbs:
// one is pending per vCPU at most, so more say something else stops it.
const maxSpurious = 4

// clearLostWatch steps vCPU tid, looping in a trampoline, once: if QEMU
// still records a watch hit of it that it never reported (see
// gdbstub.Client.Stop), the step's stop reports it and QEMU forgets it.
// Removing the watch with the hit still recorded would leave QEMU holding
// a freed watchpoint, which the vCPU's next watched access reports in
// place of its own.
func clearLostWatch(g *gdbstub.Client, tid int) {
	g.Step(tid)
}

// inTrampoline reports whether vCPU tid is in rt's trampoline past its
// store of the result: the call has returned.
func inTrampoline(g *gdbstub.Client, tid int, rt loader.Runtime) bool {
	rip, err := g.ReadRegister(tid, "rip")
	return err == nil && rt.Returned != 0 && rip >= rt.Returned && rip < rt.Trampoline+trampolineLen
}

// returned reports whether ev is the trampoline's store to done.
func returned(ev gdbstub.StopEvent, done uint64) bool {
	return ev.Signal == gdbstub.SignalTrap && ev.Reason == "watch" && ev.Addr == done
}

// finishCall reads the result the trampoline stored at done and queues on
// b the writes that put back the general-purpose registers, rip and eflags
// saved before the call, onto vCPU at (the one that reached the
// trampoline), one 'P' each. Nothing else: 'G' would also write CR3, the
// FPU state and the segment bases, which are the interrupted context's as
// long as the call did not switch tasks (the runtime runs it with
// preemption off) — and after a call that ran while the guest went on,
// writing back a stale CR3 would leave the CPU on page tables the kernel
// thinks it left.
func (e *Engine) finishCall(b *gdbstub.Batch, at int, saved *gdbstub.Registers, done uint64) (uint64, error) {
	var word [8]byte
	if err := e.k.ReadVirt(done, word[:]); err != nil {
		return 0, fmt.Errorf("read the result of a guest call: %w", err)
	}
	ret := binary.LittleEndian.Uint64(word[:])
	for _, r := range gprs {
		v, err := saved.Get(r)
		if err != nil {
			return ret, err
		}
		b.WriteRegister(at, r, v)
	}
	return ret, nil
}

// strayCall is a guest call that timed out: when its vCPU reaches the
// trampoline at last, the trap handler restores it.
type strayCall struct {
	tid   int
	saved *gdbstub.Registers
	rt    loader.Runtime          // the patch's runtime: its trampoline, where the call returns to and loops, and Done, watched
	then  func(g *gdbstub.Client) // what waits for the call (e.g. unmapping its slot)
}

// strayPoll is how often lucos looks for a late call in its trampoline.
const strayPoll = 100 * time.Millisecond

// trampolineLen bounds __lucos_trampoline: an endbr64 (IBT), a store (7
// bytes), pause, jmp.
const trampolineLen = 24

// awaitStray looks, every strayPoll, for a vCPU looping in the late call's
// trampoline: normally the watch on done reports the return first, but a
// return the watch missed (seen under heavy host load) must not leave a
// vCPU looping there for good.
func (e *Engine) awaitStray(s *strayCall) {
	for {
		select {
		case <-e.ctx.Done():
			return
		case <-time.After(strayPoll):
		}
		pending := true
		e.m.WithPaused(e.ctx, func(g *gdbstub.Client) error {
			if e.stray != s {
				pending = false // finished by the trap handler
				return nil
			}
			for _, tid := range g.Threads() {
				if inTrampoline(g, tid, s.rt) {
					e.log.Warn("guest call: found returned in its trampoline (its watch did not fire)", "vcpu", tid)
					clearLostWatch(g, tid)
					e.finishStray(g, tid)
					pending = false
					return nil
				}
			}
			return nil
		})
		if !pending {
			return
		}
	}
}

// finishStray completes a timed-out call that has reached its trampoline.
func (e *Engine) finishStray(g *gdbstub.Client, tid int) error {
	s := e.stray
	e.stray = nil
	b := g.Batch()
	b.RemoveWatchpoint(gdbstub.WatchWrite, s.rt.Done, 8)
	_, err := e.finishCall(b, tid, s.saved, s.rt.Done)
	if ferr := b.Flush(); err == nil {
		err = ferr
	}
	e.log.Warn("guest call returned late; vCPU restored", "vcpu", tid, "err", err)
	if s.then != nil {
		s.then(g)
	}
	return err
}

// kick sends vCPU tid an IPI so that a vCPU halted in hlt runs: QEMU keeps
// a halted vCPU halted through register writes. A 32-bit write to
// 0xfee00000 | apic_id<<12 in guest-physical space is an MSI to that APIC.
// QEMU numbers APIC IDs from 0 in vCPU order.
func kick(g *gdbstub.Client, tid int) error {
	b := g.Batch()
	queueKick(b, tid)
	if err := b.Flush(); err != nil {
		return fmt.Errorf("kick vCPU %d: %w", tid, err)
	}
	return nil
}

// queueKick adds kick's MSI write to b.
func queueKick(b *gdbstub.Batch, tid int) {
	var data [4]byte
	binary.LittleEndian.PutUint32(data[:], ipiVector)
	b.WritePhysical(msiAddrBase|uint64(tid-1)<<12, data[:])
}

// pick finds a vCPU where a callback may run now: in kernel mode with
// interrupts enabled (preferred: no kick needed), or halted in the idle
// loop; with nmiSafe, kernel mode with interrupts off will do too. When no
// vCPU qualifies (every one runs user code), the guest runs on in slices of
// pickPoll until one does. Precondition: the VM is stopped.
func (e *Engine) pick(ctx context.Context, g *gdbstub.Client, nmiSafe bool) (callSite, error) {
	deadline := time.Now().Add(pickTimeout)
	for {
		site, ok, err := e.pickNow(g, nmiSafe)
		if err != nil || ok {
			return site, err
		}
		if time.Now().After(deadline) {
			return site, fmt.Errorf("no vCPU reached kernel mode with interrupts on within %v (all run user code)", pickTimeout)
		}
		if err := e.runSlice(ctx, g); err != nil {
			return site, err
		}
	}
}

func (e *Engine) pickNow(g *gdbstub.Client, nmiSafe bool) (callSite, bool, error) {
	// What decides, for every vCPU, in one round trip.
	type vcpu struct{ cs, rip, eflags, rsp, gsBase uint64 }
	tids := g.Threads()
	regs := make([]vcpu, len(tids))
	b := g.Batch()
	for i, tid := range tids {
		b.ReadRegister(tid, "cs", &regs[i].cs)
		b.ReadRegister(tid, "rip", &regs[i].rip)
		b.ReadRegister(tid, "eflags", &regs[i].eflags)
		b.ReadRegister(tid, "rsp", &regs[i].rsp)
		b.ReadRegister(tid, "gs_base", &regs[i].gsBase)
	}
	if err := b.Flush(); err != nil {
		return callSite{}, false, err
	}
	var idle []int
	for i, tid := range tids {
		r := regs[i]
		if r.cs&3 != 0 {
			continue
		}
		var prev [1]byte
		if e.k.ReadVirt(r.rip-1, prev[:]) == nil && prev[0] == opHLT {
			idle = append(idle, tid)
			continue
		}
		if r.eflags&eflagsIF == 0 && !nmiSafe {
			continue
		}
		if e.kernelContext(r.rip, r.rsp, r.gsBase) {
			return callSite{tid: tid}, true, nil
		}
	}
	if len(idle) > 0 {
		return callSite{tid: idle[0], idle: true}, true, nil
	}
	return callSite{}, false, nil
}

// kernelContext reports whether a vCPU in kernel mode at rip runs on a
// kernel stack with the kernel's GS base — not in the entry code, where
// the stack or GS may still be user space's (at the syscall entry the CPU
// is in kernel mode before swapgs and the stack switch). A call there
// would run on the user's stack with the user's per-CPU base.
func (e *Engine) kernelContext(rip, rsp, gsBase uint64) bool {
	return !e.entryText.Contains(rip) && rsp >= kernelHalf && gsBase >= kernelHalf
}

// kernelHalf is where x86-64's kernel addresses begin.
const kernelHalf = 0xffff800000000000

// runSlice lets the guest run for pickPoll. Lucos's own traps that fire
// meanwhile are handled as usual.
func (e *Engine) runSlice(ctx context.Context, g *gdbstub.Client) error {
	end := time.Now().Add(pickPoll)
	for {
		if _, err := g.Continue(); err != nil {
			return err
		}
		wctx, cancel := context.WithDeadline(ctx, end)
		ev, err := g.Wait(wctx)
		cancel()
		timedOut := err != nil
		if timedOut {
			// The stop may still be a trap that beat the interrupt.
			if ev, err = g.Stop(context.WithoutCancel(ctx)); err != nil {
				return err
			}
		}
		if !timedOut {
			// Stop looked for lost hits at its stop; Wait leaves it to us.
			if ev, err = g.RecoverLostWatches(ev); err != nil {
				return err
			}
		}
		if ev.Signal == gdbstub.SignalTrap || len(ev.Others) > 0 {
			e.onTrap(g, ev)
		}
		if timedOut || time.Now().After(end) {
			return nil
		}
	}
}

// whereVCPUs describes, for a call that did not return, where every vCPU
// is: the task it runs and its innermost kernel frames (ORC), so that the
// error names what the call waits for (a lock another vCPU holds, an
// interrupt storm, a loop in p's code). Precondition: the VM is
// stopped.
func (e *Engine) whereVCPUs(g *gdbstub.Client, p *Patch) string {
	snap, err := e.k.SnapshotPaused(g)
	if err != nil {
		return "vCPUs unreadable: " + err.Error()
	}
	comm := map[uint64]string{}
	for _, t := range snap.Tasks {
		comm[t.Addr] = fmt.Sprintf("pid %d %s", t.PID, t.Comm)
	}
	const maxShown = 8
	var parts []string
	for _, v := range snap.VCPUs {
		if v.User {
			parts = append(parts, fmt.Sprintf("vCPU %d: user mode (%s)", v.Thread, comm[v.Current]))
			continue
		}
		tr := snap.Unwind(v.Current)
		frames := []string{p.formatAddr(v.RIP)}
		for i, f := range tr.Frames {
			if i == 0 && f.IP == v.RIP {
				continue
			}
			if len(frames) == maxShown {
				frames = append(frames, "…")
				break
			}
			frames = append(frames, p.formatAddr(f.IP))
		}
		parts = append(parts, fmt.Sprintf("vCPU %d (%s, %s stack): %s", v.Thread, comm[v.Current], v.Stack, strings.Join(frames, " ← ")))
	}
	return strings.Join(parts, "; ")
}

// formatAddr names addr as symbol+offset in p's code (prefixed with the
// patch's name), else in the kernel's.
func (p *Patch) formatAddr(addr uint64) string {
	for _, s := range p.syms {
		if s.Func && addr >= s.Addr && addr < s.Addr+max(s.Size, 1) {
			return fmt.Sprintf("%s:%s+%#x", p.name, s.Name, addr-s.Addr)
		}
	}
	return p.k.FormatAddr(addr)
}
