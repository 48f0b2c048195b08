package bench

import (
	"context"
	"fmt"
	"io"
	"math"
	"strings"
	"time"

	"github.com/lucos/lucos/bench/plot"
	"github.com/lucos/lucos/bench/workload"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

// OverheadConfig sizes Overhead.
type OverheadConfig struct {
	// ICountRounds are rounds of the conditions on a guest whose clock
	// counts instructions (vmm.Config.ICount): the decisive measurement.
	ICountRounds int
	// Rounds are rounds on a guest with a normal clock, timed on the host:
	// what the instruction clock cannot see, the host time the VM stands
	// paused and the cost of a trap beyond it, but noisy.
	Rounds    int
	Run       time.Duration // each workload run (its setup comes on top)
	Workloads []string      // nil = workload.Names
}

// DefaultOverhead is what `lucos bench overhead` runs. On the instruction
// clock a run's rate is nearly exact, so a few rounds decide; on the host
// clock, many short rounds rather than a few long ones, because this kind of
// host (a 2-core VM running TCG) changes speed by tens of percent from one
// stretch of seconds to the next, and the four runs of a round should see
// the same speed.
var DefaultOverhead = OverheadConfig{ICountRounds: 5, Rounds: 8, Run: time.Second}

// Targets of the design for normal execution: throughput with a committed
// code patch and during a data-coherence window, relative to no patch.
const (
	TargetCommitted = 0.995 // < 0.5% slowdown
	TargetCoherence = 0.95  // < 5% slowdown
)

// TargetNoiseFloor is what the A/A control of the instruction clock must
// stay under (issue 14): a tenth of a percent or so below the smallest
// target, so that the verdicts are decided.
const TargetNoiseFloor = 0.003

// The conditions Overhead compares, in the order of its first round.
const (
	condNone      = "no patch"
	condCode      = "committed code patch"
	condCoherence = "coherence window"
	// condAgain runs with no patch a second time in each round: its ratio
	// to condNone is the noise floor of the comparison.
	condAgain = "no patch, again (noise floor)"
)

var overheadConds = []string{condNone, condCode, condCoherence, condAgain}

// The clocks a run is measured on; rows are named "workload (clock): condition".
const (
	clockInstr = "instructions"
	clockHost  = "host time"
	// clockCombined is the instruction clock's ratio times the fraction of
	// host time the VM ran: a coherence window's cost as the guest sees it,
	// its own extra instructions and the stack checks' and traps' pauses.
	clockCombined = "instructions + pauses"
)

func overheadRowName(w, clock, cond string) string { return w + " (" + clock + "): " + cond }

// barSeries names the conditions in the figure's legend.
var barSeries = map[string]string{condCode: "committed patch", condCoherence: "coherence window", condAgain: "no patch again (noise)"}

// Overhead runs DefaultOverhead.
func Overhead(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	return RunOverhead(ctx, opts, progress, DefaultOverhead)
}

// RunOverhead measures what lucos costs a guest's normal execution, the
// LUCOS paper's "relative performance": each workload runs with no patch,
// with hot-paths committed (pass-through wrappers over the workloads' hot
// system calls: every call takes lucos's jmp), and during a data-coherence
// window (data-layout transitioning with its write watches in place, held
// by a task asleep in the old code, the engine checking stacks meanwhile),
// and once more with no patch: that A/A control shows the noise floor. The
// conditions run in rounds, in an order that rotates from round to round,
// and each condition's throughput is divided by the no-patch throughput of
// the same round and workload.
//
// It runs twice: first on a guest whose clock counts instructions, where a
// workload's ops per guest second are ops per 10^9 instructions, whatever
// the host's speed (the verdicts come from here); then on a normal guest,
// timed on the host.
func RunOverhead(ctx context.Context, opts launch.Options, progress io.Writer, cfg OverheadConfig) (*Result, error) {
	names := cfg.Workloads
	if names == nil {
		names = workload.Names
	}
	if cfg.Rounds < 0 || cfg.ICountRounds < 0 || cfg.Rounds+cfg.ICountRounds == 0 || cfg.Run <= 0 {
		return nil, fmt.Errorf("overhead: %d+%d rounds of %v", cfg.ICountRounds, cfg.Rounds, cfg.Run)
	}
	var passes []*overheadPass
	for _, clock := range []string{clockInstr, clockHost} {
		rounds := cfg.Rounds
		o := opts
		if clock == clockInstr {
			rounds = cfg.ICountRounds
			// QEMU 7.2's instruction clock does not bring up a second
			// vCPU of this kernel (it stops at "smp: Bringing up
			// secondary CPUs"), and each workload is one process anyway.
			o.VM.ICount, o.VM.CPUs, o.VM.Accel = true, 1, vmm.AccelTCG
		}
		if rounds == 0 {
			continue
		}
		p, err := runOverheadPass(ctx, o, progress, clock, rounds, cfg.Run, names)
		if err != nil {
			return nil, err
		}
		passes = append(passes, p)
	}
	return overheadResult(names, passes, cfg), nil
}

// overheadPass is one guest's rounds: per workload and condition, one
// throughput and one paused fraction per round.
type overheadPass struct {
	clock   string
	release string
	cpus    int
	rounds  int
	rate    map[string]map[string][]float64 // ops/s of the pass's clock
	paused  map[string]map[string][]float64 // fraction of the run's host time the VM stood paused
}

func runOverheadPass(ctx context.Context, opts launch.Options, progress io.Writer, clock string, rounds int, run time.Duration, names []string) (*overheadPass, error) {
	scenario := "overhead (" + clock + ")"
	g, err := bootWorkloadGuest(ctx, opts, progress, scenario, []string{"hot-paths", "data-layout"}, false)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	p := &overheadPass{clock: clock, release: g.m.Release(), cpus: g.m.CPUs(), rounds: rounds,
		rate: map[string]map[string][]float64{}, paused: map[string]map[string][]float64{}}
	for _, w := range names {
		p.rate[w], p.paused[w] = map[string][]float64{}, map[string][]float64{}
	}
	start := time.Now()
	for round := 0; round < rounds; round++ {
		for _, w := range names {
			var line []string
			for i := range overheadConds {
				cond := overheadConds[(i+round)%len(overheadConds)]
				guestRate, paused, wall, err := g.overheadRun(ctx, w, cond, run)
				if err != nil {
					return nil, fmt.Errorf("%s: round %d, %s, %s: %w", scenario, round+1, w, cond, err)
				}
				r := guestRate
				if clock == clockHost {
					r = hostRate(guestRate, paused, wall)
				}
				p.rate[w][cond] = append(p.rate[w][cond], r)
				p.paused[w][cond] = append(p.paused[w][cond], min(paused.Seconds()/wall.Seconds(), 1))
				line = append(line, fmt.Sprintf("%s %.0f/s", cond, r))
			}
			fmt.Fprintf(progress, "%s: round %d/%d, %s: %s (%v so far)\n", scenario, round+1, rounds, w, strings.Join(line, ", "), time.Since(start).Round(time.Second))
		}
	}
	return p, nil
}

// overheadRun sets up cond, runs workload w for d, undoes cond, and returns
// the run's throughput in ops per second of guest time, and how long the
// VM stood paused during the run's exec and how long that exec took.
func (g *workloadGuest) overheadRun(ctx context.Context, w, cond string, d time.Duration) (float64, time.Duration, time.Duration, error) {
	var p *patch.Patch
	var err error
	switch cond {
	case condCode:
		p, err = g.apply(ctx, "hot-paths")
	case condCoherence:
		// A task asleep in the old lucos_bugs_stats_hold keeps the update
		// transitioning, its watches in place (see the data scenario).
		p, err = dataCondition(ctx, g.m, g.e, g.ko["data-layout"], "watched")
		if err == nil && !p.Info().Watching {
			err = fmt.Errorf("data-layout is %s without watches: no coherence window", p.Info().State)
		}
	}
	if err != nil {
		return 0, 0, 0, err
	}
	p0, t0 := g.m.PausedTotal(), time.Now()
	res, err := workload.Run(ctx, g.m, w, d)
	wall, paused := time.Since(t0), g.m.PausedTotal()-p0
	if err != nil {
		return 0, 0, 0, err
	}
	switch cond {
	case condCode:
		err = g.rollback(ctx, p)
	case condCoherence:
		if in := p.Info(); !in.Watching || in.State != patch.StateTransitioning {
			return 0, 0, 0, fmt.Errorf("the coherence window closed during the run (%s, watching %v)", in.State, in.Watching)
		}
		err = dataRelease(ctx, g.m, g.e, p)
	}
	return res.OpsPerSec, paused, wall, err
}

// PctSpread is a spread of percentages across rounds.
type PctSpread struct {
	N      int     `json:"n"`
	Median float64 `json:"median"`
	Min    float64 `json:"min"`
	Max    float64 `json:"max"`
}

// OverheadVerdict is one workload's result, for scripts (`lucos bench
// overhead --json`, key "overhead"). Percentages are slowdowns against no
// patch of the same round (positive: slower); the noise floor is the A/A
// control's change.
type OverheadVerdict struct {
	Workload string `json:"workload"`
	// On the instruction clock.
	NoiseFloorPct        PctSpread `json:"noise_floor_pct"`
	CommittedOverheadPct PctSpread `json:"committed_overhead_pct"`
	// WindowOverheadPct is the window's extra instructions and the host
	// time the VM stood paused meanwhile (stack checks, traps).
	WindowOverheadPct PctSpread `json:"window_overhead_pct"`
	// WindowPausedPct is the paused part alone.
	WindowPausedPct PctSpread `json:"window_paused_pct"`
	// Committed and Window are "met", "not met" or "not resolved" (the
	// noise floor is wider than the target's margin).
	Committed string `json:"committed"`
	Window    string `json:"window"`
	// HostClock is the same comparison timed on the host, on a normal
	// guest: noisy, beside it for what instructions cannot show.
	HostClock *HostClockOverhead `json:"host_clock,omitempty"`
}

// HostClockOverhead is the host-timed part of an OverheadVerdict.
type HostClockOverhead struct {
	NoiseFloorPct        PctSpread `json:"noise_floor_pct"`
	CommittedOverheadPct PctSpread `json:"committed_overhead_pct"`
	WindowOverheadPct    PctSpread `json:"window_overhead_pct"`
}

// slowdownPct turns ratios into a spread of slowdowns in percent.
func slowdownPct(r []float64) PctSpread {
	s := spreadOf(r)
	pct := func(x float64) float64 { return (1 - x) * 100 }
	return PctSpread{N: s.N, Median: pct(s.Median), Min: pct(s.Max), Max: pct(s.Min)}
}

// targetVerdict decides a median ratio against target, given the noise
// floor (the A/A control's largest deviation from 1 at the median).
func targetVerdict(median, target, noise float64) string {
	if noise >= 1-target {
		return "not resolved"
	}
	return verdict(median >= target)
}

func overheadResult(names []string, passes []*overheadPass, cfg OverheadConfig) *Result {
	res := &Result{Scenario: "relative performance: workloads with a committed patch and during a coherence window"}
	var bars []plot.Bar
	verdicts := map[string]*OverheadVerdict{}
	for _, w := range names {
		verdicts[w] = &OverheadVerdict{Workload: w}
	}
	for _, p := range passes {
		for _, w := range names {
			base := distribution(overheadRowName(w, p.clock, condNone), "ops/s", p.rate[w][condNone])
			if p.clock == clockInstr {
				base.Unit = "ops per 10⁹ instructions"
			}
			base.Ratio = "1"
			res.Rows = append(res.Rows, base)
			r := map[string][]float64{}
			for _, cond := range overheadConds[1:] {
				r[cond] = mustRatios(p.rate[w][cond], p.rate[w][condNone])
				s := spreadOf(r[cond])
				res.Rows = append(res.Rows, ratioRow(overheadRowName(w, p.clock, cond), s))
				if p.clock == clockInstr || len(passes) == 1 {
					bars = append(bars, plot.Bar{Group: w, Series: barSeries[cond], Value: s.Median, Low: s.Min, High: s.Max})
				}
			}
			v := verdicts[w]
			noise := math.Abs(spreadOf(r[condAgain]).Median - 1)
			if p.clock == clockHost {
				v.HostClock = &HostClockOverhead{NoiseFloorPct: slowdownPct(r[condAgain]),
					CommittedOverheadPct: slowdownPct(r[condCode]), WindowOverheadPct: slowdownPct(r[condCoherence])}
				if len(passes) == 1 { // no instruction clock: decide on this one
					v.Committed = targetVerdict(spreadOf(r[condCode]).Median, TargetCommitted, noise)
					v.Window = targetVerdict(spreadOf(r[condCoherence]).Median, TargetCoherence, noise)
				}
				continue
			}
			// What the guest loses in a window is its own extra
			// instructions and the host time it stood paused.
			combined := make([]float64, len(r[condCoherence]))
			for i, x := range r[condCoherence] {
				combined[i] = x * (1 - p.paused[w][condCoherence][i]) / (1 - p.paused[w][condNone][i])
			}
			cs := spreadOf(combined)
			res.Rows = append(res.Rows, ratioRow(overheadRowName(w, clockCombined, condCoherence), cs))
			v.NoiseFloorPct, v.CommittedOverheadPct = slowdownPct(r[condAgain]), slowdownPct(r[condCode])
			v.WindowOverheadPct = slowdownPct(combined)
			pausedPct := spreadOf(p.paused[w][condCoherence])
			v.WindowPausedPct = PctSpread{N: pausedPct.N, Median: pausedPct.Median * 100, Min: pausedPct.Min * 100, Max: pausedPct.Max * 100}
			v.Committed = targetVerdict(spreadOf(r[condCode]).Median, TargetCommitted, noise)
			v.Window = targetVerdict(cs.Median, TargetCoherence, noise)
		}
	}
	for _, w := range names {
		res.Overhead = append(res.Overhead, *verdicts[w])
	}
	res.Notes = overheadNotes(names, passes, res.Overhead, cfg)
	res.Figures = []Figure{barsFigure("overhead.svg",
		"Throughput relative to no patch of the same round, per workload and condition, on the instruction clock: median across rounds, whiskers at min and max; the no-patch-again bars show the noise floor",
		"Relative performance under lucos", "throughput ÷ no patch (same round)", bars,
		map[string]float64{"target, committed": TargetCommitted, "target, coherence": TargetCoherence})}
	return res
}

// mustRatios divides per round; the runs' rates are positive and finite
// (workload.Parse refuses a run without ops), so an error is a bug.
func mustRatios(cond, base []float64) []float64 {
	r, err := ratios(cond, base)
	if err != nil {
		panic(err)
	}
	return r
}

func overheadNotes(names []string, passes []*overheadPass, verdicts []OverheadVerdict, cfg OverheadConfig) []string {
	var notes []string
	for _, p := range passes {
		switch p.clock {
		case clockInstr:
			notes = append(notes, fmt.Sprintf("Rows “(%s)”: %s, %d vCPU, TCG with QEMU's instruction clock (-icount shift=0,sleep=off: one guest nanosecond per instruction executed), so a workload's ops per guest second are its ops per 10⁹ instructions, whatever the host's speed; the VM's pauses do not show on this clock. One vCPU, because QEMU 7.2's instruction clock does not bring up this kernel's second one (the boot stops at “smp: Bringing up secondary CPUs”). Each workload runs %v of guest time per condition in %d rounds.",
				clockInstr, p.release, p.cpus, cfg.Run, p.rounds))
			notes = append(notes, fmt.Sprintf("Rows “(%s)”: the coherence window's ratio on the instruction clock times the fraction of the run's host time the VM ran (not paused by the engine's stack checks and traps): what the window costs the guest in all.", clockCombined))
		case clockHost:
			notes = append(notes, fmt.Sprintf("Rows “(%s)”: %s, %d vCPUs, TCG, a normal clock; throughput is ops per second of host time (the guest's rate scaled by the fraction of its run the VM was not paused), %v per condition in %d rounds. This is what a user's clock sees, with the host's noise in it.",
				clockHost, p.release, p.cpus, cfg.Run, p.rounds))
		}
	}
	notes = append(notes, "Each round runs the conditions in an order that rotates from round to round, and each ratio divides a condition's throughput by the no-patch throughput of the same round; rows give the change in throughput, in percent, at the median ratio across rounds and at its min and max (no p99 from so few rounds). “No patch, again” is the A/A control: its change is the noise floor.",
		"Committed code patch: examples/patches/hot-paths, pass-through wrappers over the 11 kernel functions the workloads' system calls go through, committed before the run. Coherence window: examples/patches/data-layout applied while a task sleeps in the old lucos_bugs_stats_hold, so the update stays transitioning with its write watches in place and the engine checks stacks every 100 ms (one pause of the VM each).")
	decidedOn := clockInstr
	if passes[0].clock != clockInstr {
		decidedOn = clockHost
	}
	var t strings.Builder
	fmt.Fprintf(&t, "Verdicts, on the %s clock (slowdown in percent, median of the rounds; target < %.1f%% committed, < %.1f%% in a window; noise floor target < %.1f%%):\n\n", decidedOn, (1-TargetCommitted)*100, (1-TargetCoherence)*100, TargetNoiseFloor*100)
	t.WriteString("| workload | noise floor | committed | verdict | window (of which paused) | verdict |\n|---|---|---|---|---|---|\n")
	for _, v := range verdicts {
		if decidedOn == clockInstr {
			fmt.Fprintf(&t, "| %s | %.3f%% | %.3f%% | %s | %.2f%% (%.2f%%) | %s |\n", v.Workload, math.Abs(v.NoiseFloorPct.Median), v.CommittedOverheadPct.Median, v.Committed, v.WindowOverheadPct.Median, v.WindowPausedPct.Median, v.Window)
		} else {
			h := v.HostClock
			fmt.Fprintf(&t, "| %s | %.2f%% | %.2f%% | %s | %.2f%% | %s |\n", v.Workload, math.Abs(h.NoiseFloorPct.Median), h.CommittedOverheadPct.Median, v.Committed, h.WindowOverheadPct.Median, v.Window)
		}
	}
	notes = append(notes, strings.TrimSuffix(t.String(), "\n"))
	return notes
}

// ratioRow is a Row of ratios across rounds as the change in throughput,
// in percent (the tables print two decimals, enough for a 0.5% target):
// median, min and max, no p99. The ratio column has the median ratio.
func ratioRow(what string, s Spread) Row {
	pct := func(r float64) float64 { return (r - 1) * 100 }
	return Row{What: what, N: s.N, P50: pct(s.Median), Min: pct(s.Min), Max: pct(s.Max), Unit: "% vs no patch",
		Ratio: fmt.Sprintf("%.4f×", s.Median)}
}

// overheadWorst returns the row of cond on clock with the lowest median ratio.
func overheadWorst(r *Result, clock, cond string) (Row, bool) {
	var worst Row
	found := false
	for _, row := range r.Rows {
		if strings.HasSuffix(row.What, " ("+clock+"): "+cond) && (!found || row.P50 < worst.P50) {
			worst, found = row, true
		}
	}
	return worst, found
}
