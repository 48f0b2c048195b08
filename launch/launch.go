// Package launch composes the default lucos guest: it fetches the stock
// Debian kernel (package guest), builds the initramfs with the control
// channel and any extra files (package initramfs), and starts the VM
// (package vmm). `lucos run`, `lucos demo` and the integration tests all
// boot guests through it.
package launch

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/vmm"
)

// Options selects the guest. Zero values mean the default guest.
type Options struct {
	Image guest.Options
	// Kernel and Initrd replace the fetched kernel and the built initramfs.
	// A custom initrd has no lucos control channel, so Exec is unavailable.
	Kernel, Initrd string
	// Extend adds files to the default initramfs (workloads, test modules).
	Extend func(*initramfs.Archive) error
	VM     vmm.Config
}

// Guest resolves the kernel and initramfs of opts without starting anything:
// it fetches the image if needed and writes the initramfs next to it.
func Guest(ctx context.Context, opts Options) (kernel, initrd string, control bool, err error) {
	kernel, initrd = opts.Kernel, opts.Initrd
	if kernel != "" && initrd != "" {
		return kernel, initrd, false, nil
	}
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return "", "", false, err
	}
	if kernel == "" {
		kernel = img.Kernel
	}
	if initrd != "" {
		return kernel, initrd, false, nil
	}
	initrd, err = buildInitramfs(img, opts.Extend)
	return kernel, initrd, err == nil, err
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
	if _, err := os.Stat(path); err == nil {
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

// Start boots the guest of opts.
func Start(ctx context.Context, opts Options) (*vmm.Machine, error) {
	kernel, initrd, control, err := Guest(ctx, opts)
	if err != nil {
		return nil, err
	}
	cfg := opts.VM
	cfg.Kernel, cfg.Initrd, cfg.Control = kernel, initrd, control
	return vmm.Start(ctx, cfg)
}
