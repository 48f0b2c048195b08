package bench

import (
	"strings"
	"testing"
)

func overheadFixture() *Result {
	rows := []Row{}
	for _, w := range []struct {
		name            string
		code, coherence Spread
	}{
		{"cpu", Spread{5, 1.001, 0.99, 1.01}, Spread{5, 0.990, 0.98, 1.0}},
		{"fork", Spread{5, 0.997, 0.99, 1.01}, Spread{5, 0.960, 0.95, 0.97}},
		{"oltp", Spread{5, 0.999, 0.99, 1.01}, Spread{5, 0.980, 0.97, 0.99}},
	} {
		rows = append(rows, Row{What: overheadRowName(w.name, clockInstr, condNone), N: 5, P50: 1000, Unit: "ops/s"},
			ratioRow(overheadRowName(w.name, clockInstr, condCode), w.code),
			ratioRow(overheadRowName(w.name, clockInstr, condCoherence), Spread{5, 1, 1, 1}),
			ratioRow(overheadRowName(w.name, clockCombined, condCoherence), w.coherence),
			ratioRow(overheadRowName(w.name, clockInstr, condAgain), Spread{5, 1.0005, 0.99, 1.01}))
	}
	return &Result{Scenario: "relative performance", Rows: rows}
}

func TestOverheadClaims(t *testing.T) {
	claims, err := Claims(map[string]*Result{"overhead": overheadFixture()})
	if err != nil {
		t.Fatal(err)
	}
	if len(claims) != 2 {
		t.Fatalf("%d claims, want 2: %+v", len(claims), claims)
	}
	for i, want := range []struct{ row, text string }{
		{overheadRowName("fork", clockInstr, condCode), "costs the slowest workload, fork, 0.30% of its throughput (median of 5 rounds; target < 0.5%: met)"},
		{overheadRowName("fork", clockCombined, condCoherence), "costs the slowest workload, fork, 4.00% of its throughput (median of 5 rounds; target < 5.0%: met)"},
	} {
		c := claims[i]
		if c.Scenario != "overhead" || c.Row != want.row || !strings.Contains(c.Text, want.text) {
			t.Errorf("claim %d = %+v, want row %q and text with %q", i, c, want.row, want.text)
		}
	}
	// A faster run is no cost; a slower one misses the target.
	r := overheadFixture()
	for i := range r.Rows {
		switch r.Rows[i].What {
		case overheadRowName("fork", clockInstr, condCode):
			r.Rows[i] = ratioRow(r.Rows[i].What, Spread{5, 0.99, 0.98, 1})
		case overheadRowName("fork", clockCombined, condCoherence), overheadRowName("cpu", clockCombined, condCoherence), overheadRowName("oltp", clockCombined, condCoherence):
			r.Rows[i] = ratioRow(r.Rows[i].What, Spread{5, 1.002, 1, 1.01})
		}
	}
	claims, err = Claims(map[string]*Result{"overhead": r})
	if err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(claims[0].Text, "fork, 1.00% of its throughput") || !strings.Contains(claims[0].Text, "not met") {
		t.Errorf("slower: %s", claims[0].Text)
	}
	if !strings.Contains(claims[1].Text, "no measurable throughput") || !strings.Contains(claims[1].Text, "changes by +0.20%") {
		t.Errorf("faster: %s", claims[1].Text)
	}
}

// A noise floor above a target leaves it unresolved, not met or missed.
func TestOverheadClaimsNoiseFloor(t *testing.T) {
	r := overheadFixture()
	for i := range r.Rows {
		if r.Rows[i].What == overheadRowName("oltp", clockInstr, condAgain) {
			r.Rows[i] = ratioRow(r.Rows[i].What, Spread{5, 0.98, 0.9, 1.1})
		}
	}
	claims, err := Claims(map[string]*Result{"overhead": r})
	if err != nil {
		t.Fatal(err)
	}
	if want := "target < 0.5%: not resolved, the no-patch A/A control is off by up to 2.0%)"; !strings.Contains(claims[0].Text, want) {
		t.Errorf("committed: %s\nwant %q", claims[0].Text, want)
	}
	if want := "target < 5.0%: met)"; !strings.Contains(claims[1].Text, want) {
		t.Errorf("coherence: %s\nwant %q", claims[1].Text, want)
	}
}

func TestClaimsLeaveOutAbsentScenarios(t *testing.T) {
	claims, err := Claims(map[string]*Result{})
	if err != nil || len(claims) != 0 {
		t.Errorf("no results: %v, %v", claims, err)
	}
}

func TestClaimsRefuseMissingRows(t *testing.T) {
	_, err := Claims(map[string]*Result{"underload": {Rows: []Row{{What: "something else"}}}})
	if err == nil || !strings.Contains(err.Error(), "no row") {
		t.Errorf("missing row: %v", err)
	}
}

// Every claim comes from a scenario `lucos bench all` runs.
func TestClaimScenariosExist(t *testing.T) {
	for _, c := range claimSpecs {
		if _, err := Lookup(c.scenario); err != nil {
			t.Errorf("claim from %q: %v", c.scenario, err)
		}
	}
}
