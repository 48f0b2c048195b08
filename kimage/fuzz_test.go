package kimage_test

import (
	"bytes"
	"context"
	"encoding/binary"
	"hash/crc32"
	"os"
	"path/filepath"
	"runtime/debug"
	"strings"
	"testing"
	"time"

	"github.com/cilium/ebpf/btf"

	"github.com/lucos/lucos/kimage"
)

// Every parser of outside input is fuzzed for panics and hangs: run one
// with go test ./kimage -run '^$' -fuzz FuzzXxx -fuzztime 30s -fuzzminimizetime 2s
// (the default minimisation budget of 60 s per new input stalls progress
// for most of a short run). Regressions found so far are in testdata/fuzz.

// hangGuard crashes the fuzz worker, with every goroutine's stack, when one
// input runs for seconds: Go's fuzzer otherwise just stalls on a hang.
func hangGuard() (stop func() bool) {
	debug.SetTraceback("all")
	return time.AfterFunc(5*time.Second, func() { panic("fuzz input hangs") }).Stop
}

func FuzzDecompress(f *testing.F) {
	defer kimage.SetMaxVmlinux(4 << 20)()
	small := []byte("vmlinux \x7fELF\x02\x01\x01 " + strings.Repeat("\xe8\x00\x01\x02\x03", 40))
	for _, compress := range compressors() {
		f.Add(withSizeTrailer(compress(f, small), len(small)))
	}
	for _, name := range []string{"text-8k-bcj.xz", "text-8k.bz2"} {
		if data, err := os.ReadFile(filepath.Join("testdata", name)); err == nil {
			f.Add(withSizeTrailer(data, 8192))
		}
	}
	f.Fuzz(func(t *testing.T, payload []byte) {
		defer hangGuard()()
		out, _, err := kimage.Decompress(context.Background(), payload)
		if err == nil && uint32(len(out)) != uint32(le32tail(payload)) {
			t.Fatalf("decoded %d bytes against a trailer of %d", len(out), le32tail(payload))
		}
	})
}

func le32tail(b []byte) uint32 {
	if len(b) < 4 {
		return 0
	}
	t := b[len(b)-4:]
	return uint32(t[0]) | uint32(t[1])<<8 | uint32(t[2])<<16 | uint32(t[3])<<24
}

// FuzzExtractVmlinux feeds whole files: the boot header, then the payload.
func FuzzExtractVmlinux(f *testing.F) {
	defer kimage.SetMaxVmlinux(4 << 20)()
	elfish := []byte("\x7fELF\x02\x01\x01" + strings.Repeat("x", 64))
	f.Add(synthBzImage(withSizeTrailer(gzipBytes(f, elfish), len(elfish)), "6.1.0-0 (x) #1"))
	f.Add(synthBzImage(withSizeTrailer(lz4Legacy(f, elfish), len(elfish)), ""))
	f.Fuzz(func(t *testing.T, image []byte) {
		defer hangGuard()()
		kimage.ExtractVmlinux(context.Background(), bytes.NewReader(image))
	})
}

func FuzzParseKallsyms(f *testing.F) {
	if blob, err := os.ReadFile("testdata/kallsyms-6.1.0-56-cloud-amd64.bin"); err == nil {
		f.Add(blob, uint64(0xffffffff821200b0))
	}
	syms := synthSymbols()[:40]
	for _, l := range synthLayouts {
		f.Add(synthKallsyms(f, syms, l, 0xffffffff82000000), uint64(0xffffffff82000000))
	}
	f.Fuzz(func(t *testing.T, data []byte, base uint64) {
		defer hangGuard()()
		got, tab, err := kimage.ParseKallsyms(data, base)
		if err != nil {
			return
		}
		if len(got) != tab.NumSyms {
			t.Fatalf("%d symbols, tables say %d", len(got), tab.NumSyms)
		}
		s := kimage.NewSymbols(got, nil)
		for _, sym := range got {
			s.At(sym.Addr)
			s.Find(sym.Name, 0)
		}
	})
}

func FuzzReadSystemMap(f *testing.F) {
	f.Add([]byte("ffffffff81000000 T _text\n0000000000000000 A fixed_percpu_data\nffffffffc0000000 t x\t[mod]\n"))
	f.Add([]byte("ffffffffffffffff B The real System.map is in the linux-image-<version>-dbg package\n"))
	f.Add([]byte("                 U undefined\n"))
	f.Fuzz(func(t *testing.T, data []byte) {
		defer hangGuard()()
		raw, err := kimage.ReadSystemMap(bytes.NewReader(data))
		if err == nil && len(raw) == 0 {
			t.Fatal("no error and no symbols")
		}
		s := kimage.NewSymbols(raw, []kimage.Region{{Name: "r", Start: 0xffffffff81000000, End: 0xffffffff82000000}})
		for _, sym := range s.All() {
			if got, _, ok := s.At(sym.Addr); !ok || got.Addr != sym.Addr {
				t.Fatalf("At(%#x) = %v, %v", sym.Addr, got, ok)
			}
		}
	})
}

// FuzzFieldOffset fuzzes the path and type names against a fixed spec, and
// the BTF itself (a spec that fails to load is skipped).
func FuzzFieldOffset(f *testing.F) {
	raw := synthBTF(f)
	for _, p := range []string{"thread.sp", "__state", "comm[3]", "stacks[1].fsbase", "mm.pgd", "in_iowait", "a..b", "[", "x[1][2]"} {
		f.Add(raw, "task_struct", p)
	}
	f.Add(raw[:len(raw)/2], "struct task_struct", "stack")
	spec := synthSpec(f)
	f.Fuzz(func(t *testing.T, data []byte, typ, path string) {
		defer hangGuard()()
		kimage.FieldOffset(spec, typ, path)
		kimage.Sizeof(spec, typ)
		if other, err := btf.LoadSpecFromReader(bytes.NewReader(data)); err == nil {
			kimage.FieldOffset(other, typ, path)
			kimage.Sizeof(other, typ)
		}
	})
}

// FuzzDecodeCache fuzzes the cache decoder behind its checksum: the
// target re-seals each input, so mutations reach the field decoding.
func FuzzDecodeCache(f *testing.F) {
	dir := f.TempDir()
	vmlinux := synthVmlinux(f)
	path := filepath.Join(dir, "vmlinux")
	os.WriteFile(path, vmlinux, 0o644)
	img, err := kimage.Load(context.Background(), path, dir)
	if err != nil {
		f.Fatal(err)
	}
	files, _ := filepath.Glob(filepath.Join(dir, "kimage-*.cache"))
	if len(files) != 1 {
		f.Fatalf("cache files %v", files)
	}
	seed, _ := os.ReadFile(files[0])
	f.Add(seed[:len(seed)-4])
	f.Fuzz(func(t *testing.T, body []byte) {
		defer hangGuard()()
		sealed := binary.LittleEndian.AppendUint32(bytes.Clone(body), crc32.ChecksumIEEE(body))
		kimage.DecodeCache(sealed, img.SHA256)
	})
}
