package guest

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// The guest kernel's own source, for building patches from source diffs
// (`lucos patch build --diff`). Debian's linux-source-<x.y> package of the
// exact version the image was built from is unpacked once per release into
// <release>/source/ and prepared with the release's own .config, so that
// single objects compile with the flags, compiler and generated headers
// Debian's build used:
//
//	apt-get download linux-source-6.1=<version>   (the image's .deb names the version)
//	dpkg-deb -x, tar -xJf                         (1.5 GB of source)
//	cp <headers>/.config; make olddefconfig       (must reproduce the .config exactly)
//	make modules_prepare                          (generated headers, objtool, modpost)
//
// As for the image, the tree is assembled in a work directory and renamed
// into place with its marker inside; an unfinished one is redone.
const (
	sourceDir        = "source"
	sourceMarkerFile = ".lucos-source-complete"
	sourceWorkPrefix = ".source-"
	sourceLockFile   = ".lock"
	// sourceFormat changes whenever the preparation steps change.
	sourceFormat = 1
)

// Errors callers branch on.
var (
	// ErrCompilerMismatch: the host's compiler is not the one the kernel
	// was built with, so objects built here would not match the guest's.
	ErrCompilerMismatch = errors.New("host compiler differs from the kernel's")
	// ErrConfigMismatch: make olddefconfig did not reproduce the release's
	// .config on this host (a missing tool changes what Kconfig detects).
	ErrConfigMismatch = errors.New("the kernel configuration cannot be reproduced on this host")
)

// SourceTree is a prepared kernel source tree of one release.
type SourceTree struct {
	Release string `json:"release"` // "6.1.0-54-cloud-amd64"
	Version string `json:"version"` // Debian source version "6.1.190-1"
	Package string `json:"package"` // "linux-source-6.1"
	Dir     string `json:"dir"`     // the tree: Makefile, .config, include/generated, ...
	CC      string `json:"cc"`      // the compiler kbuild runs ("gcc-12")
}

// sourceMarker is the content of sourceMarkerFile.
type sourceMarker struct {
	Format  int    `json:"format"`
	Release string `json:"release"`
	Version string `json:"version"`
	CC      string `json:"cc"`
}

// SourceOptions say which release's source to prepare.
type SourceOptions struct {
	CacheDir string
	Progress interface{ Write([]byte) (int, error) } // human progress lines; nil = silent
}

// MakeArgs are the variables every make in the tree gets: those of the
// headers' .kernelvariables (the compiler, the release).
func (t *SourceTree) MakeArgs() []string {
	// RUSTC names no program: Debian built its kernels without a Rust
	// toolchain (CONFIG_RUSTC_VERSION=0), and a rustc on the host's PATH
	// would change the configuration Kconfig derives (6.12's does).
	return []string{"ARCH=x86", "CC=" + t.CC, "KERNELRELEASE=" + t.Release, "RUSTC=lucos-no-rustc"}
}

// Lock takes the tree's lock: builds in the tree (make writes objects and
// .cmd files next to the sources) never run at once. It waits until ctx is
// done; the returned function releases it.
func (t *SourceTree) Lock(ctx context.Context) (func(), error) {
	return flockWait(ctx, filepath.Join(t.Dir, sourceLockFile), nil)
}

// OpenSource returns the prepared source tree of im's release, without
// touching apt; ErrNotCached if it was never prepared or is unfinished.
func OpenSource(im *Image) (*SourceTree, error) {
	dir := filepath.Join(im.Dir, sourceDir)
	b, err := os.ReadFile(filepath.Join(dir, sourceMarkerFile))
	if err != nil {
		return nil, fmt.Errorf("%w: the source of %s is not prepared (run: lucos guest source --release %s)", ErrNotCached, im.Release, im.Release)
	}
	var m sourceMarker
	if err := json.Unmarshal(b, &m); err != nil || m.Format != sourceFormat || m.Release != im.Release {
		return nil, fmt.Errorf("%w: the source tree in %s was prepared by another lucos version; it will be redone", ErrNotCached, dir)
	}
	return &SourceTree{Release: im.Release, Version: m.Version, Package: sourcePackage(m.Version), Dir: dir, CC: m.CC}, nil
}

// Source returns the prepared source tree of im's release, downloading and
// preparing it first if needed (a few minutes: 140 MB, 1.5 GB unpacked,
// make modules_prepare). It is idempotent and works offline once done.
func Source(ctx context.Context, im *Image, o SourceOptions) (*SourceTree, error) {
	if t, err := OpenSource(im); err == nil {
		return t, nil
	}
	p := &progress{w: o.Progress}
	cacheDir := o.CacheDir
	if cacheDir == "" {
		cacheDir = filepath.Dir(im.Dir)
	}
	unlock, err := lockCache(ctx, cacheDir, p)
	if err != nil {
		return nil, err
	}
	defer unlock()
	if t, err := OpenSource(im); err == nil { // prepared while we waited
		return t, nil
	}
	version, err := im.PackageVersion()
	if err != nil {
		return nil, err
	}
	cc, err := im.Compiler()
	if err != nil {
		return nil, err
	}
	if err := checkCompiler(im, cc); err != nil {
		return nil, err
	}
	if err := checkSourceTools(); err != nil {
		return nil, err
	}
	entries, _ := os.ReadDir(im.Dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), sourceWorkPrefix) {
			os.RemoveAll(filepath.Join(im.Dir, e.Name())) // a preparation that died
		}
	}
	work, err := os.MkdirTemp(im.Dir, sourceWorkPrefix)
	if err != nil {
		return nil, fmt.Errorf("guest source: %w", err)
	}
	defer os.RemoveAll(work)
	tree := filepath.Join(work, "tree")
	t := &SourceTree{Release: im.Release, Version: version, Package: sourcePackage(version), Dir: tree, CC: cc}
	a := &apt{progress: p}
	if err := t.fetch(ctx, a, work); err != nil {
		return nil, err
	}
	if err := t.prepare(ctx, p, im); err != nil {
		return nil, err
	}
	b, err := json.MarshalIndent(sourceMarker{Format: sourceFormat, Release: im.Release, Version: version, CC: cc}, "", "\t")
	if err != nil {
		return nil, err
	}
	if err := os.WriteFile(filepath.Join(tree, sourceMarkerFile), append(b, '\n'), 0o644); err != nil {
		return nil, fmt.Errorf("guest source: %w", err)
	}
	dest := filepath.Join(im.Dir, sourceDir)
	if err := os.RemoveAll(dest); err != nil {
		return nil, fmt.Errorf("guest source: %w", err)
	}
	if err := os.Rename(tree, dest); err != nil {
		return nil, fmt.Errorf("guest source: %w", err)
	}
	p.Printf("guest: source of %s (%s %s) prepared in %s", im.Release, t.Package, version, dest)
	return OpenSource(im)
}

// fetch downloads the source package into work and unpacks its tarball
// into t.Dir.
func (t *SourceTree) fetch(ctx context.Context, a *apt, work string) error {
	debDir := filepath.Join(work, "debs")
	if err := os.MkdirAll(debDir, 0o755); err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	pkg := t.Package + "=" + t.Version
	a.progress.Printf("guest: downloading %s (the source of %s)", pkg, t.Release)
	stop := watchDownload(ctx, a.progress, debDir, t.Package)
	err := a.download(ctx, debDir, []string{pkg})
	if errors.Is(err, errNotInLists) || errors.Is(err, errStaleLists) {
		if uerr := a.update(ctx); uerr == nil {
			err = a.download(ctx, debDir, []string{pkg})
		}
	}
	stop()
	if err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	debs, err := debFiles(debDir)
	if err != nil || len(debs) != 1 {
		return fmt.Errorf("guest source: apt-get download %s left %d .deb files (%v)", pkg, len(debs), err)
	}
	unpacked := filepath.Join(work, "deb")
	if err := a.unpack(ctx, debs[0], unpacked); err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	os.Remove(debs[0])
	tarballs, _ := filepath.Glob(filepath.Join(unpacked, "usr", "src", "linux-source-*.tar.xz"))
	if len(tarballs) != 1 {
		return fmt.Errorf("guest source: %s holds %d usr/src/linux-source-*.tar.xz, want 1", filepath.Base(debs[0]), len(tarballs))
	}
	if err := os.MkdirAll(t.Dir, 0o755); err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	a.progress.Printf("guest: unpacking %s (about 1.5 GB)", filepath.Base(tarballs[0]))
	if err := run(ctx, "", nil, "tar", "--strip-components=1", "-C", t.Dir, "-xJf", tarballs[0]); err != nil {
		return fmt.Errorf("guest source: unpack %s: %w", filepath.Base(tarballs[0]), err)
	}
	return os.RemoveAll(unpacked)
}

// prepare configures the tree with the release's .config and builds what
// single objects need (make modules_prepare).
func (t *SourceTree) prepare(ctx context.Context, p *progress, im *Image) error {
	want, err := os.ReadFile(filepath.Join(im.BuildDir, ".config"))
	if err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	if err := os.WriteFile(filepath.Join(t.Dir, ".config"), want, 0o644); err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	p.Printf("guest: configuring the source with the %s .config (make olddefconfig)", t.Release)
	if err := t.make(ctx, "olddefconfig"); err != nil {
		return err
	}
	got, err := os.ReadFile(filepath.Join(t.Dir, ".config"))
	if err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	if diff := configDiff(want, got); len(diff) > 0 {
		return fmt.Errorf("%w: make olddefconfig changed %s (is a tool such as pahole from dwarves, flex or bison missing? see the Makefile's deps): %s",
			ErrConfigMismatch, t.Release, strings.Join(diff, "; "))
	}
	p.Printf("guest: preparing the source for single-object builds (make modules_prepare, about a minute)")
	return t.make(ctx, "-j"+strconv.Itoa(runtime.NumCPU()), "modules_prepare")
}

// make runs make in the tree with t's variables and the given arguments.
func (t *SourceTree) make(ctx context.Context, args ...string) error {
	argv := append(append([]string{"-C", t.Dir, "-s"}, t.MakeArgs()...), args...)
	if err := run(ctx, "", []string{"LC_ALL=C"}, "make", argv...); err != nil {
		return fmt.Errorf("guest source: make %s: %w", strings.Join(args, " "), err)
	}
	return nil
}

// configDiff lists the option lines that differ between two .config files
// (comments aside; "# CONFIG_X is not set" counts as a value).
func configDiff(want, got []byte) []string {
	parse := func(b []byte) map[string]string {
		m := map[string]string{}
		for line := range strings.Lines(string(b)) {
			line = strings.TrimSpace(line)
			if name, ok := strings.CutPrefix(line, "# "); ok && strings.HasSuffix(name, " is not set") {
				m[strings.TrimSuffix(name, " is not set")] = "n"
			} else if k, v, ok := strings.Cut(line, "="); ok && !strings.HasPrefix(line, "#") {
				m[k] = v
			}
		}
		return m
	}
	w, g := parse(want), parse(got)
	var diff []string
	for k, v := range w {
		if g[k] != v {
			diff = append(diff, fmt.Sprintf("%s=%s became %q", k, v, g[k]))
		}
	}
	for k, v := range g {
		if _, ok := w[k]; !ok && v != "n" {
			diff = append(diff, fmt.Sprintf("new %s=%s", k, v))
		}
	}
	slices.Sort(diff)
	return diff
}

// PackageVersion is the Debian version of the image's linux-image package
// ("6.1.190-1"), which is also its source package's, from the .deb the
// cache was unpacked from.
func (im *Image) PackageVersion() (string, error) {
	b, err := os.ReadFile(filepath.Join(im.Dir, markerFile))
	if err != nil {
		return "", fmt.Errorf("guest source: %w", err)
	}
	var m marker
	if err := json.Unmarshal(b, &m); err != nil {
		return "", fmt.Errorf("guest source: %s: %w", markerFile, err)
	}
	prefix := imagePackage(im.Release) + "_"
	for _, deb := range m.Packages {
		if rest, ok := strings.CutPrefix(deb, prefix); ok {
			v, _, _ := strings.Cut(rest, "_")
			if u, err := url.PathUnescape(v); err == nil {
				v = u
			}
			return v, nil
		}
	}
	return "", fmt.Errorf("guest source: the cache of %s names no %s*.deb", im.Release, prefix)
}

var upstreamVersion = regexp.MustCompile(`^(\d+)\.(\d+)\.`)

// sourcePackage is Debian's source package of a kernel version:
// linux-source-6.1 for 6.1.190-1.
func sourcePackage(version string) string {
	m := upstreamVersion.FindStringSubmatch(version)
	if m == nil {
		return "linux-source"
	}
	return "linux-source-" + m[1] + "." + m[2]
}

// checkCompiler compares the host's cc with the compiler the kernel's
// .config records (CONFIG_CC_VERSION_TEXT, the banner's compiler).
func checkCompiler(im *Image, cc string) error {
	cfg, err := os.ReadFile(filepath.Join(im.BuildDir, ".config"))
	if err != nil {
		return fmt.Errorf("guest source: %w", err)
	}
	m := regexp.MustCompile(`(?m)^CONFIG_CC_VERSION_TEXT="(.*)"$`).FindSubmatch(cfg)
	if m == nil {
		return fmt.Errorf("guest source: %s/.config has no CONFIG_CC_VERSION_TEXT", im.BuildDir)
	}
	want := string(m[1])
	out, err := exec.Command(cc, "--version").Output()
	if err != nil {
		return fmt.Errorf("%w: %s was built with %q, and %s is not on PATH (apt-get install %s)", ErrCompilerMismatch, im.Release, want, cc, cc)
	}
	got, _, _ := strings.Cut(string(out), "\n")
	if got != want {
		return fmt.Errorf("%w: %s was built with %q, the host's %s is %q: objects built here would differ from the guest's", ErrCompilerMismatch, im.Release, want, cc, got)
	}
	return nil
}

// checkSourceTools names what make modules_prepare needs and the host
// lacks, with the packages to install.
func checkSourceTools() error {
	var missing []string
	for tool, pkg := range map[string]string{"make": "make", "tar": "tar", "xz": "xz-utils", "flex": "flex", "bison": "bison", "bc": "bc", "pahole": "dwarves", "patch": "patch"} {
		if _, err := exec.LookPath(tool); err != nil {
			missing = append(missing, pkg)
		}
	}
	for hdr, pkg := range map[string]string{"/usr/include/libelf.h": "libelf-dev", "/usr/include/openssl/ssl.h": "libssl-dev"} {
		if _, err := os.Stat(hdr); err != nil {
			missing = append(missing, pkg)
		}
	}
	if len(missing) > 0 {
		slices.Sort(missing)
		return fmt.Errorf("guest source: building kernel objects needs packages the host lacks: apt-get install %s", strings.Join(missing, " "))
	}
	return nil
}

// watchDownload prints how much of pkg's .deb has arrived in dir every 2 s
// until the returned function is called.
func watchDownload(ctx context.Context, p *progress, dir, pkg string) func() {
	done := make(chan struct{})
	go func() {
		tick := time.NewTicker(2 * time.Second)
		defer tick.Stop()
		for {
			select {
			case <-done:
				return
			case <-ctx.Done():
				return
			case <-tick.C:
			}
			var n int64
			files, _ := filepath.Glob(filepath.Join(dir, pkg+"*"))
			partial, _ := filepath.Glob(filepath.Join(dir, "partial", pkg+"*"))
			for _, f := range append(files, partial...) {
				if st, err := os.Stat(f); err == nil {
					n += st.Size()
				}
			}
			if n > 0 {
				p.Printf("guest: %s: %d MB downloaded", pkg, n>>20)
			}
		}
	}()
	return func() { close(done) }
}

// run runs a command and returns its last lines of output in the error.
func run(ctx context.Context, dir string, env []string, name string, args ...string) error {
	cmd := exec.CommandContext(ctx, name, args...)
	cmd.Dir = dir
	cmd.Env = append(os.Environ(), env...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("%s: %w\n%s", name, err, lastLines(out.String(), 15))
	}
	return nil
}

// flockWait takes an exclusive flock on path, waiting until ctx is done;
// onWait (if set) is called once when the lock is busy.
func flockWait(ctx context.Context, path string, onWait func()) (func(), error) {
	f, err := os.OpenFile(path, os.O_RDWR|os.O_CREATE, 0o644)
	if err != nil {
		return nil, fmt.Errorf("lock %s: %w", path, err)
	}
	for {
		err := syscall.Flock(int(f.Fd()), syscall.LOCK_EX|syscall.LOCK_NB)
		if err == nil {
			return func() { f.Close() }, nil
		}
		if !errors.Is(err, syscall.EWOULDBLOCK) {
			f.Close()
			return nil, fmt.Errorf("lock %s: %w", path, err)
		}
		if onWait != nil {
			onWait()
			onWait = nil
		}
		select {
		case <-ctx.Done():
			f.Close()
			return nil, ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}
