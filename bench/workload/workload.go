// Package workload is the guest side of lucos's evaluation: analogues of the
// LUCOS paper's SPEC INT, kernel build and OSDB runs (a compression kernel,
// system calls, fork+exec, file churn on tmpfs, SQLite OLTP transactions),
// all in one static C program, lucos-workload (src/lucos-workload.c), which
// Build compiles on the host and Extend puts into the guest's initramfs.
// Run and Start run a workload in a booted guest and return its throughput
// over time, so that a benchmark can see what applying a patch costs a
// running guest.
package workload

import (
	"context"
	"errors"
	"fmt"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync/atomic"
	"time"

	"github.com/lucos/lucos/vmm"
)

// Names lists the workloads in the order benchmarks run them.
var Names = []string{"cpu", "syscall", "fork", "fs", "oltp"}

// GuestPath is where the binary sits in the guest.
const GuestPath = "/usr/bin/lucos-workload"

// BucketWidth is how much time each Bucket of a run covers (the program's
// BUCKET_MS): a bucket ends at the first clock reading at or after its
// deadline, so usually a little later.
const BucketWidth = 100 * time.Millisecond

// Result is one run of a workload.
type Result struct {
	Name      string
	StartNS   int64         // guest CLOCK_MONOTONIC when timing began (after setup)
	Ops       int64         // ops completed
	Elapsed   time.Duration // from StartNS to the last bucket's end
	OpsPerSec float64       // Ops / Elapsed
	Buckets   []Bucket
}

// Bucket is the ops completed in one stretch of a run: from the previous
// bucket's end (or Result.StartNS) to EndNS. Times are the guest's, which
// stand still while the VM is paused: a pause shows in no bucket, only in
// host time (see GuestClock and vmm.Machine.Pauses).
type Bucket struct {
	EndNS int64 // guest CLOCK_MONOTONIC
	Ops   int64
}

// Rate is the throughput of bucket i in ops/s over the time it covers.
func (r *Result) Rate(i int) float64 {
	prev := r.StartNS
	if i > 0 {
		prev = r.Buckets[i-1].EndNS
	}
	return float64(r.Buckets[i].Ops) * 1e9 / float64(r.Buckets[i].EndNS-prev)
}

// ErrNotInGuest: the guest has no lucos-workload (booted without Extend).
var ErrNotInGuest = errors.New(GuestPath + " is not in the guest (boot it with workload.Extend)")

// command is the guest command line that runs name for d.
func command(name string, d time.Duration) (string, error) {
	if !slices.Contains(Names, name) {
		return "", fmt.Errorf("unknown workload %q (have: %s)", name, strings.Join(Names, ", "))
	}
	if d < time.Millisecond {
		return "", fmt.Errorf("workload %s: duration %v is too short", name, d)
	}
	return vmm.ShellQuote([]string{GuestPath, name,
		strconv.FormatFloat(d.Seconds(), 'f', -1, 64),
		strconv.FormatInt(BucketWidth.Milliseconds(), 10)}), nil
}

// result turns the program's exit into a Result.
func result(name string, res *vmm.ExecResult) (*Result, error) {
	switch res.Status {
	case 0:
	case 127:
		return nil, fmt.Errorf("workload %s: %w: %s", name, ErrNotInGuest, strings.TrimSpace(string(res.Stderr)))
	default:
		return nil, fmt.Errorf("workload %s: lucos-workload exited with status %d: %s", name, res.Status, strings.TrimSpace(string(res.Stderr)))
	}
	r, err := Parse(name, res.Stdout)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", name, err)
	}
	return r, nil
}

// Run runs workload name for d in the guest and returns its result. The
// workload's setup (filling the SQLite table, say) comes first and is not
// timed, so Run takes somewhat longer than d.
func Run(ctx context.Context, m *vmm.Machine, name string, d time.Duration) (*Result, error) {
	cmd, err := command(name, d)
	if err != nil {
		return nil, err
	}
	res, err := m.ExecScript(ctx, "exec "+cmd)
	if err != nil {
		return nil, fmt.Errorf("workload %s: %w", name, err)
	}
	return result(name, res)
}

// Running is a workload started in the background in the guest.
type Running struct {
	Name string
	PID  int // of lucos-workload in the guest
	m    *vmm.Machine
	file string    // guest path prefix of its .out, .err, .rc files
	end  time.Time // host time by which it should be done, setup aside
}

// runsDir holds the output of background runs in the guest (tmpfs).
const runsDir = "/run/lucos-workload"

var runSeq atomic.Int64

// Start starts workload name for d in the background in the guest and
// returns once it runs; its output goes to a guest file until Wait collects
// it. Other commands (and patches) may run meanwhile.
func Start(ctx context.Context, m *vmm.Machine, name string, d time.Duration) (*Running, error) {
	cmd, err := command(name, d)
	if err != nil {
		return nil, err
	}
	file := fmt.Sprintf("%s/%d-%d", runsDir, os.Getpid(), runSeq.Add(1))
	// The subshell waits for the program and leaves its exit status in
	// .rc, renamed into place so that Wait never reads half of it.
	script := fmt.Sprintf(`mkdir -p %[1]s || exit 1
f=%[2]s
( %[3]s > $f.out 2> $f.err < /dev/null & echo $! > $f.pid.tmp; mv $f.pid.tmp $f.pid
  wait $!; echo $? > $f.rc.tmp; mv $f.rc.tmp $f.rc ) > /dev/null 2>&1 &
while [ ! -e $f.pid ]; do usleep 1000; done
cat $f.pid
`, runsDir, file, cmd)
	res, err := m.ExecScript(ctx, script)
	if err != nil {
		return nil, fmt.Errorf("workload %s: start: %w", name, err)
	}
	pid, err := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
	if res.Status != 0 || err != nil {
		return nil, fmt.Errorf("workload %s: start failed (status %d): %s%s", name, res.Status, res.Stdout, res.Stderr)
	}
	return &Running{Name: name, PID: pid, m: m, file: file, end: time.Now().Add(d)}, nil
}

// Wait waits for the workload to finish and returns its result. It sleeps
// on the host until the run should be over, so that it does not disturb the
// guest, then waits in the guest for the program's exit.
func (r *Running) Wait(ctx context.Context) (*Result, error) {
	select {
	case <-time.After(time.Until(r.end)):
	case <-ctx.Done():
		return nil, fmt.Errorf("workload %s: wait: %w", r.Name, ctx.Err())
	}
	script := fmt.Sprintf(`f=%s
while [ ! -e $f.rc ]; do usleep 50000; done
cat $f.out; cat $f.err >&2; rc=$(cat $f.rc)
rm -f $f.out $f.err $f.rc $f.pid
exit $rc
`, r.file)
	res, err := r.m.ExecScript(ctx, script)
	if err != nil {
		return nil, fmt.Errorf("workload %s: wait: %w", r.Name, err)
	}
	return result(r.Name, res)
}

// ClockSample relates the guest's CLOCK_MONOTONIC, the clock of Result's
// bucket ends, to the host's clock.
type ClockSample struct {
	Guest int64     // guest CLOCK_MONOTONIC, ns
	Host  time.Time // the middle of the exec round trip that read it
	// Uncertainty bounds the error of Host: the guest read its clock at
	// most this long before or after Host (half the round trip; tens of ms
	// under TCG).
	Uncertainty time.Duration
}

// clockSamples is how many round trips GuestClock makes; it keeps the
// tightest.
const clockSamples = 3

// GuestClock reads the guest's CLOCK_MONOTONIC with `lucos-workload clock`
// and pairs it with host time. The guest's clock advances with the host's
// while the VM runs but stands still while it is paused (vmm.Pause, every
// patch switch), so a sample maps only times after the last pause before it
// and before the next: take one after the run to map bucket ends.
func GuestClock(ctx context.Context, m *vmm.Machine) (ClockSample, error) {
	var best ClockSample
	for i := 0; i < clockSamples; i++ {
		t0 := time.Now()
		res, err := m.ExecScript(ctx, "exec "+GuestPath+" clock")
		t1 := time.Now()
		if err != nil {
			return ClockSample{}, fmt.Errorf("guest clock: %w", err)
		}
		if res.Status == 127 {
			return ClockSample{}, fmt.Errorf("guest clock: %w", ErrNotInGuest)
		}
		ns, err := strconv.ParseInt(strings.TrimSpace(string(res.Stdout)), 10, 64)
		if res.Status != 0 || err != nil {
			return ClockSample{}, fmt.Errorf("guest clock: lucos-workload clock (status %d): %q %s", res.Status, res.Stdout, res.Stderr)
		}
		s := ClockSample{Guest: ns, Host: t0.Add(t1.Sub(t0) / 2), Uncertainty: t1.Sub(t0) / 2}
		if i == 0 || s.Uncertainty < best.Uncertainty {
			best = s
		}
	}
	return best, nil
}

// HostTime maps a guest CLOCK_MONOTONIC reading to host time, within
// c.Uncertainty if no pause came between the two.
func (c ClockSample) HostTime(guestNS int64) time.Time {
	return c.Host.Add(time.Duration(guestNS - c.Guest))
}
