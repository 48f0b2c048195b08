package bench

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/launch"
)

// Smoke tests of the workload scenarios on a real guest, with tiny counts:
// they run end to end and give the rows, claims and figures the report
// needs. The numbers themselves are not checked (see docs/BENCHMARKS.md).

func workloadOpts(t *testing.T) launch.Options {
	t.Helper()
	testreq.Tools(t, "gcc", "make")
	return testvm.Options(t)
}

// checkResult checks what the report needs of a scenario's result.
func checkResult(t *testing.T, name string, r *Result) {
	t.Helper()
	if len(r.Rows) == 0 {
		t.Fatalf("%s: no rows", name)
	}
	for _, row := range r.Rows {
		if row.N == 0 {
			t.Errorf("%s: row %q has no samples", name, row.What)
		}
	}
	claims, err := Claims(map[string]*Result{name: r})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) == 0 {
		t.Errorf("%s: no claims", name)
	}
	for _, c := range claims {
		t.Logf("claim: %s", c.Text)
	}
	dir := t.TempDir()
	for _, f := range r.Figures {
		path, err := f.Draw(dir)
		if err != nil {
			t.Fatalf("%s: %v", f.File, err)
		}
		if b, err := os.ReadFile(path); err != nil || !bytes.Contains(b, []byte("<svg")) {
			t.Errorf("%s: not an SVG (%v)", f.File, err)
		}
	}
	var md bytes.Buffer
	Markdown(&md, []*Result{r})
	t.Logf("\n%s", md.String())
}

func TestOverheadSmoke(t *testing.T) {
	opts := workloadOpts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := RunOverhead(ctx, opts, &progress, OverheadConfig{ICountRounds: 2, Rounds: 1, Run: 300 * time.Millisecond, Workloads: []string{"syscall", "fs"}})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	t.Logf("progress:\n%s", progress.String())
	checkResult(t, "overhead", r)
	// Per workload: 4 rows on each clock, and the window with pauses.
	if len(r.Rows) != 2*(4+4+1) {
		t.Errorf("%d rows, want 9 per workload", len(r.Rows))
	}
	if len(r.Overhead) != 2 {
		t.Fatalf("%d verdicts, want one per workload", len(r.Overhead))
	}
	for _, v := range r.Overhead {
		if v.NoiseFloorPct.N != 2 || v.HostClock == nil || v.Committed == "" || v.Window == "" {
			t.Errorf("verdict %+v: want 2 instruction-clock rounds, a host clock part and both verdicts", v)
		}
		// The window pauses the VM for its stack checks: the guest
		// loses that time, which the instruction clock alone hides.
		if v.WindowPausedPct.Median <= 0 || v.WindowOverheadPct.Median < v.WindowPausedPct.Median-1 {
			t.Errorf("%s: window %+v, paused %+v: the pauses do not show", v.Workload, v.WindowOverheadPct, v.WindowPausedPct)
		}
	}
	if len(r.Figures) != 1 {
		t.Errorf("%d figures, want the bars", len(r.Figures))
	}
}

func TestUnderLoadSmoke(t *testing.T) {
	opts := workloadOpts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := RunUnderLoad(ctx, opts, &progress, UnderLoadConfig{Cycles: 1, KLPCycles: 1, Spacing: updateWindow, Workloads: []string{"syscall"}})
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	checkResult(t, "underload", r)
	for _, want := range []string{rowULPause("hot-paths"), rowULCommit("data-layout"), rowULKLPOn, rowULTputApply, rowULTputKLPOn} {
		if _, err := findRow(r, want); err != nil {
			t.Error(err)
		}
	}
	if len(r.Figures) != 2 {
		t.Errorf("%d figures, want the pause histogram and the commit CDF", len(r.Figures))
	}
	if !strings.Contains(progress.String(), "underload: syscall done") {
		t.Errorf("no progress:\n%s", progress.String())
	}
}

// A short soak: every read right, no oops.
func TestSoakShort(t *testing.T) {
	opts := workloadOpts(t)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	r, err := RunSoak(ctx, opts, &progress, SoakConfig{Cycles: 12})
	if r != nil {
		for _, n := range r.Notes {
			t.Log(n)
		}
	}
	if err != nil {
		t.Fatalf("%v\n%s", err, progress.String())
	}
	for _, row := range r.Rows {
		if row.N != 12 {
			t.Errorf("row %q has %d samples, want one per cycle", row.What, row.N)
		}
	}
}
