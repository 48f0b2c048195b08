package loader

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lucos/lucos/kimage"
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
// __x86_return_thunk` (or jcc) at every return, rewritten as the kernel's
// patch_return (arch/x86/kernel/alternative.c) rewrites its own at boot.
// When the kernel chose a return thunk for its mitigation (x86_return_thunk
// is no longer __x86_return_thunk: retbleed, SRSO, ITS), a site jumps to
// that thunk — with ITS's its_return_thunk only a site in the lower half of
// a 64-byte line, the others return directly. Otherwise the site becomes
// `ret` and int3s: since 6.2 __x86_return_thunk is not a return but a
// warning ("Unpatched return thunk in use"), and in 6.1, where it is a bare
// `ret`, the rewrite does the same. A jcc cannot become a conditional
// return: it is pointed at one of the patch's own rewritten `ret`s.
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
	its := uint64(0)
	if _, a, err := l.t.Symbol("its_return_thunk", 0); err == nil {
		its = a
	}
	wantsThunk := func(site uint64) bool {
		return thunk != def && (thunk != its || site&0x20 == 0)
	}
	type jcc struct {
		off        int
		site, next uint64
		disp       []byte
	}
	var conds []jcc
	ret := uint64(0) // a site rewritten to `ret`, for the jccs
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
		switch {
		case wantsThunk(site):
			if !setRel32(disp, next, thunk) {
				return refuseAt(s.name, uint64(off), "x86_return_thunk", nil, "the kernel's return thunk %#x is out of reach of %#x", thunk, site)
			}
		case code[0] == 0xe9:
			copy(code, []byte{0xc3, 0xcc, 0xcc, 0xcc, 0xcc}) // ret; int3
			ret = site
		default:
			conds = append(conds, jcc{off, site, next, disp})
		}
	}
	for _, c := range conds {
		if ret == 0 {
			return refuseAt(s.name, uint64(c.off), "__x86_return_thunk", nil, "conditional return at %#x: the kernel returns directly, and the patch has no plain return to point it at", c.site)
		}
		if !setRel32(c.disp, c.next, ret) {
			return refuseAt(s.name, uint64(c.off), "__x86_return_thunk", nil, "conditional return at %#x: the patch's return at %#x is out of reach", c.site, ret)
		}
	}
	return nil
}

// checkCallSites handles .call_sites (CONFIG_MITIGATION_CALL_DEPTH_TRACKING,
// Linux 6.2+): the patch's direct calls, which a kernel that runs call-depth
// tracking (retbleed=stuff) re-targets to its callees' accounting thunks in
// their padding. As the kernel's own module loader does
// (callthunks_patch_module_calls), lucos leaves the calls alone unless the
// kernel enabled the thunks at boot (thunks_initialized); then it refuses:
// patch code without them would unbalance the kernel's call-depth count.
func (l *linker) checkCallSites() error {
	s, _, b := l.consumed(".call_sites")
	if s == nil {
		return nil
	}
	_, addr, err := l.t.Symbol("thunks_initialized", 0)
	if errors.Is(err, kimage.ErrNotFound) {
		return nil // a kernel without call-depth tracking never re-targets calls
	}
	if err != nil {
		return fmt.Errorf("kernel symbol thunks_initialized: %w", err)
	}
	var on [1]byte
	if err := l.t.ReadVirt(addr, on[:]); err != nil {
		return fmt.Errorf("read thunks_initialized: %w", err)
	}
	if on[0] != 0 {
		return refuse(s.name, "thunks_initialized", nil, "the guest kernel runs call-depth tracking (retbleed=stuff): the patch's %d calls would need its accounting thunks, which lucos does not build", len(b)/4)
	}
	return nil
}
