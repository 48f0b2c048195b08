package vmm

import "testing"

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
