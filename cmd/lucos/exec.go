package main

import (
	"encoding/json"
	"fmt"
	"os"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/api"
)

func newExecCmd() *cobra.Command {
	var apiSock string
	var asJSON bool
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "exec --api-sock PATH [--json] -- CMD ARGS...",
		Short: "Run a command in a running lucos guest",
		Long: `Run CMD in the guest served on --api-sock (a "lucos run" in another shell)
and print its output; lucos exec exits with CMD's exit status. Commands run
through the test initramfs's control channel on the guest's second serial
port; several may run at once.`,
		Example: `  lucos exec --api-sock /tmp/vm.sock -- cat /proc/cmdline
  lucos exec --api-sock /tmp/vm.sock --json -- sh -c 'echo hi; exit 3'`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient(apiSock)
			if err != nil {
				return err
			}
			res, err := c.Exec(cmd.Context(), api.ExecRequest{Argv: args, Timeout: api.Duration(timeout)})
			if err != nil {
				return err
			}
			if asJSON {
				json.NewEncoder(os.Stdout).Encode(map[string]any{
					"stdout": string(res.Stdout), "stderr": string(res.Stderr), "status": res.Status,
				})
			} else {
				os.Stdout.Write(res.Stdout)
				os.Stderr.Write(res.Stderr)
			}
			if res.Status != 0 {
				return exitCode(res.Status)
			}
			return nil
		},
	}
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&asJSON, "json", false, `print {"stdout","stderr","status"} as JSON`)
	cmd.Flags().DurationVar(&timeout, "timeout", 10*time.Minute, "give up after this long")
	return cmd
}

func newStatusCmd() *cobra.Command {
	var apiSock string
	var asJSON bool
	cmd := &cobra.Command{
		Use:   "status --api-sock PATH [--json]",
		Short: "Show a running VM: state, vCPUs, accelerator, kernel, pauses",
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient(apiSock)
			if err != nil {
				return err
			}
			info, err := c.VM(cmd.Context())
			if err != nil {
				return err
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				return enc.Encode(info)
			}
			ready := "boot      "
			if info.Attached {
				ready = "attach    "
			}
			fmt.Printf("state      %s\nkernel     %s\nvCPUs      %d\nmemory     %d MiB\naccel      %s (%s)\nrun dir    %s\nqemu pid   %d\nram        %s\n%s %.0f ms\npauses     %d (p50 %v, p99 %v, max %v)\n",
				info.State, info.Release, info.CPUs, info.MemoryMiB, info.Accel, info.AccelReason, info.RunDir, info.QEMUPID, info.RAM, ready, info.BootMillis,
				info.Pauses.Count, info.Pauses.P50, info.Pauses.P99, info.Pauses.Max)
			return nil
		},
	}
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "control API socket of the VM")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print JSON")
	return cmd
}
