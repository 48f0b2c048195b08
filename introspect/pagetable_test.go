package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"testing"
)

// fakeRAM is guest-physical memory for unit tests of the walker.
type fakeRAM map[uint64][]byte // page frame → 4 KiB

func (f fakeRAM) ReadPhys(gpa uint64, buf []byte) error {
	for i := range buf {
		page, ok := f[(gpa+uint64(i))&^0xfff]
		if !ok {
			return fmt.Errorf("no RAM at %#x", gpa)
		}
		buf[i] = page[(gpa+uint64(i))&0xfff]
	}
	return nil
}

func (f fakeRAM) set(table uint64, idx uint64, entry uint64) {
	if f[table] == nil {
		f[table] = make([]byte, 4096)
	}
	binary.LittleEndian.PutUint64(f[table][8*idx:], entry)
}

// tables builds: 0xffffffff81000000 → 2 MiB page at 0x1000000 (kernel text),
// 0xffffc90000001000 → 4 KiB page at 0x5000 (a vmalloc stack page),
// 0xffff888000000000 → 1 GiB page at 0 (direct map).
func tables() (fakeRAM, uint64) {
	ram := fakeRAM{}
	const pgd, pudK, pmdK, pudV, pmdV, pteV, pudD = 0x100000, 0x101000, 0x102000, 0x103000, 0x104000, 0x105000, 0x106000
	ram.set(pgd, 511, pudK|PTEPresent|PTEWrite)
	ram.set(pudK, 510, pmdK|PTEPresent|PTEWrite)
	ram.set(pmdK, 8, 0x1000000|PTEPresent|PTEPageSize|PTEGlobal)
	ram.set(pgd, index(0xffffc90000001000, 0), pudV|PTEPresent|PTEWrite)
	ram.set(pudV, 0, pmdV|PTEPresent|PTEWrite)
	ram.set(pmdV, 0, pteV|PTEPresent|PTEWrite)
	ram.set(pteV, 1, 0x5000|PTEPresent|PTEWrite|PTENX)
	ram.set(pgd, index(0xffff888000000000, 0), pudD|PTEPresent|PTEWrite)
	ram.set(pudD, 0, 0|PTEPresent|PTEWrite|PTEPageSize|PTENX)
	return ram, pgd
}

func TestTranslate(t *testing.T) {
	ram, pgd := tables()
	w := &Walker{Mem: ram, Root: KernelPGD(pgd | 0x1000 | 0x5)} // PTI user bit and a PCID
	cases := []struct {
		va, pa, size uint64
		writable, nx bool
	}{
		{0xffffffff81034567, 0x1034567, 2 << 20, false, false},
		{0xffffc90000001abc, 0x5abc, 4096, true, true},
		{0xffff888012345678, 0x12345678, 1 << 30, true, true},
	}
	for _, c := range cases {
		m, err := w.Translate(c.va)
		if err != nil {
			t.Fatalf("%#x: %v", c.va, err)
		}
		pa, _ := w.Phys(c.va)
		if pa != c.pa || m.Size != c.size || m.Writable != c.writable || m.NX != c.nx {
			t.Errorf("%#x: pa %#x size %#x w %v nx %v; want %#x %#x %v %v", c.va, pa, m.Size, m.Writable, m.NX, c.pa, c.size, c.writable, c.nx)
		}
	}
	_, err := w.Translate(0xffffffff81400000)
	var ue *UnmappedError
	if !errors.As(err, &ue) || ue.Step.Level != 2 {
		t.Errorf("unmapped PMD: %v", err)
	}
	if _, err := w.Translate(0x0000800000000000); !errors.Is(err, ErrNonCanonical) {
		t.Errorf("non-canonical: %v", err)
	}
}

func TestRanges(t *testing.T) {
	ram, pgd := tables()
	w := &Walker{Mem: ram, Root: pgd}
	var got []Mapping
	if err := w.Ranges(0xffff800000000000, ^uint64(0), func(m Mapping) bool { got = append(got, m); return true }); err != nil {
		t.Fatal(err)
	}
	want := []uint64{0xffff888000000000, 0xffffc90000001000, 0xffffffff81000000}
	if len(got) != len(want) {
		t.Fatalf("got %d mappings: %+v", len(got), got)
	}
	for i, m := range got {
		if m.VA != want[i] {
			t.Errorf("mapping %d at %#x, want %#x", i, m.VA, want[i])
		}
	}
}

func FuzzTranslate(f *testing.F) {
	f.Add(uint64(0xffffffff81234567), []byte{1, 2, 3})
	f.Fuzz(func(t *testing.T, va uint64, junk []byte) {
		ram := fakeRAM{}
		page := make([]byte, 4096)
		copy(page, junk)
		for i := uint64(0); i < 16; i++ {
			ram[i<<12] = page
		}
		w := &Walker{Mem: ram, Root: 0}
		w.Translate(va)
		w.Ranges(0, ^uint64(0), func(Mapping) bool { return true })
	})
}
