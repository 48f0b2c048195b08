package loader

import (
	"errors"
	"fmt"
	"strings"
)

// Errors callers branch on.
var (
	// ErrFormat: the file is not a well-formed x86-64 relocatable ELF object
	// carrying lucos descriptors. The concrete error is a *FormatError.
	ErrFormat = errors.New("malformed patch module")
	// ErrRefused: the patch is well formed but asks for something lucos
	// cannot honour on this kernel. The concrete error is a *RefusedError.
	ErrRefused = errors.New("refused")
	// ErrWrongRelease: the patch was built for another kernel release.
	ErrWrongRelease = errors.New("wrong kernel release")
	// ErrNoSpace: the patch's sections do not fit the slot given to Link.
	ErrNoSpace = errors.New("patch does not fit its slot")
)

// FormatError reports malformed input: which section (if any), where in
// it, and what is wrong.
type FormatError struct {
	Section string // "" for the ELF header or the file as a whole
	Off     uint64 // offset in Section (or the file)
	Msg     string
}

func (e *FormatError) Error() string {
	if e.Section == "" {
		return fmt.Sprintf("%v: %s (at offset %#x)", ErrFormat, e.Msg, e.Off)
	}
	return fmt.Sprintf("%v: section %s+%#x: %s", ErrFormat, e.Section, e.Off, e.Msg)
}

func (e *FormatError) Is(target error) bool { return target == ErrFormat }

func formatErr(section string, off uint64, format string, args ...any) *FormatError {
	return &FormatError{Section: section, Off: off, Msg: fmt.Sprintf(format, args...)}
}

// RefusedError says what lucos will not do with a patch and why, naming
// the section and symbol concerned. It is returned before anything is
// written to the guest.
type RefusedError struct {
	Section string // ELF section of the patch concerned, or ""
	Offset  int64  // offset of the place in Section, or -1
	Symbol  string // symbol concerned, or ""
	Reason  string
	Err     error // the underlying cause (e.g. a *kimage.AmbiguousError), or nil
}

func (e *RefusedError) Error() string {
	var b strings.Builder
	b.WriteString("refused: ")
	if e.Section != "" {
		fmt.Fprintf(&b, "section %s", e.Section)
		if e.Offset >= 0 {
			fmt.Fprintf(&b, "+%#x", e.Offset)
		}
		b.WriteString(": ")
	}
	if e.Symbol != "" {
		fmt.Fprintf(&b, "symbol %s: ", e.Symbol)
	}
	b.WriteString(e.Reason)
	return b.String()
}

func (e *RefusedError) Is(target error) bool { return target == ErrRefused }
func (e *RefusedError) Unwrap() error        { return e.Err }

// refuse builds a RefusedError that is not about one place in a section.
func refuse(section, symbol string, cause error, format string, args ...any) *RefusedError {
	return &RefusedError{Section: section, Offset: -1, Symbol: symbol, Reason: fmt.Sprintf(format, args...), Err: cause}
}

// refuseAt builds a RefusedError about the place section+off.
func refuseAt(section string, off uint64, symbol string, cause error, format string, args ...any) *RefusedError {
	return &RefusedError{Section: section, Offset: int64(off), Symbol: symbol, Reason: fmt.Sprintf(format, args...), Err: cause}
}
