package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/lucos/lucos/examples"
	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/build"
	"github.com/lucos/lucos/vmm"
)

// Counts for Apply.
const (
	applyCycles = 100
	klpCycles   = 5
)

// klpPath is where the in-guest livepatch module sits in the benchmark initramfs.
const klpPath = "/lib/lucos/cmdline_klp.ko"

// Apply applies and rolls back the cmdline-string example applyCycles
// times with every vCPU busy, then makes the same change with the in-guest
// Linux livepatch (examples/klp/cmdline-klp: insmod, wait for the
// transition, disable, wait, rmmod) on the same guest.
func Apply(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	fmt.Fprintln(progress, "apply: building cmdline-string and its livepatch twin")
	tmp, err := os.MkdirTemp("", "lucos-bench-apply-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ko, err := BuildExample(ctx, "patches/cmdline-string", opts.Image.Release, tmp)
	if err != nil {
		return nil, err
	}
	klp, err := buildKLP(ctx, opts.Image.Release, tmp)
	if err != nil {
		return nil, err
	}
	opts.Extend = extendKLP(klp, opts.Extend)
	if opts.VM.TCGThreads == "" || opts.VM.TCGThreads == vmm.TCGThreadsAuto {
		// The livepatch's transition waits for every busy vCPU to pass a
		// syscall exit; on one TCG thread each waits up to 100 ms for its
		// turn, and on 6.12 (where auto chooses one thread) the transition
		// took 92 s against 1.06 s on a thread per vCPU. A fair comparison
		// runs each vCPU on its own thread, as on a real host.
		opts.VM.TCGThreads = vmm.TCGThreadsMulti
	}

	fmt.Fprintln(progress, "apply: booting the guest")
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	_, e, err := patch.Attach(ctx, m, opts.Image.CacheDir)
	if err != nil {
		return nil, err
	}
	defer e.Close()
	if _, err := m.ExecScript(ctx, BusyLoops(m.CPUs())); err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)

	var pause, load, commit, rbPause, rbSettle []float64
	wait := patch.Options{Wait: true, Timeout: time.Minute}
	for i := 0; i < applyCycles; i++ {
		if i%25 == 0 {
			fmt.Fprintf(progress, "apply: lucos cycle %d/%d\n", i, applyCycles)
		}
		p, err := e.Apply(ctx, ko, wait)
		if err != nil {
			return nil, err
		}
		in := p.Info()
		if in.State != patch.StateCommitted {
			return nil, fmt.Errorf("cycle %d: patch %s after %v", i, in.State, wait.Timeout)
		}
		pause, load, commit = append(pause, in.PauseUS), append(load, in.LoadPauseUS), append(commit, in.CommitMS)
		if _, err := e.Rollback(ctx, p.ID(), wait); err != nil {
			return nil, err
		}
		in = p.Info()
		if in.State != patch.StateRolledBack {
			return nil, fmt.Errorf("cycle %d: rollback %s", i, in.State)
		}
		rbPause, rbSettle = append(rbPause, in.PauseUS), append(rbSettle, in.CommitMS)
	}

	var klpOn, klpOff []float64
	for i := 0; i < klpCycles; i++ {
		fmt.Fprintf(progress, "apply: livepatch cycle %d/%d\n", i+1, klpCycles)
		c, err := klpCycle(ctx, m)
		if err != nil {
			return nil, err
		}
		klpOn, klpOff = append(klpOn, c.onMS()), append(klpOff, c.offMS())
	}
	rows := []Row{
		distribution("lucos apply: guest-visible pause of the switch", "ms", scale(pause, 1e-3)),
		distribution("lucos apply: longest load pause (one packet per pause, before the switch)", "ms", scale(load, 1e-3)),
		distribution("lucos apply → committed", "ms", commit),
		distribution("lucos rollback: guest-visible pause", "ms", scale(rbPause, 1e-3)),
		distribution("lucos rollback → slot freed", "ms", rbSettle),
		distribution("Linux livepatch: insmod → transition done", "ms", klpOn),
		distribution("Linux livepatch: disable → transition done", "ms", klpOff),
	}
	rows[2].Ratio = "1"
	rows[5].Ratio = fmt.Sprintf("%.0f× lucos", rows[5].P50/rows[2].P50)
	rows[4].Ratio = "1"
	rows[6].Ratio = fmt.Sprintf("%.0f× lucos", rows[6].P50/rows[4].P50)
	return &Result{Scenario: "apply and roll back cmdline-string, guest busy", Rows: rows, Notes: []string{
		fmt.Sprintf("%s, %d vCPUs each running a busy shell loop, %s. lucos: %d apply+rollback cycles with --wait. Linux livepatch: the same change as a klp module (examples/klp/cmdline-klp) insmod'ed in the guest, %d cycles, timed inside the guest from /proc/timer_list.", m.Release(), m.CPUs(), accelNote(m), applyCycles, klpCycles),
	}}, nil
}

// klpScript enables and disables the livepatch module once and prints the
// guest's monotonic clock (ns, from /proc/timer_list) at each step. It polls
// every 10 ms without forking (a timed read of a FIFO nobody writes, not
// sleep(1), which forks): a workload running beside it loses nothing to
// the polling itself.
const klpScript = `now() { awk '/^now at/ {print $3; exit}' /proc/timer_list; }
[ -p /run/lucos-nap ] || mkfifo /run/lucos-nap; exec 9<> /run/lucos-nap
nap() { read -t 0.01 x <&9; }
f=/sys/kernel/livepatch/cmdline_klp/transition
settle() { while [ -e $f ] && read v < $f 2>/dev/null && [ "$v" = 1 ]; do nap; done; }
t0=$(now); insmod ` + klpPath + ` || exit 1; settle; t1=$(now)
echo 0 > /sys/kernel/livepatch/cmdline_klp/enabled; settle; t2=$(now)
while ! rmmod cmdline_klp 2>/dev/null; do nap; done
echo $t0 $t1 $t2`

// klpTimes are one livepatch cycle's steps on the guest's clock
// (CLOCK_MONOTONIC, ns): insmod starts, the enable transition is done, the
// disable transition is done.
type klpTimes struct{ Insmod, Enabled, Disabled int64 }

func (c klpTimes) onMS() float64  { return float64(c.Enabled-c.Insmod) / 1e6 }
func (c klpTimes) offMS() float64 { return float64(c.Disabled-c.Enabled) / 1e6 }

// klpCycle enables and disables the livepatch module in the guest and
// returns when each step happened, by the guest's clock.
func klpCycle(ctx context.Context, m *vmm.Machine) (klpTimes, error) {
	res, err := m.ExecScript(ctx, klpScript)
	if err != nil {
		return klpTimes{}, err
	}
	f := strings.Fields(string(res.Stdout))
	if res.Status != 0 || len(f) != 3 {
		return klpTimes{}, fmt.Errorf("livepatch cycle failed (status %d): %s%s", res.Status, res.Stdout, res.Stderr)
	}
	var t [3]int64
	for i := range t {
		if t[i], err = strconv.ParseInt(f[i], 10, 64); err != nil {
			return klpTimes{}, fmt.Errorf("livepatch cycle: bad clock %q", f[i])
		}
	}
	return klpTimes{t[0], t[1], t[2]}, nil
}

func scale(x []float64, f float64) []float64 {
	out := make([]float64, len(x))
	for i, v := range x {
		out[i] = v * f
	}
	return out
}

// buildKLP builds the livepatch twin of cmdline-string (examples/klp/cmdline-klp) in dir.
func buildKLP(ctx context.Context, release, dir string) (string, error) {
	src, err := examples.Extract("klp/cmdline-klp", dir)
	if err != nil {
		return "", err
	}
	return build.BuildModule(ctx, src, build.Options{Release: release, Output: filepath.Join(dir, "klp.ko")})
}

// extendKLP returns prev (which may be nil) followed by the installation of
// the livepatch module ko at klpPath.
func extendKLP(ko string, prev func(*initramfs.Archive) error) func(*initramfs.Archive) error {
	return func(a *initramfs.Archive) error {
		if prev != nil {
			if err := prev(a); err != nil {
				return err
			}
		}
		return a.AddHostFile(klpPath, ko, 0o644)
	}
}

// BuildExample builds an embedded example patch in dir and returns the module.
func BuildExample(ctx context.Context, path, release, dir string) ([]byte, error) {
	src, err := examples.Extract(path, dir)
	if err != nil {
		return nil, err
	}
	res, err := build.Build(ctx, src, build.Options{Release: release, Output: filepath.Join(dir, filepath.Base(path)+".ko")})
	if err != nil {
		return nil, err
	}
	return os.ReadFile(res.KO)
}
