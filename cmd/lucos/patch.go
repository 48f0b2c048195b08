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
	"github.com/lucos/lucos/patch/srcdiff"
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
	var d srcdiff.Options
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "build DIR | --diff FIX.patch [--diff MORE.patch...] [-o FILE] [--release REL]",
		Short: "Compile a patch directory, or build a patch from kernel source diffs",
		Long: `Compile the .c files of DIR into one patch module against the cached headers
of the guest kernel (default: the default guest's release; fetched if
needed). References to non-exported and static kernel symbols are allowed:
lucos resolves them when it applies the patch.

With --diff, build the patch from unified diffs against the guest kernel's
source instead (a CVE fix, a stable commit, a distro patch), as kpatch-build
does: lucos fetches the Debian source of the exact release (lucos guest
source), applies the diffs to copies of the files they touch, compiles each
changed file before and after with kbuild's own command, compares the two
objects function by function, checks the original against the code the guest
runs, and links the changed functions into an ordinary patch module. It
prints what changed and why, one line per function. Changed writable data is
refused, naming it; --companion FILE.c adds a C file (LUCOS_DATA, callbacks,
shadow variables, or new data the diff's code uses by name) to the module.
See docs/PATCH-FORMAT.md, "Patches from source diffs".`,
		Example: `  lucos patch build examples/patches/cmdline-string -o cmdline-string.ko
  lucos patch build --diff fix.patch --release 6.1.0-54-cloud-amd64 -o fix.ko`,
		Args: func(cmd *cobra.Command, args []string) error {
			if len(d.Diffs) > 0 {
				return cobra.NoArgs(cmd, args)
			}
			if len(d.Companions) > 0 {
				return fmt.Errorf("--companion goes with --diff")
			}
			return cobra.ExactArgs(1)(cmd, args)
		},
		RunE: func(cmd *cobra.Command, args []string) error {
			if len(d.Diffs) > 0 {
				d.Release, d.Output, d.Progress = o.Release, o.Output, os.Stderr
				res, err := srcdiff.Build(cmd.Context(), d)
				if err != nil {
					return err
				}
				if asJSON {
					return json.NewEncoder(os.Stdout).Encode(res)
				}
				for _, ch := range res.Changes {
					fmt.Println(ch)
				}
				for _, s := range res.Skipped {
					fmt.Println("skipped:", s)
				}
				for _, w := range res.Warnings {
					fmt.Fprintln(os.Stderr, "warning:", w)
				}
				fmt.Printf("%s: patch %q for %s (%s), build id %s\n", res.KO, res.Name, res.Release, res.Source, res.BuildID)
				return nil
			}
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
	cmd.Flags().StringVarP(&o.Output, "output", "o", "", "where to write the .ko (default DIR/<name>.ko; with --diff ./<name>.ko)")
	cmd.Flags().StringVar(&o.Release, "release", "", "build for this kernel release or series (6.12: its current release); with --diff it is fetched, and its source prepared, if needed")
	cmd.Flags().StringArrayVar(&d.Diffs, "diff", nil, "a unified diff against the kernel source (repeat for several, applied in order)")
	cmd.Flags().StringArrayVar(&d.Companions, "companion", nil, "with --diff: a C file compiled into the patch (LUCOS_DATA, callbacks, new data)")
	cmd.Flags().StringVar(&d.Name, "name", "", "with --diff: the patch's name (default: the first diff's file name)")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print the result as JSON")
	return cmd
}

// patchFlags are the flags of apply and rollback.
type patchFlags struct {
	apiSock string
	wait    bool
	timeout time.Duration
	kick    time.Duration
	asJSON  bool
}

func (f *patchFlags) add(cmd *cobra.Command) {
	cmd.Flags().StringVar(&f.apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&f.wait, "wait", false, "wait until the update settles (committed / rolled back)")
	cmd.Flags().DurationVar(&f.timeout, "timeout", patch.DefaultTimeout, "with --wait: give up waiting after this long (the update goes on)")
	cmd.Flags().DurationVar(&f.kick, "kick-after", patch.DefaultKickAfter,
		"kick the tasks that still hold the transition after this long (asleep in an old function: their system call restarts through the new code, as Linux livepatch's signals do); 0: never")
	cmd.Flags().BoolVar(&f.asJSON, "json", false, "print the patch as JSON")
}

// kickAfter is the flag as the API takes it: 0 there means the default.
func (f *patchFlags) kickAfter() api.Duration {
	if f.kick <= 0 {
		return api.Duration(-1)
	}
	return api.Duration(f.kick)
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
	var replace bool
	cmd := &cobra.Command{
		Use:   "apply --api-sock PATH FILE.ko [--wait] [--replace] [--json]",
		Short: "Apply a patch module to the running guest",
		Long: `Load FILE.ko into the running guest and redirect its functions. Prints the
patch id, its state (transitioning until no thread is inside an old function,
then committed), the guest-visible pause and, once committed, the time to
commit. Nothing is written to the guest if the patch is refused.

A function that a committed patch already replaces is replaced again: the new
patch chains over the old one, and rolling it back brings the old one's
version back. With --replace the patch is cumulative (Linux livepatch's atomic
replace): in one pause it takes over every live patch, the functions it does
not replace go back to the original, and the earlier patches are freed once
no thread runs their code.`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			ko, err := os.ReadFile(args[0])
			if err != nil {
				return err
			}
			return f.run(func(c *api.Client) (*patch.Info, error) {
				return c.Apply(cmd.Context(), api.ApplyRequest{KO: ko, Wait: f.wait, Timeout: api.Duration(f.timeout), KickAfter: f.kickAfter(), Replace: replace})
			})
		},
	}
	f.add(cmd)
	cmd.Flags().BoolVar(&replace, "replace", false, "cumulative patch: take over every live patch in one pause (atomic replace); what it does not replace goes back to the original")
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
				return c.Rollback(cmd.Context(), args[0], api.RollbackRequest{Wait: f.wait, Timeout: api.Duration(f.timeout), KickAfter: f.kickAfter()})
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
