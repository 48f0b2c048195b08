package gdbstub

import (
	"testing"

	"golang.org/x/arch/x86/x86asm"
)

func TestStoredIntoWatch(t *testing.T) {
	l := qemu72Layout(t)
	regs, err := l.NewRegisters(make([]byte, l.Size()))
	if err != nil {
		t.Fatal(err)
	}
	const rip = 0xffffffff81058e5b
	for name, v := range map[string]uint64{"rip": rip, "rbx": 0xffff888001000000, "rcx": 3, "gs_base": 0xffff88803ea00000} {
		if err := regs.Set(name, v); err != nil {
			t.Fatal(err)
		}
	}
	// before returns the 15 bytes ahead of rip, ending with code.
	before := func(code ...byte) []byte {
		b := make([]byte, maxInsn-len(code), maxInsn)
		for i := range b {
			b[i] = 0xcc // int3 padding: no store
		}
		return append(b, code...)
	}
	jiffies := uint64(rip + 0x18aeb65)
	w := func(kind WatchKind, addr, size uint64) []watchRange { return []watchRange{{kind, addr, size}} }
	for _, tc := range []struct {
		name    string
		code    []byte
		watches []watchRange
		want    bool
	}{
		{"add %rdx,jiffies(%rip)", []byte{0x48, 0x01, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchWrite, jiffies, 8), true},
		{"the same into the watch's last byte", []byte{0x48, 0x01, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchWrite, jiffies+7, 1), true},
		{"the same next to the watch", []byte{0x48, 0x01, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchWrite, jiffies+8, 8), false},
		{"the same, a read watch", []byte{0x48, 0x01, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchRead, jiffies, 8), false},
		{"cmp %rdx,jiffies(%rip) reads", []byte{0x48, 0x39, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchWrite, jiffies, 8), false},
		{"mov jiffies(%rip),%rdx reads", []byte{0x48, 0x8b, 0x15, 0x65, 0xeb, 0x8a, 0x01}, w(WatchWrite, jiffies, 8), false},
		{"mov %eax,0x10(%rbx,%rcx,8)", []byte{0x89, 0x44, 0xcb, 0x10}, w(WatchWrite, 0xffff888001000000+0x10+3*8, 4), true},
		{"mov %rax,%gs:0x20", []byte{0x65, 0x48, 0x89, 0x04, 0x25, 0x20, 0x00, 0x00, 0x00}, w(WatchWrite, 0xffff88803ea00020, 8), true},
		{"mov %rax,0x20 without gs", []byte{0x48, 0x89, 0x04, 0x25, 0x20, 0x00, 0x00, 0x00}, w(WatchWrite, 0xffff88803ea00020, 8), false},
	} {
		if got := storedIntoWatch(before(tc.code...), rip, regs, tc.watches); got != tc.want {
			t.Errorf("%s: %v, want %v", tc.name, got, tc.want)
		}
	}
}

// TestStoreIntoWatchNext: the instruction at rip, which a recovery step
// runs, is checked too, with rip-relative operands taken from its own
// end, and the address it writes is returned.
func TestStoreIntoWatchNext(t *testing.T) {
	l := qemu72Layout(t)
	regs, err := l.NewRegisters(make([]byte, l.Size()))
	if err != nil {
		t.Fatal(err)
	}
	const rip = 0xffffffffc0401010
	// addq $1, 0x1000(%rip): 48 83 05 00 10 00 00 01, 8 bytes.
	in, err := x86asm.Decode([]byte{0x48, 0x83, 0x05, 0x00, 0x10, 0x00, 0x00, 0x01}, 64)
	if err != nil {
		t.Fatal(err)
	}
	target := uint64(rip + 8 + 0x1000)
	if ea, ok := storeIntoWatch(in, rip+uint64(in.Len), regs, []watchRange{{WatchWrite, target - 8, 16}}); !ok || ea != target {
		t.Errorf("addq into the watch: %#x %v, want %#x", ea, ok, target)
	}
	if _, ok := storeIntoWatch(in, rip+uint64(in.Len), regs, []watchRange{{WatchWrite, target + 8, 8}}); ok {
		t.Error("addq next to the watch: reported")
	}
}
