package introspect

import (
	"errors"
	"strings"
	"testing"

	"github.com/lucos/lucos/vmm"
)

// flatRAM is guest RAM in a byte slice, below 4 GiB only.
type flatRAM []byte

func (f flatRAM) RAM() []vmm.PhysRange { return []vmm.PhysRange{{Start: 0, Size: uint64(len(f))}} }
func (f flatRAM) ReadPhys(gpa uint64, buf []byte) error {
	copy(buf, f[gpa:])
	return nil
}

const testBanner = "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@lists.debian.org) (gcc-12 (Debian 12.2.0-14+deb12u1) 12.2.0, GNU ld (GNU Binutils for Debian) 2.40) #1 SMP PREEMPT_DYNAMIC Debian 6.1.158-1 (2025-11-09)"

func TestFindBanner(t *testing.T) {
	ram := make(flatRAM, 9<<20)
	// The log buffer's copy (no newline) and a user-space copy (no NUL)
	// come first; the kernel's own straddles a 4 MiB scan chunk.
	copy(ram[0x1000:], "Linux version 6.0.0-1-amd64 (x) (y) #1\x00")
	copy(ram[0x2000:], "Linux version 6.0.0-2-amd64 (x) (y) #1\nLinux")
	at := (4 << 20) - 40
	copy(ram[at:], testBanner+"\n\x00")
	copy(ram[8<<20:], testBanner+"\n\x00")
	b, err := FindBanner(ram)
	if err != nil {
		t.Fatal(err)
	}
	if b.Text != testBanner || b.Release != "6.1.0-57-cloud-amd64" || b.GPA != uint64(at) || b.Copies != 2 {
		t.Fatalf("got %+v", b)
	}

	copy(ram[0x3000:], "Linux version 6.12.57+deb12-amd64 (x) (y) #1\n\x00")
	if _, err := FindBanner(ram); err == nil || !strings.Contains(err.Error(), "2 kernel releases") {
		t.Fatalf("two releases: err = %v", err)
	}
	if _, err := FindBanner(make(flatRAM, 1<<20)); !errors.Is(err, ErrNoBanner) {
		t.Fatalf("empty RAM: err = %v", err)
	}
}
