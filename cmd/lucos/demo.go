package main

import (
	"context"
	"fmt"
	"os"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/bench"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/guestmod"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

func newDemoCmd() *cobra.Command {
	var gf guestFlags
	cmd := &cobra.Command{
		Use:   "demo",
		Short: "The tour: a live fix of a kernel deadlock on the default guest, from the host",
		Long: `Boot the default guest (fetched on first use) with the lucos_bugs test module,
trigger its deliberate bug (the LUCOS paper's example: a function returns early
with a spinlock held, and the next reader spins on it forever), fix it live
from the host with examples/patches/deadlock-fix (its startup callback
releases the leaked lock inside the guest; the stuck reader completes), show
it fixed, apply and roll back a code patch to /proc/cmdline, and power the
guest off. Every guest-visible pause is printed. Builds happen first, with
kbuild against the guest's headers.`,
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := gf.options()
			if err != nil {
				return err
			}
			return demo(cmd.Context(), opts)
		},
	}
	gf.add(cmd)
	return cmd
}

func step(format string, args ...any) { fmt.Printf("\n==> "+format+"\n", args...) }

// demoShell runs script in the guest and prints it with its output.
func demoShell(ctx context.Context, m *vmm.Machine, script string) (string, error) {
	res, err := m.ExecScript(ctx, script)
	if err != nil {
		return "", err
	}
	out := strings.TrimSpace(string(res.Stdout) + string(res.Stderr))
	fmt.Printf("    $ %s\n", script)
	for _, l := range strings.Split(out, "\n") {
		if l != "" {
			fmt.Printf("    %s\n", l)
		}
	}
	return out, nil
}

func demo(ctx context.Context, opts launch.Options) error {
	start := time.Now()
	step("Building: the lucos_bugs guest module and two live patches (kbuild, the guest's headers)")
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return err
	}
	tmp, err := os.MkdirTemp("", "lucos-demo-")
	if err != nil {
		return err
	}
	defer os.RemoveAll(tmp)
	bugs, err := guestmod.Cached(ctx, img, os.Stderr)
	if err != nil {
		return err
	}
	fix, err := bench.BuildExample(ctx, "patches/deadlock-fix", img.Release, tmp)
	if err != nil {
		return err
	}
	cmdline, err := bench.BuildExample(ctx, "patches/cmdline-string", img.Release, tmp)
	if err != nil {
		return err
	}
	fmt.Printf("    lucos_bugs.ko, deadlock-fix.ko (%d bytes), cmdline-string.ko (%d bytes)\n", len(fix), len(cmdline))

	step("Booting the stock Debian kernel under QEMU (%s), lucos_bugs loaded at boot", opts.VM.Accel)
	opts.Extend = guestmod.Extend(bugs, opts.Extend)
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return err
	}
	defer m.Close()
	accel, why := m.Accel()
	fmt.Printf("    kernel %s, %d vCPUs, %s (%s), ready in %.1f s\n", m.Release(), m.CPUs(), accel, why, m.BootTime().Seconds())
	k, e, err := patch.Attach(ctx, m, "")
	if err != nil {
		return err
	}
	fmt.Printf("    %d kernel symbols from the image's kallsyms; KASLR slide %#x found from the IDT\n", k.Image.Symbols.Len(), k.Slide)
	defer e.Close()

	step("The bug: lucos_bugs_deadlock_op returns early with lucos_bugs_lock held")
	if _, err := demoShell(ctx, m, "sh -c 'echo trigger > /proc/lucos_bugs/deadlock'"); err != nil {
		return err
	}
	pid, err := demoShell(ctx, m, "cat /proc/lucos_bugs/deadlock > /tmp/reader.out & echo $!")
	if err != nil {
		return err
	}
	st, err := demoShell(ctx, m, "sleep 1; cut -d' ' -f3 /proc/"+pid+"/stat")
	if err != nil {
		return err
	}
	if st != "R" {
		return fmt.Errorf("the reader is in state %q, not spinning: the bug did not reproduce", st)
	}
	fmt.Printf("    reader %s is stuck: spinning on the leaked lock (state R), one vCPU lost to it\n", pid)

	step("Fixing it live from the host: examples/patches/deadlock-fix")
	p, err := e.Apply(ctx, fix, patch.Options{Wait: true})
	if err != nil {
		return err
	}
	in := p.Info()
	fmt.Printf("    patch %s %s: startup callback ran %d time(s) inside the guest (it released the leaked lock);\n", in.ID, in.State, in.Callbacks["startup"])
	fmt.Printf("    guest paused %.0f µs for the switch, committed %.1f ms later\n", in.PauseUS, in.CommitMS)

	step("Fixed: the stuck reader completed, and the bug no longer reproduces")
	if _, err := demoShell(ctx, m, "i=0; while [ -d /proc/"+pid+" ] && [ $i -lt 100 ]; do sleep 0.05; i=$((i+1)); done; cat /tmp/reader.out"); err != nil {
		return err
	}
	if _, err := demoShell(ctx, m, "sh -c 'echo trigger > /proc/lucos_bugs/deadlock'; cat /proc/lucos_bugs/deadlock"); err != nil {
		return err
	}

	step("A code patch: /proc/cmdline (examples/patches/cmdline-string), applied and rolled back")
	show := func() error { _, err := demoShell(ctx, m, "cat /proc/cmdline"); return err }
	if err := show(); err != nil {
		return err
	}
	q, err := e.Apply(ctx, cmdline, patch.Options{Wait: true})
	if err != nil {
		return err
	}
	in = q.Info()
	fmt.Printf("    patch %s %s: guest paused %.0f µs for the switch, committed %.1f ms later\n", in.ID, in.State, in.PauseUS, in.CommitMS)
	if err := show(); err != nil {
		return err
	}
	if _, err := e.Rollback(ctx, q.ID(), patch.Options{Wait: true}); err != nil {
		return err
	}
	in = q.Info()
	fmt.Printf("    patch %s %s: guest paused %.0f µs\n", in.ID, in.State, in.PauseUS)
	if err := show(); err != nil {
		return err
	}

	step("Powering the guest off")
	m.Close()
	fmt.Printf("    done in %.0f s. Next: lucos run --help, lucos patch --help, docs/PATCH-FORMAT.md\n", time.Since(start).Seconds())
	return nil
}
