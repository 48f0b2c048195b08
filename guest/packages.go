package guest

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
)

// packagesDir holds, under the cache directory, the trees of Debian packages
// other than the kernel's: the static libraries lucos links guest programs
// with (libsqlite3-dev for bench/workload).
const packagesDir = "packages"

// packagesMarker is the completion marker of a package tree.
type packagesMarker struct {
	Format   int      `json:"format"`
	Packages []string `json:"packages"` // what was asked for
	Debs     []string `json:"debs"`     // the .deb files unpacked (name_version_arch)
}

// FetchPackages returns a directory holding the Debian packages pkgs
// unpacked with `dpkg-deb -x` (usr/include/..., usr/lib/...), for building
// guest programs on the host; nothing is installed into the host. The tree
// is cacheDir/packages/<pkgs joined by "+"> (cacheDir "" =
// DefaultCacheDir()). The first call downloads with `apt-get download`
// (refreshing the package lists once if apt does not know a package); later
// calls run no apt command, so they work offline, and keep the versions
// first fetched. Progress lines go to out (nil = silent).
func FetchPackages(ctx context.Context, cacheDir string, pkgs []string, out io.Writer) (string, error) {
	if len(pkgs) == 0 {
		return "", errors.New("FetchPackages: no packages named")
	}
	for _, p := range pkgs {
		if p == "" || strings.ContainsAny(p, "/+ ") || strings.HasPrefix(p, ".") {
			return "", fmt.Errorf("FetchPackages: %q is not a Debian package name", p)
		}
	}
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	dest := filepath.Join(cacheDir, packagesDir, strings.Join(pkgs, "+"))
	if readPackagesMarker(dest, pkgs) == nil {
		return dest, nil
	}
	a := &apt{progress: &progress{w: out}}
	if err := os.MkdirAll(filepath.Join(cacheDir, packagesDir), 0o755); err != nil {
		return "", fmt.Errorf("guest cache: %w", err)
	}
	unlock, err := lockCache(ctx, cacheDir, a.progress)
	if err != nil {
		return "", err
	}
	defer unlock()
	if readPackagesMarker(dest, pkgs) == nil { // fetched while we waited
		return dest, nil
	}
	removeStaleFetches(cacheDir)

	work, err := os.MkdirTemp(cacheDir, fetchPrefix+"packages-")
	if err != nil {
		return "", fmt.Errorf("guest cache: %w", err)
	}
	defer os.RemoveAll(work)
	debDir, root := filepath.Join(work, "debs"), filepath.Join(work, "root")
	for _, d := range []string{debDir, root} {
		if err := os.Mkdir(d, 0o755); err != nil {
			return "", fmt.Errorf("guest cache: %w", err)
		}
	}
	a.progress.Printf("guest: downloading %s", strings.Join(pkgs, " "))
	err = a.download(ctx, debDir, pkgs)
	if errors.Is(err, errNotInLists) || errors.Is(err, errStaleLists) {
		if uerr := a.update(ctx); uerr != nil {
			return "", fmt.Errorf("%w (and the package lists could not be refreshed: %w)", err, uerr)
		}
		err = a.download(ctx, debDir, pkgs)
	}
	if err != nil {
		return "", err
	}
	debs, err := debFiles(debDir)
	if err != nil {
		return "", fmt.Errorf("guest cache: %w", err)
	}
	if len(debs) != len(pkgs) {
		return "", fmt.Errorf("download %s: apt-get download left %d .deb files, want %d", strings.Join(pkgs, " "), len(debs), len(pkgs))
	}
	m := packagesMarker{Format: cacheFormat, Packages: pkgs}
	for _, deb := range debs {
		a.progress.Printf("guest: unpacking %s", filepath.Base(deb))
		if err := a.unpack(ctx, deb, root); err != nil {
			return "", err
		}
		m.Debs = append(m.Debs, strings.TrimSuffix(filepath.Base(deb), ".deb"))
	}
	b, err := json.MarshalIndent(m, "", "\t")
	if err != nil {
		return "", err
	}
	if err := os.WriteFile(filepath.Join(root, markerFile), append(b, '\n'), 0o644); err != nil {
		return "", fmt.Errorf("guest cache: %w", err)
	}
	if err := os.RemoveAll(dest); err != nil { // an unfinished or outdated tree
		return "", fmt.Errorf("guest cache: %w", err)
	}
	if err := os.Rename(root, dest); err != nil {
		return "", fmt.Errorf("guest cache: %w", err)
	}
	a.progress.Printf("guest: %s cached in %s", strings.Join(m.Debs, " "), dest)
	return dest, nil
}

// readPackagesMarker checks that dir is a complete tree of pkgs.
func readPackagesMarker(dir string, pkgs []string) error {
	b, err := os.ReadFile(filepath.Join(dir, markerFile))
	if err != nil {
		return err
	}
	var m packagesMarker
	if err := json.Unmarshal(b, &m); err != nil {
		return err
	}
	if m.Format != cacheFormat || !slices.Equal(m.Packages, pkgs) {
		return fmt.Errorf("package tree %s was made for %q (format %d)", dir, m.Packages, m.Format)
	}
	return nil
}
