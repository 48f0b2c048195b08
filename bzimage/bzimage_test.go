package bzimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"testing"
)

// header builds a minimal boot header like the one of Debian's 6.1 kernels.
func header(version string) []byte {
	b := make([]byte, 0x1000)
	b[offSetupSects] = 3
	binary.LittleEndian.PutUint16(b[offBootFlag:], bootFlag)
	copy(b[offHeader:], headerMagic)
	binary.LittleEndian.PutUint16(b[offVersion:], 0x020f)
	b[offLoadFlags] = loadedHigh
	binary.LittleEndian.PutUint32(b[offPayloadOff:], 0x100)
	binary.LittleEndian.PutUint32(b[offPayloadLen:], 0x200)
	binary.LittleEndian.PutUint16(b[offKernelVer:], 0x600-0x200)
	copy(b[0x600:], version+"\x00")
	return b
}

func TestParse(t *testing.T) {
	h, err := Parse(bytes.NewReader(header("6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP")))
	if err != nil {
		t.Fatal(err)
	}
	if got := h.Release(); got != "6.1.0-56-cloud-amd64" {
		t.Errorf("Release() = %q", got)
	}
	if h.PayloadOffset != 4*512+0x100 || h.PayloadLength != 0x200 {
		t.Errorf("payload at %#x+%#x", h.PayloadOffset, h.PayloadLength)
	}
}

func TestParseRejects(t *testing.T) {
	elf := append([]byte("\x7fELF"), make([]byte, 0x1000)...)
	short := header("x")[:0x100]
	noMagic := header("x")
	copy(noMagic[offHeader:], "ABCD")
	old := header("x")
	binary.LittleEndian.PutUint16(old[offVersion:], 0x0200)
	for name, b := range map[string][]byte{"elf": elf, "short": short, "no HdrS": noMagic, "old protocol": old} {
		if _, err := Parse(bytes.NewReader(b)); !errors.Is(err, ErrNotBzImage) {
			t.Errorf("%s: err = %v, want ErrNotBzImage", name, err)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add(header("6.1.0-56-cloud-amd64 #1"))
	f.Fuzz(func(t *testing.T, b []byte) {
		Parse(bytes.NewReader(b))
	})
}
