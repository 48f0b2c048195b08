// Package guest keeps the cache of guest kernel images: Debian bookworm's
// stock kernel (cloud or generic flavour), its modules, the headers and
// kbuild tools that patch modules are built against, and a static busybox
// for the initramfs. Packages are fetched with `apt-get download` (never
// installed into the host) and unpacked with `dpkg-deb -x` into one
// directory per kernel release, ~/.cache/lucos/<release>/ by default.
//
// It is the first step of the data path: vmm boots Image.Kernel, introspect
// parses it, patch builds run kbuild in Image.BuildDir, and the guest loads
// the release's stock modules from Image.ModulesDisk (modules.go indexes
// them as depmod would, modulesdisk.go makes the disk).
package guest

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"
)

// Errors callers branch on.
var (
	// ErrNoApt: the host has no apt-get/apt-cache (not Debian or Ubuntu).
	ErrNoApt = errors.New("apt-get not found: lucos fetches the guest kernel with Debian's apt")
	// ErrArchiveUnreachable: apt could not reach any mirror.
	ErrArchiveUnreachable = errors.New("cannot reach the Debian archive; with a warm cache pass --release or run offline")
	// ErrUnknownRelease: apt knows no kernel of that release.
	ErrUnknownRelease = errors.New("unknown kernel release")
	// ErrNotCached: the release is not (completely) in the cache.
	ErrNotCached = errors.New("kernel release not in the guest cache")
)

// busyboxPackage is the Debian package of the static busybox.
const busyboxPackage = "busybox-static"

// Options say which kernel to fetch and where to put it.
type Options struct {
	Flavour  string    // "cloud" (default: linux-image-cloud-amd64) or "generic" (linux-image-amd64)
	Release  string    // pin a kernel release such as "6.1.0-56-cloud-amd64", or a series ("6.12": its current release); empty = the current 6.1 one
	CacheDir string    // empty = DefaultCacheDir()
	Progress io.Writer // human progress lines (downloads, unpacking); nil = silent
}

// Image is one cached kernel release and the files built around it.
type Image struct {
	Release    string // "6.1.0-56-cloud-amd64"
	Dir        string // cache dir of this release
	Kernel     string // path of vmlinuz
	Config     string // path of the kernel .config
	ModulesDir string // unpacked /lib/modules/<release>
	BuildDir   string // kbuild-usable headers dir (what /lib/modules/<rel>/build would be)
	Busybox    string // path of a static busybox binary
}

// DefaultCacheDir is the root of the guest cache: $LUCOS_CACHE if set, else
// lucos/ in the user's cache directory ($XDG_CACHE_HOME or ~/.cache).
func DefaultCacheDir() string {
	if d := os.Getenv("LUCOS_CACHE"); d != "" {
		return d
	}
	if d, err := os.UserCacheDir(); err == nil {
		return filepath.Join(d, "lucos")
	}
	return filepath.Join(os.TempDir(), "lucos-cache")
}

// KImageCache is the directory of the one cache of decoded kernel images
// (kimage.Load) under the guest cache cacheDir ("" = DefaultCacheDir()).
// Its entries are keyed by the kernel file's sha256, so every release, and
// any --kernel, shares it.
func KImageCache(cacheDir string) string {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	return filepath.Join(cacheDir, "kimage")
}

// KImageCache is KImageCache of the guest cache that holds im.
func (im *Image) KImageCache() string { return KImageCache(filepath.Dir(im.Dir)) }

// Open returns the cached image of release, without touching apt. It fails
// with ErrNotCached when the release is absent or its fetch did not finish.
func Open(cacheDir, release string) (*Image, error) {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	if _, err := parseRelease(release); err != nil {
		return nil, err
	}
	dir := filepath.Join(cacheDir, release)
	if err := readMarker(dir, release); err != nil {
		return nil, fmt.Errorf("%w: %s in %s: %w", ErrNotCached, release, cacheDir, err)
	}
	im := imageAt(dir, release)
	if err := im.check(); err != nil {
		return nil, fmt.Errorf("%w: %s in %s is incomplete: %w", ErrNotCached, release, cacheDir, err)
	}
	return im, nil
}

// Fetch returns the image of the requested kernel, downloading and
// unpacking it first if the cache lacks it. It is idempotent. With a warm
// cache it downloads nothing and runs no apt command: with Release set it
// never does, and without it remembers which release the apt package lists
// named, asking the local `apt-cache depends` again only when the lists
// change. If apt or the archive cannot be reached and Release is empty, it
// falls back to the newest complete cached release of the flavour and says
// so on Progress.
func Fetch(ctx context.Context, o Options) (*Image, error) {
	flavour, err := normFlavour(o.Flavour)
	if err != nil {
		return nil, err
	}
	cacheDir := o.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	a := &apt{progress: &progress{w: o.Progress}}
	for {
		rel, im, err := resolve(ctx, a, o, flavour, cacheDir)
		if err != nil || im != nil {
			return im, err
		}
		im, err = fetchRelease(ctx, a, cacheDir, rel)
		if errors.Is(err, errStaleLists) && !a.updated {
			// The archive moved on since the last apt-get update: refresh
			// the lists and resolve again.
			if err := a.update(ctx); err != nil {
				return nil, err
			}
			continue
		}
		if ln, current := lineOf(o, flavour); current {
			if err == nil {
				memoizeCurrent(cacheDir, ln.key(), rel.Name, listsStamp())
			}
			if errors.Is(err, ErrArchiveUnreachable) {
				// Offline, with lists newer than the cache.
				return fallBack(a, cacheDir, ln, err)
			}
		}
		return im, err
	}
}

// lineOf is the line o asks for the current release of, and whether it
// asks for one (no Release, or a series) rather than a pinned release.
func lineOf(o Options, flavour string) (line, bool) {
	switch {
	case o.Release == "":
		return line{flavour, DefaultSeries}, true
	case IsSeries(o.Release):
		return line{flavour, o.Release}, true
	}
	return line{}, false
}

// fallBack returns the newest cached release of ln when apt or the archive
// cannot be reached (err), saying so on progress; with none cached it
// returns err.
func fallBack(a *apt, cacheDir string, ln line, err error) (*Image, error) {
	cached := cachedReleases(cacheDir, ln)
	if len(cached) == 0 {
		return nil, err
	}
	a.progress.Printf("guest: %v", err)
	a.progress.Printf("guest: using the newest cached %s kernel, %s", ln, cached[0].Name)
	return Open(cacheDir, cached[0].Name)
}

// resolve names the release Fetch wants and returns its image too when the
// cache has it complete.
func resolve(ctx context.Context, a *apt, o Options, flavour, cacheDir string) (release, *Image, error) {
	ln, current := lineOf(o, flavour)
	if !current {
		rel, err := parseRelease(o.Release)
		if err != nil {
			return release{}, nil, err
		}
		if o.Flavour != "" && rel.Flavour != flavour {
			return release{}, nil, fmt.Errorf("kernel release %s is of flavour %s, not %s", rel.Name, rel.Flavour, flavour)
		}
		im, _ := Open(cacheDir, rel.Name)
		return rel, im, nil
	}
	if name := memoizedCurrent(cacheDir, ln.key(), listsStamp()); name != "" {
		if rel, err := parseRelease(name); err == nil && ln.has(rel) {
			im, _ := Open(cacheDir, rel.Name)
			return rel, im, nil
		}
	}
	rel, err := currentRelease(ctx, a, ln)
	if errors.Is(err, ErrNoApt) || errors.Is(err, ErrArchiveUnreachable) {
		im, err := fallBack(a, cacheDir, ln, err)
		return release{}, im, err
	}
	if err != nil {
		return release{}, nil, err
	}
	im, _ := Open(cacheDir, rel.Name)
	if im != nil {
		memoizeCurrent(cacheDir, ln.key(), rel.Name, listsStamp())
	}
	return rel, im, nil
}

// currentRelease asks apt which release the line's meta package depends
// on, refreshing the package lists once if apt does not know the package.
func currentRelease(ctx context.Context, a *apt, ln line) (release, error) {
	meta := ln.meta()
	deps, err := a.depends(ctx, meta)
	if errors.Is(err, errNotInLists) {
		if err := a.update(ctx); err != nil {
			return release{}, fmt.Errorf("find the current %s kernel: %w", ln, err)
		}
		deps, err = a.depends(ctx, meta)
		if errors.Is(err, errNotInLists) {
			return release{}, fmt.Errorf("find the current %s kernel: apt knows no package %s even after apt-get update; is Debian bookworm (and, for a series other than %s, bookworm-security) in the apt sources?", ln, meta, DefaultSeries)
		}
	}
	if err != nil {
		return release{}, fmt.Errorf("find the current %s kernel: %w", ln, err)
	}
	name := dependsOn(deps, func(pkg string) bool {
		r, ok := releaseFromImagePackage(pkg)
		return ok && ln.has(r)
	})
	if name == "" {
		return release{}, fmt.Errorf("find the current %s kernel: %s depends on no linux-image-<release> package of that series", ln, meta)
	}
	r, _ := releaseFromImagePackage(name)
	return r, nil
}

// packagesOf names the packages whose contents make up rel's cache
// directory, taking the headers' common package and the kbuild package from
// the headers' dependencies.
func packagesOf(ctx context.Context, a *apt, rel release) ([]string, error) {
	headers := headersPackage(rel.Name)
	deps, err := a.depends(ctx, headers)
	var updateErr error
	if errors.Is(err, errNotInLists) && !a.updated {
		// The release may be newer than the package lists.
		if updateErr = a.update(ctx); updateErr == nil {
			deps, err = a.depends(ctx, headers)
		}
	}
	if errors.Is(err, errNotInLists) {
		err = fmt.Errorf("%w %s: apt knows no package %s; known %s releases: %s",
			ErrUnknownRelease, rel.Name, headers, rel.Flavour, knownReleases(ctx, a, rel.Flavour))
		if updateErr != nil {
			err = fmt.Errorf("%w (and the package lists could not be refreshed: %w)", err, updateErr)
		}
		return nil, err
	}
	if err != nil {
		return nil, err
	}
	common := dependsOn(deps, func(pkg string) bool {
		return strings.HasPrefix(pkg, "linux-headers-") && strings.HasSuffix(pkg, "-common")
	})
	kbuild := dependsOn(deps, func(pkg string) bool { return strings.HasPrefix(pkg, "linux-kbuild-") })
	if common == "" || kbuild == "" {
		return nil, fmt.Errorf("%s: cannot find its -common headers and linux-kbuild packages in `apt-cache depends %s`", headers, headers)
	}
	return []string{imagePackage(rel.Name), headers, common, kbuild, busyboxPackage}, nil
}

// knownReleases lists the releases of flavour that apt can download, for an
// error message.
func knownReleases(ctx context.Context, a *apt, flavour string) string {
	out, _, err := a.command(ctx, "", false, "apt-cache", "pkgnames", "linux-image-")
	if err != nil {
		return "(unknown: " + err.Error() + ")"
	}
	var rels []release
	for _, pkg := range strings.Fields(string(out)) {
		if r, ok := releaseFromImagePackage(pkg); ok && r.Flavour == flavour {
			rels = append(rels, r)
		}
	}
	if len(rels) == 0 {
		return "none"
	}
	var names []string
	for _, r := range rels {
		names = append(names, r.Name)
	}
	sortReleaseNames(names)
	return strings.Join(names, ", ")
}

// fetchRelease downloads and unpacks rel into cacheDir/<rel> under the cache
// lock. Precondition: the release's directory is not a complete image.
func fetchRelease(ctx context.Context, a *apt, cacheDir string, rel release) (*Image, error) {
	if err := os.MkdirAll(cacheDir, 0o755); err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	unlock, err := lockCache(ctx, cacheDir, a.progress)
	if err != nil {
		return nil, err
	}
	defer unlock()
	// Another process may have fetched it while we waited for the lock.
	if im, err := Open(cacheDir, rel.Name); err == nil {
		return im, nil
	}
	removeStaleFetches(cacheDir)

	pkgs, err := packagesOf(ctx, a, rel)
	if err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(cacheDir, fetchPrefix+rel.Name+"-")
	if err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	defer os.RemoveAll(work)
	debDir, root := filepath.Join(work, "debs"), filepath.Join(work, "root")
	for _, d := range []string{debDir, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return nil, fmt.Errorf("guest cache: %w", err)
		}
	}

	a.progress.Printf("guest: downloading %s", strings.Join(pkgs, " "))
	if err := a.download(ctx, debDir, pkgs); err != nil {
		return nil, err
	}
	debs, err := debFiles(debDir)
	if err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	if len(debs) != len(pkgs) {
		return nil, fmt.Errorf("download %s: apt-get download left %d .deb files, want %d", strings.Join(pkgs, " "), len(debs), len(pkgs))
	}
	var names []string
	for _, deb := range debs {
		a.progress.Printf("guest: unpacking %s", filepath.Base(deb))
		if err := a.unpack(ctx, deb, root); err != nil {
			return nil, err
		}
		names = append(names, filepath.Base(deb))
	}
	if err := fixKbuild(root, rel.Name); err != nil {
		return nil, err
	}
	if err := imageAt(root, rel.Name).check(); err != nil {
		return nil, fmt.Errorf("packages %s unpacked, but: %w", strings.Join(pkgs, " "), err)
	}
	if err := writeMarker(root, rel.Name, names); err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	dest := filepath.Join(cacheDir, rel.Name)
	if err := os.RemoveAll(dest); err != nil { // an unfinished or outdated tree
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	if err := os.Rename(root, dest); err != nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	a.progress.Printf("guest: kernel %s cached in %s", rel.Name, dest)
	return Open(cacheDir, rel.Name)
}
