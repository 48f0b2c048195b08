package srcdiff

import (
	"errors"
	"fmt"
	"strings"
)

// Errors callers branch on; Build's errors wrap them or are a *RefusedError.
var (
	// ErrDoesNotApply: a diff does not apply to the guest kernel's source.
	ErrDoesNotApply = errors.New("diff does not apply")
	// ErrCompile: the original or the patched source does not compile.
	ErrCompile = errors.New("compile failed")
	// ErrSourceMismatch: the original build does not match the guest's
	// code, or the guest lacks a symbol the source has.
	ErrSourceMismatch = errors.New("the kernel source does not match the guest's kernel")
	// ErrNotBuilt: the diff changes only code this kernel's configuration
	// leaves out (a file of a driver it does not build).
	ErrNotBuilt = errors.New("the diff changes code this kernel does not build")
	// ErrAmbiguous: a static the patch needs is defined several times in
	// the guest and lucos cannot tell which one.
	ErrAmbiguous = errors.New("ambiguous kernel symbol")
	// ErrNoChange: the diff changes no code lucos can patch.
	ErrNoChange = errors.New("the diff changes no function")
	// ErrRefused: what the diff changes cannot be live-patched (see RefusedError).
	ErrRefused = errors.New("the change cannot be live-patched")
)

// RefusedError names what in one source file cannot be live-patched, and why.
type RefusedError struct {
	File    string
	Reasons []string
}

func (e *RefusedError) Error() string {
	return fmt.Sprintf("%s: %s", e.File, strings.Join(e.Reasons, "; "))
}

func (e *RefusedError) Is(target error) bool { return target == ErrRefused }
