package kimage

import (
	"bytes"
	"compress/bzip2"
	"compress/gzip"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"io"

	"github.com/klauspost/compress/zstd"
	"github.com/pierrec/lz4/v4"
	"github.com/xi2/xz"

	"github.com/lucos/lucos/bzimage"
)

// Compression is the method of a bzImage payload, named as in the kernel's
// CONFIG_KERNEL_* options.
type Compression string

// The payload formats lucos recognises by magic. Those without a decoder
// (lzma, lzo) are still named in errors.
const (
	Gzip  Compression = "gzip"
	Bzip2 Compression = "bzip2"
	LZMA  Compression = "lzma"
	XZ    Compression = "xz"
	LZO   Compression = "lzo"
	LZ4   Compression = "lz4"
	Zstd  Compression = "zstd"
)

// magics, checked in order. The kernel's lz4 payload is the legacy lz4 frame
// format; xz carries the x86 BCJ filter.
var magics = []struct {
	magic string
	c     Compression
}{
	{"\x1f\x8b", Gzip},
	{"BZh", Bzip2},
	{"\xfd7zXZ\x00", XZ},
	{"\x89LZO", LZO},
	{"\x02\x21\x4c\x18", LZ4},
	{"\x28\xb5\x2f\xfd", Zstd},
	{"\x5d\x00\x00", LZMA},
}

// maxVmlinux bounds a decompressed vmlinux: the largest distribution kernels
// are ~100 MiB; a larger output is a corrupt or hostile payload. A variable
// so the fuzzers can bound their work.
var maxVmlinux int64 = 1 << 30

// DetectCompression names the method of payload by its magic, or returns
// ErrUnsupportedCompression.
func DetectCompression(payload []byte) (Compression, error) {
	for _, m := range magics {
		if bytes.HasPrefix(payload, []byte(m.magic)) {
			return m.c, nil
		}
	}
	n := min(len(payload), 8)
	return "", fmt.Errorf("%w: payload starts % x, no known magic", ErrUnsupportedCompression, payload[:n])
}

// Decompress decodes a bzImage payload (as bzimage.Header locates it) into
// the vmlinux it holds. The kernel's build appends the uncompressed size as
// a little-endian uint32 to every payload (payload_length counts it): the
// last 4 bytes are taken as that trailer and checked.
func Decompress(ctx context.Context, payload []byte) ([]byte, Compression, error) {
	if err := ctx.Err(); err != nil {
		return nil, "", err
	}
	c, err := DetectCompression(payload)
	if err != nil {
		return nil, "", err
	}
	if c == LZO || c == LZMA {
		return nil, c, fmt.Errorf("%w: %s (lucos decodes gzip, bzip2, xz, lz4 and zstd)", ErrUnsupportedCompression, c)
	}
	what := string(c) + " payload"
	if len(payload) < 8 {
		return nil, c, formatErr(what, 0, "%d bytes is too short for a payload and its size trailer", len(payload))
	}
	want := int64(binary.LittleEndian.Uint32(payload[len(payload)-4:]))
	// Every decoder but lz4's (which knows the trailer) stops at the end of
	// its stream only if nothing follows it.
	body := payload
	if c != LZ4 {
		body = payload[:len(payload)-4]
	}
	src := &ctxReader{ctx: ctx, r: bytes.NewReader(body)}
	var r io.Reader
	switch c {
	case Gzip:
		zr, err := gzip.NewReader(src)
		if err != nil {
			return nil, c, decodeErr(ctx, what, 0, err)
		}
		zr.Multistream(false)
		r = zr
	case Bzip2:
		r = bzip2.NewReader(src)
	case XZ:
		zr, err := xz.NewReader(src, 0)
		if err != nil {
			return nil, c, decodeErr(ctx, what, 0, err)
		}
		zr.Multistream(false)
		r = zr
	case LZ4:
		// lz4.Reader recognises the legacy frame magic and, as a special
		// case, the kernel's size trailer after the last block.
		zr := lz4.NewReader(src)
		if err := zr.Apply(lz4.ConcurrencyOption(1)); err != nil {
			return nil, c, fmt.Errorf("%s: %w", what, err)
		}
		r = zr
	case Zstd:
		zr, err := zstd.NewReader(src, zstd.WithDecoderConcurrency(1), zstd.WithDecoderMaxMemory(uint64(maxVmlinux)))
		if err != nil {
			return nil, c, fmt.Errorf("%s: %w", what, err)
		}
		defer zr.Close()
		r = zr
	default:
		return nil, c, fmt.Errorf("%w: %s", ErrUnsupportedCompression, c)
	}
	// Trust the trailer only as far as a plausible ratio.
	var out bytes.Buffer
	out.Grow(int(min(want, 64*int64(len(payload)), maxVmlinux)))
	n, err := io.Copy(&out, io.LimitReader(r, maxVmlinux+1))
	if err != nil {
		return nil, c, decodeErr(ctx, what, int64(len(body)-src.r.Len()), fmt.Errorf("after %d output bytes: %w", n, err))
	}
	if n > maxVmlinux {
		return nil, c, formatErr(what, 0, "output exceeds %d bytes", maxVmlinux)
	}
	if n != want {
		return nil, c, formatErr(what, int64(len(payload)-4), "decoded %d bytes, trailer says %d", n, want)
	}
	return out.Bytes(), c, nil
}

// decodeErr reports a decoder's failure at input offset off, or the
// context's error when that is why it stopped.
func decodeErr(ctx context.Context, what string, off int64, err error) error {
	if ctx.Err() != nil {
		return ctx.Err()
	}
	return formatErr(what, off, "decode: %v", err)
}

// ExtractVmlinux reads the bzImage in r and returns the vmlinux ELF inside it.
func ExtractVmlinux(ctx context.Context, r io.ReaderAt) ([]byte, Compression, error) {
	h, err := bzimage.Parse(r)
	if err != nil {
		return nil, "", err
	}
	if h.PayloadLength <= 0 || h.PayloadLength > maxVmlinux {
		return nil, "", formatErr("bzImage", 0x24c, "payload length %d out of range", h.PayloadLength)
	}
	payload := make([]byte, h.PayloadLength)
	if n, err := r.ReadAt(payload, h.PayloadOffset); n < len(payload) {
		if err == nil || errors.Is(err, io.EOF) {
			return nil, "", formatErr("bzImage", h.PayloadOffset, "payload of %d bytes runs past the end of the file", h.PayloadLength)
		}
		return nil, "", fmt.Errorf("read payload: %w", err)
	}
	vmlinux, c, err := Decompress(ctx, payload)
	if err != nil {
		return nil, c, err
	}
	if !bytes.HasPrefix(vmlinux, []byte("\x7fELF")) {
		return nil, c, formatErr(string(c)+" payload", 0, "decompressed payload is not an ELF file")
	}
	return vmlinux, c, nil
}

// ctxReader stops a long decompression when ctx is done.
type ctxReader struct {
	ctx context.Context
	r   *bytes.Reader
}

func (c *ctxReader) Read(p []byte) (int, error) {
	if err := c.ctx.Err(); err != nil {
		return 0, err
	}
	return c.r.Read(p)
}
