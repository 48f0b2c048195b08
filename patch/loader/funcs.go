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
		if other, dup := seen[addr]; dup {
			return refuse(sec, fs.OldName, nil, "replaced twice (also as %s)", other)
		}
		seen[addr] = fs.OldName
		site, entry, err := entrySite(l.t, sym, addr)
		if err != nil {
			return refuse(sec, fs.OldName, err, "%v", err)
		}
		if entry != ftraceNOP {
			if c, ok := l.t.(Chainer); !ok || !c.ChainsOver(site, entry) {
				return refuse(sec, fs.OldName, nil, "%s", entryProblem(entry, site))
			}
		}
		newAddr := l.addr[fs.newSec] + fs.newOff
		l.funcs = append(l.funcs, Func{Old: sym, OldAddr: site, OldSize: sym.Size - (site - addr), OldEntry: entry,
			New: newAddr, NewSize: fs.newSize, NewName: fs.NewSymbol})
	}
	return nil
}

// endbr64 starts every function that may be called indirectly in a kernel
// built with IBT (CONFIG_X86_KERNEL_IBT, Debian's from 6.2 on); at boot the
// kernel overwrites those whose address is never taken (.ibt_endbr_seal)
// with endbrPoison, a 4-byte NOP (is_endbr, arch/x86/include/asm/ibt.h).
var (
	endbr64     = [4]byte{0xf3, 0x0f, 0x1e, 0xfa}
	endbrPoison = [4]byte{0x66, 0x0f, 0x1f, 0x00}
)

// entrySite finds the ftrace site of kernel function sym at runtime
// address addr: its first byte, or, after an endbr64 (or its sealed NOP),
// the byte after it. The redirect's 5-byte jump goes there: the endbr
// stays where indirect calls land, and a thread on it has not entered the
// old body. It returns the site and the 5 bytes there.
func entrySite(t Target, sym kimage.Symbol, addr uint64) (uint64, [5]byte, error) {
	var entry [5]byte
	if sym.Size < uint64(len(entry)) {
		return 0, entry, fmt.Errorf("the function is %d bytes: too short for a 5-byte jump", sym.Size)
	}
	var head [len(endbr64)]byte
	if err := t.ReadVirt(addr, head[:]); err != nil {
		return 0, entry, fmt.Errorf("read the entry of %s at %#x: %w", sym.Name, addr, err)
	}
	site := addr
	if head == endbr64 || head == endbrPoison {
		if sym.Size < uint64(len(head)+len(entry)) {
			return 0, entry, fmt.Errorf("the function is %d bytes: too short for a 5-byte jump after its endbr64", sym.Size)
		}
		site += uint64(len(head))
	}
	if err := t.ReadVirt(site, entry[:]); err != nil {
		return 0, entry, fmt.Errorf("read the entry of %s at %#x: %w", sym.Name, site, err)
	}
	return site, entry, nil
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
