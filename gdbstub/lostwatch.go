package gdbstub

import (
	"fmt"
	"slices"

	"golang.org/x/arch/x86/x86asm"
)

// A write watch hit can be lost by QEMU 7.2 (TCG). The vCPU that hits a
// watchpoint records the hit (CPUState.watchpoint_hit), re-executes the
// store alone, and then asks the main loop for a debug stop. If the main
// loop is already stopping the VM for a 0x03 at that moment, the VM stops
// as paused, the debug stop request finds it stopped and is dropped, and
// the stop reply is a plain T02 — for the vCPU that hit, since QEMU made it
// the stop CPU. The hit stays recorded: the vCPU's next access to any
// watched page then raises the debug interrupt from the middle of a
// translation block, which under -icount aborts QEMU ("Raised interrupt
// while not in I/O function"), and without it reports that stale watch
// instead of checking the new access — a write that goes unseen. Once the
// recorded watchpoint is removed the record dangles.
//
// QEMU clears the record only when it reports a debug stop of that vCPU.
// So after a T02 whose vCPU has just executed a store into watched memory,
// Stop steps that vCPU once: QEMU then reports the watch, and
// clears it.

// watchRange is one inserted watchpoint.
type watchRange struct {
	kind       WatchKind
	addr, size uint64
}

// RecoverLostWatches looks, at a stop ev, for watch hits QEMU recorded but
// did not report (see above), on every vCPU: a vCPU stopped right after an
// instruction that writes into a watched range is stepped, and the step's
// stop reports the recorded hit. A hit of ev's own vCPU at an interrupt
// stop replaces ev (the step's stop, with ev's time); hits of the other
// vCPUs — QEMU reports one vCPU's hit per stop, so a second vCPU's hit at
// the same moment is only recorded — come back in ev.Others. Stops while
// nothing is watched are returned as they are, and a stop is looked at
// once: Stop does it for its stop, the owner of a stop that Wait returned
// calls it before handling that stop. The VM stays stopped.
func (c *Client) RecoverLostWatches(ev StopEvent) (StopEvent, error) {
	c.mu.Lock()
	watched, physical, swept := len(c.watches) > 0, c.physical, c.swept == ev.At
	threads := slices.Clone(c.threads)
	c.mu.Unlock()
	if !watched || ev.Exited || swept {
		return ev, nil
	}
	// The code at rip is read by its virtual address. The mode stays as
	// the last batch with a physical write left it (a patch's entries, a
	// kick), so a stop usually finds it on: without this, no lost hit
	// was ever recovered after the first physical write. The next batch
	// that writes physical memory switches it on again.
	if physical {
		if err := c.SetPhysical(false); err != nil {
			return ev, fmt.Errorf("look for lost watch hits: %w", err)
		}
	}
	if ev.Signal == SignalInterrupt && ev.Thread != 0 {
		step, ok, err := c.recoverThread(ev.Thread)
		if err != nil {
			return ev, err
		}
		if ok {
			step.At = ev.At // the stop is the step's, but the pause began at ev's
			ev = step
		}
	}
	for _, tid := range threads {
		if tid == ev.Thread {
			continue // reported, or looked at above
		}
		step, ok, err := c.recoverThread(tid)
		if err != nil {
			return ev, err
		}
		if ok {
			step.At = ev.At
			ev.Others = append(ev.Others, step)
		}
	}
	c.mu.Lock()
	c.swept = ev.At
	if c.run == nil {
		c.last = ev // what a Stop of the stopped VM returns, as recovered
	}
	c.mu.Unlock()
	return ev, nil
}

// recoverThread steps vCPU tid if it stopped right after an instruction
// that writes into a watched range, and returns the step's stop when it
// reports a watch (ok).
func (c *Client) recoverThread(tid int) (StopEvent, bool, error) {
	regs, err := c.ReadRegisters(tid)
	if err != nil {
		return StopEvent{}, false, fmt.Errorf("look for a lost watch hit on vCPU %d: %w", tid, err)
	}
	rip, err := regs.Get("rip")
	if err != nil {
		return StopEvent{}, false, err
	}
	// The longest x86 instruction is 15 bytes: the bytes before rip hold
	// the one that just ran, those at rip the next.
	var code [2 * maxInsn]byte
	if err := c.ReadMemory(rip-maxInsn, code[:]); err != nil {
		return StopEvent{}, false, nil // not readable: not a store we can tell
	}
	next, nextErr := x86asm.Decode(code[maxInsn:], 64)
	if nextErr == nil && next.Op == x86asm.HLT {
		return StopEvent{}, false, nil // a step of hlt would not end
	}
	c.mu.Lock()
	hit := storedIntoWatch(code[:maxInsn], rip, regs, c.watches)
	// The step runs the next instruction, and QEMU reports the recorded
	// hit at its first access to watched memory, after that access: a
	// watched store there is done by the time the step's stop comes, and
	// QEMU never reports it on its own.
	var second uint64
	secondHit := false
	if nextErr == nil {
		second, secondHit = storeIntoWatch(next, rip+uint64(next.Len), regs, c.watches)
	}
	c.mu.Unlock()
	if !hit {
		return StopEvent{}, false, nil
	}
	step, err := c.Step(tid)
	if err != nil {
		return step, false, fmt.Errorf("recover a lost watch hit on vCPU %d: %w", tid, err)
	}
	if step.Reason != "watch" {
		return step, false, nil // nothing was recorded: the step ran one instruction
	}
	c.lostWatches.Add(1)
	if secondHit {
		step.Also, step.HasAlso = second, true
	}
	return step, true, nil
}

// LostWatches counts the watch hits QEMU dropped at a Stop and the
// client recovered.
func (c *Client) LostWatches() int64 { return c.lostWatches.Load() }

const maxInsn = 15

// storedIntoWatch reports whether one of the instructions that can end
// at rip (before holds the maxInsn bytes ahead of it) writes memory that
// overlaps a write or access watch. Its address is computed from regs,
// the registers after it ran, so an instruction that changes its own
// address registers (push, string stores) is not recognised.
func storedIntoWatch(before []byte, rip uint64, regs *Registers, watches []watchRange) bool {
	for n := 1; n <= len(before); n++ {
		in, err := x86asm.Decode(before[len(before)-n:], 64)
		if err != nil || in.Len != n {
			continue
		}
		if _, ok := storeIntoWatch(in, rip, regs, watches); ok {
			return true
		}
	}
	return false
}

// storeIntoWatch reports whether instruction in, which ends at after,
// writes memory that overlaps a write or access watch, and the address
// it writes; its address is computed from regs.
func storeIntoWatch(in x86asm.Inst, after uint64, regs *Registers, watches []watchRange) (uint64, bool) {
	m, ok := in.Args[0].(x86asm.Mem)
	if !ok || !writesFirstArg(in.Op) {
		return 0, false
	}
	ea, ok := effectiveAddress(m, after, regs)
	if !ok {
		return 0, false
	}
	size := uint64(max(in.MemBytes, 1))
	for _, w := range watches {
		if w.kind != WatchRead && ea < w.addr+w.size && w.addr < ea+size {
			return ea, true
		}
	}
	return 0, false
}

// writesFirstArg: the instructions whose memory first operand is only
// read are not stores.
func writesFirstArg(op x86asm.Op) bool {
	switch op {
	case x86asm.CMP, x86asm.TEST, x86asm.BT, x86asm.PUSH, x86asm.JMP, x86asm.CALL,
		x86asm.NOP, x86asm.LEA, x86asm.CLFLUSH, x86asm.PREFETCHT0, x86asm.PREFETCHT1,
		x86asm.PREFETCHT2, x86asm.PREFETCHNTA, x86asm.PREFETCHW, x86asm.UCOMISS,
		x86asm.UCOMISD, x86asm.COMISS, x86asm.COMISD, x86asm.LGDT, x86asm.LIDT:
		return false
	}
	return true
}

// effectiveAddress computes m's linear address; next is the address of
// the instruction after it (for RIP-relative operands).
func effectiveAddress(m x86asm.Mem, next uint64, regs *Registers) (uint64, bool) {
	reg := func(r x86asm.Reg) (uint64, bool) {
		if r == 0 {
			return 0, true
		}
		if r == x86asm.RIP {
			return next, true
		}
		if r < x86asm.RAX || r > x86asm.R15 {
			return 0, false // a 32-bit address or an odd register
		}
		v, err := regs.Get(gpr64[r-x86asm.RAX])
		return v, err == nil
	}
	base, ok1 := reg(m.Base)
	index, ok2 := reg(m.Index)
	if !ok1 || !ok2 {
		return 0, false
	}
	ea := base + index*uint64(m.Scale) + uint64(m.Disp)
	switch m.Segment {
	case x86asm.FS, x86asm.GS:
		name := "fs_base"
		if m.Segment == x86asm.GS {
			name = "gs_base"
		}
		b, err := regs.Get(name)
		if err != nil {
			return 0, false
		}
		ea += b
	}
	return ea, true
}

// gpr64 names x86asm's RAX..R15 as QEMU's register layout does.
var gpr64 = [...]string{"rax", "rcx", "rdx", "rbx", "rsp", "rbp", "rsi", "rdi",
	"r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"}
