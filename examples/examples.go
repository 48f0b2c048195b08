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
	dst := filepath.Join(dir, filepath.Base(path))
	if err := os.MkdirAll(dst, 0o755); err != nil {
		return "", err
	}
	err := eachFile(path, func(name string, b []byte) error {
		return os.WriteFile(filepath.Join(dst, name), b, 0o644)
	})
	return dst, err
}

// Digest is a hex SHA-256 of the example at path: its files' names and
// bytes. Builds cached by it are rebuilt when the example changes.
func Digest(path string) (string, error) {
	h := sha256.New()
	err := eachFile(path, func(name string, b []byte) error {
		fmt.Fprintf(h, "%s\x00%d\x00", name, len(b))
		_, err := h.Write(b)
		return err
	})
	return hex.EncodeToString(h.Sum(nil)), err
}

// eachFile calls fn with each file of the example at path, by name.
func eachFile(path string, fn func(name string, b []byte) error) error {
	src, err := fs.Sub(files, path)
	if err != nil {
		return err
	}
	ents, err := fs.ReadDir(src, ".") // sorted by name
	if err != nil || len(ents) == 0 {
		return fmt.Errorf("no example %q", path)
	}
	for _, e := range ents {
		b, err := fs.ReadFile(src, e.Name())
		if err != nil {
			return err
		}
		if err := fn(e.Name(), b); err != nil {
			return err
		}
	}
	return nil
}
