package bench

import (
	"fmt"
	"math"
	"sort"
	"time"

	"github.com/lucos/lucos/bench/workload"
)

// The arithmetic of the workload scenarios (overhead, underload): ratios of
// throughputs with their spread across rounds, the host-time correction for
// VM pauses, and a workload's throughput inside a window of guest time.
//
// The guest's clock stands still while the VM is paused, so a workload's
// own numbers never show a pause. Two corrections put pauses back:
//   - for a whole run, hostRate scales the guest's ops/s by the fraction of
//     the run the VM was paused (from vmm.Machine.PausedTotal, read before
//     and after);
//   - for an update, guestTime maps the host time of the update to the
//     guest's clock, and windowRate counts the update's own pauses into the
//     window's length, and typicalRate is the rate away from updates.

// Spread is the middle and the ends of a set of samples.
type Spread struct {
	N                int
	Median, Min, Max float64
}

// spreadOf summarises x; the median of an even count is the mean of the
// middle two.
func spreadOf(x []float64) Spread {
	if len(x) == 0 {
		return Spread{}
	}
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	med := s[len(s)/2]
	if len(s)%2 == 0 {
		med = (s[len(s)/2-1] + s[len(s)/2]) / 2
	}
	return Spread{N: len(s), Median: med, Min: s[0], Max: s[len(s)-1]}
}

// ratios divides each condition's rate by the baseline's of the same round.
func ratios(cond, base []float64) ([]float64, error) {
	if len(cond) != len(base) {
		return nil, fmt.Errorf("ratios: %d rounds of the condition, %d of the baseline", len(cond), len(base))
	}
	out := make([]float64, len(cond))
	for i := range cond {
		if !(base[i] > 0) || math.IsInf(base[i], 0) || math.IsNaN(cond[i]) || math.IsInf(cond[i], 0) {
			return nil, fmt.Errorf("ratios: round %d: %v over %v", i, cond[i], base[i])
		}
		out[i] = cond[i] / base[i]
	}
	return out, nil
}

// hostRate turns a run's ops per second of guest time into ops per second
// of host time: the VM was paused for paused of the wall time the run's
// exec took, and the run lost that fraction of its time. It assumes the
// pauses fell evenly over the exec (true of the periodic stack checks of a
// transition; a run with no pause is unchanged).
func hostRate(guestRate float64, paused, wall time.Duration) float64 {
	if wall <= 0 || paused <= 0 {
		return guestRate
	}
	f := min(paused.Seconds()/wall.Seconds(), 1)
	return guestRate * (1 - f)
}

// clockRef relates the guest's clock to the host's at one moment: a
// workload.ClockSample and vmm.Machine.PausedTotal read right after it.
type clockRef struct {
	workload.ClockSample
	Paused time.Duration
}

// guestTime maps a host time to the guest's clock: the host time elapsed
// since ref, less the time the VM was paused meanwhile (paused is
// PausedTotal read at host). Its error is ref's Uncertainty.
func (ref clockRef) guestTime(host time.Time, paused time.Duration) int64 {
	return ref.Guest + int64(host.Sub(ref.Host)) - int64(paused-ref.Paused)
}

// windowOps counts the ops of r in the guest-time window [from, to),
// prorating each bucket by how much of it lies inside (ops are assumed even
// within a bucket). ok is false unless the window lies inside the run.
func windowOps(r *workload.Result, from, to int64) (ops float64, ok bool) {
	if len(r.Buckets) == 0 || to <= from || from < r.StartNS || to > r.Buckets[len(r.Buckets)-1].EndNS {
		return 0, false
	}
	prev := r.StartNS
	for _, b := range r.Buckets {
		lo, hi := max(prev, from), min(b.EndNS, to)
		if hi > lo {
			ops += float64(b.Ops) * float64(hi-lo) / float64(b.EndNS-prev)
		}
		prev = b.EndNS
	}
	return ops, true
}

// typicalRate is r's throughput (ops/s of guest time) over the buckets
// that overlap none of the windows [from, to) in exclude: the run's rate
// away from the updates. It is a mean, ops over time, as windowRate is:
// bucket rates on a TCG host are skewed (stretches run much faster than
// most), so a window's mean sits above the median bucket even when nothing
// happens in it. If every bucket overlaps a window, all count.
func typicalRate(r *workload.Result, exclude ...[2]int64) float64 {
	var ops, ns, awayOps, awayNS int64
	prev := r.StartNS
	for _, b := range r.Buckets {
		clear := true
		for _, w := range exclude {
			clear = clear && (b.EndNS <= w[0] || prev >= w[1])
		}
		ops, ns = ops+b.Ops, ns+b.EndNS-prev
		if clear {
			awayOps, awayNS = awayOps+b.Ops, awayNS+b.EndNS-prev
		}
		prev = b.EndNS
	}
	if awayNS == 0 {
		awayOps, awayNS = ops, ns
	}
	if awayNS == 0 {
		return 0
	}
	return float64(awayOps) * 1e9 / float64(awayNS)
}

// windowRate is r's throughput over [from, to) of guest time relative to
// typical (ops/s), where the VM was also paused for paused inside the
// window (time the guest's clock does not show). ok as for windowOps.
func windowRate(r *workload.Result, from, to int64, paused time.Duration, typical float64) (float64, bool) {
	ops, ok := windowOps(r, from, to)
	if !ok || !(typical > 0) {
		return 0, false
	}
	secs := float64(to-from)/1e9 + paused.Seconds()
	return ops / secs / typical, true
}
