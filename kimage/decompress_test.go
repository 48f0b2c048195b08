package kimage_test

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"os"
	"strings"
	"testing"

	"github.com/lucos/lucos/kimage"
)

// TestDecompressXZBCJ decodes real kernel code compressed as the kernel's
// build does for CONFIG_KERNEL_XZ: the x86 BCJ filter must be undone for
// the digest to match.
func TestDecompressXZBCJ(t *testing.T) {
	sumFile, err := os.ReadFile("testdata/text-8k-bcj.sha256")
	if err != nil {
		t.Fatal(err)
	}
	want := strings.TrimSpace(string(sumFile))
	for _, c := range []struct {
		file string
		kind kimage.Compression
	}{{"testdata/text-8k-bcj.xz", kimage.XZ}, {"testdata/text-8k.bz2", kimage.Bzip2}} {
		t.Run(string(c.kind), func(t *testing.T) {
			compressed, err := os.ReadFile(c.file)
			if err != nil {
				t.Fatal(err)
			}
			out, kind, err := kimage.Decompress(context.Background(), withSizeTrailer(compressed, 8192))
			if err != nil {
				t.Fatal(err)
			}
			sum := sha256.Sum256(out)
			if kind != c.kind || len(out) != 8192 || hex.EncodeToString(sum[:]) != want {
				t.Errorf("%s: %d bytes, sha256 %x; want %s, 8192 bytes, %s", kind, len(out), sum, c.kind, want)
			}
		})
	}
}

func TestDecompressRoundTrip(t *testing.T) {
	data := bytes.Repeat([]byte("kernel text \x00\xe8\x01\x02\x03\x04 "), 50000)
	for c, compress := range compressors() {
		t.Run(string(c), func(t *testing.T) {
			payload := withSizeTrailer(compress(t, data), len(data))
			out, kind, err := kimage.Decompress(context.Background(), payload)
			if err != nil || kind != c || !bytes.Equal(out, data) {
				t.Fatalf("%s: %d bytes, %v", kind, len(out), err)
			}
			// Damage: truncation and a wrong trailer are errors with an offset.
			for name, bad := range map[string][]byte{
				"truncated":     payload[:len(payload)/2],
				"wrong trailer": withSizeTrailer(compress(t, data), len(data)+1),
			} {
				_, _, err := kimage.Decompress(context.Background(), bad)
				var fe *kimage.FormatError
				if !errors.As(err, &fe) {
					t.Errorf("%s: error %v is not a FormatError", name, err)
				}
			}
		})
	}
}

func TestDetectCompression(t *testing.T) {
	for magic, want := range map[string]kimage.Compression{
		"\x1f\x8b\x08": kimage.Gzip, "BZh9": kimage.Bzip2, "\xfd7zXZ\x00\x00": kimage.XZ,
		"\x89LZO\x00": kimage.LZO, "\x02\x21\x4c\x18": kimage.LZ4, "\x28\xb5\x2f\xfd": kimage.Zstd, "\x5d\x00\x00\x80": kimage.LZMA,
	} {
		if got, err := kimage.DetectCompression([]byte(magic)); got != want || err != nil {
			t.Errorf("% x: %q, %v; want %q", magic, got, err, want)
		}
	}
	if _, err := kimage.DetectCompression([]byte("\x7fELF")); !errors.Is(err, kimage.ErrUnsupportedCompression) {
		t.Errorf("ELF: %v", err)
	}
	for _, c := range []string{"\x89LZO\x00", "\x5d\x00\x00\x80\x00"} {
		if _, _, err := kimage.Decompress(context.Background(), []byte(c)); !errors.Is(err, kimage.ErrUnsupportedCompression) {
			t.Errorf("% x: %v", c, err)
		}
	}
}
