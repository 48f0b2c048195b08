package kimage_test

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"

	"github.com/lucos/lucos/kimage"
)

func gzipBytes(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w, _ := gzip.NewWriterLevel(&b, gzip.BestSpeed)
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func zstdBytes(t testing.TB, data []byte) []byte {
	enc, err := zstd.NewWriter(nil)
	if err != nil {
		t.Fatal(err)
	}
	defer enc.Close()
	return enc.EncodeAll(data, nil)
}

// lz4Legacy compresses as the kernel's `lz4 -l` does: the legacy frame.
func lz4Legacy(t testing.TB, data []byte) []byte {
	var b bytes.Buffer
	w := lz4.NewWriter(&b)
	if err := w.Apply(lz4.LegacyOption(true)); err != nil {
		t.Fatal(err)
	}
	w.Write(data)
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return b.Bytes()
}

func compressors() map[kimage.Compression]func(testing.TB, []byte) []byte {
	return map[kimage.Compression]func(testing.TB, []byte) []byte{
		kimage.Gzip: gzipBytes,
		kimage.Zstd: zstdBytes,
		kimage.LZ4:  lz4Legacy,
	}
}

func TestParseSyntheticVmlinux(t *testing.T) {
	vmlinux := synthVmlinux(t)
	img, err := kimage.Parse(context.Background(), vmlinux)
	if err != nil {
		t.Fatal(err)
	}
	checkSynthImage(t, img)
	if img.Compression != "" {
		t.Errorf("compression %q for a bare vmlinux", img.Compression)
	}
}

func checkSynthImage(t *testing.T, img *kimage.Image) {
	t.Helper()
	if img.Release != "6.1.0-99-synthetic" || img.Version+"\n" != synthBanner || string(img.Banner()) != synthBanner {
		t.Errorf("release %q version %q banner %q", img.Release, img.Version, img.Banner())
	}
	if img.BannerAddr != 0xffffffff82000000 {
		t.Errorf("banner at %#x", img.BannerAddr)
	}
	if img.SymbolSource != "kallsyms" || img.Symbols.Len() != len(synthSymbols()) {
		t.Errorf("%d symbols from %s, want %d from kallsyms", img.Symbols.Len(), img.SymbolSource, len(synthSymbols()))
	}
	if off, err := img.FieldOffset("task_struct", "thread.sp"); err != nil || off != 72 {
		t.Errorf("thread.sp at %d, %v; want 72", off, err)
	}
	s, err := img.Symbols.Find("cmdline_proc_show", 0)
	if err != nil || s.Addr != 0xffffffff81002000 || s.Type != 't' || s.Size != 0x1000 {
		t.Errorf("cmdline_proc_show: %v, %v", s, err)
	}
	// Sizes are cut at the end of the section.
	if s, _ := img.Symbols.Find("init_task", 0); s.Size != 0x100 {
		t.Errorf("init_task: %v, want size 0x100", s)
	}
	if s, _ := img.Symbols.Find("show_val", 3); s.Size != 0x1000-0x100 {
		t.Errorf("show_val sympos 3: %v, want size 0xf00 (end of .data)", s)
	}
}

func TestLoadBzImage(t *testing.T) {
	vmlinux := synthVmlinux(t)
	for c, compress := range compressors() {
		t.Run(string(c), func(t *testing.T) {
			dir := t.TempDir()
			path := filepath.Join(dir, "vmlinuz")
			payload := withSizeTrailer(compress(t, vmlinux), len(vmlinux))
			if err := os.WriteFile(path, synthBzImage(payload, "6.1.0-99-synthetic (lucos@test) #1"), 0o644); err != nil {
				t.Fatal(err)
			}
			cache := filepath.Join(dir, "cache")
			cold, err := kimage.Load(context.Background(), path, cache)
			if err != nil {
				t.Fatal(err)
			}
			if cold.Compression != c {
				t.Errorf("compression %q, want %q", cold.Compression, c)
			}
			checkSynthImage(t, cold)
			files, _ := filepath.Glob(filepath.Join(cache, "kimage-*.cache"))
			if len(files) != 1 {
				t.Fatalf("cache files %v, want one", files)
			}
			warm, err := kimage.Load(context.Background(), path, cache)
			if err != nil {
				t.Fatal(err)
			}
			checkSynthImage(t, warm)
			sameImage(t, cold, warm)

			// A damaged cache is ignored and rewritten.
			data, _ := os.ReadFile(files[0])
			data[len(data)/2] ^= 0xff
			os.WriteFile(files[0], data, 0o644)
			again, err := kimage.Load(context.Background(), path, cache)
			if err != nil {
				t.Fatal(err)
			}
			sameImage(t, cold, again)
			if fixed, _ := os.ReadFile(files[0]); bytes.Equal(fixed, data) {
				t.Error("damaged cache file was not rewritten")
			}
		})
	}
}

func sameImage(t *testing.T, a, b *kimage.Image) {
	t.Helper()
	if a.Release != b.Release || a.Version != b.Version || a.Compression != b.Compression || a.SHA256 != b.SHA256 ||
		a.SymbolSource != b.SymbolSource || a.BannerAddr != b.BannerAddr || !bytes.Equal(a.Banner(), b.Banner()) ||
		!bytes.Equal(a.BTFRaw(), b.BTFRaw()) {
		t.Errorf("images differ:\n%+v\n%+v", a, b)
	}
	if *a.Kallsyms != *b.Kallsyms {
		t.Errorf("kallsyms tables differ: %v / %v", a.Kallsyms, b.Kallsyms)
	}
	if !slices.Equal(a.Symbols.All(), b.Symbols.All()) || !slices.Equal(a.Symbols.Regions(), b.Symbols.Regions()) {
		t.Error("symbols differ")
	}
}

func TestLoadErrors(t *testing.T) {
	dir := t.TempDir()
	write := func(name string, data []byte) string {
		p := filepath.Join(dir, name)
		os.WriteFile(p, data, 0o644)
		return p
	}
	vmlinux := synthVmlinux(t)
	payload := withSizeTrailer(gzipBytes(t, vmlinux), len(vmlinux))
	cases := []struct {
		name string
		data []byte
		is   error
	}{
		{"empty", nil, nil},
		{"not an image", []byte("hello, world"), nil},
		{"lzo payload", synthBzImage([]byte("\x89LZO\x00\x0d\x0a\x1a\x0a more"), "x"), kimage.ErrUnsupportedCompression},
		{"truncated payload", synthBzImage(payload, "x")[:1500], nil},
		{"wrong size trailer", synthBzImage(withSizeTrailer(gzipBytes(t, vmlinux), 12), "x"), nil},
		{"payload not ELF", synthBzImage(withSizeTrailer(gzipBytes(t, []byte("not elf")), 7), "x"), nil},
		{"vmlinux without kallsyms", synthELF([]synthSection{{name: ".rodata", typ: 1, flags: 2, addr: 0xffffffff82000000, data: []byte(synthBanner)}}), kimage.ErrNoKallsyms},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			_, err := kimage.Load(context.Background(), write("img", c.data), "")
			if err == nil {
				t.Fatal("loaded")
			}
			if c.is != nil && !errors.Is(err, c.is) {
				t.Errorf("error %v is not %v", err, c.is)
			}
			t.Log(err)
		})
	}
	if _, err := kimage.Load(context.Background(), filepath.Join(dir, "missing"), ""); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("missing file: %v", err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := kimage.Load(ctx, write("ok", synthBzImage(payload, "x")), ""); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled: %v", err)
	}
}
