package guest

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"testing"
)

func TestSourcePackage(t *testing.T) {
	for v, want := range map[string]string{"6.1.190-1": "linux-source-6.1", "6.12.107-1~deb12u1": "linux-source-6.12", "x": "linux-source"} {
		if got := sourcePackage(v); got != want {
			t.Errorf("sourcePackage(%q) = %q, want %q", v, got, want)
		}
	}
}

// The image's package version comes from the .deb the cache was unpacked
// from, URL-escaped as apt-get download names files.
func TestPackageVersion(t *testing.T) {
	dir := t.TempDir()
	im := fakeRelease(t, dir, "6.1.0-54-cloud-amd64", true)
	if err := writeMarker(im.Dir, im.Release, []string{"busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb", "linux-image-6.1.0-54-cloud-amd64_6.1.190-1_amd64.deb"}); err != nil {
		t.Fatal(err)
	}
	v, err := im.PackageVersion()
	if err != nil || v != "6.1.190-1" {
		t.Fatalf("PackageVersion = %q, %v; want 6.1.190-1", v, err)
	}
	if err := writeMarker(im.Dir, im.Release, []string{"busybox-static_1%3a1.35.0-4+deb12u1+b1_amd64.deb"}); err != nil {
		t.Fatal(err)
	}
	if _, err := im.PackageVersion(); err == nil {
		t.Fatal("PackageVersion without a linux-image .deb: no error")
	}
}

func TestConfigDiff(t *testing.T) {
	want := []byte("# comment\nCONFIG_A=y\n# CONFIG_B is not set\nCONFIG_C=\"x\"\nCONFIG_D=m\n")
	same := []byte("CONFIG_D=m\nCONFIG_A=y\nCONFIG_C=\"x\"\n# CONFIG_B is not set\n# CONFIG_NEW is not set\n")
	if d := configDiff(want, same); len(d) != 0 {
		t.Errorf("reordered config: %q", d)
	}
	got := []byte("CONFIG_A=y\nCONFIG_B=y\nCONFIG_C=\"x\"\nCONFIG_E=y\n")
	d := configDiff(want, got)
	wantDiff := []string{"CONFIG_B=n became \"y\"", "CONFIG_D=m became \"\"", "new CONFIG_E=y"}
	if !slices.Equal(d, wantDiff) {
		t.Errorf("configDiff = %q, want %q", d, wantDiff)
	}
}

func TestOpenSourceNotPrepared(t *testing.T) {
	im := fakeRelease(t, t.TempDir(), "6.1.0-54-cloud-amd64", true)
	if _, err := OpenSource(im); !errors.Is(err, ErrNotCached) {
		t.Fatalf("OpenSource of an unprepared release: %v, want ErrNotCached", err)
	}
	// A marker of another format is not a prepared tree.
	dir := filepath.Join(im.Dir, sourceDir)
	if err := os.MkdirAll(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, sourceMarkerFile), []byte(`{"format":0,"release":"6.1.0-54-cloud-amd64"}`), 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := OpenSource(im); !errors.Is(err, ErrNotCached) {
		t.Fatalf("OpenSource of an old-format tree: %v, want ErrNotCached", err)
	}
}

// Two holders of a tree's lock never overlap.
func TestSourceLock(t *testing.T) {
	tr := &SourceTree{Dir: t.TempDir()}
	unlock, err := tr.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := tr.Lock(ctx); !errors.Is(err, context.Canceled) {
		t.Fatalf("second Lock while held: %v, want context.Canceled", err)
	}
	unlock()
	unlock2, err := tr.Lock(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	unlock2()
}
