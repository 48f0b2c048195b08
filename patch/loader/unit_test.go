package loader

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

func TestFillNOPs(t *testing.T) {
	for n := 0; n <= 20; n++ {
		b := make([]byte, n)
		fillNOPs(b)
		for off := 0; off < n; {
			in, err := x86asm.Decode(b[off:], 64)
			if err != nil || in.Op != x86asm.NOP && !(in.Len == 1 && b[off] == 0x90) && !(in.Len == 2 && b[off] == 0x66) {
				t.Fatalf("%d: % x at %d is not a NOP: %v %v", n, b, off, in, err)
			}
			if in.Len < min(8, n-off) {
				t.Errorf("%d: % x: a %d-byte NOP where %d fit", n, b, in.Len, min(8, n-off))
			}
			off += in.Len
		}
	}
}

func TestRecomputeJump(t *testing.T) {
	const instr, repl = 0xffffffff83a00010, 0xffffffff83a00400
	jmp := func(target uint64) []byte {
		b := make([]byte, 8)
		b[0] = 0xe9
		binary.LittleEndian.PutUint32(b[1:], uint32(target-(repl+5)))
		return b
	}
	for _, tc := range []struct {
		target uint64
		n      uint64
		want   []byte
	}{
		{instr + 7, 2, []byte{0xeb, 5}},         // forward, short
		{instr + 2 + 127, 2, []byte{0xeb, 127}}, // the farthest short one
		{instr + 2 + 128, 5, append([]byte{0xe9}, le32(128+2-5)...)},
		{instr - 16, 5, append([]byte{0xe9}, le32(uint32(0xffffffff)-16-5+1)...)}, // backward: always near, as in 6.1
	} {
		b := jmp(tc.target)
		n := recomputeJump(b, instr, repl)
		if n != tc.n || !bytes.Equal(b[:n], tc.want) {
			t.Errorf("jmp %#x: % x (%d bytes), want % x", tc.target, b[:n], n, tc.want)
		}
		in, _ := x86asm.Decode(b[:n], 64)
		if d, _ := (insn{instr, in}).dest(); d != tc.target {
			t.Errorf("jmp %#x re-encoded goes to %#x", tc.target, d)
		}
	}
}

func TestAltFeature(t *testing.T) {
	narrow := altLayout{size: 12, instr: 0, repl: 4, feat: 8, ilen: 10, rlen: 11}
	wide := altLayout{size: 14, instr: 0, repl: 4, feat: 8, ilen: 12, rlen: 13, wide: true}
	e := make([]byte, 14)
	binary.LittleEndian.PutUint16(e[8:], 3*32+21|1<<15) // ALT_NOT(X86_FEATURE_ALWAYS), 6.1
	if bit, not := narrow.feature(e); bit != 3*32+21 || !not {
		t.Errorf("6.1 ALT_NOT: bit %d not %v", bit, not)
	}
	binary.LittleEndian.PutUint32(e[8:], 9*32+5|1<<16) // ALT_NOT(X86_FEATURE_AVX2), 6.3+
	if bit, not := wide.feature(e); bit != 9*32+5 || !not {
		t.Errorf("ft_flags ALT_NOT: bit %d not %v", bit, not)
	}
	binary.LittleEndian.PutUint32(e[8:], 9*32+5)
	if bit, not := wide.feature(e); bit != 9*32+5 || not {
		t.Errorf("ft_flags: bit %d not %v", bit, not)
	}
}

func TestCheckReplacement(t *testing.T) {
	const repl = 0xffffffff83a00400
	for _, tc := range []struct {
		code []byte
		ok   bool
	}{
		{[]byte{0xe8, 0, 0, 0, 0x10}, true},              // leading call: re-targeted
		{[]byte{0xe9, 0, 0, 0, 0x10}, true},              // leading jmp: re-encoded
		{[]byte{0x0f, 0xae, 0xe8}, true},                 // lfence
		{[]byte{0x75, 0x01, 0x90}, true},                 // jnz inside itself
		{[]byte{0x48, 0x8b, 0x05, 0, 0, 0, 0x10}, false}, // mov x(%rip), %rax
		{[]byte{0x90, 0xe8, 0, 0, 0, 0x10}, false},       // a call that is not first
		{[]byte{0x0f, 0x84, 0, 0, 0, 0x10}, false},       // jz far away
	} {
		err := checkReplacement(tc.code, repl)
		if (err == nil) != tc.ok {
			t.Errorf("% x: %v", tc.code, err)
		}
	}
}

func TestEntryProblem(t *testing.T) {
	const fn = 0xffffffff813f5980
	for _, tc := range []struct {
		entry [5]byte
		want  string
	}{
		{[5]byte{0xe8, 0x9b, 0x5d, 0xc7, 0xff}, "traced by ftrace or patched by Linux livepatch"},
		{[5]byte{0xe9, 0x7b, 0xa6, 0x60, 0x02}, "already redirected (by lucos?)"},
		{[5]byte{0xe9, 0x00, 0x00, 0x00, 0x40}, "outside the kernel image"},
		{[5]byte{0xf3, 0x0f, 0x1e, 0xfa, 0x55}, "not a patchable function entry"},
	} {
		if got := entryProblem(tc.entry, fn); !strings.Contains(got, tc.want) {
			t.Errorf("% x: %q, want %q", tc.entry, got, tc.want)
		}
	}
}

func TestImageRead(t *testing.T) {
	im := &Image{Base: 0x1000, Size: 2 * PageSize, Pages: []Page{
		{Addr: 0x1000, Data: bytes.Repeat([]byte{1}, PageSize), Perm: RX},
		{Addr: 0x2000, Data: bytes.Repeat([]byte{2}, PageSize), Perm: RO},
	}}
	if b, ok := im.Read(0x1ffe, 4); !ok || !bytes.Equal(b, []byte{1, 1, 2, 2}) {
		t.Errorf("across pages: % x %v", b, ok)
	}
	for _, bad := range [][2]uint64{{0xfff, 1}, {0x2fff, 2}, {0x3000, 1}, {0x1000, 1 << 40}} {
		if _, ok := im.Read(bad[0], int(bad[1])); ok {
			t.Errorf("read %#x+%d outside the image succeeded", bad[0], bad[1])
		}
	}
	if im.PermAt(0x1fff) != RX || im.PermAt(0x2000) != RO || im.PermAt(0x3000) != 0 {
		t.Error("PermAt")
	}
}

func TestClassify(t *testing.T) {
	for name, want := range map[string]Treatment{
		".text": Load, ".text.unlikely": Load, ".rodata.str1.8": Load, ".data..ro_after_init": Load,
		".data..percpu": Refuse, ".lucos.callbacks": Load, "__ex_table": Register, ".orc_unwind": Register, ".init.text": Ignore,
		".exit.data": Ignore, "__ksymtab_gpl": Ignore, ".note.gnu.build-id": Metadata, ".note.Linux": Metadata,
		"__jump_table": Consume, ".textfoo": 0, "__bug_table": Register, ".static_call.text": Refuse,
	} {
		r, ok := classify(name)
		if got := r.treat; !ok && want != 0 || ok && got != want {
			t.Errorf("%s: %v (known %v), want %v", name, got, ok, want)
		}
	}
}
