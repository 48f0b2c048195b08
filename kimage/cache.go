package kimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"hash/crc32"
	"os"
	"path/filepath"
)

// The cache holds what decoding an image produced, so a second Load of the
// same file reads one small file instead of decompressing and searching
// ~50 MiB. It is keyed by the image's sha256 and versioned by its magic:
// a file of another version, or a damaged one, is ignored and rewritten.
//
// Layout: magic, then fields (uvarint lengths and counts, little-endian
// uint64 addresses, symbol addresses delta-encoded in table order), then
// the CRC-32 of everything before it.
const cacheMagic = "LUCOS-KIMAGE-CACHE 2\n"

func cacheFile(dir, digest string) string {
	return filepath.Join(dir, "kimage-"+digest[:32]+".cache")
}

func writeCache(path string, img *Image) error {
	var w cacheWriter
	w.buf.WriteString(cacheMagic)
	w.str(img.SHA256)
	w.str(img.Release)
	w.str(string(img.Compression))
	w.str(img.SymbolSource)
	w.bytes(img.banner)
	w.u64(img.BannerAddr)
	if t := img.Kallsyms; t != nil {
		w.uvarint(1)
		for _, v := range []uint64{uint64(t.NumSyms), t.Offsets, t.RelativeBase, t.Base, t.Names, uint64(t.NamesLen),
			t.Markers, uint64(t.MarkerSize), t.SeqsOfNames, t.TokenTable, t.TokenIndex, b2u(t.BaseRelative), b2u(t.AbsolutePercpu)} {
			w.u64(v)
		}
	} else {
		w.uvarint(0)
	}
	regions := img.Symbols.regions
	w.uvarint(uint64(len(regions)))
	for _, r := range regions {
		w.str(r.Name)
		w.u64(r.Start)
		w.u64(r.End)
	}
	// Names as one blob, so decoding makes one string for all of them.
	syms := img.Symbols.syms
	var names bytes.Buffer
	for _, s := range syms {
		names.WriteString(s.Name)
	}
	w.bytes(names.Bytes())
	w.uvarint(uint64(len(syms)))
	var prev uint64
	for _, s := range syms {
		w.uvarint(uint64(len(s.Name)))
		w.buf.WriteByte(s.Type)
		w.uvarint(s.Addr - prev) // table order is by address
		prev = s.Addr
	}
	w.bytes(img.btfRaw)
	w.buf.Write(binary.LittleEndian.AppendUint32(nil, crc32.ChecksumIEEE(w.buf.Bytes())))

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		return err
	}
	tmp, err := os.CreateTemp(filepath.Dir(path), ".kimage-*.tmp")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := tmp.Write(w.buf.Bytes()); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), path)
}

func b2u(b bool) uint64 {
	if b {
		return 1
	}
	return 0
}

func readCache(path, digest string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	return decodeCache(data, digest)
}

func decodeCache(data []byte, digest string) (*Image, error) {
	if len(data) < len(cacheMagic)+4 || string(data[:len(cacheMagic)]) != cacheMagic {
		return nil, errors.New("not a cache file of this version")
	}
	body := data[:len(data)-4]
	if crc32.ChecksumIEEE(body) != binary.LittleEndian.Uint32(data[len(data)-4:]) {
		return nil, errors.New("cache checksum mismatch")
	}
	r := &cacheReader{data: body, off: len(cacheMagic)}
	img := &Image{SHA256: r.str()}
	if img.SHA256 != digest {
		return nil, fmt.Errorf("cache is of image %.16s, not %.16s", img.SHA256, digest)
	}
	img.Release = r.str()
	img.Compression = Compression(r.str())
	img.SymbolSource = r.str()
	img.banner = r.bytes()
	img.BannerAddr = r.u64()
	if r.uvarint() == 1 {
		var v [13]uint64
		for i := range v {
			v[i] = r.u64()
		}
		img.Kallsyms = &KallsymsTables{NumSyms: int(v[0]), Offsets: v[1], RelativeBase: v[2], Base: v[3], Names: v[4], NamesLen: int(v[5]),
			Markers: v[6], MarkerSize: int(v[7]), SeqsOfNames: v[8], TokenTable: v[9], TokenIndex: v[10], BaseRelative: v[11] == 1, AbsolutePercpu: v[12] == 1}
	}
	regions := make([]Region, r.count(17))
	for i := range regions {
		regions[i] = Region{Name: r.str(), Start: r.u64(), End: r.u64()}
	}
	names := r.str()
	raw := make([]RawSymbol, r.count(3))
	var addr uint64
	for i := range raw {
		n := r.uvarint()
		if n > uint64(len(names)) {
			r.fail("name past the names blob")
			break
		}
		raw[i].Name, names = names[:n], names[n:]
		raw[i].Type = r.byte()
		addr += r.uvarint()
		raw[i].Addr = addr
	}
	btfRaw := r.bytes()
	if r.err != nil {
		return nil, r.err
	}
	if r.off != len(body) {
		return nil, errors.New("cache has trailing data")
	}
	img.Symbols = NewSymbols(raw, regions)
	img.Version = string(bytes.TrimSuffix(img.banner, []byte("\n")))
	if len(btfRaw) > 0 {
		if err := img.setBTF(btfRaw); err != nil {
			return nil, err
		}
	}
	return img, nil
}

type cacheWriter struct{ buf bytes.Buffer }

func (w *cacheWriter) uvarint(v uint64) { w.buf.Write(binary.AppendUvarint(nil, v)) }
func (w *cacheWriter) u64(v uint64)     { w.buf.Write(binary.LittleEndian.AppendUint64(nil, v)) }
func (w *cacheWriter) bytes(b []byte)   { w.uvarint(uint64(len(b))); w.buf.Write(b) }
func (w *cacheWriter) str(s string)     { w.uvarint(uint64(len(s))); w.buf.WriteString(s) }

// cacheReader decodes with a sticky error: after the first one every read
// returns zero values.
type cacheReader struct {
	data []byte
	off  int
	err  error
}

func (r *cacheReader) fail(msg string) {
	if r.err == nil {
		r.err = fmt.Errorf("cache: %s at offset %#x", msg, r.off)
	}
	r.off = len(r.data)
}

func (r *cacheReader) uvarint() uint64 {
	v, n := binary.Uvarint(r.data[r.off:])
	if n <= 0 {
		r.fail("bad varint")
		return 0
	}
	r.off += n
	return v
}

func (r *cacheReader) take(n uint64) []byte {
	if n > uint64(len(r.data)-r.off) {
		r.fail("truncated")
		return nil
	}
	b := r.data[r.off : r.off+int(n)]
	r.off += int(n)
	return b
}

// count reads a count of items of at least minSize bytes each, refusing one
// the remaining data cannot hold.
func (r *cacheReader) count(minSize int) int {
	n := r.uvarint()
	if n > uint64((len(r.data)-r.off)/minSize) {
		r.fail("count too large")
		return 0
	}
	return int(n)
}

func (r *cacheReader) u64() uint64 {
	if b := r.take(8); b != nil {
		return binary.LittleEndian.Uint64(b)
	}
	return 0
}

func (r *cacheReader) byte() byte {
	if b := r.take(1); b != nil {
		return b[0]
	}
	return 0
}

func (r *cacheReader) bytes() []byte { return bytes.Clone(r.take(r.uvarint())) }
func (r *cacheReader) str() string   { return string(r.take(r.uvarint())) }
