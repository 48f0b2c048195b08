package loader

import (
	"encoding/binary"
	"fmt"
)

// consumed returns the consumed section of that name with its scratch
// address and linked bytes, or nil.
func (l *linker) consumed(name string) (*section, uint64, []byte) {
	s := l.m.section(name)
	if s == nil || s.treat != Consume || s.size == 0 {
		return nil, 0, nil
	}
	return s, l.addr[s.idx], l.buf[s.idx]
}

// table returns the placed table of that name — consumed, or registered
// with the module shell — with its address and linked bytes, or nil.
func (l *linker) table(name string) (*section, uint64, []byte) {
	s := l.m.section(name)
	if s == nil || !(s.treat == Consume || s.treat == Register) || s.size == 0 {
		return nil, 0, nil
	}
	return s, l.addr[s.idx], l.buf[s.idx]
}

// droppedEntry reports whether the entry [off, off+size) of consumed
// section s describes code lucos does not load (see linker.dropped).
func (l *linker) droppedEntry(s *section, off, size uint64) bool {
	for _, o := range l.dropped[s.idx] {
		if o >= off && o < off+size {
			return true
		}
	}
	return false
}

// rel32Dest is the destination of a rel32 branch whose displacement ends
// at next.
func rel32Dest(next uint64, disp []byte) uint64 {
	return next + uint64(int64(int32(binary.LittleEndian.Uint32(disp))))
}

// setRel32 points the rel32 displacement disp (ending at next) at dest.
func setRel32(disp []byte, next, dest uint64) bool {
	d := dest - next
	if int64(d) != int64(int32(d)) {
		return false
	}
	binary.LittleEndian.PutUint32(disp, uint32(d))
	return true
}

// applyMcount turns each `call __fentry__` listed in __mcount_loc into the
// 5-byte NOP, as ftrace does at module load: patch code is not traceable
// (ftrace does not know it).
func (l *linker) applyMcount() error {
	s, _, b := l.consumed("__mcount_loc")
	if s == nil {
		return nil
	}
	if len(b)%8 != 0 {
		return formatErr(s.name, 0, "size %d is not a multiple of 8", len(b))
	}
	fentry, err := l.kernelAddr("__fentry__")
	if err != nil {
		return err
	}
	for off := 0; off < len(b); off += 8 {
		if l.droppedEntry(s, uint64(off), 8) {
			continue
		}
		site := binary.LittleEndian.Uint64(b[off:])
		code, _, ok := l.code(site, 5)
		if !ok {
			return formatErr(s.name, uint64(off), "fentry site %#x is not in the patch's code", site)
		}
		if code[0] != 0xe8 || rel32Dest(site+5, code[1:5]) != fentry {
			return formatErr(s.name, uint64(off), "fentry site %#x holds % x, not call __fentry__ (%#x)", site, code, fentry)
		}
		copy(code, ftraceNOP[:])
	}
	return nil
}

// applyReturns handles .return_sites: the compiler's `jmp
// __x86_return_thunk` (or jcc) at every return. The kernel rewrites its own
// sites at boot to `jmp x86_return_thunk` (the thunk its mitigation chose)
// or, without X86_FEATURE_RETHUNK, to `ret`. lucos re-targets the jump to
// x86_return_thunk's current value, which is the kernel's choice in the
// first case and __x86_return_thunk itself (a bare `ret`) in the second: the
// same behaviour without depending on a feature-bit number.
func (l *linker) applyReturns() error {
	s, base, b := l.consumed(".return_sites")
	if s == nil {
		return nil
	}
	if len(b)%4 != 0 {
		return formatErr(s.name, 0, "size %d is not a multiple of 4", len(b))
	}
	def, err := l.kernelAddr("__x86_return_thunk")
	if err != nil {
		return err
	}
	thunk := def
	if _, ptr, err := l.t.Symbol("x86_return_thunk", 0); err == nil {
		var v [8]byte
		if err := l.t.ReadVirt(ptr, v[:]); err != nil {
			return fmt.Errorf("read x86_return_thunk: %w", err)
		}
		thunk = binary.LittleEndian.Uint64(v[:])
	}
	for off := 0; off < len(b); off += 4 {
		if l.droppedEntry(s, uint64(off), 4) {
			continue
		}
		site := rel32Dest(base+uint64(off), b[off:off+4])
		code, _, ok := l.code(site, 5)
		if !ok {
			return formatErr(s.name, uint64(off), "return site %#x is not in the patch's code", site)
		}
		var disp []byte
		var next uint64
		switch {
		case code[0] == 0xe9:
			disp, next = code[1:5], site+5
		case code[0] == 0x0f && code[1]&0xf0 == 0x80:
			if code, _, ok = l.code(site, 6); !ok {
				return formatErr(s.name, uint64(off), "return site %#x is cut", site)
			}
			disp, next = code[2:6], site+6
		default:
			return formatErr(s.name, uint64(off), "return site %#x holds % x, not a jump to __x86_return_thunk", site, code)
		}
		if rel32Dest(next, disp) != def {
			return formatErr(s.name, uint64(off), "return site %#x jumps to %#x, not __x86_return_thunk (%#x)", site, rel32Dest(next, disp), def)
		}
		if !setRel32(disp, next, thunk) {
			return refuseAt(s.name, uint64(off), "x86_return_thunk", nil, "the kernel's return thunk %#x is out of reach of %#x", thunk, site)
		}
	}
	return nil
}
