package main

import (
	"encoding/json"
	"fmt"
	"os"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/guest"
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
(--flavour generic: linux-image-amd64), its linux-headers, linux-kbuild and
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
	fetch.Flags().StringVar(&release, "release", "", "pin a kernel release, e.g. 6.1.0-56-cloud-amd64")
	fetch.Flags().BoolVar(&asJSON, "json", false, "print the image's paths as JSON")
	cmd.AddCommand(fetch)
	return cmd
}
