// Package examples carries the example patches (patches/), the in-guest
// livepatch twin (klp/) and the guest test modules (guestmod/) inside the
// lucos binary, so that `lucos demo`, `lucos bench` and the tests build
// them from any directory.
package examples

import (
	"crypto/sha256"
	"embed"
	"encoding/hex"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
)

//go:embed patches/*/*.c patches/*/*.h klp/*/*.c klp/*/Kbuild guestmod/*/*.c guestmod/*/*.h guestmod/*/Kbuild
var files embed.FS

// Extract writes the example at path (e.g. "patches/cmdline-string",
// "klp/cmdline-klp" or "guestmod/lucos_bugs") into a new directory under
// dir and returns it.
func Extract(path, dir string) (string, error) {
	src, err := fs.Sub(files, path)
	if err != nil {
		return "", err
	}
	ents, err := fs.ReadDir(src, ".")
	if err != nil || len(ents) == 0 {
		return "", fmt.Errorf("no example %q", path)
	}
	dst := filepath.Join(dir, filepath.Base(path))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	for _, e := range ents {
		b, err := fs.ReadFile(src, e.Name())
		if err != nil {
			return "", err
		}
		if err := os.WriteFile(filepath.Join(dst, e.Name()), b, 0o644); err != nil {
			return "", err
		}
	}
	return dst, nil
}

// Digest is a hex SHA-256 of the example at path: its files' names and
// bytes. Builds cached by it are rebuilt when the example changes.
func Digest(path string) (string, error) {
	src, err := fs.Sub(files, path)
	if err != nil {
		return "", err
	}
	ents, err := fs.ReadDir(src, ".")
	if err != nil || len(ents) == 0 {
		return "", fmt.Errorf("no example %q", path)
	}
	h := sha256.New()
	for _, e := range ents { // ReadDir sorts by name
		b, err := fs.ReadFile(src, e.Name())
		if err != nil {
			return "", err
		}
		fmt.Fprintf(h, "%s\x00%d\x00", e.Name(), len(b))
		h.Write(b)
	}
	return hex.EncodeToString(h.Sum(nil)), nil
}
