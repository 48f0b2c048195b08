package guest

import (
	"bytes"
	"context"
	"debug/elf"
	"errors"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testreq"
)

// These tests run the real apt and kbuild. They share the default cache
// (DefaultCacheDir) so that only the first run on a machine downloads the
// ~40 MB of packages.

func requireTools(t *testing.T, names ...string) { testreq.Tools(t, names...) }

// logWriter sends progress lines to the test log.
type logWriter struct{ t *testing.T }

func (w logWriter) Write(b []byte) (int, error) {
	w.t.Helper()
	w.t.Log(strings.TrimRight(string(b), "\n"))
	return len(b), nil
}

// fetchDefault fetches the default guest into the shared cache.
func fetchDefault(t *testing.T) *Image {
	t.Helper()
	if testing.Short() {
		t.Skip("fetches the guest kernel (not with -short)")
	}
	requireTools(t, "apt-get", "apt-cache", "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	start := time.Now()
	im, err := Fetch(ctx, Options{Progress: logWriter{t}})
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("Fetch: %s in %v", im.Release, time.Since(start).Round(time.Millisecond))
	return im
}

func TestFetchIdempotent(t *testing.T) {
	im := fetchDefault(t)
	if !strings.HasSuffix(im.Release, "-cloud-amd64") {
		t.Errorf("default flavour gave %s", im.Release)
	}
	if filepath.Dir(im.Dir) != DefaultCacheDir() {
		t.Errorf("image in %s, want under %s", im.Dir, DefaultCacheDir())
	}
	// The kernel is a bzImage: "HdrS" at 0x202.
	f, err := os.Open(im.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	magic := make([]byte, 4)
	if _, err := f.ReadAt(magic, 0x202); err != nil || string(magic) != "HdrS" {
		t.Errorf("%s is not a bzImage: %q %v", im.Kernel, magic, err)
	}
	if cfg, err := os.ReadFile(im.Config); err != nil || !bytes.Contains(cfg, []byte("CONFIG_X86_64=y")) {
		t.Errorf("config %s: %v", im.Config, err)
	}
	if _, err := os.Stat(filepath.Join(im.ModulesDir, "kernel", "fs")); err != nil {
		t.Error(err)
	}
	if _, err := os.Stat(filepath.Join(im.Dir, "usr", "share", "doc")); err != nil {
		t.Error(err)
	}
	if debs, _ := filepath.Glob(filepath.Join(DefaultCacheDir(), "*", "*.deb")); len(debs) != 0 {
		t.Errorf(".deb files left in the cache: %q", debs)
	}

	// Warm: the same image, and nothing downloaded.
	var out bytes.Buffer
	again, err := Fetch(context.Background(), Options{Progress: &out})
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(again, im) {
		t.Errorf("second Fetch = %+v, want %+v", again, im)
	}
	if out.Len() != 0 {
		t.Errorf("warm Fetch printed progress: %q", out.String())
	}
	opened, err := Open("", im.Release)
	if err != nil || !reflect.DeepEqual(opened, im) {
		t.Errorf("Open = %+v, %v; want %+v", opened, err, im)
	}

	// Pinned and warm: no apt command at all (none is on PATH).
	t.Setenv("PATH", t.TempDir())
	start := time.Now()
	pinned, err := Fetch(context.Background(), Options{Release: im.Release})
	if err != nil || !reflect.DeepEqual(pinned, im) {
		t.Errorf("pinned warm Fetch without apt = %+v, %v", pinned, err)
	}
	t.Logf("warm pinned Fetch: %v", time.Since(start).Round(time.Microsecond))
}

// The headers in the cache build an out-of-tree module that the guest
// kernel would accept: its vermagic is the guest's release.
func TestKbuildHelloModule(t *testing.T) {
	im := fetchDefault(t)
	requireTools(t, "make")
	cc, err := im.Compiler()
	if err != nil {
		t.Fatal(err)
	}
	requireTools(t, cc)

	dir := t.TempDir()
	src := `#include <linux/module.h>
#include <linux/init.h>

static int __init hello_init(void)
{
	pr_info("hello from lucos\n");
	return 0;
}

static void __exit hello_exit(void)
{
}

module_init(hello_init);
module_exit(hello_exit);
MODULE_LICENSE("GPL");
`
	if err := os.WriteFile(filepath.Join(dir, "hello.c"), []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(dir, "Kbuild"), []byte("obj-m := hello.o\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	start := time.Now()
	cmd := exec.Command("make", "-C", im.BuildDir, "M="+dir, "modules")
	out, err := cmd.CombinedOutput()
	if err != nil {
		t.Fatalf("%s: %v\n%s", cmd, err, out)
	}
	t.Logf("kbuild of hello.ko: %v", time.Since(start).Round(time.Millisecond))

	info, err := modinfo(filepath.Join(dir, "hello.ko"))
	if err != nil {
		t.Fatal(err)
	}
	if v := info["vermagic"]; !strings.HasPrefix(v, im.Release+" ") {
		t.Errorf("vermagic %q, want %s ...", v, im.Release)
	}
	if info["name"] != "hello" || info["license"] != "GPL" {
		t.Errorf("modinfo %q", info)
	}
}

// modinfo reads the key=value strings of a module's .modinfo section.
func modinfo(ko string) (map[string]string, error) {
	f, err := elf.Open(ko)
	if err != nil {
		return nil, err
	}
	defer f.Close()
	sec := f.Section(".modinfo")
	if sec == nil {
		return nil, errors.New(ko + ": no .modinfo section")
	}
	b, err := sec.Data()
	if err != nil {
		return nil, err
	}
	info := make(map[string]string)
	for _, kv := range bytes.Split(b, []byte{0}) {
		if k, v, ok := strings.Cut(string(kv), "="); ok {
			info[k] = v
		}
	}
	return info, nil
}

// A pinned release that is not cached, with the archive unreachable (apt is
// sent to a closed local port), fails with ErrArchiveUnreachable naming the
// packages, and leaves nothing behind in the cache.
func TestFetchUnreachable(t *testing.T) {
	requireTools(t, "apt-get", "apt-cache", "dpkg-deb")
	aptExtraArgs = []string{"-o", "Acquire::http::Proxy=http://127.0.0.1:9", "-o", "Acquire::Retries=0"}
	defer func() { aptExtraArgs = nil }()
	rel := currentOrSkip(t)
	cache := t.TempDir()
	_, err := Fetch(context.Background(), Options{CacheDir: cache, Release: rel, Progress: logWriter{t}})
	if !errors.Is(err, ErrArchiveUnreachable) {
		t.Fatalf("got %v, want ErrArchiveUnreachable", err)
	}
	if !strings.Contains(err.Error(), "linux-image-"+rel) || !strings.Contains(err.Error(), "apt-get") {
		t.Errorf("error does not name the package and the command: %v", err)
	}
	entries, _ := os.ReadDir(cache)
	for _, e := range entries {
		if e.Name() != lockFile {
			t.Errorf("left %s in the cache", e.Name())
		}
	}

	// Not pinned, with an older release cached: Fetch falls back to it.
	fakeRelease(t, cache, "6.1.0-9-cloud-amd64", true)
	var out bytes.Buffer
	im, err := Fetch(context.Background(), Options{CacheDir: cache, Progress: &out})
	if err != nil || im.Release != "6.1.0-9-cloud-amd64" {
		t.Fatalf("offline fallback: %v, %v", im, err)
	}
	if !strings.Contains(out.String(), "cannot reach the Debian archive") || !strings.Contains(out.String(), "using the newest cached 6.1 cloud kernel, 6.1.0-9-cloud-amd64") {
		t.Errorf("progress does not explain the fallback: %q", out.String())
	}
}

func TestFetchUnknownRelease(t *testing.T) {
	requireTools(t, "apt-get", "apt-cache", "dpkg-deb")
	// No apt-get update against the real archive from a test.
	aptExtraArgs = []string{"-o", "Acquire::http::Proxy=http://127.0.0.1:9", "-o", "Acquire::Retries=0"}
	defer func() { aptExtraArgs = nil }()
	currentOrSkip(t)
	_, err := Fetch(context.Background(), Options{CacheDir: t.TempDir(), Release: "6.1.0-999-cloud-amd64", Progress: io.Discard})
	if !errors.Is(err, ErrUnknownRelease) {
		t.Fatalf("got %v, want ErrUnknownRelease", err)
	}
	if !strings.Contains(err.Error(), "linux-headers-6.1.0-999-cloud-amd64") {
		t.Errorf("error does not name the package: %v", err)
	}
	t.Log(err)
}

// currentOrSkip returns the current cloud release from the local apt lists,
// skipping the test when the lists do not have it (outside CI).
func currentOrSkip(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("runs apt (not with -short)")
	}
	a := &apt{progress: &progress{}, updated: true}
	r, err := currentRelease(context.Background(), a, line{FlavourCloud, DefaultSeries})
	if err != nil {
		testreq.Unavailable(t, "apt lists have no cloud kernel (run apt-get update): %v", err)
	}
	return r.Name
}

// Both flavours resolve from the local apt lists (no network: no update).
func TestCurrentRelease(t *testing.T) {
	requireTools(t, "apt-cache")
	currentOrSkip(t)
	for _, ln := range []line{{FlavourCloud, DefaultSeries}, {FlavourGeneric, DefaultSeries}, {FlavourCloud, "6.12"}, {FlavourGeneric, "6.12"}} {
		a := &apt{progress: &progress{}, updated: true}
		r, err := currentRelease(context.Background(), a, ln)
		if err != nil {
			t.Fatal(err)
		}
		if !ln.has(r) {
			t.Errorf("%s resolved to %s", ln, r.Name)
		}
		t.Logf("%s: %s", ln, r.Name)
	}
}
