package guest

import (
	"bytes"
	"encoding/binary"
	"strings"
	"testing"
)

func TestMBR(t *testing.T) {
	boot := bytes.Repeat([]byte{0xeb}, sector)
	const size = 3 << 30
	s := mbr(boot, size)
	if len(s) != sector || s[510] != 0x55 || s[511] != 0xaa {
		t.Fatalf("not a boot sector: %d bytes, signature % x", len(s), s[510:])
	}
	if !bytes.Equal(s[:mbrBootCode], boot[:mbrBootCode]) {
		t.Error("GRUB's boot code is not in the first 440 bytes")
	}
	e := s[446:462]
	if e[0] != 0x80 || e[4] != 0x83 {
		t.Errorf("partition 1: status %#x type %#x, want an active Linux partition", e[0], e[4])
	}
	start, n := binary.LittleEndian.Uint32(e[8:]), binary.LittleEndian.Uint32(e[12:])
	if uint64(start)*sector != partitionStart || uint64(start+n)*sector != size {
		t.Errorf("partition 1 spans sectors %d+%d, want %d to the end of %d bytes", start, n, partitionStart/sector, size)
	}
	if !bytes.Equal(s[462:510], make([]byte, 48)) {
		t.Error("partitions 2 to 4 are not empty")
	}
}

// The customize hook boots what it installs: the kernel and initramfs of
// the release it names, the root by label, the serial console.
func TestCustomizeScriptBootsTheRelease(t *testing.T) {
	s := customizeScript("6.12.118+deb12-cloud-amd64")
	for _, want := range []string{
		"linux /boot/vmlinuz-6.12.118+deb12-cloud-amd64 root=LABEL=" + systemDiskLabel,
		"initrd /boot/initrd.img-6.12.118+deb12-cloud-amd64",
		"console=ttyS0",
		"--autologin root",
		"LABEL=" + systemDiskLabel + " / ext4",
	} {
		if !strings.Contains(s, want) {
			t.Errorf("customize hook lacks %q", want)
		}
	}
	if strings.Contains(s, "memmap") {
		t.Error("the system disk's command line has a lucos parameter")
	}
}
