package loader

import (
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lucos/lucos/kimage"
)

// Chainer is a Target that lets a patch replace a function another live
// patch already replaces: ChainsOver reports whether entry, the bytes at
// the function's entry addr, is that patch's jump, over which the new one
// may chain (the engine's patch stacking).
type Chainer interface {
	ChainsOver(addr uint64, entry [5]byte) bool
}

// checkFuncs resolves each LUCOS_REPLACE and checks that the old function
// can be redirected: a text symbol of at least 5 bytes whose entry is the
// ftrace NOP. The engine checks the entry again while the guest is paused;
// this gives the error before anything else happens.
func (l *linker) checkFuncs() error {
	const sec = ".lucos.funcs"
	seen := map[uint64]string{}
	for _, fs := range l.m.Funcs {
		sym, addr, err := l.t.Symbol(fs.OldName, fs.Pos)
		var amb *kimage.AmbiguousError
		switch {
		case errors.As(err, &amb):
			return refuse(sec, fs.OldName, err, "%v: use LUCOS_REPLACE_POS(%s, <pos>, %s)", amb.Error(), fs.OldName, fs.NewSymbol)
		case errors.Is(err, kimage.ErrNotFound):
			return refuse(sec, fs.OldName, err, "the function to replace is not in the guest kernel: %v", err)
		case err != nil:
			return fmt.Errorf("resolve %s: %w", fs.OldName, err)
		}
		if !sym.Text() {
			return refuse(sec, fs.OldName, nil, "not a function (kallsyms type %c)", sym.Type)
		}
		if sym.Size < 5 {
			return refuse(sec, fs.OldName, nil, "the function is %d bytes: too short for a 5-byte jump", sym.Size)
		}
		if other, dup := seen[addr]; dup {
			return refuse(sec, fs.OldName, nil, "replaced twice (also as %s)", other)
		}
		seen[addr] = fs.OldName
		var entry [5]byte
		if err := l.t.ReadVirt(addr, entry[:]); err != nil {
			return fmt.Errorf("read the entry of %s at %#x: %w", fs.OldName, addr, err)
		}
		if entry != ftraceNOP {
			if c, ok := l.t.(Chainer); !ok || !c.ChainsOver(addr, entry) {
				return refuse(sec, fs.OldName, nil, "%s", entryProblem(entry, addr))
			}
		}
		newAddr := l.addr[fs.newSec] + fs.newOff
		l.funcs = append(l.funcs, Func{Old: sym, OldAddr: addr, OldEntry: entry, New: newAddr, NewSize: fs.newSize, NewName: fs.NewSymbol})
	}
	return nil
}

// entryProblem says why a function entry is not the ftrace NOP.
func entryProblem(entry [5]byte, addr uint64) string {
	switch entry[0] {
	case 0xe8:
		return fmt.Sprintf("entry is % x, a call: traced by ftrace or patched by Linux livepatch in the guest", entry)
	case 0xe9:
		dest := addr + 5 + uint64(int64(int32(binary.LittleEndian.Uint32(entry[1:]))))
		if dest >= kernelImageStart && dest < kernelImageEnd {
			return fmt.Sprintf("entry is % x, a jump to %#x in the kernel-image window: already redirected (by lucos?)", entry, dest)
		}
		return fmt.Sprintf("entry is % x, a jump to %#x outside the kernel image: redirected by something else", entry, dest)
	}
	return fmt.Sprintf("entry is % x, not the ftrace NOP (0f 1f 44 00 00): not a patchable function entry (notrace, asm, or not a function start)", entry)
}
