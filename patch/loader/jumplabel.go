package loader

import (
	"bytes"
	"encoding/binary"
	"fmt"
)

// applyJumpTable sets each static-branch site of the patch from its key, as
// the kernel's jump_label_add_module() would: jump when
// static_key_enabled(key) XOR the entry's branch bit (jump_label_type()),
// else a NOP of the site's size (2 or 5 bytes). A key is read from guest
// memory when it is the kernel's, from the linked patch data when it is the
// patch's own.
func (l *linker) applyJumpTable() error {
	s, base, b := l.consumed("__jump_table")
	if s == nil {
		return nil
	}
	size, err := l.t.Sizeof("jump_entry")
	if err != nil {
		return fmt.Errorf("struct jump_entry: %w", err)
	}
	var codeOff, targetOff, keyOff, enabledOff uint64
	for _, f := range []struct {
		typ, name string
		dst       *uint64
	}{
		{"jump_entry", "code", &codeOff}, {"jump_entry", "target", &targetOff}, {"jump_entry", "key", &keyOff},
		{"static_key", "enabled", &enabledOff},
	} {
		if *f.dst, err = l.t.FieldOffset(f.typ, f.name); err != nil {
			return fmt.Errorf("struct %s: %w", f.typ, err)
		}
	}
	if size == 0 || codeOff+4 > size || targetOff+4 > size || keyOff+8 > size {
		return fmt.Errorf("struct jump_entry: BTF layout does not fit its size %d", size)
	}
	if uint64(len(b))%size != 0 {
		return formatErr(s.name, 0, "size %d is not a multiple of sizeof(struct jump_entry) = %d", len(b), size)
	}
	for off := uint64(0); off < uint64(len(b)); off += size {
		if l.droppedEntry(s, off, size) {
			continue
		}
		e := b[off : off+size]
		code := rel32Dest(base+off+codeOff, e[codeOff:codeOff+4])
		target := rel32Dest(base+off+targetOff, e[targetOff:targetOff+4])
		keyField := base + off + keyOff + binary.LittleEndian.Uint64(e[keyOff:])
		key := keyField &^ 3
		branch := keyField&1 != 0

		site, _, ok := l.code(code, 2)
		if !ok {
			return formatErr(s.name, off, "jump site %#x is not in the patch's code", code)
		}
		var n uint64
		switch {
		case site[0] == 0xeb || bytes.Equal(site, x86NOPs[2]):
			n = 2
		case site[0] == 0xe9 || site[0] == 0x0f:
			n = 5
			if site, _, ok = l.code(code, 5); !ok || (site[0] == 0x0f && !bytes.Equal(site, x86NOPs[5])) {
				return formatErr(s.name, off, "jump site %#x holds neither a jmp nor a NOP", code)
			}
		default:
			return formatErr(s.name, off, "jump site %#x holds % x, neither a jmp nor a NOP", code, site)
		}

		var counter [4]byte
		kernelKey := false
		if kb, ok := l.loadedBytes(key+enabledOff, 4); ok {
			copy(counter[:], kb)
		} else {
			kernelKey = true
			if err := l.t.ReadVirt(key+enabledOff, counter[:]); err != nil {
				return fmt.Errorf("section %s+%#x: read static key at %#x: %w", s.name, off, key, err)
			}
		}
		// static_key_enabled(): the count is > 0 (it is -1 while being enabled).
		enabled := int32(binary.LittleEndian.Uint32(counter[:])) > 0
		jump := enabled != branch

		if jump {
			if n == 2 {
				d := int64(target - (code + 2))
				if d != int64(int8(d)) {
					return formatErr(s.name, off, "2-byte jump site %#x cannot reach %#x", code, target)
				}
				site[0], site[1] = 0xeb, byte(int8(d))
			} else {
				site[0] = 0xe9
				if !setRel32(site[1:5], code+5, target) {
					return formatErr(s.name, off, "jump site %#x cannot reach %#x", code, target)
				}
			}
		} else {
			copy(site, x86NOPs[n])
		}
		l.jumps = append(l.jumps, JumpSite{Addr: code, Len: int(n), Target: target, Key: key,
			KernelKey: kernelKey, Branch: branch, Enabled: enabled, Jump: jump})
	}
	return nil
}
