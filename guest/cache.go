package guest

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// A release's cache directory is the file tree of its unpacked packages
// (boot/, lib/modules/, usr/src/, usr/lib/linux-kbuild-*, bin/busybox) plus
// markerFile. It is assembled in a ".fetch-*" directory next to it and
// renamed into place whole, with the marker already inside: a directory
// without a valid marker is a fetch that did not finish and is redone.
const (
	markerFile  = ".lucos-complete"
	fetchPrefix = ".fetch-"
	lockFile    = ".lock"

	// cacheFormat changes whenever the tree lucos makes out of the packages
	// changes (for example the kbuild fix-ups), so older caches are redone.
	cacheFormat = 1
)

// marker is the content of markerFile.
type marker struct {
	Format   int      `json:"format"`
	Release  string   `json:"release"`
	Packages []string `json:"packages"` // the .deb files unpacked into the tree
}

// imageAt names the files of release rel in its cache directory dir,
// without looking at the disk.
func imageAt(dir, rel string) *Image {
	return &Image{
		Release:    rel,
		Dir:        dir,
		Kernel:     filepath.Join(dir, "boot", "vmlinuz-"+rel),
		Config:     filepath.Join(dir, "boot", "config-"+rel),
		ModulesDir: filepath.Join(dir, "lib", "modules", rel),
		BuildDir:   filepath.Join(dir, "usr", "src", "linux-headers-"+rel),
		Busybox:    filepath.Join(dir, "bin", "busybox"),
	}
}

// check reports the first file of im that is missing.
func (im *Image) check() error {
	for _, p := range []string{im.Kernel, im.Config, im.Busybox,
		filepath.Join(im.ModulesDir, "modules.order"),
		filepath.Join(im.BuildDir, "Makefile"),
		filepath.Join(im.BuildDir, ".config"),
		filepath.Join(im.BuildDir, "scripts", "mod", "modpost"),
	} {
		if _, err := os.Stat(p); err != nil {
			return err
		}
	}
	return nil
}

// readMarker checks the completion marker of a release directory.
func readMarker(dir, rel string) error {
	b, err := os.ReadFile(filepath.Join(dir, markerFile))
	if err != nil {
		return fmt.Errorf("no completion marker (an unfinished fetch?): %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return fmt.Errorf("completion marker %s: %w", filepath.Join(dir, markerFile), err)
	}
	if m.Format != cacheFormat {
		return fmt.Errorf("made by another lucos version (cache format %d, want %d)", m.Format, cacheFormat)
	}
	if m.Release != rel {
		return fmt.Errorf("completion marker names release %q", m.Release)
	}
	return nil
}

// writeMarker writes the completion marker into dir.
func writeMarker(dir, rel string, debs []string) error {
	b, err := json.MarshalIndent(marker{Format: cacheFormat, Release: rel, Packages: debs}, "", "\t")
	if err != nil {
		return err
	}
	return os.WriteFile(filepath.Join(dir, markerFile), append(b, '\n'), 0o644)
}

// cachedReleases lists the complete releases of flavour in cacheDir, newest
// first.
func cachedReleases(cacheDir string, ln line) []release {
	entries, err := os.ReadDir(cacheDir)
	if err != nil {
		return nil
	}
	var rels []release
	for _, e := range entries {
		r, err := parseRelease(e.Name())
		if err != nil || !e.IsDir() || !ln.has(r) {
			continue
		}
		if _, err := Open(cacheDir, r.Name); err == nil {
			rels = append(rels, r)
		}
	}
	slices.SortFunc(rels, func(a, b release) int { return b.compare(a) })
	return rels
}

// Cached is one complete release in the guest cache.
type Cached struct {
	Release string `json:"release"`
	Series  string `json:"series"` // "6.1", "6.12"
	Flavour string `json:"flavour"`
	Dir     string `json:"dir"`
	Bytes   int64  `json:"bytes"`  // on disk, the prepared source included
	Source  bool   `json:"source"` // its kernel source is prepared (lucos guest source)
}

// List returns the complete releases in cacheDir ("" for
// DefaultCacheDir()), newest first within each series, series in order.
func List(cacheDir string) ([]Cached, error) {
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	entries, err := os.ReadDir(cacheDir)
	if err != nil && !os.IsNotExist(err) {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	type cached struct {
		r  release
		im *Image
	}
	var rels []cached
	for _, e := range entries {
		if r, err := parseRelease(e.Name()); err == nil && e.IsDir() {
			if im, err := Open(cacheDir, r.Name); err == nil {
				rels = append(rels, cached{r, im})
			}
		}
	}
	slices.SortFunc(rels, func(a, b cached) int {
		if c := slices.Compare(a.r.Version[:2], b.r.Version[:2]); c != 0 {
			return c
		}
		if c := b.r.compare(a.r); c != 0 {
			return c
		}
		return strings.Compare(a.r.Name, b.r.Name)
	})
	var out []Cached
	for _, rc := range rels {
		r := rc.r
		c := Cached{Release: r.Name, Series: fmt.Sprintf("%d.%d", r.Version[0], r.Version[1]), Flavour: r.Flavour, Dir: rc.im.Dir}
		filepath.WalkDir(c.Dir, func(_ string, d fs.DirEntry, err error) error {
			if err == nil && d.Type().IsRegular() {
				if in, err := d.Info(); err == nil {
					c.Bytes += in.Size()
				}
			}
			return nil
		})
		_, serr := OpenSource(rc.im)
		c.Source = serr == nil
		out = append(out, c)
	}
	return out, nil
}

// removeStaleFetches deletes the work directories of fetches that died.
// Precondition: the cache lock is held, so no fetch is running.
func removeStaleFetches(cacheDir string) {
	entries, _ := os.ReadDir(cacheDir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), fetchPrefix) {
			os.RemoveAll(filepath.Join(cacheDir, e.Name()))
		}
	}
}

// lockCache takes the cache directory's lock, so that concurrent lucos
// processes (test binaries run in parallel) never fetch into it at once.
// It waits for the lock until ctx is done; the returned function releases it.
func lockCache(ctx context.Context, cacheDir string, p *progress) (func(), error) {
	unlock, err := flockWait(ctx, filepath.Join(cacheDir, lockFile), func() {
		p.Printf("guest: waiting for another lucos fetching into %s", cacheDir)
	})
	if err != nil && ctx.Err() == nil {
		return nil, fmt.Errorf("guest cache: %w", err)
	}
	return unlock, err
}

// debFiles lists the .deb files in dir, sorted.
func debFiles(dir string) ([]string, error) {
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	var debs []string
	for _, e := range entries {
		if !e.IsDir() && strings.HasSuffix(e.Name(), ".deb") {
			debs = append(debs, filepath.Join(dir, e.Name()))
		}
	}
	return debs, nil
}

// aptListsDir is where apt keeps the package lists that apt-cache reads.
var aptListsDir = "/var/lib/apt/lists"

// listsStamp summarises the apt package lists (names, sizes, mtimes), or ""
// when they cannot be read. Any apt-get update that changes them changes it.
func listsStamp() string {
	entries, err := os.ReadDir(aptListsDir)
	if err != nil {
		return ""
	}
	h := sha256.New()
	for _, e := range entries {
		fi, err := e.Info()
		if err != nil || !fi.Mode().IsRegular() || e.Name() == "lock" {
			continue
		}
		fmt.Fprintf(h, "%s %d %d\n", e.Name(), fi.Size(), fi.ModTime().UnixNano())
	}
	return hex.EncodeToString(h.Sum(nil))
}

// currentMemo records which release the flavour's meta package named when
// the apt lists had the stamp Lists. apt-cache takes about a second to read
// the lists (the package cache is off on many hosts), and a warm cache
// should cost nothing.
type currentMemo struct {
	Release string `json:"release"`
	Lists   string `json:"lists"`
}

func currentMemoPath(cacheDir, flavour string) string {
	return filepath.Join(cacheDir, "current-"+flavour+".json")
}

// memoizedCurrent returns the memoized current release of flavour if the
// lists have not changed since, or "".
func memoizedCurrent(cacheDir, flavour, stamp string) string {
	b, err := os.ReadFile(currentMemoPath(cacheDir, flavour))
	if err != nil || stamp == "" {
		return ""
	}
	var m currentMemo
	if json.Unmarshal(b, &m) != nil || m.Lists != stamp {
		return ""
	}
	return m.Release
}

// memoizeCurrent records the current release of flavour, best effort.
func memoizeCurrent(cacheDir, flavour, rel, stamp string) {
	if stamp == "" {
		return
	}
	b, _ := json.Marshal(currentMemo{Release: rel, Lists: stamp})
	tmp := currentMemoPath(cacheDir, flavour) + ".tmp"
	if os.WriteFile(tmp, b, 0o644) == nil {
		os.Rename(tmp, currentMemoPath(cacheDir, flavour))
	}
}
