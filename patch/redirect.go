package patch

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/introspect"
)

// ftraceNOP is what the running kernel has at the entry of every function
// ftrace may trace: the build's `call __fentry__`, patched at boot to the
// 5-byte NOP. A redirect replaces exactly these 5 bytes, so no instruction
// of the old function is cut and no safe point is needed: a thread at the
// entry takes the jump, a thread past it finishes the old body.
var ftraceNOP = []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}

// ErrTargetChanged means an old function's entry is not what lucos expects.
var ErrTargetChanged = errors.New("function entry is not as expected")

// jmpTo encodes `jmp rel32` at from to to.
func jmpTo(from, to uint64) ([]byte, error) {
	rel := int64(to) - int64(from+5)
	if rel != int64(int32(rel)) {
		return nil, fmt.Errorf("jump from %#x to %#x is out of rel32 range", from, to)
	}
	b := []byte{0xe9, 0, 0, 0, 0}
	binary.LittleEndian.PutUint32(b[1:], uint32(int32(rel)))
	return b, nil
}

// describeEntry explains unexpected entry bytes.
func describeEntry(b []byte) string {
	switch b[0] {
	case 0xe8:
		return "it is traced by ftrace (or patched by Linux livepatch) in the guest: lucos cannot patch a traced function"
	case 0xe9:
		return "it is already redirected (by another lucos patch?)"
	}
	return "it does not start with the ftrace NOP: not a patchable function entry (notrace, assembly, or not a function start)"
}

// readEntry reads the 5 entry bytes of a kernel function.
func readEntry(k *introspect.Kernel, va uint64) ([]byte, error) {
	b := make([]byte, 5)
	return b, k.ReadVirt(va, b)
}

// install writes a jump over the entry of each function, all or nothing;
// each entry must still be what the patch was linked against (f.Orig). All
// jumps go out in one batch: the pause costs one round trip to QEMU
// whatever the number of functions.
// Precondition: the VM is paused.
func (e *Engine) install(g *gdbstub.Client, funcs []Func) error {
	b := g.Batch()
	for _, f := range funcs {
		cur, err := readEntry(e.k, f.OldAddr)
		if err != nil {
			return err
		}
		if !bytes.Equal(cur, f.expect()) { // the ftrace NOP, or the jump of the patch below
			return fmt.Errorf("%w: %s at %#x starts with % x: %s", ErrTargetChanged, f.Name, f.OldAddr, cur, describeEntry(cur))
		}
		jmp, err := jmpTo(f.OldAddr, f.New)
		if err == nil {
			err = e.queueVirt(b, f.OldAddr, jmp)
		}
		if err != nil {
			return err
		}
	}
	if err := b.Flush(); err != nil {
		return e.undoInstall(g, funcs, err)
	}
	return nil
}

// expect is what f's entry holds before its jump is written.
func (f Func) expect() []byte {
	if f.Expect != nil {
		return f.Expect
	}
	return f.Orig
}

// undoInstall puts back what each entry held before install (entries
// install had not reached yet get the bytes they hold).
func (e *Engine) undoInstall(g *gdbstub.Client, funcs []Func, cause error) error {
	b := g.Batch()
	for _, f := range funcs {
		if err := e.queueVirt(b, f.OldAddr, f.expect()); err != nil {
			return fmt.Errorf("%w; and restoring %s failed: %v (guest left with a partial redirect)", cause, f.Name, err)
		}
	}
	if err := b.Flush(); err != nil {
		return fmt.Errorf("%w; and restoring the entries failed: %v (guest left with a partial redirect)", cause, err)
	}
	return cause
}

// restore puts back the original entry bytes of each function, checking
// first that every entry still holds lucos's jump; one batch, as install.
// Precondition: the VM is paused.
func (e *Engine) restore(g *gdbstub.Client, funcs []Func) error {
	orig, jumps := g.Batch(), g.Batch()
	for _, f := range funcs {
		cur, err := readEntry(e.k, f.OldAddr)
		if err != nil {
			return err
		}
		want, _ := jmpTo(f.OldAddr, f.New)
		if !bytes.Equal(cur, want) {
			return fmt.Errorf("%w: %s at %#x holds % x, not lucos's jump % x: something else changed it; not touching it",
				ErrTargetChanged, f.Name, f.OldAddr, cur, want)
		}
		if err := e.queueVirt(orig, f.OldAddr, f.Orig); err != nil {
			return err
		}
		e.queueVirt(jumps, f.OldAddr, want) // the same pages: it translates too
	}
	if err := orig.Flush(); err != nil {
		// Put the jumps back so the functions are consistent again.
		if jerr := jumps.Flush(); jerr != nil {
			return fmt.Errorf("%w; and putting the jumps back failed: %v", err, jerr)
		}
		return err
	}
	return nil
}

// writeVirt writes kernel memory (text, or a kernel stack) at a virtual
// address through QEMU in physical mode (kernel text is read-only and,
// under PTI, absent from user page tables; physical writes bypass both).
func (e *Engine) writeVirt(g *gdbstub.Client, va uint64, data []byte) error {
	b := g.Batch()
	if err := e.queueVirt(b, va, data); err != nil {
		return err
	}
	return b.Flush()
}

// queueVirt adds writeVirt's physical writes to b, split at page boundaries.
func (e *Engine) queueVirt(b *gdbstub.Batch, va uint64, data []byte) error {
	for len(data) > 0 {
		m, err := e.k.Walker.Translate(va)
		if err != nil {
			return err
		}
		n := min(uint64(len(data)), m.VA+m.Size-va)
		b.WritePhysical(m.PA+(va-m.VA), data[:n])
		data, va = data[n:], va+n
	}
	return nil
}
