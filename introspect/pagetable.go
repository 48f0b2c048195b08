package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
)

// PhysReader reads guest-physical memory (vmm.Machine does, through the
// shared RAM mapping).
type PhysReader interface {
	ReadPhys(gpa uint64, buf []byte) error
}

// Page-table entry bits (Intel SDM vol. 3, 4.5).
const (
	PTEPresent  = 1 << 0
	PTEWrite    = 1 << 1
	PTEUser     = 1 << 2
	PTEPageSize = 1 << 7 // in a PDPT or PD entry: a 1 GiB or 2 MiB page
	PTEGlobal   = 1 << 8
	PTENX       = 1 << 63

	pteAddrMask = 0x000f_ffff_ffff_f000 // bits 12..51
)

// cr3RootMask keeps the PGD address of CR3: it drops the PCID (bits 0-11),
// the PTI user-half bit (12: the user PGD is the kernel PGD + 4 KiB and does
// not map the kernel's data) and bit 63 (no-flush).
const cr3RootMask = 0x000f_ffff_ffff_e000

// KernelPGD returns the physical address of the kernel's top-level page
// table from a vCPU's CR3, whatever process and half it was in.
func KernelPGD(cr3 uint64) uint64 { return cr3 & cr3RootMask }

// Level names the page-table levels of 4-level paging, top first.
var levelNames = [...]string{"PGD", "PUD", "PMD", "PTE"}

// Step is one entry the walker read: at which level, where it lives
// (guest-physical), and its value.
type Step struct {
	Level int // 0 = PGD … 3 = PTE
	Addr  uint64
	Entry uint64
}

// Mapping is a translated page: the page containing VA maps to PA.
type Mapping struct {
	VA, PA   uint64 // page-aligned
	Size     uint64 // 4 KiB, 2 MiB or 1 GiB
	Entry    uint64 // the leaf entry
	Writable bool
	NX       bool
}

// UnmappedError says where a walk found no present entry.
type UnmappedError struct {
	VA   uint64
	Step Step
}

func (e *UnmappedError) Error() string {
	return fmt.Sprintf("virtual address %#x is not mapped: %s entry at guest-physical %#x is %#x",
		e.VA, levelNames[e.Step.Level], e.Step.Addr, e.Step.Entry)
}

// ErrNonCanonical is returned for an address whose top bits are not a sign
// extension of bit 47.
var ErrNonCanonical = errors.New("non-canonical virtual address")

// Walker walks 4-level page tables in guest memory. One walker serves both
// translation and, later, mapping the patch region: Walk reports every
// entry it reads to a visitor, which may stop it.
type Walker struct {
	Mem  PhysReader
	Root uint64 // physical address of the PGD (see KernelPGD)
}

func index(va uint64, level int) uint64 { return (va >> (39 - 9*uint(level))) & 0x1ff }

func canonical(va uint64) bool {
	top := va >> 47
	return top == 0 || top == 0x1ffff
}

// Visit is called for each entry read during a walk; returning false stops
// the walk there.
type Visit func(s Step) bool

// Walk follows va down the tables, calling visit for each entry, and
// returns the steps taken. It stops at a non-present entry, a large page or
// the PTE level.
func (w *Walker) Walk(va uint64, visit Visit) ([]Step, error) {
	if !canonical(va) {
		return nil, fmt.Errorf("%#x: %w", va, ErrNonCanonical)
	}
	var steps []Step
	table := w.Root
	var b [8]byte
	for level := 0; level < 4; level++ {
		addr := table + 8*index(va, level)
		if err := w.Mem.ReadPhys(addr, b[:]); err != nil {
			return steps, fmt.Errorf("read %s entry for %#x at %#x: %w", levelNames[level], va, addr, err)
		}
		s := Step{Level: level, Addr: addr, Entry: binary.LittleEndian.Uint64(b[:])}
		steps = append(steps, s)
		if visit != nil && !visit(s) {
			return steps, nil
		}
		if s.Entry&PTEPresent == 0 || level == 3 || (level > 0 && s.Entry&PTEPageSize != 0) {
			return steps, nil
		}
		table = s.Entry & pteAddrMask
	}
	return steps, nil
}

// Translate returns the mapping of the page containing va.
func (w *Walker) Translate(va uint64) (Mapping, error) {
	steps, err := w.Walk(va, nil)
	if err != nil {
		return Mapping{}, err
	}
	last := steps[len(steps)-1]
	if last.Entry&PTEPresent == 0 {
		return Mapping{}, &UnmappedError{VA: va, Step: last}
	}
	size := uint64(1) << (39 - 9*uint(last.Level))
	if last.Level == 3 {
		size = 4096
	}
	// A large page's entry keeps the PAT bit at bit 12; the frame starts at its size.
	pa := last.Entry & pteAddrMask &^ (size - 1)
	writable := true
	nx := false
	for _, s := range steps {
		writable = writable && s.Entry&PTEWrite != 0
		nx = nx || s.Entry&PTENX != 0
	}
	return Mapping{VA: va &^ (size - 1), PA: pa, Size: size, Entry: last.Entry, Writable: writable, NX: nx}, nil
}

// Phys translates va to a guest-physical address.
func (w *Walker) Phys(va uint64) (uint64, error) {
	m, err := w.Translate(va)
	if err != nil {
		return 0, err
	}
	return m.PA + (va - m.VA), nil
}

// ReadVirt reads guest-virtual memory, page by page.
func (w *Walker) ReadVirt(va uint64, buf []byte) error {
	for len(buf) > 0 {
		m, err := w.Translate(va)
		if err != nil {
			return err
		}
		n := min(uint64(len(buf)), m.VA+m.Size-va)
		if err := w.Mem.ReadPhys(m.PA+(va-m.VA), buf[:n]); err != nil {
			return fmt.Errorf("read %#x (guest-physical %#x): %w", va, m.PA+(va-m.VA), err)
		}
		buf, va = buf[n:], va+n
	}
	return nil
}

// Ranges enumerates the present leaf mappings of [start, end): fn sees each
// page (a large page once) until it returns false. Writable and NX are
// those of the leaf entry alone.
func (w *Walker) Ranges(start, end uint64, fn func(Mapping) bool) error {
	if err := w.ranges(w.Root, 0, 0, start, end, fn); err != errStop {
		return err
	}
	return nil
}

func (w *Walker) ranges(table uint64, level int, base, start, end uint64, fn func(Mapping) bool) error {
	buf := make([]byte, 4096)
	if err := w.Mem.ReadPhys(table, buf); err != nil {
		return fmt.Errorf("read %s table at %#x: %w", levelNames[level], table, err)
	}
	span := uint64(1) << (39 - 9*uint(level))
	for i := uint64(0); i < 512; i++ {
		va := base + i*span
		if level == 0 && i >= 256 {
			va |= 0xffff_0000_0000_0000 // sign-extend the kernel half
		}
		if va+span-1 < start || va >= end {
			continue
		}
		e := binary.LittleEndian.Uint64(buf[8*i:])
		if e&PTEPresent == 0 {
			continue
		}
		if level == 3 || (level > 0 && e&PTEPageSize != 0) {
			m := Mapping{VA: va, PA: e & pteAddrMask &^ (span - 1), Size: span, Entry: e, Writable: e&PTEWrite != 0, NX: e&PTENX != 0}
			if !fn(m) {
				return errStop
			}
			continue
		}
		if err := w.ranges(e&pteAddrMask, level+1, va, start, end, fn); err != nil {
			return err
		}
	}
	return nil
}

var errStop = errors.New("stop")
