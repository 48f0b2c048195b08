package loader

import (
	"encoding/binary"
	"fmt"

	"golang.org/x/arch/x86/x86asm"
)

// altLayout is struct alt_instr as the running kernel's BTF describes it.
// Linux 6.1 has `u16 cpuid` whose bit 15 inverts the test (ALT_NOT); later
// kernels have `u32 ft_flags`: the feature in the low 16 bits and flags in
// the high ones, bit 0 of the flags inverting (ALT_FLAG_NOT). Both are
// what the kernel's assembler macros emit as one word, so lucos reads the
// word rather than the C bitfields.
type altLayout struct {
	size                          uint64
	instr, repl, feat, ilen, rlen uint64
	wide                          bool // ft_flags (u32) rather than cpuid (u16)
}

// feature returns the CPU feature bit an entry tests and whether the test
// is inverted.
func (a altLayout) feature(e []byte) (bit uint64, not bool) {
	if a.wide {
		w := binary.LittleEndian.Uint32(e[a.feat:])
		return uint64(w & 0xffff), (w>>16)&altFlagNot != 0
	}
	w := binary.LittleEndian.Uint16(e[a.feat:])
	return uint64(w &^ altInstrFlagInv), w&altInstrFlagInv != 0
}

const (
	altInstrFlagInv = 1 << 15 // ALTINSTR_FLAG_INV in cpuid (Linux 6.1)
	altFlagNot      = 1 << 0  // ALT_FLAG_NOT in ft_flags' flags (Linux 6.3+)
)

func (l *linker) altLayout() (altLayout, error) {
	var a altLayout
	var err error
	if a.size, err = l.t.Sizeof("alt_instr"); err != nil {
		return a, fmt.Errorf("struct alt_instr: %w", err)
	}
	off := func(field string) uint64 {
		if err != nil {
			return 0
		}
		var o uint64
		o, err = l.t.FieldOffset("alt_instr", field)
		return o
	}
	a.instr, a.repl, a.ilen, a.rlen = off("instr_offset"), off("repl_offset"), off("instrlen"), off("replacementlen")
	if err != nil {
		return a, fmt.Errorf("struct alt_instr: %w", err)
	}
	if o, e := l.t.FieldOffset("alt_instr", "ft_flags"); e == nil {
		a.feat, a.wide = o, true
	} else if a.feat, err = l.t.FieldOffset("alt_instr", "cpuid"); err != nil {
		return a, fmt.Errorf("struct alt_instr has neither ft_flags (%v) nor a plain cpuid (%w)", e, err)
	}
	w := uint64(2)
	if a.wide {
		w = 4
	}
	for _, end := range []uint64{a.instr + 4, a.repl + 4, a.feat + w, a.ilen + 1, a.rlen + 1} {
		if end > a.size {
			return a, fmt.Errorf("struct alt_instr: BTF layout does not fit its size %d", a.size)
		}
	}
	return a, nil
}

// cpuFeatures reads boot_cpu_data.x86_capability word by word, as the
// kernel's boot_cpu_has() does.
type cpuFeatures struct {
	t     Target
	base  uint64
	words map[uint64]uint32
}

func (l *linker) cpuFeatures() (*cpuFeatures, error) {
	_, bcd, err := l.t.Symbol("boot_cpu_data", 0)
	if err != nil {
		return nil, fmt.Errorf("boot_cpu_data: %w", err)
	}
	off, err := l.t.FieldOffset("cpuinfo_x86", "x86_capability")
	if err != nil {
		return nil, fmt.Errorf("cpuinfo_x86.x86_capability: %w", err)
	}
	return &cpuFeatures{t: l.t, base: bcd + off, words: map[uint64]uint32{}}, nil
}

func (c *cpuFeatures) has(bit uint64) (bool, error) {
	word := bit / 32
	w, ok := c.words[word]
	if !ok {
		// The BTF array bound is NCAPINTS + NBUGINTS: an index past it is an error.
		if _, err := c.t.FieldOffset("cpuinfo_x86", fmt.Sprintf("x86_capability[%d]", word)); err != nil {
			return false, fmt.Errorf("feature bit %d: %w", bit, err)
		}
		var b [4]byte
		if err := c.t.ReadVirt(c.base+4*word, b[:]); err != nil {
			return false, fmt.Errorf("read boot_cpu_data.x86_capability[%d]: %w", word, err)
		}
		w = binary.LittleEndian.Uint32(b[:])
		c.words[word] = w
	}
	return w&(1<<(bit%32)) != 0, nil
}

// applyAlternatives does what Linux 6.1's apply_alternatives() does for a
// module, for the guest CPU's features: for each entry whose test holds,
// copy the replacement over the original, re-target a leading `call rel32`
// and re-encode a leading `jmp` (recompute_jump), and pad with NOPs.
// Entries are applied in table order, so of an ALTERNATIVE_2 the last
// matching replacement wins, as in the kernel.
func (l *linker) applyAlternatives() error {
	s, base, b := l.consumed(".altinstructions")
	if s == nil {
		return nil
	}
	lay, err := l.altLayout()
	if err != nil {
		return err
	}
	if uint64(len(b))%lay.size != 0 {
		return formatErr(s.name, 0, "size %d is not a multiple of sizeof(struct alt_instr) = %d", len(b), lay.size)
	}
	cpu, err := l.cpuFeatures()
	if err != nil {
		return err
	}
	for off := uint64(0); off < uint64(len(b)); off += lay.size {
		if l.droppedEntry(s, off, lay.size) {
			continue
		}
		e := b[off : off+lay.size]
		instr := rel32Dest(base+off+lay.instr, e[lay.instr:lay.instr+4])
		repl := rel32Dest(base+off+lay.repl, e[lay.repl:lay.repl+4])
		ilen, rlen := uint64(e[lay.ilen]), uint64(e[lay.rlen])
		feature, not := lay.feature(e)
		if rlen > ilen {
			return formatErr(s.name, off, "replacement (%d bytes) longer than the original (%d)", rlen, ilen)
		}
		orig, _, ok := l.code(instr, ilen)
		if !ok {
			return formatErr(s.name, off, "original instruction %#x+%d is not in the patch's code", instr, ilen)
		}
		rb, _, ok := l.code(repl, rlen)
		if !ok {
			return formatErr(s.name, off, "replacement %#x+%d is not in the patch's code", repl, rlen)
		}
		if err := checkReplacement(rb, repl); err != nil {
			return refuseAt(s.name, off, "", nil, "replacement at %#x for %#x: %v", repl, instr, err)
		}
		has, err := cpu.has(feature)
		if err != nil {
			return fmt.Errorf("section %s+%#x: %w", s.name, off, err)
		}
		if has == not {
			l.altKept++
			continue
		}
		buf := make([]byte, ilen)
		copy(buf, rb)
		n := rlen
		if rlen == 5 && buf[0] == 0xe8 {
			// A call is relative to where it runs: move its origin.
			binary.LittleEndian.PutUint32(buf[1:], binary.LittleEndian.Uint32(buf[1:])+uint32(repl-instr))
		}
		if rlen > 0 && (rb[0] == 0xeb || rb[0] == 0xe9) && rlen == 5 {
			n = recomputeJump(buf, instr, repl)
		}
		fillNOPs(buf[n:])
		copy(orig, buf)
		l.altApplied++
	}
	return nil
}

// recomputeJump re-encodes the 5-byte `jmp rel32` at the start of buf
// (relocated for repl) to run at instr, short when the kernel's
// recompute_jump() would make it short: a forward target within reach of a
// 2-byte jmp. It returns the new length.
func recomputeJump(buf []byte, instr, repl uint64) uint64 {
	target := rel32Dest(repl+5, buf[1:5])
	d := int64(target - instr)
	if d >= 0 && d-2 <= 127 {
		buf[0], buf[1] = 0xeb, byte(int8(d-2))
		return 2
	}
	buf[0] = 0xe9
	binary.LittleEndian.PutUint32(buf[1:], uint32(d-5))
	return 5
}

// checkReplacement refuses a replacement Linux 6.1 would copy wrongly: one
// with a relative operand reaching outside itself other than the leading
// call or jmp it re-targets (6.1 has no general relocation of replacements;
// later kernels do). Instructions x86asm cannot decode end the check.
func checkReplacement(rb []byte, repl uint64) error {
	for off := 0; off < len(rb); {
		in, err := x86asm.Decode(rb[off:], 64)
		if err != nil {
			return nil
		}
		fixed := off == 0 && len(rb) == 5 && (rb[0] == 0xe8 || rb[0] == 0xe9)
		next := repl + uint64(off+in.Len)
		for _, a := range in.Args {
			var dest uint64
			switch a := a.(type) {
			case x86asm.Rel:
				dest = next + uint64(int64(a))
			case x86asm.Mem:
				if a.Base != x86asm.RIP {
					continue
				}
				dest = next + uint64(a.Disp)
			default:
				continue
			}
			if !fixed && (dest < repl || dest > repl+uint64(len(rb))) {
				return fmt.Errorf("%v at +%d refers to %#x outside the replacement, and Linux 6.1 copies it unadjusted", in.Op, off, dest)
			}
		}
		off += in.Len
	}
	return nil
}
