package kimage

import (
	"bytes"
	"context"
	"crypto/sha256"
	"debug/elf"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// Image is what lucos knows about a kernel from its image file.
type Image struct {
	// Release is the kernel release ("6.1.0-56-cloud-amd64"), as uname -r
	// prints it, read from the banner.
	Release string
	// Version is linux_banner without its newline: the text of the guest's
	// /proc/version ("Linux version 6.1.0-56-cloud-amd64 (...) #1 SMP ...").
	Version string
	// Compression is the bzImage payload's method; empty for a vmlinux.
	Compression Compression
	// SHA256 is the hex digest of the file Load read.
	SHA256 string

	Symbols *Symbols
	// SymbolSource is "kallsyms" (the image's own tables), "symtab" (the
	// .symtab of an unstripped vmlinux without kallsyms) or "System.map"
	// (after UseSystemMap).
	SymbolSource string
	// Kallsyms says where the kallsyms tables were found; nil for "symtab".
	Kallsyms *KallsymsTables

	// BTF is the kernel's type information from its .BTF section; nil when
	// the kernel has none (then FieldOffset and Sizeof return ErrNoBTF).
	BTF *btf.Spec
	// BannerAddr is linux_banner's link-time address.
	BannerAddr uint64

	banner []byte
	btfRaw []byte // .BTF as stored, kept for the cache
}

// Banner returns the bytes of linux_banner as the image holds them,
// including the final newline and without the terminating NUL: the running
// kernel holds the same bytes at BannerAddr plus the KASLR slide.
func (img *Image) Banner() []byte { return bytes.Clone(img.banner) }

// BTFRaw returns the .BTF section as stored in the image: the running
// kernel exports the same bytes as /sys/kernel/btf/vmlinux.
func (img *Image) BTFRaw() []byte { return bytes.Clone(img.btfRaw) }

// UseSystemMap replaces the image's symbols with those of a real System.map
// (or /proc/kallsyms text), keeping the image's sections as size bounds.
// sympos then counts that file's symbols, which can include names kallsyms
// leaves out: livepatch counts kallsyms, so prefer the image's own table
// when it has one.
func (img *Image) UseSystemMap(r io.Reader) error {
	raw, err := ReadSystemMap(r)
	if err != nil {
		return err
	}
	img.Symbols = NewSymbols(raw, img.Symbols.Regions())
	img.SymbolSource = "System.map"
	return nil
}

// FieldOffset is FieldOffset on the image's BTF.
func (img *Image) FieldOffset(structName, path string) (uint64, error) {
	return FieldOffset(img.BTF, structName, path)
}

// Sizeof is Sizeof on the image's BTF.
func (img *Image) Sizeof(typeName string) (uint64, error) {
	return Sizeof(img.BTF, typeName)
}

// Load reads the kernel image at path, a bzImage (vmlinuz) or a vmlinux
// ELF, and returns what it holds. With a cacheDir, the result is cached
// there under the file's sha256 and a later Load of the same file skips
// decompression and decoding.
func Load(ctx context.Context, path string, cacheDir string) (*Image, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return nil, fmt.Errorf("kernel image: %w", err)
	}
	sum := sha256.Sum256(data)
	digest := hex.EncodeToString(sum[:])
	if cacheDir != "" {
		if img, err := readCache(cacheFile(cacheDir, digest), digest); err == nil {
			return img, nil
		}
	}
	img, err := Parse(ctx, data)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	img.SHA256 = digest
	if cacheDir != "" {
		if err := writeCache(cacheFile(cacheDir, digest), img); err != nil {
			return nil, fmt.Errorf("%s: cache: %w", path, err)
		}
	}
	return img, nil
}

// Parse decodes a kernel image held in memory: a bzImage or a vmlinux.
func Parse(ctx context.Context, data []byte) (*Image, error) {
	if bytes.HasPrefix(data, []byte(elf.ELFMAG)) {
		return ParseVmlinux(data)
	}
	vmlinux, c, err := ExtractVmlinux(ctx, bytes.NewReader(data))
	if err != nil {
		return nil, err
	}
	img, err := ParseVmlinux(vmlinux)
	if err != nil {
		return nil, fmt.Errorf("vmlinux from the %s payload: %w", c, err)
	}
	img.Compression = c
	return img, nil
}

// ParseVmlinux decodes a vmlinux ELF: symbols from its kallsyms tables (or,
// without them, its .symtab), the banner and the BTF.
func ParseVmlinux(vmlinux []byte) (img *Image, err error) {
	defer func() {
		// debug/elf is not hardened against hostile files.
		if r := recover(); r != nil {
			img, err = nil, fmt.Errorf("vmlinux: malformed ELF: %v", r)
		}
	}()
	f, err := elf.NewFile(bytes.NewReader(vmlinux))
	if err != nil {
		return nil, fmt.Errorf("vmlinux: %w", err)
	}
	if f.Class != elf.ELFCLASS64 || f.Data != elf.ELFDATA2LSB {
		return nil, fmt.Errorf("vmlinux: %v %v: only 64-bit little-endian kernels are supported", f.Class, f.Data)
	}
	img = &Image{}
	regions := ELFRegions(f)
	raw, tables, kerr := elfKallsyms(f)
	switch {
	case kerr == nil:
		if err := checkCode(f, raw); err != nil {
			return nil, fmt.Errorf("vmlinux: kallsyms at %#x: %w", tables.TokenTable, err)
		}
		img.SymbolSource, img.Kallsyms = "kallsyms", tables
	default:
		var serr error
		raw, serr = ELFSymbols(f)
		if serr != nil {
			return nil, fmt.Errorf("vmlinux: no symbols: %w; %w", kerr, serr)
		}
		img.SymbolSource = "symtab"
	}
	img.Symbols = NewSymbols(raw, regions)

	if err := img.findBanner(f); err != nil {
		return nil, err
	}
	if sec := f.Section(".BTF"); sec != nil && sec.Type != elf.SHT_NOBITS {
		raw, err := sec.Data()
		if err != nil {
			return nil, fmt.Errorf("vmlinux .BTF: %w", err)
		}
		if err := img.setBTF(raw); err != nil {
			return nil, err
		}
	}
	return img, nil
}

func (img *Image) setBTF(raw []byte) (err error) {
	defer recoverBTF(&err)
	spec, err := btf.LoadSpecFromReader(bytes.NewReader(raw))
	if err != nil {
		return fmt.Errorf("vmlinux .BTF: %w", err)
	}
	img.BTF, img.btfRaw = spec, raw
	return nil
}

// elfKallsyms looks for the kallsyms tables in the read-only data of f,
// .rodata first.
func elfKallsyms(f *elf.File) ([]RawSymbol, *KallsymsTables, error) {
	var secs []*elf.Section
	for _, s := range f.Sections {
		if s.Type == elf.SHT_PROGBITS && s.Flags&elf.SHF_ALLOC != 0 && s.Flags&elf.SHF_EXECINSTR == 0 {
			if s.Name == ".rodata" {
				secs = append([]*elf.Section{s}, secs...)
			} else {
				secs = append(secs, s)
			}
		}
	}
	var errs []error
	for _, s := range secs {
		data, err := s.Data()
		if err != nil {
			errs = append(errs, fmt.Errorf("%s: %w", s.Name, err))
			continue
		}
		raw, t, err := ParseKallsyms(data, s.Addr)
		if err == nil {
			return raw, t, nil
		}
		// Report sections that held a candidate token table, not every
		// section without one.
		if fe := (*FormatError)(nil); errors.As(err, &fe) {
			errs = append(errs, fmt.Errorf("%s: %w", s.Name, err))
		}
	}
	if len(errs) == 0 {
		return nil, nil, ErrNoKallsyms
	}
	return nil, nil, errors.Join(errs...)
}

// checkCode checks the decoded code symbols against the code sections. The
// tables cannot reveal a wrong kallsyms_relative_base (every address moves
// with it); the sections can.
func checkCode(f *elf.File, syms []RawSymbol) error {
	var code []Region
	for _, s := range f.Sections {
		if s.Flags&elf.SHF_EXECINSTR != 0 && s.Flags&elf.SHF_ALLOC != 0 {
			code = append(code, Region{s.Name, s.Addr, s.Addr + s.Size})
		}
	}
	total, outside := 0, 0
	var example RawSymbol
	for _, s := range syms {
		if s.Type != 'T' && s.Type != 't' {
			continue
		}
		total++
		in := false
		for _, r := range code {
			if s.Addr >= r.Start && s.Addr <= r.End { // a marker may sit at the end
				in = true
				break
			}
		}
		if !in {
			if outside == 0 {
				example = s
			}
			outside++
		}
	}
	if len(code) > 0 && outside*100 > total {
		return fmt.Errorf("%d of %d code symbols lie outside the code sections (%s at %#x): wrong relative base?",
			outside, total, example.Name, example.Addr)
	}
	return nil
}

const bannerPrefix = "Linux version "

// findBanner reads linux_banner through its symbol or, without one, as the
// first "Linux version ...\n" string in read-only data.
func (img *Image) findBanner(f *elf.File) error {
	var banner []byte
	var addr uint64
	if sym, err := img.Symbols.Find("linux_banner", 0); err == nil {
		if b, ok := readCString(f, sym.Addr, 1024); ok && bytes.HasPrefix(b, []byte(bannerPrefix)) {
			banner, addr = b, sym.Addr
		}
	}
	if banner == nil {
		for _, s := range f.Sections {
			if s.Type != elf.SHT_PROGBITS || s.Flags&elf.SHF_ALLOC == 0 || s.Flags&elf.SHF_EXECINSTR != 0 {
				continue
			}
			data, err := s.Data()
			if err != nil {
				continue
			}
			if i, b := scanBanner(data); b != nil {
				banner, addr = b, s.Addr+uint64(i)
				break
			}
		}
	}
	if banner == nil {
		return fmt.Errorf("vmlinux: no linux_banner (%q...) found", bannerPrefix)
	}
	img.banner, img.BannerAddr = banner, addr
	img.Version = strings.TrimSuffix(string(banner), "\n")
	img.Release, _, _ = strings.Cut(strings.TrimPrefix(img.Version, bannerPrefix), " ")
	if img.Release == "" {
		return fmt.Errorf("vmlinux: linux_banner %q names no release", img.Version)
	}
	return nil
}

// scanBanner finds a NUL-terminated "Linux version <release> ...\n" in data,
// skipping format strings.
func scanBanner(data []byte) (int, []byte) {
	for from := 0; ; {
		i := bytes.Index(data[from:], []byte(bannerPrefix))
		if i < 0 {
			return 0, nil
		}
		i += from
		from = i + 1
		if i > 0 && data[i-1] != 0 {
			continue // inside another string
		}
		end := bytes.IndexByte(data[i:min(len(data), i+1024)], 0)
		if end < 0 {
			continue
		}
		b := data[i : i+end]
		if bytes.HasSuffix(b, []byte("\n")) && !bytes.Contains(b, []byte("%")) {
			return i, bytes.Clone(b)
		}
	}
}

// readCString reads the NUL-terminated string at link-time address addr.
func readCString(f *elf.File, addr uint64, max int) ([]byte, bool) {
	for _, s := range f.Sections {
		if s.Type != elf.SHT_PROGBITS || addr < s.Addr || addr-s.Addr >= s.Size {
			continue
		}
		buf := make([]byte, min(uint64(max), s.Size-(addr-s.Addr)))
		n, _ := s.ReadAt(buf, int64(addr-s.Addr))
		buf = buf[:n]
		if i := bytes.IndexByte(buf, 0); i >= 0 {
			return buf[:i], true
		}
		return nil, false
	}
	return nil, false
}
