package patch

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/introspect"
)

// ErrNoSlot means every slot of the patch region holds a patch.
var ErrNoSlot = errors.New("every slot of the patch region is in use: roll a patch back first")

// Page-table entry values lucos writes (Intel SDM 4.5; arch/x86 pgtable_types.h).
const (
	pteAccessed = 1 << 5
	pteDirty    = 1 << 6
	// pmdTable points a PMD entry at a page table: present, writable,
	// accessed, dirty (the kernel's _KERNPG_TABLE).
	pmdTable = introspect.PTEPresent | introspect.PTEWrite | pteAccessed | pteDirty
)

// slot is a 2 MiB piece of the reserved region mapped at a free 2 MiB
// virtual slot of the kernel-image window, within ±2 GiB of kernel text, so
// rel32 jumps and calls reach both ways.
type slot struct {
	index int
	pa    uint64 // guest-physical base; its first page is the slot's page table
	va    uint64 // virtual base; the first page (the table) is left unmapped
	pmd   uint64 // guest-physical address of the PMD entry that maps the slot
}

// contains reports whether va is inside the slot.
func (s *slot) contains(va uint64) bool { return va >= s.va && va < s.va+layout.SlotSize }

// window describes the kernel-image window's page directory, found once.
type window struct {
	pmdTable uint64 // guest-physical address of the PMD table covering kernel text
	tableVA  uint64 // virtual address its entry 0 maps
	firstIdx int    // first entry after the kernel image (_end)
	global   uint64 // the kernel text mapping's global bit (PTI clears it)
}

// holds reports whether va is in one of the window's slots, where only
// lucos maps anything.
func (w *window) holds(va uint64) bool {
	return va >= w.tableVA+uint64(w.firstIdx)*layout.SlotSize && va < w.tableVA+512*layout.SlotSize
}

// findWindow locates the PMD table that maps the kernel image and the first
// 2 MiB entry past _end.
func findWindow(k *introspect.Kernel) (*window, error) {
	_, text, err := k.Symbol("_text", 0)
	if err != nil {
		return nil, err
	}
	_, end, err := k.Symbol("_end", 0)
	if err != nil {
		return nil, err
	}
	steps, err := k.Walker.Walk(text, nil)
	if err != nil {
		return nil, fmt.Errorf("walk to kernel text: %w", err)
	}
	if len(steps) < 3 || steps[2].Entry&introspect.PTEPresent == 0 {
		return nil, fmt.Errorf("kernel text %#x has no PMD-level mapping", text)
	}
	w := &window{
		pmdTable: steps[2].Addr &^ 0xfff,
		tableVA:  text &^ (1<<30 - 1),
		global:   steps[len(steps)-1].Entry & introspect.PTEGlobal,
	}
	w.firstIdx = int((end+layout.SlotSize-1-w.tableVA)/layout.SlotSize) + 1
	if w.firstIdx >= 512 {
		return nil, fmt.Errorf("no room after the kernel image (_end %#x) in its 1 GiB window", end)
	}
	return w, nil
}

// allocSlot picks a free physical slot and a free PMD entry of the window.
// Precondition: e.mu is held (the VM need not be paused: the kernel does not
// map anything there after boot; mapSlot checks again under pause).
func (e *Engine) allocSlot() (*slot, error) {
	idx := -1
	for i, p := range e.slots {
		if _, taken := e.foreign[i]; p == nil && !taken {
			idx = i
			break
		}
	}
	if idx < 0 {
		return nil, ErrNoSlot
	}
	used := map[uint64]bool{}
	for _, p := range e.slots {
		if p != nil && p.slot != nil {
			used[p.slot.pmd] = true
		}
	}
	var entry [8]byte
	for i := e.win.firstIdx; i < 512; i++ {
		addr := e.win.pmdTable + 8*uint64(i)
		if used[addr] {
			continue
		}
		if err := e.m.ReadPhys(addr, entry[:]); err != nil {
			return nil, err
		}
		if binary.LittleEndian.Uint64(entry[:]) == 0 {
			return &slot{index: idx, pa: layout.SlotBase(idx), va: e.win.tableVA + uint64(i)*layout.SlotSize, pmd: addr}, nil
		}
	}
	return nil, fmt.Errorf("no free 2 MiB entry in the kernel-image window after _end")
}

// loadPiece is the most a load step writes: one gdbstub 'M' packet (QEMU
// drops packets over 4 KiB), so each load pause is one round trip.
const loadPiece = 0x700

// loadSteps returns the writes that load pages into slot s, each small
// enough for a short pause of its own: the slot's page table, then each
// page, in pieces of one packet, and last the PMD entry that makes them visible. Until that last
// step nothing in the guest can reach the slot, so the steps may run in
// separate pauses with the guest running in between.
func (e *Engine) loadSteps(s *slot, pages []Page, record []byte) ([]func(g *gdbstub.Client) error, error) {
	table := make([]byte, 4096)
	for _, p := range pages {
		off := p.Addr - s.va
		if p.Addr < s.va+4096 || off >= layout.SlotSize-recordArea || off%4096 != 0 || len(p.Data) != 4096 {
			return nil, fmt.Errorf("patch page at %#x does not fit slot %#x", p.Addr, s.va)
		}
		pte := (s.pa + off) | introspect.PTEPresent | pteAccessed | e.win.global
		switch p.Perm {
		case PermRX:
		case PermRO:
			pte |= introspect.PTENX
		case PermRW:
			pte |= introspect.PTEWrite | pteDirty | introspect.PTENX
		default:
			return nil, fmt.Errorf("patch page at %#x has no permission", p.Addr)
		}
		binary.LittleEndian.PutUint64(table[8*(off/4096):], pte)
	}
	var steps []func(g *gdbstub.Client) error
	write := func(pa uint64, data []byte) {
		for len(data) > 0 {
			n := min(len(data), loadPiece)
			piece, at := data[:n], pa
			steps = append(steps, func(g *gdbstub.Client) error { return physWrite(g, at, piece) })
			data, pa = data[n:], pa+uint64(n)
		}
	}
	write(s.pa, table)
	for _, p := range pages {
		write(s.pa+(p.Addr-s.va), p.Data)
	}
	write(recordPA(s.pa), record)
	steps = append(steps, func(g *gdbstub.Client) error {
		var cur [8]byte
		if err := e.m.ReadPhys(s.pmd, cur[:]); err != nil {
			return err
		}
		if binary.LittleEndian.Uint64(cur[:]) != 0 {
			return fmt.Errorf("PMD entry at %#x for %#x is in use by the guest", s.pmd, s.va)
		}
		var pmd [8]byte
		binary.LittleEndian.PutUint64(pmd[:], s.pa|pmdTable)
		return physWrite(g, s.pmd, pmd[:])
	})
	return steps, nil
}

// unmapSlot clears the PMD entry, flushes every vCPU's TLB, and clears the
// slot's page table so the next patch there starts from nothing. QEMU
// flushes a vCPU's TLB when its CR3 is written, so each CR3 is written back
// unchanged. Two round trips: the PMD entry and every CR3 read, then every
// CR3 and the table written (QEMU runs a batch's packets in order).
// Precondition: the VM is paused and nothing runs in or returns to the slot.
func (e *Engine) unmapSlot(g *gdbstub.Client, s *slot) error {
	tids := g.Threads()
	cr3 := make([]uint64, len(tids))
	b := g.Batch()
	b.WritePhysical(s.pmd, make([]byte, 8))
	for i, tid := range tids {
		b.ReadRegister(tid, "cr3", &cr3[i])
	}
	if err := b.Flush(); err != nil {
		return fmt.Errorf("unmap slot %d: %w", s.index, err)
	}
	for i, tid := range tids {
		b.WriteRegister(tid, "cr3", cr3[i])
	}
	b.WritePhysical(s.pa, make([]byte, 4096))
	if err := b.Flush(); err != nil {
		return fmt.Errorf("unmap slot %d: flush TLBs and clear its table: %w", s.index, err)
	}
	return nil
}

// physWrite writes guest-physical memory through QEMU, so TCG notices.
func physWrite(g *gdbstub.Client, pa uint64, data []byte) error {
	b := g.Batch()
	b.WritePhysical(pa, data)
	return b.Flush()
}
