// Package bzimage reads the x86 Linux boot image (bzImage) that QEMU loads
// with -kernel: it recognises one, and tells the kernel version string and
// where the compressed payload lies. It is the first step of the guest-image
// path; decompressing the payload and finding the kernel's own tables build
// on it.
package bzimage

import (
	"bytes"
	"encoding/binary"
	"errors"
	"fmt"
	"io"
	"os"
)

// Offsets of the real-mode header fields (Documentation/arch/x86/boot.rst).
const (
	offSetupSects  = 0x1f1
	offBootFlag    = 0x1fe
	offHeader      = 0x202
	offVersion     = 0x206
	offKernelVer   = 0x20e
	offLoadFlags   = 0x211
	offPayloadOff  = 0x248
	offPayloadLen  = 0x24c
	headerMinBytes = 0x250

	bootFlag    = 0xaa55
	headerMagic = "HdrS"
	loadedHigh  = 0x01
)

// ErrNotBzImage is returned for a file that lacks the boot-protocol header.
var ErrNotBzImage = errors.New("not a bzImage")

// FormatError reports a malformed header field, with its offset.
type FormatError struct {
	Off int64
	Msg string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("not a bzImage: %s (at offset %#x)", e.Msg, e.Off)
}

func (e *FormatError) Unwrap() error { return ErrNotBzImage }

// Header is what lucos uses of the boot-protocol header.
type Header struct {
	Protocol      uint16 // boot protocol version, e.g. 0x020f
	SetupSectors  int    // 512-byte sectors of real-mode setup after the boot sector
	KernelVersion string // "6.1.0-56-cloud-amd64 (debian-kernel@lists.debian.org) #1 SMP ..."
	PayloadOffset int64  // file offset of the compressed kernel payload
	PayloadLength int64
}

// Release is the first word of KernelVersion, the kernel release that
// `uname -r` prints in the guest.
func (h *Header) Release() string {
	if i := bytes.IndexByte([]byte(h.KernelVersion), ' '); i >= 0 {
		return h.KernelVersion[:i]
	}
	return h.KernelVersion
}

// Parse reads the header of the bzImage in r.
func Parse(r io.ReaderAt) (*Header, error) {
	buf := make([]byte, headerMinBytes)
	if n, err := r.ReadAt(buf, 0); n < len(buf) {
		if err == nil || err == io.EOF {
			return nil, &FormatError{int64(n), "file too short for a boot header"}
		}
		return nil, fmt.Errorf("bzImage: read header: %w", err)
	}
	if binary.LittleEndian.Uint16(buf[offBootFlag:]) != bootFlag {
		return nil, &FormatError{offBootFlag, "no boot sector signature 0xaa55"}
	}
	if string(buf[offHeader:offHeader+4]) != headerMagic {
		return nil, &FormatError{offHeader, `no "HdrS" boot-protocol magic`}
	}
	h := &Header{Protocol: binary.LittleEndian.Uint16(buf[offVersion:])}
	if h.Protocol < 0x0208 {
		return nil, &FormatError{offVersion, fmt.Sprintf("boot protocol %#x is older than 2.08 (no payload fields)", h.Protocol)}
	}
	if buf[offLoadFlags]&loadedHigh == 0 {
		return nil, &FormatError{offLoadFlags, "zImage (loaded low) is not supported"}
	}
	h.SetupSectors = int(buf[offSetupSects])
	if h.SetupSectors == 0 {
		h.SetupSectors = 4
	}
	setupEnd := int64(h.SetupSectors+1) * 512
	h.PayloadOffset = setupEnd + int64(binary.LittleEndian.Uint32(buf[offPayloadOff:]))
	h.PayloadLength = int64(binary.LittleEndian.Uint32(buf[offPayloadLen:]))

	// kernel_version points (relative to 0x200) at a NUL-terminated string in the setup code.
	if p := int64(binary.LittleEndian.Uint16(buf[offKernelVer:])); p != 0 {
		off := p + 0x200
		if off >= setupEnd {
			return nil, &FormatError{offKernelVer, "kernel_version points past the setup code"}
		}
		s := make([]byte, 256)
		n, _ := r.ReadAt(s, off)
		s = s[:n]
		if i := bytes.IndexByte(s, 0); i >= 0 {
			s = s[:i]
		}
		h.KernelVersion = string(s)
	}
	return h, nil
}

// ParseFile opens and parses the bzImage at path.
func ParseFile(path string) (*Header, error) {
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	h, err := Parse(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return h, nil
}
