package kimage

import (
	"errors"
	"fmt"
)

// Errors callers branch on.
var (
	// ErrNotFound: no symbol (or type, or member) of that name.
	ErrNotFound = errors.New("not found")
	// ErrAmbiguous: a name has several definitions and the caller gave no
	// sympos. The concrete error is an *AmbiguousError.
	ErrAmbiguous = errors.New("ambiguous")
	// ErrNoKallsyms: the image has no kallsyms tables lucos recognises
	// (a kernel built without CONFIG_KALLSYMS_ALL, or a layout of another
	// kernel version).
	ErrNoKallsyms = errors.New("no kallsyms tables found")
	// ErrUnsupportedCompression: the payload is compressed with a method
	// lucos cannot decode (lzo, lzma, or not compressed at all).
	ErrUnsupportedCompression = errors.New("unsupported kernel compression")
	// ErrStubSystemMap: Debian's System.map names no symbols; it only points
	// at the -dbg package.
	ErrStubSystemMap = errors.New("System.map is a stub without symbols")
	// ErrNoBTF: the vmlinux has no .BTF section (CONFIG_DEBUG_INFO_BTF=n).
	ErrNoBTF = errors.New("kernel image has no BTF")
)

// FormatError reports malformed input at an offset, like debug/elf's.
// What says which input ("kallsyms", "lz4 payload", "System.map line").
type FormatError struct {
	What string
	Off  int64
	Msg  string
}

func (e *FormatError) Error() string {
	return fmt.Sprintf("%s: %s (at offset %#x)", e.What, e.Msg, e.Off)
}

func formatErr(what string, off int64, format string, args ...any) *FormatError {
	return &FormatError{What: what, Off: off, Msg: fmt.Sprintf(format, args...)}
}
