package workload

import (
	"bytes"
	"context"
	"debug/elf"
	_ "embed"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
)

//go:embed src/lucos-workload.c
var source []byte

// sqlitePackage ships SQLite's static library and header. Its version is
// the one first fetched into the cache (Debian bookworm: 3.40.1).
const sqlitePackage = "libsqlite3-dev"

// sqliteLib is the static library inside the unpacked package.
const sqliteLib = "usr/lib/x86_64-linux-gnu/libsqlite3.a"

// ErrNoToolchain: the host cannot build a static x86-64 program.
var ErrNoToolchain = errors.New("building lucos-workload needs gcc and a static libc (Debian's gcc and libc6-dev: `make deps`)")

// Build compiles lucos-workload for the guest (static, -O2) into dir and
// returns the host path of the binary. It fetches libsqlite3-dev into the
// cache (cacheDir, "" = guest.DefaultCacheDir()) first, once; progress
// lines go to progress (nil = silent).
func Build(ctx context.Context, cacheDir, dir string, progress io.Writer) (string, error) {
	if progress == nil {
		progress = io.Discard
	}
	gcc, err := exec.LookPath("gcc")
	if err != nil {
		return "", fmt.Errorf("%w: %v", ErrNoToolchain, err)
	}
	// gcc prints a library's name back unchanged when it has no such file.
	if out, err := exec.CommandContext(ctx, gcc, "-print-file-name=libc.a").Output(); err != nil || !filepath.IsAbs(strings.TrimSpace(string(out))) {
		return "", fmt.Errorf("%w: gcc finds no libc.a", ErrNoToolchain)
	}
	pkg, err := guest.FetchPackages(ctx, cacheDir, []string{sqlitePackage}, progress)
	if err != nil {
		return "", fmt.Errorf("build lucos-workload: fetch SQLite: %w", err)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", fmt.Errorf("build lucos-workload: %w", err)
	}
	src := filepath.Join(dir, "lucos-workload.c")
	bin := filepath.Join(dir, "lucos-workload")
	if err := os.WriteFile(src, source, 0o644); err != nil {
		return "", fmt.Errorf("build lucos-workload: %w", err)
	}
	fmt.Fprintf(progress, "workload: building %s (gcc -static, SQLite from %s)\n", bin, sqlitePackage)
	t0 := time.Now()
	// libsqlite3.a needs libm (its math SQL functions); its pthread and dl
	// calls are in glibc's libc.a since 2.34. Its load_extension code makes
	// ld warn that static dlopen needs glibc's shared libraries: harmless,
	// as lucos-workload never loads extensions.
	cmd := exec.CommandContext(ctx, gcc, "-static", "-O2", "-std=gnu11", "-Wall", "-Wextra",
		"-I", filepath.Join(pkg, "usr/include"),
		"-o", bin, src, filepath.Join(pkg, sqliteLib), "-lm")
	var stderr bytes.Buffer
	cmd.Stderr = &stderr
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return "", fmt.Errorf("build lucos-workload: `%s`: %w\n%s", strings.Join(cmd.Args, " "), err, strings.TrimSpace(stderr.String()))
	}
	if err := checkStatic(bin); err != nil {
		return "", fmt.Errorf("build lucos-workload: %w", err)
	}
	fmt.Fprintf(progress, "workload: built in %v\n", time.Since(t0).Round(time.Millisecond))
	return bin, nil
}

// checkStatic makes sure the guest, which has no libc, can run bin.
func checkStatic(bin string) error {
	f, err := elf.Open(bin)
	if err != nil {
		return err
	}
	defer f.Close()
	if f.Machine != elf.EM_X86_64 {
		return fmt.Errorf("%s is for %v, not x86-64", bin, f.Machine)
	}
	for _, p := range f.Progs {
		if p.Type == elf.PT_INTERP {
			return fmt.Errorf("%s is dynamically linked (the guest has no libc)", bin)
		}
	}
	return nil
}

// Extend returns an initramfs extension (launch.Options.Extend) that
// installs the lucos-workload binary bin at GuestPath. The workloads need
// nothing else: the guest's /tmp and /run are tmpfs and busybox provides
// /bin/true.
func Extend(bin string) func(*initramfs.Archive) error {
	return func(a *initramfs.Archive) error {
		if err := checkStatic(bin); err != nil {
			return fmt.Errorf("lucos-workload: %w", err)
		}
		return a.AddHostFile(GuestPath, bin, 0o755)
	}
}
