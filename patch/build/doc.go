// Package build turns a patch directory — C in the form of a Linux kernel
// module, written with the macros of lucos/patch.h — into a patch module
// (.ko) for one guest kernel release: `lucos patch build DIR`.
//
// It is the first step of a live update: the .ko it writes is what the
// update engine (package patch) loads into the guest. Build runs kbuild
// against the cached headers of the guest kernel (package guest) in a
// private copy of DIR, with the SDK header embedded in the lucos binary,
// then reads the module back (Inspect) to check what lucos will rely on:
// the vermagic names the release, the descriptor sections are well formed,
// the module carries a GNU build id.
//
// The descriptor format (ABI v1) is documented in docs/PATCH-FORMAT.md.
package build
