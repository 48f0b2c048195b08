package loader

import (
	"fmt"
	"slices"
)

// The kernel's relative tables — __ex_table, .orc_unwind_ip, __bug_table
// on x86-64 — hold 32-bit self-relative fields: each is its target's
// address minus the field's own. An entry that moves must have them
// rewritten, as the kernel's sort_extable swap does (swap_ex), so lucos
// sorts and compacts them through this decode/encode pair:
//
//  1. decode each entry at its linked place: its bytes and the absolute
//     target of each relative field;
//  2. drop the entries of code lucos does not load (.init.text, .exit.text);
//  3. sort them as the kernel's module loader would;
//  4. encode them from the table's start: each relative field recomputed
//     for its new place, the rest copied, the tail zeroed.

// relTable is a table of fixed-size entries at addr whose fields at the
// offsets rel are self-relative s32.
type relTable struct {
	addr uint64   // runtime address of entry 0
	size uint64   // bytes per entry
	rel  []uint64 // offsets of the self-relative fields in an entry
}

// tableEntry is one entry lifted out of its place.
type tableEntry struct {
	raw    []byte   // its bytes (relative fields as found)
	target []uint64 // the absolute target of each relative field
}

// decode lifts every entry out of b, which holds the table.
func (t relTable) decode(b []byte) []tableEntry {
	n := uint64(len(b)) / t.size
	out := make([]tableEntry, n)
	for i := uint64(0); i < n; i++ {
		e := tableEntry{raw: slices.Clone(b[i*t.size : (i+1)*t.size])}
		for _, off := range t.rel {
			e.target = append(e.target, rel32Dest(t.addr+i*t.size+off, e.raw[off:off+4]))
		}
		out[i] = e
	}
	return out
}

// encode writes entries into b from its start, recomputing their relative
// fields for their new places, and zeroes the rest of b.
func (t relTable) encode(b []byte, entries []tableEntry) error {
	if uint64(len(entries))*t.size > uint64(len(b)) {
		return fmt.Errorf("%d entries of %d bytes do not fit %d bytes", len(entries), t.size, len(b))
	}
	clear(b)
	for i, e := range entries {
		at := uint64(i) * t.size
		copy(b[at:at+t.size], e.raw)
		for j, off := range t.rel {
			if !setRel32(b[at+off:at+off+4], t.addr+at+off, e.target[j]) {
				return fmt.Errorf("entry %d: target %#x is out of rel32 reach of %#x", i, e.target[j], t.addr+at+off)
			}
		}
	}
	return nil
}

// tableRef is a table as the kernel gets it: where, and how many entries.
type tableRef struct {
	addr uint64
	n    int
}

// sortExTable sorts the exception table b (at addr, entries of size bytes
// whose instruction and fixup fields are self-relative at insnOff and
// fixupOff; the rest, the handler type and its data, is absolute) by
// instruction address, as the kernel's sort_extable does, keeping only the
// entries keep accepts. It returns how many are left.
func sortExTable(b []byte, addr, size, insnOff, fixupOff uint64, keep func(i int) bool) (int, error) {
	t := relTable{addr: addr, size: size, rel: []uint64{insnOff, fixupOff}}
	var kept []tableEntry
	for i, e := range t.decode(b) {
		if keep(i) {
			kept = append(kept, e)
		}
	}
	// The instruction field is the key (ex_to_insn); no two entries share one.
	slices.SortStableFunc(kept, func(x, y tableEntry) int { return cmpUint(x.target[0], y.target[0]) })
	return len(kept), t.encode(b, kept)
}

// ORC entries (arch/x86/include/asm/orc_types.h, Linux 6.1): s16 sp_offset,
// s16 bp_offset, then sp_reg:4 bp_reg:4 type:2 end:1, little-endian
// bitfields, __packed.
const (
	orcEntrySize     = 6
	orcRegUndefined  = 0
	orcRegByte       = 4 // sp_reg in bits 0..3
	orcEndByte       = 5 // end in bit 2
	orcEndBit        = 1 << 2
	orcIPEntrySize   = 4
	orcIPFieldOffset = 0
)

// orcTerminator reports whether an ORC entry is a "weak" section
// terminator (sp_reg undefined, not end), which the kernel sorts before a
// real entry at the same address so that its lookup, which takes the last
// entry not after the address, prefers the real one (orc_sort_cmp).
func orcTerminator(e []byte) bool {
	return e[orcRegByte]&0x0f == orcRegUndefined && e[orcEndByte]&orcEndBit == 0
}

// sortORC sorts the ORC tables — ip, the self-relative addresses at ipAddr,
// and orc, the unwind entries, pairwise — by address as unwind_module_init
// does, keeping only the pairs keep accepts, and returns how many are left.
func sortORC(ip []byte, ipAddr uint64, orc []byte, keep func(i int) bool) (int, error) {
	if len(ip)%orcIPEntrySize != 0 || len(orc)%orcEntrySize != 0 || len(ip)/orcIPEntrySize != len(orc)/orcEntrySize {
		return 0, fmt.Errorf("%d bytes of .orc_unwind_ip and %d of .orc_unwind are not tables of the same length", len(ip), len(orc))
	}
	ips := relTable{addr: ipAddr, size: orcIPEntrySize, rel: []uint64{orcIPFieldOffset}}
	type pair struct {
		ip  tableEntry
		orc []byte
	}
	var kept []pair
	for i, e := range ips.decode(ip) {
		if keep(i) {
			kept = append(kept, pair{e, slices.Clone(orc[i*orcEntrySize : (i+1)*orcEntrySize])})
		}
	}
	slices.SortStableFunc(kept, func(x, y pair) int {
		if c := cmpUint(x.ip.target[0], y.ip.target[0]); c != 0 {
			return c
		}
		switch tx, ty := orcTerminator(x.orc), orcTerminator(y.orc); {
		case tx && !ty:
			return -1
		case ty && !tx:
			return 1
		}
		return 0
	})
	ipEntries := make([]tableEntry, len(kept))
	clear(orc)
	for i, p := range kept {
		ipEntries[i] = p.ip
		copy(orc[i*orcEntrySize:], p.orc)
	}
	return len(kept), ips.encode(ip, ipEntries)
}

// compactTable removes from the relative table b the entries keep refuses,
// keeping the order, and returns how many are left.
func compactTable(b []byte, t relTable, keep func(i int) bool) (int, error) {
	var kept []tableEntry
	for i, e := range t.decode(b) {
		if keep(i) {
			kept = append(kept, e)
		}
	}
	return len(kept), t.encode(b, kept)
}

func cmpUint(a, b uint64) int {
	switch {
	case a < b:
		return -1
	case a > b:
		return 1
	}
	return 0
}
