package introspect

import (
	"encoding/binary"
	"fmt"
	"sort"
)

// vcpuKey keys the copy of a vCPU's non-task stack (IRQ, IST) in
// Snapshot.stacks: task_structs are kernel addresses, these never are.
func vcpuKey(thread int) uint64 { return uint64(thread) }

// copyStacks classifies each vCPU's stack and copies the live part of every
// kernel stack. The rule (docs/ARCHITECTURE.md, "Stack scan"):
//   - a task that is not running: from its saved SP (thread.sp) to the top
//     of its stack; the whole stack if the saved SP lies outside it;
//   - a task running in the kernel on a vCPU: from that vCPU's RSP to the
//     top if RSP is on the task's stack; otherwise the whole task stack
//     (an interrupt or exception came in on another stack, whose live part,
//     RSP to its top, is copied too);
//   - a task running in user mode: nothing (its kernel stack holds only the
//     user registers).
func (s *Snapshot) copyStacks() error {
	running := map[uint64]*VCPU{}
	for i := range s.VCPUs {
		v := &s.VCPUs[i]
		running[v.Current] = v
		if v.User {
			v.Stack = StackUser
			continue
		}
		lo, hi, kind, err := s.vcpuStack(v)
		if err != nil {
			return err
		}
		v.Stack = kind
		if kind != StackTask && hi > lo {
			if err := s.copy(vcpuKey(v.Thread), v.RSP, hi); err != nil {
				return fmt.Errorf("vCPU %d %s stack: %w", v.Thread, kind, err)
			}
		}
	}
	for _, t := range s.Tasks {
		if t.Stack == 0 {
			continue // an exited task whose stack is gone
		}
		top := t.Stack + t.StackSize
		from := t.SavedSP
		if v := running[t.Addr]; v != nil {
			if v.User {
				continue
			}
			from = v.RSP
		}
		if from < t.Stack || from >= top {
			from = t.Stack
		}
		if err := s.copy(t.Addr, from, top); err != nil {
			return fmt.Errorf("stack of pid %d (%s): %w", t.PID, t.Comm, err)
		}
	}
	return nil
}

// vcpuStack finds the stack that v's RSP is on and its bounds.
func (s *Snapshot) vcpuStack(v *VCPU) (lo, hi uint64, kind StackKind, err error) {
	k := s.k
	for _, t := range s.Tasks {
		if t.Addr == v.Current && t.Stack != 0 && v.RSP >= t.Stack && v.RSP < t.Stack+t.StackSize {
			return t.Stack, t.Stack + t.StackSize, StackTask, nil
		}
	}
	// hardirq_stack_ptr points at the top word of the CPU's IRQ stack.
	irqTop, err := k.read64(k.perCPUAddr("hardirq_stack_ptr", v.CPU))
	if err != nil {
		return 0, 0, "", err
	}
	if irqTop != 0 {
		hi := irqTop + 8
		if lo := hi - k.offs.irqStackSize; v.RSP >= lo && v.RSP < hi {
			return lo, hi, StackHardIRQ, nil
		}
	}
	ist, err := k.read64(k.perCPUAddr("cea_exception_stacks", v.CPU))
	if err != nil {
		return 0, 0, "", err
	}
	if ist != 0 && v.RSP >= ist && v.RSP < ist+k.offs.exceptionStacksSize {
		// The IST stacks sit back to back with guard pages; the live part
		// runs to the end of the one RSP is on: scan to the next page-aligned
		// guard, at most the whole area.
		return ist, ist + k.offs.exceptionStacksSize, StackException, nil
	}
	// Unknown (e.g. the entry trampoline stack under PTI): copy the rest of
	// its page, which is all such stacks are.
	return v.RSP, (v.RSP | 0xfff) + 1, StackOther, nil
}

func (s *Snapshot) copy(key, from, to uint64) error {
	b := make([]byte, to-from)
	// The live part may run into an unmapped guard page (IST stacks): copy
	// page by page and stop at the first hole.
	for off := uint64(0); off < uint64(len(b)); {
		n := min(uint64(len(b))-off, 4096-(from+off)&0xfff)
		if err := s.k.Walker.ReadVirt(from+off, b[off:off+n]); err != nil {
			if off == 0 {
				return err
			}
			b = b[:off]
			break
		}
		off += n
	}
	s.stacks[key] = append(s.stacks[key], stackCopy{base: from, data: b})
	s.words += len(b) / 8
	return nil
}

// Range is a half-open range of runtime kernel addresses.
type Range struct {
	Start, End uint64
}

// Contains reports whether a is in [Start, End).
func (r Range) Contains(a uint64) bool { return a >= r.Start && a < r.End }

// Holder is a task or vCPU found holding an address inside a scanned range.
type Holder struct {
	PID    int    `json:"pid"`
	Comm   string `json:"comm"`
	Task   uint64 `json:"task"`
	Thread int    `json:"vcpu,omitempty"` // gdbstub thread, for a RIP or an IRQ/IST stack
	// Kind is "rip" (a vCPU executes there), "frame" (a frame of the task's
	// exact ORC unwind: a return address or an interrupted instruction) or
	// "stack" (a word of a stack the unwinder could not follow: see
	// Inexact).
	Kind  string `json:"kind"`
	Value uint64 `json:"value"`
	Slot  uint64 `json:"slot,omitempty"` // the stack address holding Value
	// Inexact is why the task's stack was scanned word by word rather than
	// unwound.
	Inexact string `json:"inexact,omitempty"`
}

// Scan reports every vCPU whose RIP lies inside one of ranges, and every
// task with a frame inside one. A task's frames are those of its exact ORC
// unwind (Unwind); where the unwind stops short of the end of the stack
// (code without ORC data, a stack lucos did not copy), every word of the
// task's live stack counts instead, so a stale value can delay a commit but
// a real return address is never missed.
func (s *Snapshot) Scan(ranges []Range) []Holder {
	in := func(a uint64) bool {
		for _, r := range ranges {
			if r.Contains(a) {
				return true
			}
		}
		return false
	}
	inFrame := func(f Frame) bool {
		for _, r := range ranges {
			if f.In(r) {
				return true
			}
		}
		return false
	}
	byAddr := map[uint64]*Task{}
	for i := range s.Tasks {
		byAddr[s.Tasks[i].Addr] = &s.Tasks[i]
	}
	var out []Holder
	holder := func(h Holder) {
		if t := byAddr[h.Task]; t != nil {
			h.PID, h.Comm = t.PID, t.Comm
		}
		out = append(out, h)
	}
	onVCPU := map[uint64]*VCPU{}
	for i, v := range s.VCPUs {
		onVCPU[v.Current] = &s.VCPUs[i]
		if !v.User && in(v.RIP) {
			holder(Holder{Task: v.Current, Thread: v.Thread, Kind: "rip", Value: v.RIP})
		}
	}
	for _, t := range s.Tasks {
		v := onVCPU[t.Addr]
		if v != nil && v.User {
			continue
		}
		tr := s.Unwind(t.Addr)
		if tr.Err == nil {
			for i, f := range tr.Frames {
				if v != nil && i == 0 {
					continue // the vCPU's RIP, above
				}
				if inFrame(f) {
					holder(Holder{Task: t.Addr, Kind: "frame", Value: f.IP, Slot: f.Slot})
				}
			}
			continue
		}
		var copies []stackCopy
		if v != nil {
			copies = s.stacks[vcpuKey(v.Thread)]
		}
		for _, c := range append(copies, s.stacks[t.Addr]...) {
			c.words(func(slot, w uint64) {
				if in(w) {
					h := Holder{Task: t.Addr, Kind: "stack", Value: w, Slot: slot, Inexact: tr.Err.Error()}
					if v != nil {
						h.Thread = v.Thread
					}
					holder(h)
				}
			})
		}
	}
	sort.SliceStable(out, func(i, j int) bool { return out[i].PID < out[j].PID })
	return out
}

func (c stackCopy) words(fn func(slot, w uint64)) {
	start := (8 - c.base%8) % 8 // align to the first 8-byte slot
	for off := start; off+8 <= uint64(len(c.data)); off += 8 {
		fn(c.base+off, binary.LittleEndian.Uint64(c.data[off:]))
	}
}

// Frames returns the call chain of a task, innermost first, at most max
// return addresses: its exact ORC unwind where that reaches the end of the
// stack; otherwise the RIP if it runs in the kernel, then every word of its
// live stack that points just after a call instruction in kernel text (the
// usual guess at a return address).
func (s *Snapshot) Frames(task uint64, max int) []uint64 {
	var frames []uint64
	if tr := s.Unwind(task); tr.Err == nil {
		for _, f := range tr.Frames {
			if len(frames) < max {
				frames = append(frames, f.IP)
			}
		}
		return frames
	}
	k := s.k
	for _, v := range s.VCPUs {
		if v.Current == task && !v.User {
			frames = append(frames, v.RIP)
			for _, c := range s.stacks[vcpuKey(v.Thread)] {
				c.words(func(_, w uint64) {
					if len(frames) < max && k.isReturnAddress(w) {
						frames = append(frames, w)
					}
				})
			}
		}
	}
	for _, c := range s.stacks[task] {
		c.words(func(_, w uint64) {
			if len(frames) < max && k.isReturnAddress(w) {
				frames = append(frames, w)
			}
		})
	}
	return frames
}

// isReturnAddress reports whether a is in kernel text right after a call:
// e8 rel32, or ff /2 (indirect call) in its 2-, 3-, 6- and 7-byte forms.
func (k *Kernel) isReturnAddress(a uint64) bool {
	if !k.IsText(a) {
		return false
	}
	var b [7]byte
	if err := k.Walker.ReadVirt(a-7, b[:]); err != nil {
		return false
	}
	if b[2] == 0xe8 {
		return true
	}
	for _, n := range []int{2, 3, 6, 7} {
		op := b[7-n:]
		if op[0] == 0x41 && n > 2 { // REX.B prefix
			op = op[1:]
		}
		if op[0] == 0xff && (op[1]>>3)&7 == 2 {
			return true
		}
	}
	return false
}

// StackWords is how many 8-byte stack words the snapshot copied.
func (s *Snapshot) StackWords() int { return s.words }
