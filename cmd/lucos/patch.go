package main

import (
	"encoding/json"
	"fmt"
	"maps"
	"os"
	"slices"
	"strings"
	"text/tabwriter"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/api"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/build"
)

func newPatchCmd() *cobra.Command {
	cmd := &cobra.Command{
		Use:   "patch",
		Short: "Build, apply, list and roll back live patches of a running guest kernel",
		Long: `A lucos patch is C in the form of a Linux kernel module (see
docs/PATCH-FORMAT.md and examples/patches/). "lucos patch build" compiles it
against the guest kernel's headers; "lucos patch apply" loads it into the
running guest from the host and redirects the old functions in one pause of
all vCPUs; the update commits once no thread is inside an old function.`,
	}
	cmd.AddCommand(newPatchBuildCmd(), newPatchApplyCmd(), newPatchRollbackCmd(), newPatchListCmd())
	return cmd
}

func newPatchBuildCmd() *cobra.Command {
	var o build.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "build DIR [-o FILE] [--release REL]",
		Short: "Compile a patch directory into a patch module (.ko) with kbuild",
		Long: `Compile the .c files of DIR into one patch module against the cached headers
of the guest kernel (default: the default guest's release; fetched if
needed). References to non-exported and static kernel symbols are allowed:
lucos resolves them when it applies the patch.`,
		Example: `  lucos patch build examples/patches/cmdline-string -o cmdline-string.ko`,
		Args:    cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			o.Progress = os.Stderr
			res, err := build.Build(cmd.Context(), args[0], o)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(res)
			}
			for _, w := range res.Warnings {
				fmt.Fprintln(os.Stderr, "warning:", w)
			}
			fmt.Printf("%s: patch %q for %s, build id %s\n", res.KO, res.Name, res.Release, res.BuildID)
			return nil
		},
	}
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "where to write the .ko (default DIR/<name>.ko)")
	cmd.Flags().StringVar(&o.Release, "release", "", "build for this cached kernel release")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// patchFlags are the flags of apply and rollback.
type patchFlags struct {
	apiSock string
	wait    bool
	timeout time.Duration
	asJSON  bool
}

func (f *patchFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "wait until the update settles (committed / rolled back)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", patch.DefaultTimeout, "with --wait: give up waiting after this long (the update goes on)")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the patch as JSON")
}

func (f *patchFlags) client() (*api.Client, error) { return apiClient(f.apiSock) }

// run performs one patch transition through the API and prints the patch.
func (f *patchFlags) run(op func(*api.Client) (*patch.Info, error)) error {
	c, err := f.client()
	if err != nil {
		return err
	}
	in, err := op(c)
	if err != nil {
		return err
	}
	return printPatch(in, f.asJSON)
}

func printPatch(in *patch.Info, asJSON bool) error {
	if asJSON {
		enc := json.NewEncoder(os.Stdout)
		enc.SetIndent("", "  ")
		return enc.Encode(in)
	}
	fmt.Printf("patch %s (%s): %s; pause %.0f µs", in.ID, in.Name, in.State, in.PauseUS)
	if in.State == patch.StateCommitted || in.State == patch.StateRolledBack {
		fmt.Printf(", settled after %.2f ms", in.CommitMS)
	}
	fmt.Println()
	for _, w := range in.Warnings {
		fmt.Fprintln(os.Stderr, "warning:", w)
	}
	for _, h := range in.HeldBy {
		fmt.Printf("  held up by pid %d (%s): %s %#x\n", h.PID, h.Comm, h.Kind, h.Value)
	}
	if s := dataSummary(in); s != "" {
		fmt.Println("  " + s)
	}
	if in.TrapError != "" {
		fmt.Fprintln(os.Stderr, "error in the guest:", in.TrapError)
	}
	return nil
}

// dataSummary describes a patch's data updates and callbacks in one line.
func dataSummary(in *patch.Info) string {
	var parts []string
	if len(in.Data) > 0 {
		w := "watches dropped"
		if in.Watching {
			w = "watching"
		}
		parts = append(parts, fmt.Sprintf("data %d (%s), %d trapped writes, %d transfers", len(in.Data), w, in.Traps, in.Transfers))
	} else if in.Traps > 0 {
		parts = append(parts, fmt.Sprintf("%d trapped writes", in.Traps))
	}
	kinds := slices.Sorted(maps.Keys(in.Callbacks))
	for _, k := range kinds {
		parts = append(parts, fmt.Sprintf("%s callbacks %d", k, in.Callbacks[k]))
	}
	if in.ShadowsFreed > 0 {
		parts = append(parts, fmt.Sprintf("%d shadow variables freed", in.ShadowsFreed))
	}
	return strings.Join(parts, "; ")
}

func newPatchApplyCmd() *cobra.Command {
	var f patchFlags
	cmd := &cobra.Command{
		Use:   "apply --api-sock PATH FILE.ko [--wait] [--json]",
		Short: "Apply a patch module to the running guest",
		Long: `Load FILE.ko into the running guest and redirect its functions. Prints the
patch id, its state (transitioning until no thread is inside an old function,
then committed), the guest-visible pause and, once committed, the time to
commit. Nothing is written to the guest if the patch is refused.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ko, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return f.run(func(c *api.Client) (*patch.Info, error) {
				return c.Apply(cmd.Context(), api.ApplyRequest{KO: ko, Wait: f.wait, Timeout: api.Duration(f.timeout)})
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newPatchRollbackCmd() *cobra.Command {
	var f patchFlags
	cmd := &cobra.Command{
		Use:   "rollback --api-sock PATH ID [--wait] [--json]",
		Short: "Roll a patch back",
		Long: `Restore the original entries of the patch's functions in one pause, then free
its slot once no thread runs patch code. The newest patch can always be
rolled back; an older one only if no later patch changes the same functions.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			return f.run(func(c *api.Client) (*patch.Info, error) {
				return c.Rollback(cmd.Context(), args[0], api.RollbackRequest{Wait: f.wait, Timeout: api.Duration(f.timeout)})
			})
		},
	}
	f.add(cmd)
	return cmd
}

func newPatchListCmd() *cobra.Command {
	var f patchFlags
	cmd := &cobra.Command{
		Use:   "list --api-sock PATH [--json]",
		Short: "List the patches of a running guest and their states",
		Args:  cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := f.client()
			if err != nil {
				return err
			}
			list, err := c.Patches(cmd.Context())
			if err != nil {
				return err
			}
			if f.asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(list)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "ID\tNAME\tSTATE\tPAUSE µs\tSETTLED ms\tTRAPS\tFUNCTIONS")
			for _, in := range list {
				var names []string
				for _, fn := range in.Funcs {
					names = append(names, fn.Name)
				}
				fmt.Fprintf(tw, "%s\t%s\t%s\t%.0f\t%.2f\t%d\t%s\n", in.ID, in.Name, in.State, in.PauseUS, in.CommitMS, in.Traps, strings.Join(names, ","))
			}
			return tw.Flush()
		},
	}
	cmd.Flags().StringVar(&f.apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print JSON")
	return cmd
}
