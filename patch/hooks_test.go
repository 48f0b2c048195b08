package patch

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"

	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/patch/loader"
)

// TestBuildHooks decodes the stubs: the arguments saved, the once flag
// tested and set atomically, the counter bumped, the callback called, the
// arguments restored, and the jump to the body after the NOP — or to the
// replacement when the patch also replaces the function.
func TestBuildHooks(t *testing.T) {
	const (
		textVA = 0xffffffffc1000000
		dataVA = textVA + 0x1000
		f1     = 0xffffffff81000000 // hooked only
		f2     = 0xffffffff81001000 // hooked and replaced
		repl   = 0xffffffffc0ff0000
		cb1    = 0xffffffffc0ff1000
		cb2    = 0xffffffffc0ff2000
	)
	nop := []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}
	cbs := []loader.Callback{
		{Spec: loader.CallbackSpec{Kind: loader.CallbackFunc, Symbol: "one", Once: true}, Sym: kimage.Symbol{Size: 64}, SymAddr: f1, Fn: cb1},
		{Spec: loader.CallbackSpec{Kind: loader.CallbackStartup}, Fn: 0x1234},
		{Spec: loader.CallbackSpec{Kind: loader.CallbackFunc, Symbol: "two"}, SymAddr: f2, Fn: cb2},
	}
	funcs := []Func{{Name: "two", OldAddr: f2, New: repl, Orig: nop}}
	entry := func(uint64) ([]byte, error) { return nop, nil }
	pages, out, hooks, err := buildHooks(cbs, funcs, entry, textVA, dataVA)
	if err != nil {
		t.Fatal(err)
	}
	if len(pages) != 2 || pages[0].Perm != PermRX || pages[1].Perm != PermRW || len(hooks) != 2 {
		t.Fatalf("pages %d, hooks %+v", len(pages), hooks)
	}
	if len(out) != 2 || out[0].OldAddr != f2 || out[0].Hook || out[1].OldAddr != f1 || !out[1].Hook {
		t.Fatalf("funcs %+v", out)
	}
	decode := func(at uint64) []string {
		var ops []string
		code := pages[0].Data[at-textVA:]
		pc := at
		for {
			in, err := x86asm.Decode(code, 64)
			if err != nil {
				t.Fatalf("decode at %#x: %v", pc, err)
			}
			s := x86asm.GNUSyntax(in, pc, nil)
			ops = append(ops, s)
			code, pc = code[in.Len:], pc+uint64(in.Len)
			if in.Op == x86asm.JMP {
				return ops
			}
		}
	}
	want1 := []string{"push %rdi", "push %rsi", "push %rdx", "push %rcx", "push %r8", "push %r9", "push %rax",
		"lock btsq $0x0,0xfed(%rip)", "jb 0xffffffffc1000022", "lock incq 0xfeb(%rip)", "callq 0xffffffffc0ff1000",
		"pop %rax", "pop %r9", "pop %r8", "pop %rcx", "pop %rdx", "pop %rsi", "pop %rdi", "jmpq 0xffffffff81000005"}
	got1 := decode(out[1].New)
	if len(got1) != len(want1) {
		t.Fatalf("stub one:\n%q\nwant\n%q", got1, want1)
	}
	// once at dataVA (0x13+0xfed), skip past the call (0x15+13), count at
	// dataVA+8 (0x1d+0xfeb), then the body after f1's NOP.
	for i := range want1 {
		if got1[i] != want1[i] {
			t.Errorf("stub one, instruction %d: %q, want %q", i, got1[i], want1[i])
		}
	}
	got2 := decode(out[0].New)
	if n := len(got2); n != 17 || got2[n-1] != "jmpq 0xffffffffc0ff0000" || got2[8] != "callq 0xffffffffc0ff2000" {
		t.Errorf("stub two (every entry, to the replacement):\n%q", got2)
	}
	if hooks[0].count != dataVA+8 || hooks[1].count != dataVA+24 {
		t.Errorf("counters at %#x and %#x", hooks[0].count, hooks[1].count)
	}
}
