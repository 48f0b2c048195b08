package main

import (
	"context"
	"fmt"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/bench"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

func newDemoCmd() *cobra.Command {
	var gf guestFlags
	var pauses int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "A tour on the default guest: boot, run a command, pause and resume it, power off",
		Long: `Boot the default guest (fetched on first use), run a command in it, keep both
vCPUs busy and pause/resume the whole VM from the host, printing the
guest-visible pause, then check the guest ran on undisturbed and power it off.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := gf.options()
			if err != nil {
				return err
			}
			return demo(cmd.Context(), opts, pauses)
		},
	}
	gf.add(cmd)
	cmd.Flags().IntVar(&pauses, "pauses", 200, "pause/resume cycles to measure")
	return cmd
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

func demo(ctx context.Context, opts launch.Options, pauses int) error {
	step("Booting the stock Debian kernel under QEMU (%s)", opts.VM.Accel)
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer m.Close()
	accel, why := m.Accel()
	fmt.Printf("    kernel %s, %d vCPUs, %s (%s), ready in %.1f s\n", m.Release(), m.CPUs(), accel, why, m.BootTime().Seconds())

	step("Running a command in the guest")
	for _, argv := range [][]string{{"uname", "-a"}, {"cat", "/proc/cmdline"}} {
		res, err := m.Exec(ctx, argv...)
		if err != nil {
			return err
		}
		fmt.Printf("    $ %s\n    %s\n", strings.Join(argv, " "), strings.TrimSpace(string(res.Stdout)))
	}

	step("Keeping both vCPUs busy and pausing the whole VM %d times from the host", pauses)
	if _, err := m.ExecScript(ctx, bench.BusyLoops(m.CPUs())); err != nil {
		return err
	}
	before, err := guestCounter(ctx, m)
	if err != nil {
		return err
	}
	var d []time.Duration
	for i := 0; i < pauses; i++ {
		if err := m.Pause(ctx); err != nil {
			return err
		}
		p, err := m.Resume()
		if err != nil {
			return err
		}
		d = append(d, p)
		time.Sleep(2 * time.Millisecond)
	}
	st := summarize(d)
	fmt.Printf("    guest-visible pause: p50 %s, p99 %s, max %s\n", us(st.P50), us(st.P99), us(st.Max))

	after, err := guestCounter(ctx, m)
	if err != nil {
		return err
	}
	fmt.Printf("    the guest's busy loops kept counting: %d -> %d\n", before, after)
	if after <= before {
		return fmt.Errorf("the guest's counter did not advance across the pauses")
	}

	step("Powering the guest off")
	m.Close()
	fmt.Println("    done. Next: lucos run --help")
	return nil
}

// guestCounter sums the busy loops' counters.
func guestCounter(ctx context.Context, m *vmm.Machine) (int, error) {
	time.Sleep(300 * time.Millisecond)
	res, err := m.ExecScript(ctx, `s=0; for f in /tmp/busy.*; do s=$((s + $(cat $f 2>/dev/null || echo 0))); done; echo $s`)
	if err != nil {
		return 0, err
	}
	var n int
	_, err = fmt.Sscan(string(res.Stdout), &n)
	return n, err
}

func summarize(d []time.Duration) vmm.PauseStats {
	l := vmm.NewPauseLog()
	for _, x := range d {
		l.Add(x)
	}
	return l.Stats()
}

func us(d time.Duration) string { return fmt.Sprintf("%.0f µs", float64(d.Nanoseconds())/1000) }
