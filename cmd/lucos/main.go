// Command lucos live-updates the kernel of a running Linux VM from the host.
// This file wires the subcommands; each lives in a file of its own.
package main

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"os/signal"
	"syscall"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/api"
)

// exitCode is an error that carries a process exit status (lucos run -- CMD
// exits with CMD's status).
type exitCode int

func (e exitCode) Error() string { return fmt.Sprintf("exit status %d", int(e)) }

var verbose bool

func newRoot() *cobra.Command {
	root := &cobra.Command{
		Use:   "lucos",
		Short: "Live-update the kernel of a running Linux VM from the host",
		Long: `lucos runs Linux guests under QEMU and live-patches their kernels from the
host side: no agent, no livepatch support and no reboot in the guest.

Start with "lucos demo", or "lucos run -- uname -a" to boot the default guest
(the stock Debian bookworm cloud kernel) and run a command in it.`,
		SilenceUsage:  true,
		SilenceErrors: true,
	}
	root.PersistentFlags().BoolVarP(&verbose, "verbose", "v", false, "log each step (to stderr)")
	root.AddCommand(newRunCmd(), newAttachCmd(), newDetachCmd(), newExecCmd(), newStatusCmd(), newPsCmd(), newSymCmd(), newPatchCmd(), newGuestCmd(), newDemoCmd(), newBenchCmd())
	return root
}

// apiClient is the client of the VM served on sock (the --api-sock flag).
func apiClient(sock string) (*api.Client, error) {
	if sock == "" {
		return nil, fmt.Errorf("--api-sock is required: the control socket of a running `lucos run`")
	}
	return api.NewClient(sock), nil
}

func logger() *slog.Logger {
	level := slog.LevelWarn
	if verbose {
		level = slog.LevelDebug
	}
	return slog.New(slog.NewTextHandler(os.Stderr, &slog.HandlerOptions{Level: level}))
}

func main() {
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM, syscall.SIGHUP)
	err := newRoot().ExecuteContext(ctx)
	stop()
	var code exitCode
	switch {
	case err == nil:
	case errors.As(err, &code):
		os.Exit(int(code))
	case errors.Is(err, context.Canceled):
		fmt.Fprintln(os.Stderr, "lucos: interrupted")
		os.Exit(130)
	default:
		fmt.Fprintln(os.Stderr, "lucos:", err)
		os.Exit(1)
	}
}
