package vmm

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

func TestParseSize(t *testing.T) {
	for in, want := range map[string]uint64{"1G": 1 << 30, "512M": 512 << 20, "768": 768 << 20, "2GiB": 2 << 30, "1048576K": 1 << 30} {
		got, err := ParseSize(in)
		if err != nil || got != want {
			t.Errorf("ParseSize(%q) = %d, %v; want %d", in, got, err, want)
		}
	}
	for _, in := range []string{"", "0", "-1G", "lots", "1T"} {
		if _, err := ParseSize(in); err == nil {
			t.Errorf("ParseSize(%q) accepted", in)
		}
	}
}

func TestRAMLayout(t *testing.T) {
	small := q35RAMLayout(1 << 30)
	if off, err := small.offset(0x1000, 8); err != nil || off != 0x1000 {
		t.Errorf("1G: offset(0x1000) = %#x, %v", off, err)
	}
	if _, err := small.offset(1<<30-4, 8); err == nil {
		t.Error("1G: read across the end of RAM accepted")
	}
	big := q35RAMLayout(4 << 30)
	if big.lowMem != 2<<30 {
		t.Fatalf("4G: lowMem = %#x", big.lowMem)
	}
	if off, err := big.offset(fourGiB+0x10, 8); err != nil || off != 2<<30+0x10 {
		t.Errorf("4G: offset(4G+0x10) = %#x, %v", off, err)
	}
	if _, err := big.offset(0xc000_0000, 8); err == nil {
		t.Error("4G: read in the PCI hole accepted")
	}
}

func TestDisk(t *testing.T) {
	img := filepath.Join(t.TempDir(), "a,b.ext4")
	if err := os.WriteFile(img, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	d := Disk{Path: img, Serial: "lucos-modules"}
	if err := d.validate(); err != nil {
		t.Fatal(err)
	}
	// A comma in the path is doubled: QEMU would read it as the next option.
	want := []string{
		"-drive", "if=none,id=disk1,format=raw,readonly=on,file=" + strings.ReplaceAll(img, ",", ",,"),
		"-device", "nvme,drive=disk1,serial=lucos-modules",
	}
	if got := d.QEMUArgs(1); !slices.Equal(got, want) {
		t.Errorf("QEMUArgs = %q, want %q", got, want)
	}
	for _, bad := range []Disk{
		{Path: img},
		{Path: img, Serial: "a,b"},
		{Path: img, Serial: "twenty-one-characters"},
		{Path: filepath.Join(t.TempDir(), "missing"), Serial: "x"},
		{Path: t.TempDir(), Serial: "x"},
	} {
		if err := bad.validate(); err == nil {
			t.Errorf("%+v accepted", bad)
		}
	}
}

// A boot that stopped on a kernel crash shows the crash from its first line.
func TestConsoleReport(t *testing.T) {
	var lines []string
	for i := 0; i < 50; i++ {
		lines = append(lines, fmt.Sprintf("[ %d] booting", i))
	}
	plain := &consoleTap{last: []byte(strings.Join(lines, "\n"))}
	if got := plain.report(3, 80); got != strings.Join(lines[47:], "\n") {
		t.Errorf("no crash: %q, want the last 3 lines", got)
	}
	crash := append(append([]string{}, lines[:10]...), "[ 2.0] BUG: unable to handle page fault", "[ 2.0] RIP: f+0x9")
	crash = append(crash, lines[10:]...)
	c := &consoleTap{last: []byte(strings.Join(crash, "\n"))}
	if got := c.report(3, 2); got != "[ 2.0] BUG: unable to handle page fault\n[ 2.0] RIP: f+0x9" {
		t.Errorf("crash: %q, want it from its first line", got)
	}
}
