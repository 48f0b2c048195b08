package workload

import (
	"context"
	"os"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/vmm"
)

// bootWithWorkload boots the default guest with lucos-workload in it.
func bootWithWorkload(t *testing.T) *vmm.Machine {
	t.Helper()
	o := testvm.Options(t)
	o.Extend = Extend(build(t))
	return testvm.Boot(t, o)
}

// checkResult checks what every run of d must give, whatever the speed.
func checkResult(t *testing.T, r *Result, name string, d time.Duration) {
	t.Helper()
	maxBuckets := int(d / BucketWidth)
	switch {
	case r.Name != name:
		t.Errorf("%s: result named %q", name, r.Name)
	case r.Ops <= 0:
		t.Errorf("%s: no ops", name)
	case r.Elapsed < d:
		t.Errorf("%s: ran %v, asked for %v", name, r.Elapsed, d)
	case len(r.Buckets) < maxBuckets/2 || len(r.Buckets) > maxBuckets:
		// One bucket per deadline passed: fewer only if the program
		// stalled for whole buckets.
		t.Errorf("%s: %d buckets, want %d (at least %d)", name, len(r.Buckets), maxBuckets, maxBuckets/2)
	}
	if want := float64(r.Ops) / r.Elapsed.Seconds(); r.OpsPerSec < want*0.999 || r.OpsPerSec > want*1.001 {
		t.Errorf("%s: %v ops/s, but %d ops in %v", name, r.OpsPerSec, r.Ops, r.Elapsed)
	}
	prev := r.StartNS
	for i, b := range r.Buckets {
		if b.EndNS <= prev {
			t.Errorf("%s: bucket %d ends at %d, not after %d", name, i, b.EndNS, prev)
		}
		prev = b.EndNS
	}
}

func TestWorkloadsInGuest(t *testing.T) {
	m := bootWithWorkload(t)
	const d = 2 * time.Second
	for _, name := range Names {
		ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
		c0, err := GuestClock(ctx, m)
		if err != nil {
			t.Fatal(err)
		}
		r, err := Run(ctx, m, name, d)
		cancel()
		if err != nil {
			t.Fatalf("%s: %v\nconsole:\n%s", name, err, m.ConsoleTail(20))
		}
		checkResult(t, r, name, d)
		if r.StartNS <= c0.Guest {
			t.Errorf("%s: started at %d, before the clock read before Run (%d)", name, r.StartNS, c0.Guest)
		}
		t.Logf("guest %-8s %10.1f ops/s  (%d ops, %d buckets, %v)", name, r.OpsPerSec, r.Ops, len(r.Buckets), r.Elapsed.Round(time.Millisecond))
		if out := os.Getenv("LUCOS_WORKLOAD_GOLDEN"); out != "" && name == "oltp" {
			// Regenerate testdata/oltp.out: the raw output of this run.
			res, err := m.ExecScript(context.Background(), "exec "+GuestPath+" oltp 2")
			if err != nil || res.Status != 0 {
				t.Fatalf("golden run: %v %s", err, res.Stderr)
			}
			if err := os.WriteFile(out, res.Stdout, 0o644); err != nil {
				t.Fatal(err)
			}
		}
	}
	ctx := context.Background()
	if _, err := Run(ctx, m, "nope", d); err == nil || !strings.Contains(err.Error(), "unknown workload") {
		t.Errorf("unknown workload: %v", err)
	}
}

// Start runs a workload in the background while the guest does other
// things (the host applies patches under load this way).
func TestStartWait(t *testing.T) {
	m := bootWithWorkload(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	const d = 3 * time.Second
	run, err := Start(ctx, m, "syscall", d)
	if err != nil {
		t.Fatal(err)
	}
	// Meanwhile: the workload runs, and the control channel still works.
	res := testvm.Exec(t, m, "cat", "/proc/"+strconv.Itoa(run.PID)+"/comm")
	if got := strings.TrimSpace(string(res.Stdout)); res.Status != 0 || got != "lucos-workload" {
		t.Errorf("pid %d is %q (status %d), want lucos-workload", run.PID, got, res.Status)
	}
	other, err := Run(ctx, m, "cpu", time.Second)
	if err != nil {
		t.Fatalf("Run during Start: %v", err)
	}
	checkResult(t, other, "cpu", time.Second)

	r, err := run.Wait(ctx)
	if err != nil {
		t.Fatal(err)
	}
	checkResult(t, r, "syscall", d)
	after, err := GuestClock(ctx, m)
	if err != nil {
		t.Fatal(err)
	}
	if last := r.Buckets[len(r.Buckets)-1].EndNS; last >= after.Guest {
		t.Errorf("run ended at %d, after the clock read after Wait (%d)", last, after.Guest)
	}
	t.Logf("syscall under a concurrent cpu run: %.0f ops/s; guest clock ± %v; run ended %v before the clock read",
		r.OpsPerSec, after.Uncertainty, after.HostTime(after.Guest).Sub(after.HostTime(r.Buckets[len(r.Buckets)-1].EndNS)).Round(time.Millisecond))
	// Wait cleaned up after itself.
	if res := testvm.Exec(t, m, "sh", "-c", "ls "+runsDir); strings.TrimSpace(string(res.Stdout)) != "" {
		t.Errorf("left in %s: %s", runsDir, res.Stdout)
	}
}
