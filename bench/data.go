package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/guestmod"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

// Counts for Data.
const (
	dataRounds = 5    // interleaved rounds of the three conditions
	dataOps    = 1000 // guest operations per run
)

// The guest loops Data times: dataOps writes of the watched instance
// (each `add 1` stores its count and its total: two trapped writes), and
// dataOps reads of the module's stats file (no write to a watched page).
const (
	dataWriteLoop = `i=0; while [ $i -lt %d ]; do echo 'add 1' > /proc/lucos_bugs/stats; i=$((i+1)); done`
	dataReadLoop  = `i=0; while [ $i -lt %d ]; do read l < /proc/lucos_bugs/stats; i=$((i+1)); done`
)

// Data measures what keeping old and new data coherent costs: the handling
// of one trapped write, and the guest's slowdown while an instance is
// watched, for a write-heavy and a read-heavy loop over the lucos_bugs
// module's stats (examples/patches/data-layout). Three conditions run in
// interleaved rounds: no patch; the patch transitioning with its watches in
// place (a task held inside the old code keeps the coherence window open);
// and the patch committed (new code, no watches). Loops are timed on the
// host: the guest's clock stops while a trap pauses it.
func Data(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	fmt.Fprintln(progress, "data: building data-layout and the lucos_bugs module")
	tmp, err := os.MkdirTemp("", "lucos-bench-data-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	ko, err := BuildExample(ctx, "patches/data-layout", opts.Image.Release, tmp)
	if err != nil {
		return nil, err
	}
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return nil, err
	}
	bugs, err := guestmod.Cached(ctx, img, progress)
	if err != nil {
		return nil, err
	}
	opts.Extend = guestmod.Extend(bugs, opts.Extend)

	fmt.Fprintln(progress, "data: booting the guest")
	m, e, err := startEngine(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	defer e.Close()

	run := func(loop string) (float64, error) {
		t0 := time.Now()
		res, err := m.ExecScript(ctx, fmt.Sprintf(loop, dataOps))
		if err == nil && res.Status != 0 {
			err = fmt.Errorf("guest loop exited %d: %s", res.Status, res.Stderr)
		}
		return float64(time.Since(t0).Microseconds()) / dataOps, err
	}
	conds := []string{"none", "watched", "committed"}
	perOp := map[string]map[string][]float64{"write": {}, "read": {}}
	var traps int64
	for round := 0; round < dataRounds; round++ {
		fmt.Fprintf(progress, "data: round %d/%d\n", round+1, dataRounds)
		for i := range conds {
			cond := conds[(i+round)%len(conds)] // rotate the order
			p, err := dataCondition(ctx, m, e, ko, cond)
			if err != nil {
				return nil, err
			}
			before := int64(0)
			if p != nil {
				before = p.Info().Traps
			}
			for _, kind := range []string{"write", "read"} {
				loop := map[string]string{"write": dataWriteLoop, "read": dataReadLoop}[kind]
				us, err := run(loop)
				if err != nil {
					return nil, err
				}
				perOp[kind][cond] = append(perOp[kind][cond], us)
			}
			if p != nil {
				in := p.Info()
				if cond == "watched" && (!in.Watching || in.State != patch.StateTransitioning) {
					return nil, fmt.Errorf("round %d: the coherence window closed early (%s, watching %v)", round, in.State, in.Watching)
				}
				traps += in.Traps - before
				if err := dataRelease(ctx, m, e, p); err != nil {
					return nil, err
				}
			}
		}
	}
	var trapUS []float64
	for _, d := range e.TrapTimes() {
		trapUS = append(trapUS, micros(d))
	}
	rows := []Row{
		distribution("trapped write: stop → transfer done (host)", "µs", trapUS),
	}
	for _, kind := range []string{"write", "read"} {
		what := map[string]string{"write": "write-heavy loop (2 trapped writes per op when watched)", "read": "read-heavy loop (no write to a watched page)"}[kind]
		base := distribution(what+": no patch", "µs/op", perOp[kind]["none"])
		base.Ratio = "1"
		rows = append(rows, base)
		for _, cond := range []string{"watched", "committed"} {
			r := distribution(fmt.Sprintf("%s: %s", what, map[string]string{"watched": "coherence window (watched)", "committed": "committed (no watch)"}[cond]), "µs/op", perOp[kind][cond])
			r.Ratio = fmt.Sprintf("%.3f×", r.P50/base.P50)
			rows = append(rows, r)
		}
	}
	extra := (rows[2].P50 - rows[3].P50) / 2 // two trapped writes per op
	return &Result{Scenario: "data coherence: trapped writes", Rows: rows, Notes: []string{
		fmt.Sprintf("%s, %d vCPUs, %s, lucos_bugs module; %d interleaved rounds of no patch / data-layout transitioning with watches / data-layout committed, each %d ops per loop, timed on the host (the guest's clock stops while a trap pauses it).", m.Release(), m.CPUs(), accelNote(m), dataRounds, dataOps),
		fmt.Sprintf("%d trapped writes in the watched runs; each costs the guest about %.0f µs (write-heavy µs/op watched minus committed, over 2 traps per op); lucos's own handling of one is the first row, the rest is QEMU's stop and resume.", traps, extra),
	}}, nil
}

// dataCondition sets up one condition and returns the patch (nil for none).
func dataCondition(ctx context.Context, m *vmm.Machine, e *patch.Engine, ko []byte, cond string) (*patch.Patch, error) {
	switch cond {
	case "none":
		return nil, nil
	case "watched":
		// A task inside the old lucos_bugs_stats_hold holds the update.
		if _, err := m.ExecScript(ctx, `sh -c 'echo "hold 1" > /proc/lucos_bugs/stats' & p=$!
until grep -q '^1 ' /proc/$p/syscall 2>/dev/null && [ "$(cut -d' ' -f3 /proc/$p/stat)" = S ]; do sleep 0.02; done`); err != nil {
			return nil, err
		}
		return e.Apply(ctx, ko, patch.Options{})
	}
	return e.Apply(ctx, ko, patch.Options{Wait: true, Timeout: time.Minute})
}

// dataRelease lets a held task go and rolls the patch back.
func dataRelease(ctx context.Context, m *vmm.Machine, e *patch.Engine, p *patch.Patch) error {
	if p.Info().State == patch.StateTransitioning {
		if _, err := m.ExecScript(ctx, "echo release > /proc/lucos_bugs/stats"); err != nil {
			return err
		}
	}
	deadline := time.Now().Add(time.Minute)
	for p.Info().State == patch.StateTransitioning && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond)
	}
	if _, err := e.Rollback(ctx, p.ID(), patch.Options{Wait: true, Timeout: time.Minute}); err != nil {
		return err
	}
	if st := p.Info().State; st != patch.StateRolledBack {
		return fmt.Errorf("data-layout after rollback: %s", st)
	}
	return nil
}

// startEngine boots a guest from opts and attaches a patch engine to it.
func startEngine(ctx context.Context, opts launch.Options) (*vmm.Machine, *patch.Engine, error) {
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return nil, nil, err
	}
	_, e, err := patch.Attach(ctx, m, opts.Image.CacheDir)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	return m, e, nil
}
