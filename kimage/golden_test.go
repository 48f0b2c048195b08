package kimage_test

import (
	"bytes"
	"context"
	"debug/elf"
	"encoding/binary"
	"flag"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
)

// The golden kallsyms extract is a small kallsyms region rebuilt from the
// real Debian kernel's tables: a window of goldenCount consecutive symbols
// (their real offsets and compressed names, the real relative base, token
// table and index), with num_syms, markers and seqs_of_names recomputed for
// the window, laid out as Debian's 6.1 lays them out. The .txt file holds
// the symbols the full decode of the real image gives for that window.
//
// Regenerate with: go test ./kimage -run TestGoldenKallsyms -update-golden
var updateGolden = flag.Bool("update-golden", false, "rebuild testdata from the real guest kernel")

const (
	goldenRelease = "6.1.0-56-cloud-amd64"
	goldenFirst   = 240 // the per-CPU tail, _text, then code
	goldenCount   = 300
)

func goldenPaths() (bin, txt string) {
	base := filepath.Join("testdata", "kallsyms-"+goldenRelease)
	return base + ".bin", base + ".txt"
}

func TestGoldenKallsyms(t *testing.T) {
	binPath, txtPath := goldenPaths()
	if *updateGolden {
		writeGolden(t, binPath, txtPath)
	}
	blob, err := os.ReadFile(binPath)
	if err != nil {
		t.Fatal(err)
	}
	txt, err := os.ReadFile(txtPath)
	if err != nil {
		t.Fatal(err)
	}
	header, body, _ := bytes.Cut(txt, []byte("\n"))
	var base uint64
	if _, err := fmt.Sscanf(string(header), "# base %x", &base); err != nil {
		t.Fatalf("%s header %q: %v", txtPath, header, err)
	}
	want, err := kimage.ReadSystemMap(bytes.NewReader(body))
	if err != nil {
		t.Fatal(err)
	}

	// Surround the region with data that is not kallsyms, as .rodata does.
	noise := bytes.Repeat([]byte("\x00\x01\x00\x02\x00\x03\x00\x04not kallsyms\x00\x00\x00\x00"), 64)
	data := slices.Concat(noise, blob, noise)
	got, tables, err := kimage.ParseKallsyms(data, base-uint64(len(noise)))
	if err != nil {
		t.Fatal(err)
	}
	t.Log(tables)
	if tables.NumSyms != goldenCount || !tables.BaseRelative || !tables.AbsolutePercpu || tables.SeqsOfNames == 0 || tables.MarkerSize != 4 {
		t.Errorf("tables %+v: want %d symbols, base-relative with absolute per-CPU, seqs_of_names, 4-byte markers", tables, goldenCount)
	}
	if tables.Offsets != base {
		t.Errorf("kallsyms_offsets found at %#x, placed at %#x", tables.Offsets, base)
	}
	if !slices.Equal(got, want) {
		for i := range min(len(got), len(want)) {
			if got[i] != want[i] {
				t.Errorf("symbol %d: got %+v, want %+v", i, got[i], want[i])
				break
			}
		}
		t.Fatalf("decoded %d symbols, golden has %d", len(got), len(want))
	}
}

// writeGolden rebuilds the golden files from the cached real kernel.
func writeGolden(t *testing.T, binPath, txtPath string) {
	gimg := testvm.Image(t)
	if gimg.Release != goldenRelease {
		t.Fatalf("golden data is of %s, the guest cache has %s", goldenRelease, gimg.Release)
	}
	f, err := os.Open(gimg.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	vmlinux, _, err := kimage.ExtractVmlinux(context.Background(), f)
	if err != nil {
		t.Fatal(err)
	}
	ef, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		t.Fatal(err)
	}
	ro := ef.Section(".rodata")
	data, err := ro.Data()
	if err != nil {
		t.Fatal(err)
	}
	syms, tab, err := kimage.ParseKallsyms(data, ro.Addr)
	if err != nil {
		t.Fatal(err)
	}
	at := func(addr uint64) int { return int(addr - ro.Addr) }
	le := binary.LittleEndian

	// Compressed name entries of the window.
	off := at(tab.Names)
	var entries [][]byte
	for i := 0; i < goldenFirst+goldenCount; i++ {
		n, hdr := int(data[off]), 1
		if n&0x80 != 0 {
			n, hdr = n&0x7f|int(data[off+1])<<7, 2
		}
		if i >= goldenFirst {
			entries = append(entries, data[off:off+hdr+n])
		}
		off += hdr + n
	}
	window := syms[goldenFirst : goldenFirst+goldenCount]

	var b bytes.Buffer
	pad := func() {
		for b.Len()%8 != 0 {
			b.WriteByte(0)
		}
	}
	b.Write(data[at(tab.Offsets)+4*goldenFirst : at(tab.Offsets)+4*(goldenFirst+goldenCount)])
	pad()
	b.Write(data[at(tab.RelativeBase) : at(tab.RelativeBase)+8])
	b.Write(le.AppendUint32(nil, goldenCount))
	pad()
	var markers []uint32
	namesStart := b.Len()
	for i, e := range entries {
		if i%256 == 0 {
			markers = append(markers, uint32(b.Len()-namesStart))
		}
		b.Write(e)
	}
	pad()
	for _, m := range markers {
		b.Write(le.AppendUint32(nil, m))
	}
	pad()
	seqs := make([]int, goldenCount)
	for i := range seqs {
		seqs[i] = i
	}
	slices.SortStableFunc(seqs, func(x, y int) int { return strings.Compare(window[x].Name, window[y].Name) })
	for _, s := range seqs {
		b.Write([]byte{byte(s >> 16), byte(s >> 8), byte(s)})
	}
	pad()
	b.Write(data[at(tab.TokenTable):at(tab.TokenIndex)])
	b.Write(data[at(tab.TokenIndex) : at(tab.TokenIndex)+512])

	var txt strings.Builder
	fmt.Fprintf(&txt, "# base %x (kallsyms_offsets of %s; see golden_test.go)\n", tab.Offsets, goldenRelease)
	for _, s := range window {
		fmt.Fprintf(&txt, "%016x %c %s\n", s.Addr, s.Type, s.Name)
	}
	if err := os.WriteFile(binPath, b.Bytes(), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(txtPath, []byte(txt.String()), 0o644); err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %s (%d bytes) and %s", binPath, b.Len(), txtPath)
}
