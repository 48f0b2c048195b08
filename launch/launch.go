// Package launch composes the default lucos guest: it fetches the stock
// Debian kernel (package guest), builds the initramfs with the control
// channel and any extra files (package initramfs), attaches the release's
// modules disk (guest.ModulesDisk) and mounts it in the guest so that
// modprobe loads any stock module, and starts the VM (package vmm). `lucos run`, `lucos demo` and the integration tests all
// boot guests through it.
package launch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/vmm"
)

// Options selects the guest. Zero values mean the default guest.
type Options struct {
	Image guest.Options
	// Kernel and Initrd replace the fetched kernel and the built initramfs.
	// A custom initrd has no lucos control channel, so Exec is unavailable,
	// and no modules disk.
	Kernel, Initrd string
	// Extend adds files to the default initramfs (workloads, test modules).
	Extend func(*initramfs.Archive) error
	VM     vmm.Config
}

// Guest resolves the kernel, initramfs and disks of opts without starting
// anything: it fetches the image if needed, writes the initramfs next to it
// and builds the modules disk there the first time (see modules.go). The
// result is opts.VM with Kernel, Initrd, Control and Disks set.
func Guest(ctx context.Context, opts Options) (vmm.Config, error) {
	cfg := opts.VM
	cfg.Kernel, cfg.Initrd = opts.Kernel, opts.Initrd
	if cfg.Kernel != "" && cfg.Initrd != "" {
		return cfg, nil
	}
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return cfg, err
	}
	if cfg.Kernel == "" {
		cfg.Kernel = img.Kernel
	}
	if cfg.Initrd != "" {
		return cfg, nil
	}
	disk, err := img.ModulesDisk(ctx)
	if err != nil {
		return cfg, err
	}
	extend, err := withModules(img, disk, opts.Extend)
	if err != nil {
		return cfg, err
	}
	if cfg.Initrd, err = buildInitramfs(img, extend); err != nil {
		return cfg, err
	}
	cfg.Control = true
	cfg.Disks = append(slices.Clip(cfg.Disks), vmm.Disk{Path: disk.Path, Serial: guest.ModulesLabel})
	return cfg, nil
}

// buildInitramfs writes the default initramfs into the image's cache
// directory, named by a hash of its bytes so concurrent VMs and repeated
// runs share one file and never see a half-written one.
func buildInitramfs(img *guest.Image, extend func(*initramfs.Archive) error) (string, error) {
	a, err := initramfs.Base(img.Busybox)
	if err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if extend != nil {
		if err := extend(a); err != nil {
			return "", fmt.Errorf("initramfs: %w", err)
		}
	}
	h := sha256.New()
	if _, err := a.WriteTo(h); err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	path := filepath.Join(img.Dir, "initramfs-"+hex.EncodeToString(h.Sum(nil))[:16]+".cpio")
	defer pruneInitramfs(img.Dir)
	if _, err := os.Stat(path); err == nil {
		now := time.Now()
		os.Chtimes(path, now, now) // used: the newest, kept by pruneInitramfs
		return path, nil
	}
	tmp, err := os.CreateTemp(img.Dir, "initramfs-*.tmp")
	if err != nil {
		return "", fmt.Errorf("initramfs: %w", err)
	}
	defer os.Remove(tmp.Name())
	if _, err := a.WriteTo(tmp); err != nil {
		tmp.Close()
		return "", fmt.Errorf("initramfs: %w", err)
	}
	if err := tmp.Close(); err != nil {
		return "", err
	}
	return path, os.Rename(tmp.Name(), path)
}

// keepInitramfs is how many initramfs files an image's cache keeps: each
// different set of additions (a test's modules, a benchmark's workload) is
// a file of its own, and without a bound they pile up run after run.
const keepInitramfs = 16

// pruneInitramfs removes all but the keepInitramfs most recently used
// initramfs files of dir. A file that a starting VM was just handed is
// among the newest, so it stays until QEMU has read it.
func pruneInitramfs(dir string) {
	paths, _ := filepath.Glob(filepath.Join(dir, "initramfs-*.cpio"))
	if len(paths) <= keepInitramfs {
		return
	}
	used := map[string]time.Time{}
	for _, p := range paths {
		if fi, err := os.Stat(p); err == nil {
			used[p] = fi.ModTime()
		}
	}
	slices.SortFunc(paths, func(a, b string) int { return used[b].Compare(used[a]) })
	for _, p := range paths[keepInitramfs:] {
		os.Remove(p)
	}
}

// Start boots the guest of opts.
func Start(ctx context.Context, opts Options) (*vmm.Machine, error) {
	cfg, err := Guest(ctx, opts)
	if err != nil {
		return nil, err
	}
	return vmm.Start(ctx, cfg)
}
