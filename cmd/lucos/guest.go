package main

import (
	"encoding/json"
	"fmt"
	"io"
	"os"
	"path/filepath"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/vmm"
)

func newGuestCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "guest",
		Short: "Manage the cached guest kernel images",
	}
	var flavour, release string
	var asJSON bool
	fetch := &cobra.Command{
		Use:   "fetch [--flavour cloud|generic] [--release REL] [--json]",
		Short: "Fetch the stock Debian kernel, its headers and busybox into the cache",
		Long: `Fetch the current Debian bookworm kernel behind linux-image-cloud-amd64
(--flavour generic: linux-image-amd64; --release 6.12: the current 6.12 for
bookworm, behind linux-image-6.12-cloud-amd64 in bookworm-security; or one
release by name), its linux-headers, linux-kbuild and
busybox-static with apt-get download, and unpack them into
~/.cache/lucos/<release>/ (LUCOS_CACHE overrides ~/.cache/lucos). Nothing is
installed into the host. The headers are made usable by kbuild in place.
A warm cache needs no network. "lucos run" does this on first use.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := guest.Fetch(cmd.Context(), guest.Options{Flavour: flavour, Release: release, Progress: os.Stderr})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(img)
			}
			fmt.Printf("release    %s\nkernel     %s\nheaders    %s\nbusybox    %s\ncache      %s\n", img.Release, img.Kernel, img.BuildDir, img.Busybox, img.Dir)
			return nil
		},
	}
	fetch.Flags().StringVar(&flavour, "flavour", "cloud", "kernel flavour: cloud or generic")
	fetch.Flags().StringVar(&release, "release", "", "a kernel release (6.1.0-57-cloud-amd64, 6.12.118+deb12-cloud-amd64) or a series (6.12: its current release); default: the current 6.1")
	fetch.Flags().BoolVar(&asJSON, "json", false, "print the image's paths as JSON")
	cmd.AddCommand(fetch, newGuestSourceCmd(), newGuestListCmd(), newGuestImageCmd())
	return cmd
}

func newGuestListCmd() *cobra.Command {
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "list [--json]",
		Short: "List the kernel releases in the guest cache",
		Long: `List every complete kernel release in ~/.cache/lucos (LUCOS_CACHE overrides
it): its series and flavour, its size on disk, and whether its kernel source is
prepared for patches built from diffs (lucos guest source). Releases are
grouped by series, newest first; any of them can be named with --release.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			list, err := guest.List("")
			if err != nil {
				return err
			}
			if asJSON {
				if list == nil {
					list = []guest.Cached{}
				}
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			if len(list) == 0 {
				fmt.Printf("no kernel in %s yet (lucos guest fetch fetches one)\n", guest.DefaultCacheDir())
				return nil
			}
			fmt.Printf("%-32s %-7s %-8s %9s  %s\n", "RELEASE", "SERIES", "FLAVOUR", "SIZE", "SOURCE")
			for _, c := range list {
				src := "-"
				if c.Source {
					src = "prepared"
				}
				fmt.Printf("%-32s %-7s %-8s %7.0f M  %s\n", c.Release, c.Series, c.Flavour, float64(c.Bytes)/(1<<20), src)
			}
			return nil
		},
	}
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the list as JSON")
	return cmd
}

func newGuestSourceCmd() *cobra.Command {
	var release string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "source [--release REL] [--json]",
		Short: "Fetch and prepare the guest kernel's own source, for patches built from diffs",
		Long: `Fetch Debian's linux-source-<x.y> package of the exact version the kernel
release was built from (the version of its linux-image package: 6.1.0-54 is
6.1.190-1), unpack it into ~/.cache/lucos/<release>/source and prepare it with
the release's own .config (make olddefconfig, which must reproduce that
.config exactly, then make modules_prepare), so that "lucos patch build
--diff" compiles single objects as Debian's build did. The host's compiler
must be the kernel's (the banner names it: gcc-12 on bookworm). About 140 MB
to download and 1.5 GB on disk, once per release; a prepared tree works
offline. Without --release: the default guest's release.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			img, err := guest.Fetch(cmd.Context(), guest.Options{Release: release, Progress: os.Stderr})
			if err != nil {
				return err
			}
			src, err := guest.Source(cmd.Context(), img, guest.SourceOptions{Progress: os.Stderr})
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(src)
			}
			fmt.Printf("release    %s\npackage    %s %s\ncompiler   %s\nsource     %s\n", src.Release, src.Package, src.Version, src.CC, src.Dir)
			return nil
		},
	}
	cmd.Flags().StringVar(&release, "release", "", "kernel release or series, e.g. 6.1.0-54-cloud-amd64 or 6.12 (default: the default guest's)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the tree as JSON")
	return cmd
}

func newGuestImageCmd() *cobra.Command {
	var flavour, release, out, size string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "image [--release REL] [--flavour cloud|generic] [-o disk.qcow2] [--size 3G] [--json]",
		Short: "Build a Debian 12 system disk (systemd, the stock kernel, GRUB) with no lucos parts in it",
		Long: `Build a whole Debian 12 system on a qcow2 disk, from Debian packages only:
mmdebstrap installs systemd, the stock linux-image-<release> package (as apt
installs it, initramfs included), qemu-guest-agent and GRUB; root is logged in
automatically on the serial console (ttyS0) and has no password, so it is for
tests, not for a network. Nothing of lucos is inside and the kernel command
line has no lucos parameter: it is the kind of VM "lucos attach" patches, and a
plain QEMU command line or libvirt boots it (docs/ATTACH.md).

The disk is cached in ~/.cache/lucos/disks (LUCOS_CACHE overrides ~/.cache/lucos)
and reused; -o copies it out. Building takes a few minutes and needs root,
mmdebstrap, mkfs.ext4 and qemu-img (make deps installs them).`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			n, err := vmm.ParseSize(size)
			if err != nil {
				return err
			}
			d, err := guest.BuildSystemDisk(cmd.Context(), guest.SystemDiskOptions{
				Options: guest.Options{Flavour: flavour, Release: release, Progress: os.Stderr}, Size: n})
			if err != nil {
				return err
			}
			if out != "" {
				if err := copyFile(d.Path, out); err != nil {
					return err
				}
				d.Path = out
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(d)
			}
			fmt.Printf("release    %s\ndisk       %s (qcow2, %d MiB)\nroot       LABEL=%s\n", d.Release, d.Path, d.Size>>20, d.Label)
			return nil
		},
	}
	cmd.Flags().StringVar(&flavour, "flavour", "cloud", "kernel flavour: cloud or generic")
	cmd.Flags().StringVar(&release, "release", "", "kernel release or series, e.g. 6.12 (default: the current 6.1)")
	cmd.Flags().StringVarP(&out, "output", "o", "", "copy the disk to this path (default: use it in the cache)")
	cmd.Flags().StringVar(&size, "size", "3G", "virtual size of the disk")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the disk as JSON")
	return cmd
}

// copyFile copies src to dst (a new file, written by rename).
func copyFile(src, dst string) error {
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	tmp, err := os.CreateTemp(filepath.Dir(dst), ".lucos-copy-*")
	if err != nil {
		return err
	}
	defer os.Remove(tmp.Name())
	if _, err := io.Copy(tmp, in); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return err
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return err
	}
	return os.Rename(tmp.Name(), dst)
}
