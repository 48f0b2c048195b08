package introspect

import (
	"strings"
	"testing"
)

// QEMU 7.2's "info registers" (an excerpt).
const infoRegisters = "RAX=0000000000000000 RBX=ffffffff8b60a940\r\n" +
	"GDT=     fffffe0000001000 0000007f\r\n" +
	"IDT=     fffffe0000000000 00000fff\r\n" +
	"CR0=80050033 CR2=00007f0c CR3=000000000b20a000 CR4=00350ef0\r\n"

func TestParseIDTBase(t *testing.T) {
	if v, err := parseIDTBase(infoRegisters); err != nil || v != 0xfffffe0000000000 {
		t.Errorf("IDT base %#x, %v", v, err)
	}
	for _, bad := range []string{"", "GDT= 1 2", "IDT=", "IDT= zz 0fff", "IDT= 1fffffffffffffffff 0"} {
		if _, err := parseIDTBase(bad); err == nil {
			t.Errorf("%q parsed", bad)
		}
	}
}

func FuzzParseIDTBase(f *testing.F) {
	f.Add(infoRegisters)
	f.Add("IDT= 0 0")
	f.Fuzz(func(t *testing.T, out string) {
		if _, err := parseIDTBase(out); err == nil && !strings.Contains(out, "IDT=") {
			t.Errorf("%q parsed without an IDT= line", out)
		}
	})
}
