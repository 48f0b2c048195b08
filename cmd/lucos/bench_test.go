package main

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
)

// TestBenchReport: `lucos bench SCENARIO --report FILE` writes the report
// (machine, the scenario's section) and still prints its rows; the pause
// scenario's claim is traced. The pause scenario is the quickest with a
// claim.
func TestBenchReport(t *testing.T) {
	testvm.Options(t)
	dir := t.TempDir()
	path := filepath.Join(dir, "BENCHMARKS.md")
	r := lucos(t, nil, "bench", "pause", "--json", "--report", path, "--command", "lucos-test")
	if r.code != 0 {
		t.Fatalf("exit %d, stderr:\n%s", r.code, r.stderr)
	}
	var results []struct {
		Scenario string `json:"scenario"`
		Rows     []struct {
			What string `json:"what"`
		} `json:"rows"`
	}
	if err := json.Unmarshal([]byte(r.stdout), &results); err != nil || len(results) != 1 || len(results[0].Rows) == 0 {
		t.Fatalf("stdout is not one result with rows (%v):\n%s", err, r.stdout)
	}
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	md := string(b)
	for _, want := range []string{"DO NOT EDIT", "- Command: `lucos-test`", "- Other load: ", "Run alone: `lucos bench pause`", "| " + results[0].Rows[0].What + " |", "## Claims", "Pausing every vCPU costs"} {
		if !strings.Contains(md, want) {
			t.Errorf("report lacks %q:\n%s", want, md)
		}
	}
	for _, want := range []string{"bench: [1/1] pause", "bench: wrote " + path} {
		if !strings.Contains(r.stderr, want) {
			t.Errorf("progress lacks %q:\n%s", want, r.stderr)
		}
	}
}
