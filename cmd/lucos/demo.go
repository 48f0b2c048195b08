package main

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/bench"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

func newDemoCmd() *cobra.Command {
	var gf guestFlags
	var pauses int
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "A tour on the default guest: boot, pause/resume, live-patch and roll back, power off",
		Long: `Boot the default guest (fetched on first use), run a command in it, keep both
vCPUs busy and pause/resume the whole VM from the host, printing the
guest-visible pause; then build a live patch for /proc/cmdline, apply it to
the running kernel from the host, show the change, roll it back, and power
the guest off.`,
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

// demoPatch live-patches /proc/cmdline from the host and rolls it back.
func demoPatch(ctx context.Context, m *vmm.Machine) error {
	step("Building a live patch for cmdline_proc_show (examples/patches/cmdline-string) with kbuild")
	tmp, err := os.MkdirTemp("", "lucos-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	ko, err := bench.BuildExample(ctx, "patches/cmdline-string", m.Release(), tmp)
	if err != nil {
		return err
	}
	img, err := kimage.Load(ctx, m.KernelPath(), filepath.Join(guest.DefaultCacheDir(), "kimage"))
	if err != nil {
		return err
	}
	k, err := introspect.Attach(ctx, m, img)
	if err != nil {
		return err
	}
	fmt.Printf("    %d kernel symbols from the image's kallsyms; KASLR slide %#x found from the IDT\n", img.Symbols.Len(), k.Slide)
	e, err := patch.New(m, k, nil)
	if err != nil {
		return err
	}
	defer e.Close()
	show := func() error {
		res, err := m.Exec(ctx, "cat", "/proc/cmdline")
		if err == nil {
			fmt.Printf("    $ cat /proc/cmdline\n    %s\n", strings.TrimSpace(string(res.Stdout)))
		}
		return err
	}
	if err := show(); err != nil {
		return err
	}
	step("Applying it to the running kernel from the host (no agent, no reboot)")
	p, err := e.Apply(ctx, ko, patch.Options{Wait: true})
	if err != nil {
		return err
	}
	in := p.Info()
	fmt.Printf("    patch %s %s: guest paused %.0f µs for the switch, committed %.1f ms later\n", in.ID, in.State, in.PauseUS, in.CommitMS)
	if err := show(); err != nil {
		return err
	}
	step("Rolling it back")
	if _, err := e.Rollback(ctx, p.ID(), patch.Options{Wait: true}); err != nil {
		return err
	}
	in = p.Info()
	fmt.Printf("    patch %s %s: guest paused %.0f µs\n", in.ID, in.State, in.PauseUS)
	return show()
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

	if err := demoPatch(ctx, m); err != nil {
		return err
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
