package main

import (
	"context"
	"encoding/json"
	"fmt"
	"os"
	"syscall"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/api"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// attachReport is what lucos attach --json prints once it serves the VM.
type attachReport struct {
	QEMUPID  int    `json:"qemu_pid"`
	Release  string `json:"kernel_release"`
	Slide    string `json:"kaslr_slide"`
	CPUs     int    `json:"vcpus"`
	RAM      string `json:"ram_access"`
	APISock  string `json:"api_sock"`
	RunDir   string `json:"run_dir"`
	Patching string `json:"patching"` // "ok", or why this VM cannot be patched
	// TakenOver counts the patches an earlier lucos applied that this one
	// took over from their records in the guest (patch list shows them).
	TakenOver int `json:"taken_over"`
	// ForeignSlots counts patch slots an earlier lucos left mapped with no
	// record this one can read: left in place, untouched.
	ForeignSlots int `json:"foreign_slots"`
}

func newAttachCmd() *cobra.Command {
	var ac vmm.AttachConfig
	var apiSock, release, cacheDir string
	var asJSON bool
	var grace time.Duration
	cmd := &cobra.Command{
		Use:   "attach --qmp SOCK [--pid PID] [--api-sock PATH] [--json]",
		Short: "Take control of a VM that lucos did not start, until Ctrl-C",
		Long: `Attach to a running QEMU through its QMP socket and serve it on the control
API, as "lucos run" serves the VMs it boots: "lucos status", "ps", "sym" and
"patch list" work unchanged with --api-sock.

The QMP socket is the one QEMU was started with (-qmp unix:PATH,server=on,wait=off).
QEMU serves one client per QMP socket: a socket another client holds (libvirt
holds its domains' monitors; another lucos) is refused. lucos needs access to
the socket and to the QEMU process (it reads guest RAM from /proc/PID/mem): run
it as QEMU's user or as root.

lucos asks QEMU for a gdbstub (HMP gdbserver) on a socket of its own, finds
which kernel the guest runs from the kernel banner in guest RAM (or --release),
fetches that release's Debian packages into the guest cache, finds the KASLR
slide and checks the banner at linux_banner against the fetched image. The
guest runs on throughout; nothing is written to it by attaching.

Patching needs the guest kernel booted with lucos's patch region
(memmap=16M$0x10000000, see docs/ATTACH.md); on a guest without it, "patch
apply" is refused and the guest is left untouched.

Ctrl-C (or SIGTERM, or "lucos detach --api-sock PATH" from another shell) detaches: an update still transitioning gets --grace to
commit and is rolled back if it does not; committed patches stay in place;
lucos's gdbstub goes and QEMU runs on.`,
		Example: `  qemu-system-x86_64 ... -qmp unix:/tmp/vm.qmp,server=on,wait=off &
  lucos attach --qmp /tmp/vm.qmp --api-sock /tmp/vm.sock &
  lucos ps --api-sock /tmp/vm.sock`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			if ac.QMP == "" {
				return fmt.Errorf("--qmp is required: the QMP socket of the running QEMU")
			}
			if apiSock != "" {
				if err := api.Claim(apiSock); err != nil {
					return err
				}
			}
			ac.Log = logger()
			progress := os.Stderr
			m, k, err := launch.AttachQEMU(cmd.Context(), launch.AttachOptions{VM: ac, Release: release, CacheDir: cacheDir, Progress: progress})
			if err != nil {
				return err
			}
			defer m.Close()
			srv, apiSock, err := listenAPI(apiSock, m)
			if err != nil {
				return err
			}
			defer srv.Close()
			srv.UseKernel(k)
			go srv.Serve()
			patching := "ok"
			taken, foreign, err := srv.CanPatch(cmd.Context())
			if err != nil {
				patching = err.Error()
			}
			fmt.Fprintf(progress, "lucos: API on %s\n", apiSock)
			if patching != "ok" {
				fmt.Fprintf(progress, "lucos: patching refused on this VM: %s\n", patching)
			}
			if taken > 0 {
				fmt.Fprintf(progress, "lucos: took over %d patch(es) an earlier lucos applied, from their records in the guest: lucos patch list shows them\n", taken)
			}
			if foreign > 0 {
				fmt.Fprintf(progress, "lucos: %d patch slot(s) hold patches an earlier lucos applied with no record this lucos can read: they stay in place, untouched, and cannot be rolled back from here\n", foreign)
			}
			// The report comes last: a script that reads it finds every message
			// above already printed.
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				enc.Encode(attachReport{QEMUPID: m.PID(), Release: k.Release(), Slide: fmt.Sprintf("%#x", k.Slide), CPUs: m.CPUs(),
					RAM: m.RAMSource(), APISock: apiSock, RunDir: m.RunDir(), Patching: patching, TakenOver: taken, ForeignSlots: foreign})
			}
			fmt.Fprintln(progress, "lucos: attached; Ctrl-C detaches and leaves the VM running")
			select {
			case <-cmd.Context().Done():
			case <-srv.DetachRequested():
			case <-m.Done():
				return fmt.Errorf("the VM went away: %w", m.Wait())
			}
			fmt.Fprintln(progress, "lucos: detaching")
			// The signal's context is done: settling gets one of its own.
			ctx, cancel := context.WithTimeout(context.Background(), 2*grace+10*time.Second)
			defer cancel()
			err = srv.Settle(ctx, grace, func(s string) { fmt.Fprintln(progress, "lucos: "+s) })
			srv.Close()
			m.Close()
			fmt.Fprintln(progress, "lucos: detached; the VM runs on")
			return err
		},
	}
	cmd.Flags().StringVar(&ac.QMP, "qmp", "", "QMP socket of the running QEMU (required)")
	cmd.Flags().IntVar(&ac.PID, "pid", 0, "QEMU's process id (default: the process serving the QMP socket)")
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "serve the control API on this unix socket (default: api.sock in the run directory)")
	cmd.Flags().StringVar(&release, "release", "", "the guest's kernel release (default: read from the kernel banner in guest RAM)")
	cmd.Flags().StringVar(&cacheDir, "cache", "", "guest cache directory (default: $LUCOS_CACHE or ~/.cache/lucos)")
	cmd.Flags().DurationVar(&grace, "grace", 10*time.Second, "on detach, how long an update still transitioning may take to commit before it is rolled back")
	cmd.Flags().BoolVar(&asJSON, "json", false, "print what was attached as JSON once the API serves")
	return cmd
}

func newDetachCmd() *cobra.Command {
	var apiSock string
	var timeout time.Duration
	cmd := &cobra.Command{
		Use:   "detach --api-sock PATH",
		Short: "Make a lucos attach leave its VM (as Ctrl-C in it would)",
		Long: `Ask the "lucos attach" serving --api-sock to detach, and wait until it has:
updates still transitioning get its --grace to commit or are rolled back,
committed patches stay, and the VM runs on. A VM that "lucos run" started is
refused: it ends with its lucos.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			c, err := apiClient(apiSock)
			if err != nil {
				return err
			}
			r, err := c.Detach(cmd.Context())
			if err != nil {
				return err
			}
			fmt.Fprintf(os.Stderr, "lucos: lucos attach (pid %d) is detaching\n", r.ServerPID)
			// It has left once its process is gone.
			ctx, cancel := context.WithTimeout(cmd.Context(), timeout)
			defer cancel()
			for syscall.Kill(r.ServerPID, 0) == nil {
				select {
				case <-ctx.Done():
					return fmt.Errorf("lucos attach (pid %d) has not finished detaching after %v", r.ServerPID, timeout)
				case <-time.After(20 * time.Millisecond):
				}
			}
			fmt.Fprintln(os.Stderr, "lucos: detached; the VM runs on")
			return nil
		},
	}
	cmd.Flags().StringVar(&apiSock, "api-sock", "", "control API socket of the attached VM")
	cmd.Flags().DurationVar(&timeout, "timeout", time.Minute, "how long to wait for the detach to finish")
	return cmd
}
