package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// bugFlagWarning is BUGFLAG_WARNING (include/asm-generic/bug.h), unchanged
// since Linux 2.6.26.
const bugFlagWarning = 1 << 0

var ud2 = []byte{0x0f, 0x0b}

// applyBugTable turns each WARN site (a ud2 the kernel's report_bug() would
// recognise from its bug table) into a 2-byte NOP. lucos registers no bug
// table for patch code, so the kernel would treat the ud2 as an invalid
// opcode and Oops, where a WARN only prints and continues; without it the
// code continues silently, which is what a WARN does after printing. BUG
// sites keep their ud2: they Oops, as BUG() does (reported as an invalid
// opcode rather than "kernel BUG at"). Image.Warnings lists the silenced
// sites so users are told.
func (l *linker) applyBugTable() error {
	s, base, b := l.consumed("__bug_table")
	if s == nil {
		return nil
	}
	size, err := l.t.Sizeof("bug_entry")
	if err != nil {
		return fmt.Errorf("struct bug_entry: %w", err)
	}
	addrOff, err := l.t.FieldOffset("bug_entry", "bug_addr_disp")
	if err != nil {
		return fmt.Errorf("struct bug_entry: only relative bug tables (CONFIG_GENERIC_BUG_RELATIVE_POINTERS) are supported: %w", err)
	}
	flagsOff, err := l.t.FieldOffset("bug_entry", "flags")
	if err != nil {
		return fmt.Errorf("struct bug_entry: %w", err)
	}
	// file and line exist with CONFIG_DEBUG_BUGVERBOSE only.
	fileOff, errFile := l.t.FieldOffset("bug_entry", "file_disp")
	lineOff, errLine := l.t.FieldOffset("bug_entry", "line")
	verbose := errFile == nil && errLine == nil && fileOff+4 <= size && lineOff+2 <= size
	if size == 0 || addrOff+4 > size || flagsOff+2 > size {
		return fmt.Errorf("struct bug_entry: BTF layout does not fit its size %d", size)
	}
	if uint64(len(b))%size != 0 {
		return formatErr(s.name, 0, "size %d is not a multiple of sizeof(struct bug_entry) = %d", len(b), size)
	}
	for off := uint64(0); off < uint64(len(b)); off += size {
		if l.droppedEntry(s, off, size) {
			continue
		}
		e := b[off : off+size]
		addr := rel32Dest(base+off+addrOff, e[addrOff:addrOff+4])
		site, _, ok := l.code(addr, 2)
		if !ok || !bytes.Equal(site, ud2) {
			return formatErr(s.name, off, "bug site %#x is not a ud2 in the patch's code", addr)
		}
		if binary.LittleEndian.Uint16(e[flagsOff:])&bugFlagWarning == 0 {
			continue
		}
		copy(site, x86NOPs[2])
		w := Warning{Addr: addr}
		if verbose {
			w.Line = int(binary.LittleEndian.Uint16(e[lineOff:]))
			file := rel32Dest(base+off+fileOff, e[fileOff:fileOff+4])
			w.File = l.cString(file)
		}
		l.warnings = append(l.warnings, w)
	}
	return nil
}

// cString reads a NUL-terminated string from the patch's loaded data.
func (l *linker) cString(addr uint64) string {
	s, off, ok := l.place(addr, 0)
	if !ok || s.treat != Load {
		return ""
	}
	data := l.buf[s.idx][off:]
	if n := bytes.IndexByte(data, 0); n >= 0 {
		return string(data[:n])
	}
	return ""
}
