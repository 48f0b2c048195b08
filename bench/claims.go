package bench

import (
	"fmt"
	"math"
	"strings"
)

// Claim is a sentence with a number from a run, as the README may quote it,
// and the row of a scenario the number comes from (bench/report traces each
// claim to its row in docs/BENCHMARKS.md).
type Claim struct {
	Scenario string `json:"scenario"` // a Scenario's Name
	Row      string `json:"row"`      // a Row's What in that scenario's Result
	Text     string `json:"text"`
}

// claimSpec makes one claim from its scenario's result.
type claimSpec struct {
	scenario string
	make     func(r *Result) (row, text string, err error)
}

// Design targets (../shared/DESIGN.md, "Performance targets") the claims
// check besides those of Overhead.
const (
	TargetSwitchPauseMS = 1.0  // switch pause of a code patch, p99, guest busy
	TargetCommitMS      = 10.0 // apply → committed
)

// claimSpecs are every claim, in the order the report lists them. This list
// is the one place the README's numbers come from: quote Claims' Text.
var claimSpecs = []claimSpec{
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULPause("cmdline-string"))
		return row.What, fmt.Sprintf("With a workload running, switching in a one-function patch pauses the guest for %s ms (p50; p99 %s ms; target p99 < %g ms: %s).",
			num(row.P50), num(row.P99), TargetSwitchPauseMS, verdict(row.P99 < TargetSwitchPauseMS)), err
	}},
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULPause("hot-paths"))
		return row.What, fmt.Sprintf("Redirecting eleven hot system-call functions at once pauses it for %s ms (p50; p99 %s ms; target p99 < %g ms: %s).",
			num(row.P50), num(row.P99), TargetSwitchPauseMS, verdict(row.P99 < TargetSwitchPauseMS)), err
	}},
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULCommit("cmdline-string"))
		return row.What, fmt.Sprintf("A patch commits %s ms after its switch (p50; p99 %s ms; target < %g ms: %s) with a workload running.",
			num(row.P50), num(row.P99), TargetCommitMS, verdict(row.P99 < TargetCommitMS)), err
	}},
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULKLPOn)
		return row.What, fmt.Sprintf("The in-guest Linux livepatch takes %.1f s for the same change (insmod → transition done, p50): %s.", row.P50/1e3, strings.TrimSuffix(row.Ratio, " cmdline-string")), err
	}},
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULTputApply)
		return row.What, fmt.Sprintf("In the second around a lucos update the workloads keep %.0f%% of their throughput (median; %.0f%% at worst).", row.P50*100, row.Min*100), err
	}},
	{"underload", func(r *Result) (string, string, error) {
		row, err := findRow(r, rowULTputKLPOn)
		return row.What, fmt.Sprintf("During a livepatch transition they keep %.0f%% (median; %.0f%% at worst).", row.P50*100, row.Min*100), err
	}},
	{"overhead", func(r *Result) (string, string, error) {
		return overheadClaim(r, clockInstr, condCode, "Counted in instructions, a committed patch on the workloads' hot system calls", TargetCommitted)
	}},
	{"overhead", func(r *Result) (string, string, error) {
		return overheadClaim(r, clockCombined, condCoherence, "An open data-coherence window (its extra instructions and the VM's pauses)", TargetCoherence)
	}},
	{"apply", func(r *Result) (string, string, error) {
		row, err := findRow(r, "lucos apply: guest-visible pause of the switch")
		return row.What, fmt.Sprintf("With every vCPU in a busy loop, the switch pauses the guest for %s ms at p99 (target < %g ms: %s).",
			num(row.P99), TargetSwitchPauseMS, verdict(row.P99 < TargetSwitchPauseMS)), err
	}},
	{"apply", func(r *Result) (string, string, error) {
		row, err := findRow(r, "lucos apply → committed")
		return row.What, fmt.Sprintf("It commits %s ms after the switch (p50; p99 %s ms; target < %g ms: %s).",
			num(row.P50), num(row.P99), TargetCommitMS, verdict(row.P99 < TargetCommitMS)), err
	}},
	{"boot", func(r *Result) (string, string, error) {
		plain, err := findRow(r, "plain qemu-system-x86_64")
		if err != nil {
			return "", "", err
		}
		row, err := findRow(r, "lucos run")
		return row.What, fmt.Sprintf("Booting under lucos takes %+.0f%% against plain QEMU (p50 of %d boots).", (row.P50/plain.P50-1)*100, row.N), err
	}},
	{"pause", func(r *Result) (string, string, error) {
		row, err := findRow(r, "guest-visible pause (stop reply → continue)")
		return row.What, fmt.Sprintf("Pausing every vCPU costs a busy guest %s µs (p50; p99 %s µs).", num(row.P50), num(row.P99)), err
	}},
}

func verdict(met bool) string {
	if met {
		return "met"
	}
	return "not met"
}

// overheadClaim states cond's slowest workload on clock against target.
func overheadClaim(r *Result, clock, cond, subject string, target float64) (string, string, error) {
	row, ok := overheadWorst(r, clock, cond)
	if !ok {
		return "", "", fmt.Errorf("no %q rows", overheadRowName("*", clock, cond))
	}
	w, _, _ := strings.Cut(row.What, " (")
	met := verdict(row.P50 >= (target-1)*100)
	if noise := overheadNoise(r); noise >= (1-target)*100 {
		met = fmt.Sprintf("not resolved, the no-patch A/A control is off by up to %.1f%%", noise)
	}
	cost := fmt.Sprintf("costs the slowest workload, %s, %.2f%% of its throughput", w, -row.P50)
	if row.P50 >= 0 {
		cost = fmt.Sprintf("costs no measurable throughput (the slowest workload, %s, changes by %+.2f%%)", w, row.P50)
	}
	return row.What, fmt.Sprintf("%s %s (median of %d rounds; target < %.1f%%: %s).", subject, cost, row.N, (1-target)*100, met), nil
}

// overheadNoise is the noise floor of an overhead result, in percent: the
// largest change its instruction clock's A/A control rows show at the
// median.
func overheadNoise(r *Result) float64 {
	noise := 0.0
	for _, row := range r.Rows {
		if strings.HasSuffix(row.What, " ("+clockInstr+"): "+condAgain) {
			noise = max(noise, math.Abs(row.P50))
		}
	}
	return noise
}

func findRow(r *Result, what string) (Row, error) {
	for _, row := range r.Rows {
		if row.What == what {
			return row, nil
		}
	}
	return Row{}, fmt.Errorf("no row %q", what)
}

// Claims makes the claims whose scenarios are in results (by Scenario
// Name); the others are left out. A claim whose row is missing from its
// scenario's result is an error: rename a row here when renaming it there.
func Claims(results map[string]*Result) ([]Claim, error) {
	var out []Claim
	for _, c := range claimSpecs {
		r, ok := results[c.scenario]
		if !ok {
			continue
		}
		row, text, err := c.make(r)
		if err != nil {
			return nil, fmt.Errorf("claim from %s: %w", c.scenario, err)
		}
		out = append(out, Claim{Scenario: c.scenario, Row: row, Text: text})
	}
	return out, nil
}
