package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/lucos/lucos/bench/workload"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
)

// UnderLoadConfig sizes UnderLoad.
type UnderLoadConfig struct {
	Cycles    int           // apply+rollback cycles of each patch, per workload
	KLPCycles int           // Linux livepatch enable+disable cycles, per workload
	Spacing   time.Duration // from one lucos update to the next; at least updateWindow
	Workloads []string      // nil = workload.Names
	Patches   []string      // examples/patches directories; nil = underLoadPatches
}

// DefaultUnderLoad is what `lucos bench underload` runs.
var DefaultUnderLoad = UnderLoadConfig{Cycles: 4, KLPCycles: 2, Spacing: 1300 * time.Millisecond}

// underLoadPatches: one function with a static symbol; eleven hot
// functions with LUCOS_ORIG; data with state transfer and write watches.
var underLoadPatches = []string{"cmdline-string", "hot-paths", "data-layout"}

// updateWindow is the guest time around a lucos update over which the
// workload's throughput is compared with its typical rate.
const updateWindow = time.Second

// Time a workload runs beyond its updates: before the first (its setup,
// then a stretch of normal running) and after the last; and what a
// livepatch cycle is given (its transitions take about 3 s under load).
const (
	leadIn    = 2 * time.Second
	tail      = time.Second
	klpBudget = 6 * time.Second
)

// UnderLoad runs DefaultUnderLoad.
func UnderLoad(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	return RunUnderLoad(ctx, opts, progress, DefaultUnderLoad)
}

// lucosUpdate is one apply or rollback by lucos during a run.
type lucosUpdate struct {
	patch, kind string // kind: "apply" or "rollback"
	info        patch.Info
	at          time.Time     // host time of the switch (when the VM resumed from it)
	paused      time.Duration // VM paused total read when the call returned
	ownPauses   time.Duration // the update's pauses: load, switch, stack checks
}

// underLoadSamples gathers what UnderLoad reports.
type underLoadSamples struct {
	pause, load, commit map[string][]float64 // apply, by patch (ms)
	rbPause, rbSettle   []float64            // rollback, all patches (ms)
	klpOn, klpOff       []float64            // Linux livepatch transitions (ms)
	// Throughput relative to the run's rate away from updates, by workload.
	tputApply, tputRollback, tputKLPOn, tputKLPOff map[string][]float64
	dropped                                        int     // updates whose window fell outside the run
	clockErr                                       float64 // the largest mapping error seen, ms
}

// RunUnderLoad applies and rolls back example patches while each workload
// runs (the LUCOS paper's "time to apply and roll back with workloads
// running"), then makes the cmdline-string change with the in-guest Linux
// livepatch on the same guest under the same workload. It reports the
// guest-visible pauses and times to commit, the livepatch transition times,
// and the workload's throughput around each update relative to its rate
// away from every update.
func RunUnderLoad(ctx context.Context, opts launch.Options, progress io.Writer, cfg UnderLoadConfig) (*Result, error) {
	names, patches := cfg.Workloads, cfg.Patches
	if names == nil {
		names = workload.Names
	}
	if patches == nil {
		patches = underLoadPatches
	}
	if cfg.Cycles < 1 || cfg.KLPCycles < 0 || cfg.Spacing < updateWindow {
		return nil, fmt.Errorf("underload: %d cycles, %d livepatch cycles, spacing %v (at least %v)", cfg.Cycles, cfg.KLPCycles, cfg.Spacing, updateWindow)
	}
	g, err := bootWorkloadGuest(ctx, opts, progress, "underload", patches, cfg.KLPCycles > 0)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	s := &underLoadSamples{
		pause: map[string][]float64{}, load: map[string][]float64{}, commit: map[string][]float64{},
		tputApply: map[string][]float64{}, tputRollback: map[string][]float64{}, tputKLPOn: map[string][]float64{}, tputKLPOff: map[string][]float64{},
	}
	start := time.Now()
	for _, w := range names {
		if err := g.underLoadRun(ctx, progress, w, patches, cfg, s); err != nil {
			return nil, fmt.Errorf("underload: %s: %w", w, err)
		}
		fmt.Fprintf(progress, "underload: %s done (%v so far)\n", w, time.Since(start).Round(time.Second))
	}
	return underLoadResult(g, names, patches, cfg, s), nil
}

// underLoadRun runs workload w with every update of one batch in it.
func (g *workloadGuest) underLoadRun(ctx context.Context, progress io.Writer, w string, patches []string, cfg UnderLoadConfig, s *underLoadSamples) error {
	d := leadIn + time.Duration(cfg.Cycles*len(patches)*2)*cfg.Spacing + time.Duration(cfg.KLPCycles)*klpBudget + tail
	ref, err := g.clock(ctx)
	if err != nil {
		return err
	}
	run, err := workload.Start(ctx, g.m, w, d)
	if err != nil {
		return err
	}
	fmt.Fprintf(progress, "underload: %s runs %v: %d lucos updates, %d livepatch cycles\n", w, d.Round(time.Second), cfg.Cycles*len(patches)*2, cfg.KLPCycles)
	sleep(ctx, leadIn)
	var ups []lucosUpdate
	for c := 0; c < cfg.Cycles; c++ {
		for _, name := range patches {
			p0 := g.m.PausedTotal()
			p, err := g.apply(ctx, name)
			if err != nil {
				return err
			}
			ups = append(ups, g.update(p, name, "apply", patch.StateTransitioning, p0))
			sleep(ctx, cfg.Spacing)
			p0 = g.m.PausedTotal()
			if err := g.rollback(ctx, p); err != nil {
				return err
			}
			ups = append(ups, g.update(p, name, "rollback", patch.StateReverting, p0))
			sleep(ctx, cfg.Spacing)
		}
	}
	var klps []klpTimes
	for c := 0; c < cfg.KLPCycles; c++ {
		k, err := klpCycle(ctx, g.m)
		if err != nil {
			return err
		}
		klps = append(klps, k)
	}
	res, err := run.Wait(ctx)
	if err != nil {
		return err
	}
	after, err := g.clock(ctx)
	if err != nil {
		return err
	}
	// The mapping's error, checked where both ends are known: the second
	// reading predicted from the first.
	s.clockErr = max(s.clockErr, math.Abs(float64(after.Guest-ref.guestTime(after.Host, after.Paused)))/1e6)

	// Every update's window, in guest time; the typical rate is the
	// rate away from all of them.
	half := int64(updateWindow / 2)
	var windows [][2]int64
	for _, u := range ups {
		at := ref.guestTime(u.at, u.paused)
		windows = append(windows, [2]int64{at - half, at + half})
	}
	for _, k := range klps {
		windows = append(windows, [2]int64{k.Insmod, k.Disabled})
	}
	typical := typicalRate(res, windows...)
	for i, u := range ups {
		in := u.info
		if u.kind == "apply" {
			s.pause[u.patch] = append(s.pause[u.patch], in.PauseUS/1e3)
			s.load[u.patch] = append(s.load[u.patch], in.LoadPauseUS/1e3)
			s.commit[u.patch] = append(s.commit[u.patch], in.CommitMS)
		} else {
			s.rbPause = append(s.rbPause, in.PauseUS/1e3)
			s.rbSettle = append(s.rbSettle, in.CommitMS)
		}
		rel, ok := windowRate(res, windows[i][0], windows[i][1], u.ownPauses, typical)
		switch {
		case !ok:
			s.dropped++
		case u.kind == "apply":
			s.tputApply[w] = append(s.tputApply[w], rel)
		default:
			s.tputRollback[w] = append(s.tputRollback[w], rel)
		}
	}
	for _, k := range klps {
		s.klpOn, s.klpOff = append(s.klpOn, k.onMS()), append(s.klpOff, k.offMS())
		if rel, ok := windowRate(res, k.Insmod, k.Enabled, 0, typical); ok {
			s.tputKLPOn[w] = append(s.tputKLPOn[w], rel)
		} else {
			s.dropped++
		}
		if rel, ok := windowRate(res, k.Enabled, k.Disabled, 0, typical); ok {
			s.tputKLPOff[w] = append(s.tputKLPOff[w], rel)
		} else {
			s.dropped++
		}
	}
	fmt.Fprintf(progress, "underload: %s: %.0f ops/s away from updates; around lucos updates %s of it; during livepatch transitions %s\n",
		w, typical, medianOf(concat(s.tputApply[w], s.tputRollback[w])), medianOf(concat(s.tputKLPOn[w], s.tputKLPOff[w])))
	return nil
}

// update records an apply or rollback that just returned; the switch is
// the time p entered state sw.
func (g *workloadGuest) update(p *patch.Patch, name, kind string, sw patch.State, pausedBefore time.Duration) lucosUpdate {
	in := p.Info()
	paused := g.m.PausedTotal()
	u := lucosUpdate{patch: name, kind: kind, info: in, paused: paused, ownPauses: paused - pausedBefore}
	for _, ev := range in.History {
		if ev.State == sw {
			u.at = ev.At // the last one: a patch goes through each state once per call
		}
	}
	return u
}

// concat returns a new slice of a's then b's samples.
func concat(a, b []float64) []float64 { return append(append([]float64(nil), a...), b...) }

func medianOf(x []float64) string {
	if len(x) == 0 {
		return "–"
	}
	return fmt.Sprintf("%.3f", spreadOf(x).Median)
}

func sleep(ctx context.Context, d time.Duration) {
	select {
	case <-time.After(d):
	case <-ctx.Done():
	}
}

// Rows of UnderLoad that claims and figures refer to.
const (
	rowULRollbackPause  = "lucos rollback: switch pause (all patches)"
	rowULRollbackSettle = "lucos rollback → slot freed (all patches)"
	rowULKLPOn          = "Linux livepatch: insmod → transition done"
	rowULKLPOff         = "Linux livepatch: disable → transition done"
	rowULTputApply      = "workload throughput, 1 s around a lucos apply"
	rowULTputRollback   = "workload throughput, 1 s around a lucos rollback"
	rowULTputKLPOn      = "workload throughput during a livepatch enable transition"
	rowULTputKLPOff     = "workload throughput during a livepatch disable transition"
)

func rowULPause(p string) string  { return "lucos apply " + p + ": switch pause" }
func rowULLoad(p string) string   { return "lucos apply " + p + ": longest load pause" }
func rowULCommit(p string) string { return "lucos apply " + p + " → committed" }

func underLoadResult(g *workloadGuest, names, patches []string, cfg UnderLoadConfig, s *underLoadSamples) *Result {
	res := &Result{Scenario: "apply and roll back under load, next to in-guest Linux livepatch"}
	var allPause, allLoad, allCommit []float64
	for _, p := range patches {
		res.Rows = append(res.Rows,
			distribution(rowULPause(p), "ms", s.pause[p]),
			distribution(rowULLoad(p), "ms", s.load[p]),
			distribution(rowULCommit(p), "ms", s.commit[p]))
		allPause, allLoad, allCommit = concat(allPause, s.pause[p]), concat(allLoad, s.load[p]), concat(allCommit, s.commit[p])
	}
	rb := distribution(rowULRollbackSettle, "ms", s.rbSettle)
	res.Rows = append(res.Rows, distribution(rowULRollbackPause, "ms", s.rbPause), rb)
	var lucosCommit Row
	for _, r := range res.Rows {
		if r.What == rowULCommit("cmdline-string") {
			lucosCommit = r
		}
	}
	if len(s.klpOn) > 0 {
		on, off := distribution(rowULKLPOn, "ms", s.klpOn), distribution(rowULKLPOff, "ms", s.klpOff)
		if lucosCommit.P50 > 0 {
			on.Ratio = fmt.Sprintf("%.0f× lucos cmdline-string", on.P50/lucosCommit.P50)
		}
		if rb.P50 > 0 {
			off.Ratio = fmt.Sprintf("%.0f× lucos rollback", off.P50/rb.P50)
		}
		res.Rows = append(res.Rows, on, off)
	}
	pooled := func(by map[string][]float64) []float64 {
		var out []float64
		for _, w := range names {
			out = append(out, by[w]...)
		}
		return out
	}
	tput := func(what string, by map[string][]float64) {
		if x := pooled(by); len(x) > 0 {
			r := distribution(what, "× typical", x)
			r.P99 = 0 // the low tail is the point: min
			r.Ratio = fmt.Sprintf("%+.1f%% at the median", (r.P50-1)*100)
			res.Rows = append(res.Rows, r)
		}
	}
	tput(rowULTputApply, s.tputApply)
	tput(rowULTputRollback, s.tputRollback)
	tput(rowULTputKLPOn, s.tputKLPOn)
	tput(rowULTputKLPOff, s.tputKLPOff)

	var perWorkload []string
	for _, w := range names {
		perWorkload = append(perWorkload, fmt.Sprintf("%s %s / %s", w,
			medianOf(concat(s.tputApply[w], s.tputRollback[w])), medianOf(concat(s.tputKLPOn[w], s.tputKLPOff[w]))))
	}
	res.Notes = []string{
		fmt.Sprintf("%s, %d vCPUs, %s. Each workload (%s) runs in the background while lucos applies and rolls back %s, %d times each (apply with wait for commit, %v later rollback with wait, %v later the next update), then the in-guest Linux livepatch makes the cmdline-string change %d times (examples/klp/cmdline-klp: insmod, wait for the transition, disable, wait, rmmod; timed in the guest from /proc/timer_list).",
			g.m.Release(), g.m.CPUs(), accelNote(g.m), strings.Join(names, ", "), strings.Join(patches, ", "), cfg.Cycles, cfg.Spacing, cfg.Spacing, cfg.KLPCycles),
		"Throughput rows: the workload's ops in a window of guest time, per second, divided by its rate over the rest of the run, away from every update's window (1.0 = undisturbed; p99 left out, min is the deepest dip). For a lucos update the window is the 1 s of guest time centred on the switch, and the update's own pauses (load, switch, stack checks) are added to its length, since the guest's clock stands still while the VM is paused. For the livepatch the window is the transition itself, on the guest's clock; nothing pauses the VM then.",
		fmt.Sprintf("Host time maps to guest time as the host time elapsed since a clock reading taken before the run, less the VM's paused total grown meanwhile (vmm.Machine.PausedTotal). The reading's own uncertainty is half an exec round trip; checked against a second reading after the run, the mapping was off by at most %.1f ms. %d windows fell outside a run and are left out.", s.clockErr, s.dropped),
		"Median throughput around lucos updates / during livepatch transitions, per workload: " + strings.Join(perWorkload, "; ") + ".",
	}
	res.Figures = []Figure{
		histogramFigure("underload-pause.svg", "Guest-visible pauses of lucos updates with a workload running: the switch (apply and rollback) and the longest of each apply's load pauses",
			"lucos pauses under load", "pause (ms)", map[string][]float64{
				"switch (apply, rollback)": concat(allPause, s.rbPause),
				"longest load pause":       allLoad,
			}),
	}
	cdf := map[string][]float64{"lucos commit": allCommit, "lucos rollback": s.rbSettle}
	if len(s.klpOn) > 0 {
		cdf["livepatch enable"] = s.klpOn
		cdf["livepatch disable"] = s.klpOff
	}
	res.Figures = append(res.Figures, cdfFigure("underload-commit-cdf.svg", "Time for an update to take effect everywhere with a workload running: lucos's apply → committed and rollback → slot freed, next to the in-guest Linux livepatch's enable and disable transitions (log scale)",
		"Time to commit under load", "ms (log scale)", true, cdf))
	return res
}
