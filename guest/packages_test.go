package guest

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestFetchPackagesBadNames(t *testing.T) {
	for _, pkgs := range [][]string{nil, {""}, {"a/b"}, {"libfoo", "x+y"}, {".."}} {
		if _, err := FetchPackages(context.Background(), t.TempDir(), pkgs, nil); err == nil {
			t.Errorf("FetchPackages(%q) succeeded", pkgs)
		}
	}
}

// libsqlite3-dev is what bench/workload links its guest program with.
func TestFetchPackages(t *testing.T) {
	if testing.Short() {
		t.Skip("downloads a package (not with -short)")
	}
	requireTools(t, "apt-get", "dpkg-deb")
	cache := t.TempDir()
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	dir, err := FetchPackages(ctx, cache, []string{"libsqlite3-dev"}, logWriter{t})
	if err != nil {
		t.Fatal(err)
	}
	if want := filepath.Join(cache, "packages", "libsqlite3-dev"); dir != want {
		t.Errorf("dir %s, want %s", dir, want)
	}
	for _, f := range []string{"usr/include/sqlite3.h", "usr/lib/x86_64-linux-gnu/libsqlite3.a"} {
		if _, err := os.Stat(filepath.Join(dir, f)); err != nil {
			t.Error(err)
		}
	}
	if left, _ := filepath.Glob(filepath.Join(cache, ".fetch-*")); len(left) != 0 {
		t.Errorf("work directories left: %q", left)
	}

	// Warm: no apt at all (none on PATH), nothing printed.
	t.Setenv("PATH", t.TempDir())
	var out bytes.Buffer
	again, err := FetchPackages(ctx, cache, []string{"libsqlite3-dev"}, &out)
	if err != nil || again != dir {
		t.Errorf("warm FetchPackages = %s, %v; want %s", again, err, dir)
	}
	if out.Len() != 0 {
		t.Errorf("warm FetchPackages printed %q", out.String())
	}
}
