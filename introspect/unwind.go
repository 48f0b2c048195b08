package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// Frame is one frame of a task's kernel stack, innermost first.
type Frame struct {
	// IP is the frame's instruction pointer: for a call frame the return
	// address (the call is just before it), for the innermost frame of a
	// running task and for an interrupted frame (Signal) the instruction
	// itself.
	IP     uint64 `json:"ip"`
	Signal bool   `json:"signal,omitempty"`
	// Slot is the stack address the return address was read from; 0 for
	// an IP from a register or a pt_regs.
	Slot uint64 `json:"slot,omitempty"`
}

// In reports whether the frame is executing inside r: a call frame is in
// the function that made the call, the one holding IP-1.
func (f Frame) In(r Range) bool {
	if f.Signal {
		return r.Contains(f.IP)
	}
	return r.Contains(f.IP - 1)
}

// Trace is a task's kernel stack as the ORC unwinder sees it.
type Trace struct {
	Frames []Frame
	// Err says why the unwind did not reach the end of the stack (a user
	// pt_regs, or the end marker of a kernel thread): the frames are then
	// incomplete and only a conservative scan is safe.
	Err error
}

// ErrUnwind is the class of every reason an exact unwind stopped short.
var ErrUnwind = errors.New("ORC unwind incomplete")

// maxFrames bounds an unwind: the kernel's stacks are 16 KiB, a frame at
// least 8 bytes, and real traces are a few dozen frames.
const maxFrames = 512

// unwinder follows arch/x86/kernel/unwind_orc.c's unwind_next_frame over
// the stack copies of a snapshot: the same ORC rules, the same checks.
type unwinder struct {
	k      *Kernel
	o      *orcState
	mods   []*orcTable
	copies []stackCopy

	ip, sp, bp uint64
	signal     bool
	regs       regsRef // the last pt_regs seen, if the frame has one
	prevRegs   regsRef // with a partial (iret) frame: the full one before it
	fullRegs   bool
}

// regsRef is a register set: a pt_regs on a stack, or the vCPU's own.
type regsRef struct {
	at  uint64
	cpu *cpuRegs
}

func (r regsRef) valid() bool { return r.at != 0 || r.cpu != nil }

// cpuRegs are a vCPU's registers where the unwind of a running task starts.
type cpuRegs struct{ ip, sp, bp, r10, r13, di, dx, cs uint64 }

func (u *unwinder) fail(format string, args ...any) error {
	return fmt.Errorf("%w: %s", ErrUnwind, fmt.Sprintf(format, args...))
}

// at names a code address for a message.
func (u *unwinder) at(ip uint64) string {
	if u.k == nil {
		return fmt.Sprintf("%#x", ip)
	}
	return u.k.FormatAddr(ip)
}

// read64 reads a word of a copied stack: the unwinder trusts nothing
// outside the copies taken while the VM was paused.
func (u *unwinder) read64(addr uint64) (uint64, bool) {
	for _, c := range u.copies {
		if addr >= c.base && addr-c.base+8 <= uint64(len(c.data)) { // no wrap near 2^64
			return binary.LittleEndian.Uint64(c.data[addr-c.base:]), true
		}
	}
	return 0, false
}

// copyOf is the index of the copy holding addr, or -1.
func (u *unwinder) copyOf(addr uint64) int {
	for i, c := range u.copies {
		if addr >= c.base && addr-c.base < uint64(len(c.data)) {
			return i
		}
	}
	return -1
}

// reg reads a register of r at its pt_regs offset (get_reg).
func (u *unwinder) reg(r regsRef, off uint64) (uint64, bool) {
	if r.cpu != nil {
		p := u.o.regs
		switch off {
		case p.bp:
			return r.cpu.bp, true
		case p.r10:
			return r.cpu.r10, true
		case p.r13:
			return r.cpu.r13, true
		case p.di:
			return r.cpu.di, true
		case p.dx:
			return r.cpu.dx, true
		case p.ip:
			return r.cpu.ip, true
		case p.sp:
			return r.cpu.sp, true
		case p.cs:
			return r.cpu.cs, true
		}
		return 0, false
	}
	return u.read64(r.at + off)
}

// getReg is the kernel's get_reg: from a full pt_regs, else from the one
// before a partial frame.
func (u *unwinder) getReg(off uint64) (uint64, bool) {
	switch {
	case !u.regs.valid():
		return 0, false
	case u.fullRegs:
		return u.reg(u.regs, off)
	case u.prevRegs.valid():
		return u.reg(u.prevRegs, off)
	}
	return 0, false
}

func (u *unwinder) find(ip uint64) (orcEntry, bool) {
	if ip == 0 {
		// A call through a NULL pointer: null_orc_entry.
		return orcEntry{spOffset: 8, spReg: orcRegSP, bpReg: orcRegUndefined, typ: orcCall}, true
	}
	if t := u.o.vmlinux; ip >= t.lo && ip < t.hi || ip >= u.o.initLo && ip < u.o.initHi {
		// Init text too: the boot CPU's idle task still returns through
		// start_kernel, freed or not.
		return t.find(ip)
	}
	for _, t := range u.mods {
		if ip >= t.lo && ip < t.hi {
			return t.find(ip)
		}
	}
	return orcEntry{}, false
}

// run unwinds to the end of the stack, recording each frame.
func (u *unwinder) run(first Frame) Trace {
	tr := Trace{Frames: []Frame{first}}
	for len(tr.Frames) < maxFrames {
		done, err := u.next()
		if err != nil {
			tr.Err = err
			return tr
		}
		if done {
			return tr
		}
		if u.regs.valid() {
			if cs, _ := u.reg(u.regs, u.o.regs.cs); cs&3 != 0 {
				return tr // the user registers of the task's entry: no kernel frame
			}
		}
		slot := uint64(0)
		if !u.signal {
			slot = u.sp - 8
		}
		tr.Frames = append(tr.Frames, Frame{IP: u.ip, Signal: u.signal, Slot: slot})
	}
	tr.Err = u.fail("more than %d frames", maxFrames)
	return tr
}

// next is one step of unwind_next_frame: done at the end of the stack.
func (u *unwinder) next() (done bool, err error) {
	p := u.o.regs
	if u.regs.valid() {
		// End of the stack of a user task: the pt_regs of its entry.
		cs, ok := u.reg(u.regs, p.cs)
		if !ok {
			return false, u.fail("pt_regs at %#x not on a copied stack", u.regs.at)
		}
		if cs&3 != 0 {
			return true, nil
		}
	}
	if what, ok := u.o.hidden[u.ip]; ok {
		return false, u.fail("a return address is hidden by %s", what)
	}
	look := u.ip
	if !u.signal {
		look--
	}
	orc, ok := u.find(look)
	if !ok {
		return false, u.fail("no ORC data for %s", u.at(u.ip))
	}
	switch orc.typ {
	case orcEnd:
		return true, nil
	case orcUndefined:
		return false, u.fail("undefined ORC entry at %s", u.at(u.ip))
	}
	prevSP, prevCopy := u.sp, u.copyOf(u.sp)
	var sp uint64
	indirect := false
	switch orc.spReg {
	case orcRegSP:
		sp = u.sp + uint64(int64(orc.spOffset))
	case orcRegBP:
		sp = u.bp + uint64(int64(orc.spOffset))
	case orcRegSPIndirect:
		sp, indirect = u.sp, true
	case orcRegBPIndirect:
		sp, indirect = u.bp+uint64(int64(orc.spOffset)), true
	case orcRegR10, orcRegR13, orcRegDI, orcRegDX:
		off := map[uint8]uint64{orcRegR10: p.r10, orcRegR13: p.r13, orcRegDI: p.di, orcRegDX: p.dx}[orc.spReg]
		if sp, ok = u.getReg(off); !ok {
			return false, u.fail("no register value for SP at %s", u.at(u.ip))
		}
	default:
		return false, u.fail("unknown SP base register %d at %s", orc.spReg, u.at(u.ip))
	}
	if indirect {
		if sp, ok = u.read64(sp); !ok {
			return false, u.fail("indirect SP at %s not on a copied stack", u.at(u.ip))
		}
		if orc.spReg == orcRegSPIndirect {
			sp += uint64(int64(orc.spOffset))
		}
	}
	switch orc.typ {
	case orcCall:
		ip, ok := u.read64(sp - 8)
		if !ok {
			return false, u.fail("return address at %#x not on a copied stack", sp-8)
		}
		u.ip, u.sp, u.signal = ip, sp, false
		u.regs, u.prevRegs = regsRef{}, regsRef{}
	case orcRegs:
		ip, ok1 := u.read64(sp + p.ip)
		nsp, ok2 := u.read64(sp + p.sp)
		if !ok1 || !ok2 || u.copyOf(sp+p.size-1) < 0 {
			return false, u.fail("pt_regs at %#x not on a copied stack", sp)
		}
		u.ip, u.sp, u.signal = ip, nsp, true
		u.regs, u.prevRegs, u.fullRegs = regsRef{at: sp}, regsRef{}, true
	case orcRegsPartial:
		// sp points at the iret frame: pt_regs from ip on.
		at := sp - p.ip
		ip, ok1 := u.read64(at + p.ip)
		nsp, ok2 := u.read64(at + p.sp)
		if !ok1 || !ok2 {
			return false, u.fail("iret frame at %#x not on a copied stack", sp)
		}
		u.ip, u.sp, u.signal = ip, nsp, true
		if u.fullRegs {
			u.prevRegs = u.regs
		}
		u.regs, u.fullRegs = regsRef{at: at}, false
	}
	switch orc.bpReg {
	case orcRegUndefined:
		if v, ok := u.getReg(p.bp); ok {
			u.bp = v
		}
	case orcRegPrevSP:
		if u.bp, ok = u.read64(sp + uint64(int64(orc.bpOffset))); !ok {
			return false, u.fail("saved BP at %#x not on a copied stack", sp+uint64(int64(orc.bpOffset)))
		}
	case orcRegBP:
		if u.bp, ok = u.read64(u.bp + uint64(int64(orc.bpOffset))); !ok {
			return false, u.fail("saved BP not on a copied stack at %s", u.at(u.ip))
		}
	default:
		return false, u.fail("unknown BP base register %d", orc.bpReg)
	}
	// Bad ORC data must not loop: on one stack, SP only goes up.
	if c := u.copyOf(u.sp); c >= 0 && c == prevCopy && u.sp <= prevSP {
		return false, u.fail("stack going the wrong way at %s", u.at(u.ip))
	}
	return false, nil
}

// Unwind returns task's kernel stack as the guest's ORC unwinder would see
// it, from the snapshot's copies: a running task's from its vCPU's
// registers, a switched-out one's from the frame __switch_to_asm left at
// thread.sp. A task in user mode, or without a stack, has no frames.
func (s *Snapshot) Unwind(task uint64) Trace {
	if tr, ok := s.traces[task]; ok {
		return tr
	}
	tr := s.unwind(task)
	s.traces[task] = tr
	return tr
}

func (s *Snapshot) unwind(task uint64) Trace {
	o := s.k.initORC()
	if o.err != nil {
		return Trace{Err: fmt.Errorf("%w: the kernel's ORC tables: %w", ErrUnwind, o.err)}
	}
	if s.orcErr != nil {
		return Trace{Err: fmt.Errorf("%w: modules' ORC tables: %w", ErrUnwind, s.orcErr)}
	}
	u := &unwinder{k: s.k, o: o, mods: s.orcMods, copies: s.stacks[task]}
	for _, v := range s.VCPUs {
		if v.Current != task {
			continue
		}
		if v.User {
			return Trace{}
		}
		u.copies = append(append([]stackCopy(nil), s.stacks[vcpuKey(v.Thread)]...), u.copies...)
		r := v.regs
		u.ip, u.sp, u.bp, u.signal = r.ip, r.sp, r.bp, true
		u.regs, u.fullRegs = regsRef{cpu: &r}, true
		return u.run(Frame{IP: r.ip, Signal: true})
	}
	var t *Task
	for i := range s.Tasks {
		if s.Tasks[i].Addr == task {
			t = &s.Tasks[i]
		}
	}
	if t == nil || t.Stack == 0 {
		return Trace{}
	}
	f := o.frame
	bp, ok1 := u.read64(t.SavedSP + f.bp)
	ip, ok2 := u.read64(t.SavedSP + f.retAddr)
	if !ok1 || !ok2 {
		return Trace{Err: u.fail("thread.sp %#x is not on the task's stack", t.SavedSP)}
	}
	u.ip, u.sp, u.bp = ip, t.SavedSP+f.size, bp
	u.signal = ip == o.retFromFork
	return u.run(Frame{IP: ip, Signal: u.signal, Slot: t.SavedSP + f.retAddr})
}
