package vmm

import (
	"errors"
	"fmt"
)

// ErrNotRAM is returned for a guest-physical address that is not backed by RAM.
var ErrNotRAM = errors.New("not guest RAM")

// ramLayout maps guest-physical addresses to offsets in the RAM backend file.
// QEMU's q35 machine puts RAM below 4 GiB up to lowMem and the rest from
// 4 GiB up; the gap below 4 GiB holds PCI and firmware.
type ramLayout struct {
	size   uint64 // total RAM bytes
	lowMem uint64 // RAM bytes below 4 GiB
}

const fourGiB = 1 << 32

// q35RAMLayout mirrors hw/i386/pc_q35.c (QEMU 7.2): with 2.75 GiB or more,
// only 2 GiB stay below 4 GiB.
func q35RAMLayout(size uint64) ramLayout {
	low := uint64(0xb000_0000)
	if size >= 0xb000_0000 {
		low = 0x8000_0000
	}
	if size < low {
		low = size
	}
	return ramLayout{size: size, lowMem: low}
}

// offset returns the file offset of [gpa, gpa+n).
func (l ramLayout) offset(gpa, n uint64) (uint64, error) {
	switch {
	case gpa+n < gpa:
		return 0, fmt.Errorf("%#x+%#x: %w (wraps)", gpa, n, ErrNotRAM)
	case gpa+n <= l.lowMem:
		return gpa, nil
	case gpa >= fourGiB && gpa+n <= fourGiB+(l.size-l.lowMem):
		return gpa - fourGiB + l.lowMem, nil
	}
	return 0, fmt.Errorf("guest-physical %#x+%#x: %w (RAM is 0..%#x and 4 GiB..+%#x)", gpa, n, ErrNotRAM, l.lowMem, l.size-l.lowMem)
}

// PhysRange is a range of guest-physical RAM, [Start, Start+Size).
type PhysRange struct{ Start, Size uint64 }

// RAM lists the guest-physical ranges backed by RAM.
func (m *Machine) RAM() []PhysRange {
	lay := q35RAMLayout(m.cfg.Memory)
	if m.ram != nil {
		lay = m.ram.layout
	}
	r := []PhysRange{{0, lay.lowMem}}
	if lay.size > lay.lowMem {
		r = append(r, PhysRange{fourGiB, lay.size - lay.lowMem})
	}
	return r
}
