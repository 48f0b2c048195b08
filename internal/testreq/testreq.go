// Package testreq decides what a test does when the machine lacks
// something it needs (a tool, QEMU, the guest image): skip with the reason,
// except under CI (CI=true), where the README's test command has installed
// everything, so a missing part is a failure. It imports nothing of lucos,
// so every package's tests can use it.
package testreq

import (
	"os"
	"os/exec"
	"testing"
)

// InCI reports whether the test runs under CI.
func InCI() bool { return os.Getenv("CI") == "true" }

// Unavailable skips t with the reason, or fails it under CI.
func Unavailable(t testing.TB, reason string, args ...any) {
	t.Helper()
	if InCI() {
		t.Fatalf("required under CI: "+reason, args...)
	}
	t.Skipf(reason, args...)
}

// Tools requires commands on PATH and returns the path of the first.
func Tools(t testing.TB, names ...string) string {
	t.Helper()
	var first string
	for _, name := range names {
		p, err := exec.LookPath(name)
		if err != nil {
			Unavailable(t, "needs %s: %v", name, err)
		}
		if first == "" {
			first = p
		}
	}
	return first
}

// File requires a file; hint says how to get it.
func File(t testing.TB, path, hint string) string {
	t.Helper()
	if _, err := os.Stat(path); err != nil {
		Unavailable(t, "needs %s (%s): %v", path, hint, err)
	}
	return path
}
