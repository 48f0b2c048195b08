package patch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"maps"
	"slices"
	"strings"

	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/vmm"
)

// ErrNoPatchRegion: the guest kernel was booted without the parameter
// that sets lucos's patch region aside, so there is no guest memory lucos
// may put patch code in (a VM lucos attached to, booted as its owner
// likes). Inspecting it works; patching it would overwrite memory the
// guest uses.
var ErrNoPatchRegion = errors.New("the guest has no lucos patch region")

// commandLineSize is x86's COMMAND_LINE_SIZE.
const commandLineSize = 2048

// checkPatchRegion refuses a guest whose kernel was not booted with
// layout.ReserveArg() or whose RAM ends before the region does. It reads
// the command line the kernel keeps (saved_command_line), so it holds for
// VMs lucos started and for VMs it attached to alike.
func checkPatchRegion(m *vmm.Machine, k *introspect.Kernel) error {
	cmdline, err := kernelCommandLine(k)
	if err != nil {
		return fmt.Errorf("read the guest kernel's command line: %w", err)
	}
	want := layout.ReserveArg()
	if !slices.Contains(strings.Fields(cmdline), want) {
		return fmt.Errorf("%w: its kernel was booted without %s (command line %q), so no guest memory is set aside for patch code; lucos can inspect this guest (ps, sym) but not patch it (docs/ATTACH.md)", ErrNoPatchRegion, want, cmdline)
	}
	if end := uint64(layout.PatchRegionBase + layout.PatchRegionSize); m.Memory() < end {
		return fmt.Errorf("%w: the guest has %d MiB of RAM, the region ends at %d MiB", ErrNoPatchRegion, m.Memory()>>20, end>>20)
	}
	return nil
}

// kernelCommandLine is the guest kernel's saved_command_line.
func kernelCommandLine(k *introspect.Kernel) (string, error) {
	addr, err := k.Addr("saved_command_line", 0)
	if err != nil {
		return "", err
	}
	var p [8]byte
	if err := k.ReadVirt(addr, p[:]); err != nil {
		return "", err
	}
	buf := make([]byte, commandLineSize)
	if err := k.ReadVirt(binary.LittleEndian.Uint64(p[:]), buf); err != nil {
		return "", err
	}
	if i := bytes.IndexByte(buf, 0); i >= 0 {
		buf = buf[:i]
	}
	return string(buf), nil
}

// pteFrame is the frame address bits of a page-table entry (12..51).
const pteFrame = 0x000f_ffff_ffff_f000

// findForeignSlots marks the slots that a PMD entry of the window already
// maps, though this engine loaded nothing: an earlier lucos (attached to
// this VM, then detached or killed) left a patch there. Their code stays in
// place and is never overwritten; this engine does not manage them.
func (e *Engine) findForeignSlots() error {
	var table [512 * 8]byte
	if err := e.m.ReadPhys(e.win.pmdTable, table[:]); err != nil {
		return fmt.Errorf("read the kernel-image window: %w", err)
	}
	for i := e.win.firstIdx; i < 512; i++ {
		entry := binary.LittleEndian.Uint64(table[8*i:])
		if entry&introspect.PTEPresent == 0 {
			continue
		}
		pa := entry & pteFrame
		if pa < layout.PatchRegionBase || pa >= layout.PatchRegionBase+layout.PatchRegionSize {
			continue
		}
		idx := int((pa - layout.PatchRegionBase) / layout.SlotSize)
		e.foreign[idx] = e.win.tableVA + uint64(i)*layout.SlotSize
	}
	if n := len(e.foreign); n > 0 {
		e.log.Warn("patch slots mapped by an earlier lucos: left in place, not managed", "slots", n)
	}
	return nil
}

// ForeignSlots reports the patch slots an earlier lucos left mapped in
// this guest (slot index → the virtual address it is mapped at): their
// patches stay in place, and this engine loads nothing over them.
func (e *Engine) ForeignSlots() map[int]uint64 {
	e.mu.Lock()
	defer e.mu.Unlock()
	return maps.Clone(e.foreign)
}
