// Package layout names every guest-physical address and size that lucos
// chooses. Nothing else in lucos may invent a guest address: later stages
// (the patch loader, the trampoline, per-patch slots) take theirs from here.
package layout

import "fmt"

const (
	// PatchRegionBase is the guest-physical start of the region reserved for
	// patch code and data. It is hidden from the guest with memmap= and so
	// never appears in the guest's direct map. It sits well below the top of
	// RAM on purpose: QEMU puts the ACPI tables and the initrd at the top of
	// low memory, and a reservation there overlaps them.
	PatchRegionBase = 0x1000_0000 // 256 MiB

	// PatchRegionSize is the size of the reserved region: 16 MiB, eight 2 MiB
	// slots of the kernel-image window.
	PatchRegionSize = 16 << 20

	// MinGuestMemory is the smallest guest RAM lucos accepts: the region must
	// lie inside RAM, with room above it for the initrd and ACPI tables.
	MinGuestMemory = 512 << 20

	// DefaultGuestMemory is the guest RAM used when the user names none.
	DefaultGuestMemory = 1 << 30

	// SlotSize is the unit of the patch region one patch occupies: one
	// 2 MiB PMD entry of the kernel-image window maps one slot. The slot's
	// first page holds the slot's own page table (4 KiB pages, so text,
	// read-only data and data get their own permissions); the patch's
	// pages follow.
	SlotSize = 2 << 20

	// Slots is how many patches can be loaded at once.
	Slots = PatchRegionSize / SlotSize
)

// SlotBase is the guest-physical address of slot i.
func SlotBase(i int) uint64 { return PatchRegionBase + uint64(i)*SlotSize }

// ReserveArg is the kernel command-line argument that hides the patch region
// from the guest ("memmap=16M$0x10000000": mark the range reserved).
func ReserveArg() string {
	return fmt.Sprintf("memmap=%dM$%#x", PatchRegionSize>>20, PatchRegionBase)
}

// CheckMemory reports whether a guest of mem bytes can hold the patch region.
func CheckMemory(mem uint64) error {
	if mem < MinGuestMemory {
		return fmt.Errorf("guest memory %d MiB is below the minimum of %d MiB (the patch region lives at %#x..%#x)",
			mem>>20, MinGuestMemory>>20, PatchRegionBase, PatchRegionBase+PatchRegionSize)
	}
	return nil
}
