package patch

import (
	"encoding/binary"
	"fmt"

	"github.com/lucos/lucos/patch/loader"
)

// Function callbacks run inside the guest with no VM exit: the function's
// entry NOP becomes a jump, like a replacement's, to a stub lucos writes
// after the patch's own pages:
//
//	push rdi, rsi, rdx, rcx, r8, r9, rax  ; the arguments; rsp 16-aligned
//	lock bts qword [once], 0 ; jc skip    ; LUCOS_CB_ONCE only
//	lock inc qword [count]                ; runs, read by Info
//	call fn                               ; fn gets the function's arguments
//	skip: pop rax, r9, r8, rcx, rdx, rsi, rdi
//	jmp target                            ; the body after the NOP, or the replacement
//
// The stub is the function's "new" code for the redirect machinery: it is
// installed and removed with the patch's jumps, and threads inside it (or
// inside fn, called from it) keep the slot mapped at rollback. Breakpoints
// would do the same with a VM exit per call and, under TCG, a flush of all
// translated code per hit.
//
// Written by hand: the x86 packages at hand decode instructions but do not
// encode them, and the stub is eleven fixed instructions.

// hook is one function callback's stub.
type hook struct {
	name  string
	count uint64 // address of its run counter (guest memory)
}

// Stub encodings.
var (
	pushArgs = []byte{0x57, 0x56, 0x52, 0x51, 0x41, 0x50, 0x41, 0x51, 0x50} // push rdi, rsi, rdx, rcx, r8, r9, rax
	popArgs  = []byte{0x58, 0x41, 0x59, 0x41, 0x58, 0x59, 0x5a, 0x5e, 0x5f} // pop rax, r9, r8, rcx, rdx, rsi, rdi
	lockBTS0 = []byte{0xf0, 0x48, 0x0f, 0xba, 0x2d}                         // lock bts qword [rip+disp32], imm8
	lockINC  = []byte{0xf0, 0x48, 0xff, 0x05}                               // lock inc qword [rip+disp32]
)

// stubAsm appends instructions at a known virtual address.
type stubAsm struct {
	va  uint64
	b   []byte
	err error
}

func (a *stubAsm) pc() uint64 { return a.va + uint64(len(a.b)) }

func (a *stubAsm) emit(b ...byte) { a.b = append(a.b, b...) }

// rel32 emits op followed by a 32-bit displacement to target, counted from
// the end of the instruction (which ends tail bytes after the displacement).
func (a *stubAsm) rel32(op []byte, target uint64, tail ...byte) {
	end := a.pc() + uint64(len(op)) + 4 + uint64(len(tail))
	d := int64(target) - int64(end)
	if d != int64(int32(d)) && a.err == nil {
		a.err = fmt.Errorf("stub at %#x: %#x is out of rel32 range", a.pc(), target)
	}
	a.emit(op...)
	a.b = binary.LittleEndian.AppendUint32(a.b, uint32(int32(d)))
	a.emit(tail...)
}

// buildHooks writes a stub for each function callback into a text page at
// textVA and its flags and counters into a data page at dataVA. funcs are
// the patch's redirects: a hooked function the patch also replaces keeps
// its redirect, now to the stub, whose tail jumps to the replacement; any
// other hooked function gets a redirect of its own, marked Hook. It returns
// the pages (nil if there are no function callbacks) and the new funcs.
func buildHooks(cbs []loader.Callback, funcs []Func, entry func(uint64) ([]byte, error), textVA, dataVA uint64) ([]Page, []Func, []hook, error) {
	text := &stubAsm{va: textVA}
	var data []byte
	var hooks []hook
	out := append([]Func(nil), funcs...)
	for _, cb := range cbs {
		if cb.Spec.Kind != loader.CallbackFunc {
			continue
		}
		i := -1
		for j, f := range out {
			if f.OldAddr == cb.SymAddr {
				i = j
			}
		}
		target := cb.SymAddr + 5 // the body after the ftrace NOP (SymAddr is past any endbr64)
		if i >= 0 {
			target = out[i].New
		} else {
			orig, err := entry(cb.SymAddr)
			if err != nil {
				return nil, nil, nil, err
			}
			out = append(out, Func{Name: cb.Spec.Symbol, Pos: cb.Spec.Pos, OldAddr: cb.SymAddr, OldSize: cb.SymSize, Orig: orig, Hook: true})
			i = len(out) - 1
		}
		once, count := dataVA+uint64(len(data)), dataVA+uint64(len(data))+8
		data = append(data, make([]byte, 16)...)
		out[i].New = text.pc()
		text.emit(pushArgs...)
		var jc int
		if cb.Spec.Once {
			text.rel32(lockBTS0, once, 0)
			text.emit(0x72, 0) // jc skip, patched below
			jc = len(text.b)
		}
		text.rel32(lockINC, count)
		text.rel32([]byte{0xe8}, cb.Fn) // call fn
		if cb.Spec.Once {
			text.b[jc-1] = byte(len(text.b) - jc)
		}
		text.emit(popArgs...)
		text.rel32([]byte{0xe9}, target) // jmp target
		text.emit(0xcc)                  // never reached
		hooks = append(hooks, hook{name: cb.Spec.Symbol, count: count})
	}
	if len(hooks) == 0 {
		return nil, funcs, nil, nil
	}
	if text.err != nil {
		return nil, nil, nil, text.err
	}
	if len(text.b) > loader.PageSize || len(data) > loader.PageSize {
		return nil, nil, nil, fmt.Errorf("%d function callbacks do not fit one page of stubs", len(hooks))
	}
	pages := []Page{
		{Addr: textVA, Data: pad(text.b, 0xcc), Perm: PermRX},
		{Addr: dataVA, Data: pad(data, 0), Perm: PermRW},
	}
	return pages, out, hooks, nil
}

// pad fills b to a page with fill.
func pad(b []byte, fill byte) []byte {
	p := make([]byte, loader.PageSize)
	for i := range p {
		p[i] = fill
	}
	copy(p, b)
	return p
}
