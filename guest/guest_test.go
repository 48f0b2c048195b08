package guest

import (
	"bytes"
	"context"
	"errors"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
	"testing"
)

// The files in testdata/ are real output of bookworm's apt 2.6.1 and real
// files of the 6.1.0-56-cloud-amd64 headers package.

func readTestdata(t *testing.T, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join("testdata", name))
	if err != nil {
		t.Fatal(err)
	}
	return b
}

func TestParseDependsMeta(t *testing.T) {
	deps, err := parseDepends(readTestdata(t, "depends-meta.txt"))
	if err != nil {
		t.Fatal(err)
	}
	want := map[string][]dependency{
		"linux-image-cloud-amd64": {{Kind: "Depends", Package: "linux-image-6.1.0-56-cloud-amd64"}},
		"linux-image-amd64":       {{Kind: "Depends", Package: "linux-image-6.1.0-56-amd64"}},
	}
	if !reflect.DeepEqual(deps, want) {
		t.Errorf("got %+v\nwant %+v", deps, want)
	}
}

func TestParseDependsHeaders(t *testing.T) {
	deps, err := parseDepends(readTestdata(t, "depends-headers.txt"))
	if err != nil {
		t.Fatal(err)
	}
	list := deps["linux-headers-6.1.0-56-cloud-amd64"]
	var names []string
	for _, d := range list {
		names = append(names, d.Kind+" "+d.Package)
	}
	want := []string{
		"Depends linux-headers-6.1.0-56-common",
		"Depends linux-kbuild-6.1",
		"Depends linux-compiler-gcc-12-x86",
	}
	if !slices.Equal(names, want) {
		t.Errorf("got %q, want %q", names, want)
	}
}

// The image's relations have an or-group, a virtual package with providers,
// and the busybox-static block has a provider under a plain relation.
func TestParseDependsOrVirtualProviders(t *testing.T) {
	deps, err := parseDepends(readTestdata(t, "depends-image.txt"))
	if err != nil {
		t.Fatal(err)
	}
	img := deps["linux-image-6.1.0-56-cloud-amd64"]
	if len(img) < 5 {
		t.Fatalf("got %d relations: %+v", len(img), img)
	}
	if d := img[2]; !d.Or || d.Package != "initramfs-tools" || d.Kind != "Depends" {
		t.Errorf("relation 2 = %+v, want the or-ed Depends on initramfs-tools", d)
	}
	d := img[3]
	if !d.Virtual || d.Package != "linux-initramfs-tool" || !slices.Equal(d.Providers, []string{"dracut", "initramfs-tools", "tiny-initramfs"}) {
		t.Errorf("relation 3 = %+v, want the virtual linux-initramfs-tool and its 3 providers", d)
	}
	bb := deps["busybox-static"]
	if len(bb) != 2 || bb[1].Kind != "Replaces" || !slices.Equal(bb[1].Providers, []string{"busybox-static"}) {
		t.Errorf("busybox-static = %+v", bb)
	}
	if got := dependsOn(img, func(string) bool { return true }); got != "kmod" {
		t.Errorf("first Depends = %q, want kmod", got)
	}
}

func TestParseDependsBad(t *testing.T) {
	for _, in := range []string{
		"  Depends: x\n",         // relation before a package
		"pkg\n    provider\n",    // provider before a relation
		"pkg\n  no colon here\n", // not a relation
	} {
		if _, err := parseDepends([]byte(in)); err == nil {
			t.Errorf("parseDepends(%q) succeeded", in)
		}
	}
}

func TestParseRelease(t *testing.T) {
	r, err := parseRelease("6.1.0-56-cloud-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if r.Version != [3]int{6, 1, 0} || r.ABI != 56 || r.Flavour != FlavourCloud {
		t.Errorf("got %+v", r)
	}
	if r.abiName() != "6.1.0-56" || r.kbuildPackage() != "linux-kbuild-6.1" {
		t.Errorf("abiName %q kbuildPackage %q", r.abiName(), r.kbuildPackage())
	}
	g, err := parseRelease("6.1.0-9-amd64")
	if err != nil || g.Flavour != FlavourGeneric || g.ABI != 9 {
		t.Errorf("generic: %+v, %v", g, err)
	}
	if g.compare(r) >= 0 || r.compare(g) <= 0 {
		t.Errorf("6.1.0-9 must sort before 6.1.0-56 (numerically, not as text)")
	}
	n, err := parseRelease("6.12.107+deb12-cloud-amd64")
	if err != nil || n.Version != [3]int{6, 12, 107} || n.Deb != 12 || n.Flavour != FlavourCloud {
		t.Fatalf("6.12.107+deb12-cloud-amd64: %+v, %v", n, err)
	}
	if n.abiName() != "6.12.107+deb12" || n.kbuildPackage() != "linux-kbuild-6.12.107+deb12" {
		t.Errorf("6.12: abiName %q kbuildPackage %q", n.abiName(), n.kbuildPackage())
	}
	if m, _ := parseRelease("6.12.118+deb12-amd64"); m.Flavour != FlavourGeneric || n.compare(m) >= 0 || r.compare(n) >= 0 {
		t.Errorf("want 6.1.0-56 < 6.12.107+deb12 < 6.12.118+deb12 (%+v)", m)
	}
	for _, bad := range []string{"", "6.1.0", "6.1.0-56", "6.12.107+deb12", "6.12.107+debx-amd64", "6.12.107+deb12-rt-amd64", "6.12.107+deb12-cloud-amd64-unsigned", "6.1.0-56-rt-amd64", "6.1.0-56-cloud-amd64-dbg", "x.1.0-56-amd64", "../6.1.0-56-amd64"} {
		if _, err := parseRelease(bad); err == nil {
			t.Errorf("parseRelease(%q) succeeded", bad)
		}
	}
}

func TestReleaseFromImagePackage(t *testing.T) {
	for pkg, want := range map[string]string{
		"linux-image-6.1.0-56-cloud-amd64":     "6.1.0-56-cloud-amd64",
		"linux-image-6.1.0-56-amd64":           "6.1.0-56-amd64",
		"linux-image-6.1.0-56-amd64-unsigned":  "",
		"linux-image-6.1.0-56-cloud-amd64-dbg": "",
		"linux-image-6.1.0-56-rt-amd64":        "",
		"linux-image-cloud-amd64":              "",
		"linux-headers-6.1.0-56-cloud-amd64":   "",
	} {
		r, ok := releaseFromImagePackage(pkg)
		if ok != (want != "") || r.Name != want {
			t.Errorf("releaseFromImagePackage(%q) = %q, %v; want %q", pkg, r.Name, ok, want)
		}
	}
}

func TestSortReleaseNames(t *testing.T) {
	names := []string{"6.1.0-56-amd64", "6.1.0-9-amd64", "6.1.0-48-amd64", "5.10.0-30-amd64"}
	sortReleaseNames(names)
	want := []string{"5.10.0-30-amd64", "6.1.0-9-amd64", "6.1.0-48-amd64", "6.1.0-56-amd64"}
	if !slices.Equal(names, want) {
		t.Errorf("got %q, want %q", names, want)
	}
}

func TestNormFlavour(t *testing.T) {
	if f, err := normFlavour(""); f != FlavourCloud || err != nil {
		t.Errorf("default flavour = %q, %v", f, err)
	}
	if metaPackage(FlavourGeneric) != "linux-image-amd64" || metaPackage(FlavourCloud) != "linux-image-cloud-amd64" {
		t.Error("wrong meta packages")
	}
	if _, err := normFlavour("rt"); err == nil {
		t.Error("flavour rt accepted")
	}
}

func TestAptErrorClassification(t *testing.T) {
	unreachable := string(readTestdata(t, "download-unreachable.stderr"))
	if !isNetworkError(unreachable) {
		t.Error("download-unreachable.stderr: not classified as a network error")
	}
	if got := failedPackages(unreachable); !slices.Equal(got, []string{"busybox-static"}) {
		t.Errorf("failedPackages = %q", got)
	}
	if !isNetworkError(string(readTestdata(t, "update-unreachable.stderr"))) {
		t.Error("update-unreachable.stderr: not classified as a network error")
	}
	unknown := string(readTestdata(t, "download-unknown.stderr"))
	if isNetworkError(unknown) {
		t.Error("download-unknown.stderr classified as a network error")
	}
	if got := failedPackages(unknown); !slices.Equal(got, []string{"linux-image-9.9.9-cloud-amd64"}) {
		t.Errorf("failedPackages = %q", got)
	}
	stale := "E: Failed to fetch http://deb.debian.org/debian-security/pool/updates/main/l/linux/linux-kbuild-6.1_6.1.190-1_amd64.deb  404  Not Found [IP: 151.101.2.132 80]\n"
	if !isNotFound(stale) || isNetworkError(stale) {
		t.Error("a 404 is not classified as stale lists")
	}
	if got := failedPackages(stale); !slices.Equal(got, []string{"linux-kbuild-6.1"}) {
		t.Errorf("failedPackages = %q", got)
	}
}

func TestRewriteIncludes(t *testing.T) {
	got, err := rewriteIncludes(readTestdata(t, "headers-Makefile.txt"), "/usr/src/linux-headers-6.1.0-56-cloud-amd64")
	if err != nil {
		t.Fatal(err)
	}
	want := "include $(dir $(realpath $(lastword $(MAKEFILE_LIST))))../linux-headers-6.1.0-56-common/Makefile\n"
	if string(got) != want {
		t.Errorf("got %q\nwant %q", got, want)
	}
	// Anything but an absolute include is kept as it is.
	keep := "# comment\ninclude $(srctree)/Makefile\ninclude relative.mk\nall:\n\t@true\n"
	if got, _ := rewriteIncludes([]byte(keep), "/usr/src/x"); string(got) != keep {
		t.Errorf("got %q, want it unchanged", got)
	}
}

func TestRelinkAbsolute(t *testing.T) {
	root := t.TempDir()
	hdr := filepath.Join(root, "usr", "src", "linux-headers-6.1.0-56-cloud-amd64")
	mods := filepath.Join(root, "lib", "modules", "6.1.0-56-cloud-amd64")
	for _, d := range []string{hdr, mods} {
		if err := os.MkdirAll(d, 0o755); err != nil {
			t.Fatal(err)
		}
	}
	links := map[string]string{
		filepath.Join(mods, "build"):  "/usr/src/linux-headers-6.1.0-56-cloud-amd64",
		filepath.Join(mods, "source"): "/usr/src/linux-headers-6.1.0-56-common", // not in the tree
		filepath.Join(root, "rel"):    "usr/src",
	}
	for link, target := range links {
		if err := os.Symlink(target, link); err != nil {
			t.Fatal(err)
		}
	}
	if err := relinkAbsolute(root); err != nil {
		t.Fatal(err)
	}
	for link, want := range map[string]string{
		filepath.Join(mods, "build"):  "../../../usr/src/linux-headers-6.1.0-56-cloud-amd64",
		filepath.Join(mods, "source"): "/usr/src/linux-headers-6.1.0-56-common",
		filepath.Join(root, "rel"):    "usr/src",
	} {
		if got, _ := os.Readlink(link); got != want {
			t.Errorf("%s -> %q, want %q", link, got, want)
		}
	}
	if fi, err := os.Stat(filepath.Join(mods, "build")); err != nil || !fi.IsDir() {
		t.Errorf("build does not resolve to the headers: %v", err)
	}
}

func TestCompilerFromVariables(t *testing.T) {
	if got := compilerFromVariables(readTestdata(t, "kernelvariables.txt")); got != "gcc-12" {
		t.Errorf("6.1: got %q, want gcc-12", got)
	}
	// 6.12's headers set CROSS_COMPILE unconditionally.
	if got := compilerFromVariables(readTestdata(t, "kernelvariables-6.12.txt")); got != "x86_64-linux-gnu-gcc-12" {
		t.Errorf("6.12: got %q, want x86_64-linux-gnu-gcc-12", got)
	}
}

// fakeRelease makes a cache directory for rel that Open accepts: empty files
// where the real ones would be, and the marker unless marked is false.
func fakeRelease(t *testing.T, cacheDir, rel string, marked bool) *Image {
	t.Helper()
	im := imageAt(filepath.Join(cacheDir, rel), rel)
	for _, p := range []string{im.Kernel, im.Config, im.Busybox,
		filepath.Join(im.ModulesDir, "modules.order"),
		filepath.Join(im.BuildDir, "Makefile"),
		filepath.Join(im.BuildDir, ".config"),
		filepath.Join(im.BuildDir, "scripts", "mod", "modpost"),
	} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, nil, 0o644); err != nil {
			t.Fatal(err)
		}
	}
	if marked {
		if err := writeMarker(im.Dir, rel, nil); err != nil {
			t.Fatal(err)
		}
	}
	return im
}

func TestOpenCompleteness(t *testing.T) {
	cache := t.TempDir()
	want := fakeRelease(t, cache, "6.1.0-56-cloud-amd64", true)
	im, err := Open(cache, "6.1.0-56-cloud-amd64")
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(im, want) {
		t.Errorf("got %+v, want %+v", im, want)
	}
	if _, err := Open(cache, "6.1.0-57-cloud-amd64"); !errors.Is(err, ErrNotCached) {
		t.Errorf("absent release: %v, want ErrNotCached", err)
	}

	fakeRelease(t, cache, "6.1.0-55-cloud-amd64", false)
	if _, err := Open(cache, "6.1.0-55-cloud-amd64"); !errors.Is(err, ErrNotCached) {
		t.Errorf("no marker: %v, want ErrNotCached", err)
	}

	os.Remove(want.Busybox)
	if _, err := Open(cache, want.Release); !errors.Is(err, ErrNotCached) || !strings.Contains(err.Error(), "busybox") {
		t.Errorf("busybox missing: %v, want ErrNotCached naming busybox", err)
	}

	old := fakeRelease(t, cache, "6.1.0-54-cloud-amd64", true)
	os.WriteFile(filepath.Join(old.Dir, markerFile), []byte(`{"format":0,"release":"6.1.0-54-cloud-amd64"}`), 0o644)
	if _, err := Open(cache, old.Release); !errors.Is(err, ErrNotCached) {
		t.Errorf("old cache format: %v, want ErrNotCached", err)
	}

	if _, err := Open(cache, "../etc"); err == nil || errors.Is(err, ErrNotCached) {
		t.Errorf("bad release name: %v, want a naming error", err)
	}
}

func TestCachedReleases(t *testing.T) {
	cache := t.TempDir()
	fakeRelease(t, cache, "6.1.0-9-cloud-amd64", true)
	fakeRelease(t, cache, "6.1.0-56-cloud-amd64", true)
	fakeRelease(t, cache, "6.1.0-60-cloud-amd64", false) // unfinished
	fakeRelease(t, cache, "6.1.0-70-amd64", true)        // other flavour
	fakeRelease(t, cache, "6.12.118+deb12-cloud-amd64", true)
	fakeRelease(t, cache, "6.12.99+deb12-cloud-amd64", true)
	var got []string
	for _, r := range cachedReleases(cache, line{FlavourCloud, DefaultSeries}) {
		got = append(got, r.Name)
	}
	if want := []string{"6.1.0-56-cloud-amd64", "6.1.0-9-cloud-amd64"}; !slices.Equal(got, want) {
		t.Errorf("6.1 cloud: got %q, want %q (another series is not a fallback)", got, want)
	}
	got = nil
	for _, r := range cachedReleases(cache, line{FlavourCloud, "6.12"}) {
		got = append(got, r.Name)
	}
	if want := []string{"6.12.118+deb12-cloud-amd64", "6.12.99+deb12-cloud-amd64"}; !slices.Equal(got, want) {
		t.Errorf("6.12 cloud: got %q, want %q", got, want)
	}
	list, err := List(cache)
	if err != nil {
		t.Fatal(err)
	}
	got = nil
	for _, c := range list {
		got = append(got, c.Series+" "+c.Release)
	}
	want := []string{"6.1 6.1.0-70-amd64", "6.1 6.1.0-56-cloud-amd64", "6.1 6.1.0-9-cloud-amd64",
		"6.12 6.12.118+deb12-cloud-amd64", "6.12 6.12.99+deb12-cloud-amd64"}
	if !slices.Equal(got, want) {
		t.Errorf("List: %q, want %q", got, want)
	}
}

// Without apt and without a pinned release, Fetch falls back to the newest
// cached release and says so.
func TestFetchFallsBackWithoutApt(t *testing.T) {
	t.Setenv("PATH", t.TempDir())
	cache := t.TempDir()
	fakeRelease(t, cache, "6.1.0-9-cloud-amd64", true)
	fakeRelease(t, cache, "6.1.0-56-cloud-amd64", true)
	var out bytes.Buffer
	im, err := Fetch(context.Background(), Options{CacheDir: cache, Progress: &out})
	if err != nil {
		t.Fatal(err)
	}
	if im.Release != "6.1.0-56-cloud-amd64" {
		t.Errorf("fell back to %s, want the newest", im.Release)
	}
	if !strings.Contains(out.String(), "using the newest cached 6.1 cloud kernel, 6.1.0-56-cloud-amd64") {
		t.Errorf("progress does not say so: %q", out.String())
	}

	// A series falls back within itself; with none of it cached, it fails.
	if _, err := Fetch(context.Background(), Options{CacheDir: cache, Release: "6.12"}); !errors.Is(err, ErrNoApt) {
		t.Errorf("6.12, none cached: %v, want ErrNoApt", err)
	}
	fakeRelease(t, cache, "6.12.118+deb12-cloud-amd64", true)
	if im, err := Fetch(context.Background(), Options{CacheDir: cache, Release: "6.12"}); err != nil || im.Release != "6.12.118+deb12-cloud-amd64" {
		t.Errorf("6.12 fallback: %v, %v", im, err)
	}
	if im, err := Fetch(context.Background(), Options{CacheDir: cache}); err != nil || im.Release != "6.1.0-56-cloud-amd64" {
		t.Errorf("default with a newer 6.12 cached: %v, %v; want the 6.1", im, err)
	}

	// Pinned and cached: no apt needed either.
	if im, err := Fetch(context.Background(), Options{CacheDir: cache, Release: "6.1.0-9-cloud-amd64"}); err != nil || im.Release != "6.1.0-9-cloud-amd64" {
		t.Errorf("pinned: %v, %v", im, err)
	}

	// Nothing cached of the flavour: the error says apt is missing.
	if _, err := Fetch(context.Background(), Options{CacheDir: cache, Flavour: FlavourGeneric}); !errors.Is(err, ErrNoApt) {
		t.Errorf("generic, nothing cached: %v, want ErrNoApt", err)
	}
}

func TestFetchFlavourMismatch(t *testing.T) {
	_, err := Fetch(context.Background(), Options{CacheDir: t.TempDir(), Flavour: FlavourGeneric, Release: "6.1.0-56-cloud-amd64"})
	if err == nil || !strings.Contains(err.Error(), "flavour") {
		t.Errorf("got %v, want a flavour mismatch error", err)
	}
}

// The current release is remembered with a stamp of the apt lists: while
// they do not change, Fetch runs no apt command; when they do, it asks apt.
func TestCurrentMemo(t *testing.T) {
	lists := t.TempDir()
	defer func(old string) { aptListsDir = old }(aptListsDir)
	aptListsDir = lists
	os.WriteFile(filepath.Join(lists, "x_Packages"), []byte("a"), 0o644)
	t.Setenv("PATH", t.TempDir())
	cache := t.TempDir()
	fakeRelease(t, cache, "6.1.0-9-cloud-amd64", true)
	fakeRelease(t, cache, "6.1.0-56-cloud-amd64", true)

	memoizeCurrent(cache, FlavourCloud, "6.1.0-9-cloud-amd64", listsStamp())
	var out bytes.Buffer
	im, err := Fetch(context.Background(), Options{CacheDir: cache, Progress: &out})
	if err != nil || im.Release != "6.1.0-9-cloud-amd64" || out.Len() != 0 {
		t.Errorf("memoized: %v, %v, progress %q", im, err, out.String())
	}

	os.WriteFile(filepath.Join(lists, "x_Packages"), []byte("ab"), 0o644) // apt-get update
	im, err = Fetch(context.Background(), Options{CacheDir: cache, Progress: &out})
	if err != nil || im.Release != "6.1.0-56-cloud-amd64" || !strings.Contains(out.String(), "apt-get not found") {
		t.Errorf("lists changed: %v, %v, progress %q", im, err, out.String())
	}
}

func TestProgressLines(t *testing.T) {
	var out bytes.Buffer
	p := &progress{w: &out}
	stdout, stderr := p.lines(), p.lines()
	stdout.Write([]byte("Get:1 half"))
	stderr.Write([]byte("W: a warning\n"))
	stdout.Write([]byte(" a line\nlast"))
	stdout.flush()
	if want := "W: a warning\nGet:1 half a line\nlast\n"; out.String() != want {
		t.Errorf("got %q, want %q", out.String(), want)
	}
	(&progress{}).Printf("a nil writer drops %s", "this")
}

// Every release of one guest cache shares one kimage cache, and so does a
// caller that knows only the cache's root.
func TestKImageCacheIsOnePerGuestCache(t *testing.T) {
	root := t.TempDir()
	a, b := imageAt(filepath.Join(root, "6.1.0-57-cloud-amd64"), "6.1.0-57-cloud-amd64"), imageAt(filepath.Join(root, "6.12.118+deb12-cloud-amd64"), "6.12.118+deb12-cloud-amd64")
	want := filepath.Join(root, "kimage")
	if a.KImageCache() != want || b.KImageCache() != want || KImageCache(root) != want {
		t.Fatalf("kimage caches %s, %s, %s: want %s for all", a.KImageCache(), b.KImageCache(), KImageCache(root), want)
	}
	t.Setenv("LUCOS_CACHE", root)
	if KImageCache("") != want {
		t.Fatalf("KImageCache(\"\") = %s with LUCOS_CACHE=%s, want %s", KImageCache(""), root, want)
	}
}
