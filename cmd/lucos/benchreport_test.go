package main

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/lucos/lucos/bench"
)

// A --report run refuses, before any scenario runs, to rewrite a report
// whose other scenarios' sections it would drop.
func TestCheckReportCovers(t *testing.T) {
	data, err := bench.Lookup("data")
	if err != nil {
		t.Fatal(err)
	}
	boot, err := bench.Lookup("boot")
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	path := filepath.Join(dir, "BENCHMARKS.md")
	if err := checkReportCovers(path, []bench.Scenario{data}); err != nil {
		t.Errorf("no report yet: %v", err)
	}
	doc := "# Benchmarks\n\n## Machine\n\n## " + boot.Brief + "\n\n| x |\n\n## " + data.Brief + "\n\n## Fuzzing\n"
	if err := os.WriteFile(path, []byte(doc), 0o644); err != nil {
		t.Fatal(err)
	}
	err = checkReportCovers(path, []bench.Scenario{data})
	if err == nil || !strings.Contains(err.Error(), "boot") || strings.Contains(err.Error(), "data,") {
		t.Errorf("a data-only run over a report with boot: %v, want a refusal naming boot", err)
	}
	if err := checkReportCovers(path, []bench.Scenario{boot, data}); err != nil {
		t.Errorf("a run of both: %v", err)
	}
}
