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

// applyBugTable checks each bug table entry (a ud2 in the patch's code
// that report_bug() recognises from the table). With the module shell the
// table is registered with the kernel: WARN sites print and continue, BUG
// sites are a kernel BUG, as in a module; the entries of code lucos does
// not load are dropped. Without it (a patch without the lucos runtime) the
// kernel knows no bug table for patch code and would treat a WARN's ud2 as
// an invalid opcode and Oops, where a WARN only prints and continues: each
// WARN site becomes a 2-byte NOP, and the code continues silently, which
// is what a WARN does after printing; Image.Warnings lists them so users
// are told. BUG sites keep their ud2: they Oops, as BUG() does (reported as
// an invalid opcode rather than "kernel BUG at").
func (l *linker) applyBugTable() error {
	s, base, b := l.table("__bug_table")
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
	shell := l.m.shell != nil
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
		if shell || binary.LittleEndian.Uint16(e[flagsOff:])&bugFlagWarning == 0 {
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
	if !shell || s.treat != Register {
		return nil
	}
	t := relTable{addr: base, size: size, rel: []uint64{addrOff}}
	if verbose {
		t.rel = append(t.rel, fileOff)
	}
	n, err := compactTable(b, t, func(i int) bool { return !l.droppedEntry(s, uint64(i)*size, size) })
	if err != nil {
		return formatErr(s.name, 0, "%v", err)
	}
	l.bugs = tableRef{addr: base, n: n}
	return nil
}

// cString reads a NUL-terminated string from the patch's loaded data.
func (l *linker) cString(addr uint64) string {
	s, off, ok := l.place(addr, 0)
	if !ok || !s.loaded() {
		return ""
	}
	data := l.buf[s.idx][off:]
	if n := bytes.IndexByte(data, 0); n >= 0 {
		return string(data[:n])
	}
	return ""
}
