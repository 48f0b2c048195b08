package main

import (
	"encoding/json"
	"fmt"
	"os"
	"strings"
	"text/tabwriter"

	"github.com/spf13/cobra"
)

func newPsCmd() *cobra.Command {
	var apiSock string
	var asJSON, all bool
	cmd := &cobra.Command{
		Use:   "ps --api-sock PATH [--json] [--all]",
		Short: "List the guest's tasks with their top kernel frames, read from outside",
		Long: `List every task of the guest kernel, read from guest memory with the VM
paused for a moment (no help from the guest): pid, thread group, state, CPU,
command and the innermost kernel frames as symbol+offset. The frames are an
exact unwind with the guest's own ORC tables; where that is not possible (code
without ORC data) they are the stack words that look like return addresses,
and --json says why ("inexact"). The guest's idle tasks (pid 0) and non-leader
threads are shown with --all.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient(apiSock)
			if err != nil {
				return err
			}
			r, err := c.Tasks(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(r)
			}
			tw := tabwriter.NewWriter(os.Stdout, 0, 4, 2, ' ', 0)
			fmt.Fprintln(tw, "PID\tTGID\tS\tCPU\tCOMM\tKERNEL FRAMES")
			for _, t := range r.Tasks {
				if !all && (t.PID != t.TGID || t.Idle) {
					continue
				}
				cpu := "-"
				if t.OnCPU {
					cpu = fmt.Sprint(t.CPU)
				}
				comm := t.Comm
				if t.Kthread {
					comm = "[" + comm + "]"
				}
				fmt.Fprintf(tw, "%d\t%d\t%s\t%s\t%s\t%s\n", t.PID, t.TGID, t.State, cpu, comm, strings.Join(first(t.Frames, 3), " < "))
			}
			tw.Flush()
			fmt.Fprintf(os.Stderr, "(guest paused %.0f µs for the snapshot; KASLR slide %s)\n", r.PauseUS, r.Slide)
			return nil
		},
	}
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print tasks, vCPUs and frames as JSON")
	cmd.Flags().BoolVar(&all, "all", false, "also show idle tasks and non-leader threads")
	return cmd
}

func first(s []string, n int) []string {
	if len(s) > n {
		return s[:n]
	}
	return s
}

func newSymCmd() *cobra.Command {
	var apiSock string
	var asJSON bool
	var pos int
	cmd := &cobra.Command{
		Use:   "sym --api-sock PATH NAME|0xADDR",
		Short: "Translate a kernel symbol to its running address, or an address to symbol+offset",
		Long: `Look up a symbol of the running guest kernel (KASLR slide applied) or name the
symbol holding an address. Symbols come from the kernel image's own kallsyms
tables. A name with several static definitions needs --pos (livepatch's sympos).`,
		Example: `  lucos sym --api-sock /tmp/vm.sock cmdline_proc_show
  lucos sym --api-sock /tmp/vm.sock 0xffffffffa8600990`,
		Args: cobra.ExactArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient(apiSock)
			if err != nil {
				return err
			}
			r, err := c.Sym(cmd.Context(), args[0], pos)
			if err != nil {
				return err
			}
			if asJSON {
				return json.NewEncoder(os.Stdout).Encode(r)
			}
			if strings.HasPrefix(args[0], "0x") {
				fmt.Printf("%s = %s+%#x (%s, sympos %d, size %#x)\n", args[0], r.Name, r.Offset, r.Type, r.Pos, r.Size)
			} else {
				fmt.Printf("%s %s %s (sympos %d, size %#x, link-time %s)\n", r.Addr, r.Type, r.Name, r.Pos, r.Size, r.LinkAddr)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	cmd.Flags().IntVar(&pos, "pos", 0, "sympos: which of several same-named static symbols (1-based)")
	return cmd
}
