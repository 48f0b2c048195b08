package main

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"time"

	"github.com/spf13/cobra"

	"github.com/lucos/lucos/bench"
	"github.com/lucos/lucos/bench/report"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/launch"
)

func newBenchCmd() *cobra.Command {
	var gf guestFlags
	var asJSON bool
	var reportPath, command, fixes string
	var cycles int
	var names []string
	for _, s := range bench.Scenarios {
		names = append(names, fmt.Sprintf("  %-10s %s", s.Name, s.Brief))
	}
	cmd := &cobra.Command{
		Use:   "bench SCENARIO... | all",
		Short: "Run benchmark scenarios on real guests and print their numbers",
		Long: "Run benchmark scenarios; each boots real guests under QEMU. Scenarios:\n" + strings.Join(names, "\n") +
			"\n\nResults are distributions from one run (the machine is noisy). With --report, lucos\n" +
			"also writes the benchmark report (docs/BENCHMARKS.md in `make bench`): the machine,\n" +
			"each scenario's table, notes and figures (SVG, drawn into bench/ next to the report),\n" +
			"and the claims the README quotes, each traced to its row.",
		Example: `  lucos bench pause apply
  lucos bench realfix --fixes ~/my-fixes --release 6.1.0-54-cloud-amd64
  lucos bench soak --cycles 200
  lucos bench all --report docs/BENCHMARKS.md --command "make bench"`,
		Args: cobra.MinimumNArgs(1),
		RunE: func(cmd *cobra.Command, args []string) error {
			opts, err := gf.options()
			if err != nil {
				return err
			}
			bench.DefaultRealFix.Dir = fixes
			if cycles <= 0 {
				return fmt.Errorf("--cycles %d: want a positive number", cycles)
			}
			bench.DefaultSoak.Cycles = cycles
			var run []bench.Scenario
			for _, a := range args {
				if a == "all" {
					run = bench.Scenarios
					break
				}
				s, err := bench.Lookup(a)
				if err != nil {
					return err
				}
				run = append(run, s)
			}
			if command == "" {
				command = "lucos bench " + strings.Join(args, " ")
			}
			if reportPath != "" {
				if err := checkReportCovers(reportPath, run); err != nil {
					return err
				}
			}
			start := time.Now()
			busy := watchForeignQEMU(cmd.Context())
			defer busy.stop()
			var results []*bench.Result
			var failed []string
			for i, s := range run {
				fmt.Fprintf(os.Stderr, "bench: [%d/%d] %s — %s\n", i+1, len(run), s.Name, s.Brief)
				t0 := time.Now()
				r, err := s.Run(cmd.Context(), opts, os.Stderr)
				if err != nil && (r == nil || cmd.Context().Err() != nil) {
					return fmt.Errorf("bench %s: %w", s.Name, err)
				}
				if err != nil {
					// The scenario ran and found something wrong (the
					// soak's failed applies): its result says so, the
					// others still run, and lucos exits non-zero.
					fmt.Fprintf(os.Stderr, "bench: [%d/%d] %s FAILED: %v\n", i+1, len(run), s.Name, err)
					r.Notes = append(r.Notes, "**This scenario failed:** "+err.Error())
					failed = append(failed, s.Name)
				}
				fmt.Fprintf(os.Stderr, "bench: [%d/%d] %s done in %v (%v in all)\n", i+1, len(run), s.Name,
					time.Since(t0).Round(time.Second), time.Since(start).Round(time.Second))
				results = append(results, r)
			}
			otherLoad := "no other QEMU process seen (sampled every 2 s)"
			if n, of := busy.stop(); n > 0 {
				otherLoad = fmt.Sprintf("other QEMU processes ran during %d of %d samples (every 2 s): the numbers are disturbed", n, of)
				fmt.Fprintf(os.Stderr, "bench: warning: %s; run on an idle host\n", otherLoad)
			}
			if reportPath != "" {
				if err := writeReport(cmd.Context(), reportPath, command, otherLoad, opts, run, results, time.Since(start)); err != nil {
					return err
				}
			}
			if asJSON {
				enc := json.NewEncoder(os.Stdout)
				enc.SetIndent("", "  ")
				if err := enc.Encode(results); err != nil {
					return err
				}
			} else {
				bench.Markdown(os.Stdout, results)
			}
			if len(failed) > 0 {
				return fmt.Errorf("bench: %s failed (see its notes)", strings.Join(failed, ", "))
			}
			return nil
		},
	}
	gf.add(cmd)
	cmd.Flags().BoolVar(&asJSON, "json", false, "print results as JSON")
	cmd.Flags().StringVar(&reportPath, "report", "", "write the benchmark report to this file, its figures to bench/ beside it")
	cmd.Flags().StringVar(&command, "command", "", `the command the report says produced it (default "lucos bench ARGS")`)
	cmd.Flags().IntVar(&cycles, "cycles", bench.DefaultSoak.Cycles, "soak: apply/rollback cycles")
	cmd.Flags().StringVar(&fixes, "fixes", "", "realfix: try the diffs (*.patch, *.diff) of this directory instead of the built-in corpus (bench/realfix/fixes, for 6.1.0-54; pass --release for others)")
	cmd.AddCommand(newFuzzReportCmd())
	return cmd
}

// checkReportCovers refuses, before anything runs, a --report whose
// existing file has sections of scenarios this run leaves out: the report
// is written whole from the run's results, so they would be dropped (a run
// of `lucos bench data --report docs/BENCHMARKS.md` once cut it down to one
// section). A file that does not exist yet is fine.
func checkReportCovers(path string, run []bench.Scenario) error {
	doc, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	heads := map[string]bool{}
	for _, line := range strings.Split(string(doc), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			heads[strings.TrimSpace(h)] = true
		}
	}
	inRun := map[string]bool{}
	for _, s := range run {
		inRun[s.Name] = true
	}
	var dropped []string
	for _, s := range bench.Scenarios {
		if !inRun[s.Name] && heads[s.Brief] {
			dropped = append(dropped, s.Name)
		}
	}
	if len(dropped) > 0 {
		return fmt.Errorf("bench: --report %s would lose its sections of %s: the report is written whole from this run; run those too (lucos bench all --report %s) or give another file", path, strings.Join(dropped, ", "), path)
	}
	return nil
}

// writeReport draws every figure of results into bench/ next to path and
// writes the report (bench/report) to path, replacing it only once it is
// complete.
func writeReport(ctx context.Context, path, command, otherLoad string, opts launch.Options, run []bench.Scenario, results []*bench.Result, took time.Duration) error {
	figDir := filepath.Join(filepath.Dir(path), "bench")
	byName := map[string]*bench.Result{}
	var sections []report.Section
	for i, r := range results {
		s := report.Section{Result: r, Name: run[i].Name, Brief: run[i].Brief}
		for _, f := range r.Figures {
			if _, err := f.Draw(figDir); err != nil {
				return fmt.Errorf("report: %s: %w", run[i].Name, err)
			}
			s.Figures = append(s.Figures, report.Figure{Path: "bench/" + f.File, Caption: f.Caption})
		}
		sections = append(sections, s)
		byName[run[i].Name] = r
	}
	claims, err := bench.Claims(byName)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	var rc []report.Claim
	for _, c := range claims {
		rc = append(rc, report.Claim{Text: c.Text, Scenario: c.Scenario, Row: c.Row})
	}
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	m := report.Probe(ctx, img.Release, strings.ToUpper(string(opts.VM.Accel)), command)
	m.Duration, m.OtherLoad = took, otherLoad
	tmp, err := os.CreateTemp(filepath.Dir(path), ".benchmarks-*.md")
	if err != nil {
		return fmt.Errorf("report: %w", err)
	}
	defer os.Remove(tmp.Name())
	fuzz, err := readFuzzLog(filepath.Join(filepath.Dir(path), "bench", "fuzz.tsv"))
	if err != nil {
		tmp.Close()
		return fmt.Errorf("report: %w", err)
	}
	if err := report.Write(tmp, m, sections, rc, fuzz); err != nil {
		tmp.Close()
		return err
	}
	if err := tmp.Close(); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.Chmod(tmp.Name(), 0o644); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	if err := os.Rename(tmp.Name(), path); err != nil {
		return fmt.Errorf("report: %w", err)
	}
	fmt.Fprintf(os.Stderr, "bench: wrote %s (%d sections, %d claims) and its figures in %s\n", path, len(sections), len(rc), figDir)
	return nil
}

// foreignQEMU counts, every few seconds, whether a QEMU that this process
// did not start is running: the benchmarks share two cores with it.
type foreignQEMU struct {
	done     chan struct{}
	finished chan struct{}
	seen, of int
}

func watchForeignQEMU(ctx context.Context) *foreignQEMU {
	f := &foreignQEMU{done: make(chan struct{}), finished: make(chan struct{})}
	go func() {
		defer close(f.finished)
		t := time.NewTicker(2 * time.Second)
		defer t.Stop()
		for {
			select {
			case <-t.C:
				f.of++
				if otherQEMU() {
					f.seen++
				}
			case <-f.done:
				return
			case <-ctx.Done():
				return
			}
		}
	}()
	return f
}

// stop ends the watch (once; later calls return the same counts).
func (f *foreignQEMU) stop() (seen, of int) {
	select {
	case <-f.done:
	default:
		close(f.done)
	}
	<-f.finished
	return f.seen, f.of
}

// otherQEMU reports whether a qemu-system process runs whose parent is not
// this process.
func otherQEMU() bool {
	ents, _ := os.ReadDir("/proc")
	self := os.Getpid()
	for _, e := range ents {
		b, err := os.ReadFile(filepath.Join("/proc", e.Name(), "stat"))
		if err != nil {
			continue
		}
		// pid (comm) state ppid ...
		st := string(b)
		l, r := strings.IndexByte(st, '('), strings.LastIndexByte(st, ')')
		if l < 0 || r < l || !strings.HasPrefix(st[l+1:r], "qemu-system") {
			continue
		}
		f := strings.Fields(st[r+1:])
		if len(f) > 1 && f[1] != strconv.Itoa(self) {
			return true
		}
	}
	return false
}

// readFuzzLog reads the log of `make fuzz` next to the report; none is no
// runs.
func readFuzzLog(path string) ([]report.FuzzRun, error) {
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, err
	}
	defer f.Close()
	runs, err := report.ReadFuzzLog(f)
	if err != nil {
		return nil, fmt.Errorf("%s: %w", path, err)
	}
	return runs, nil
}

// newFuzzReportCmd rewrites the Fuzzing section of the benchmark report
// from docs/bench/fuzz.tsv (make fuzz runs it after fuzzing).
func newFuzzReportCmd() *cobra.Command {
	var path string
	cmd := &cobra.Command{
		Use:   "fuzz-report [--report docs/BENCHMARKS.md]",
		Short: "Rewrite the report's Fuzzing section from bench/fuzz.tsv beside it",
		Long: `Rewrite the Fuzzing section of the benchmark report from the fuzzing log
(bench/fuzz.tsv next to the report, which make fuzz appends to), leaving every
other section as the last "make bench" wrote it. make fuzz runs this after
fuzzing.`,
		Args: cobra.NoArgs,
		RunE: func(cmd *cobra.Command, args []string) error {
			doc, err := os.ReadFile(path)
			if err != nil {
				return fmt.Errorf("fuzz-report: %w", err)
			}
			runs, err := readFuzzLog(filepath.Join(filepath.Dir(path), "bench", "fuzz.tsv"))
			if err != nil {
				return fmt.Errorf("fuzz-report: %w", err)
			}
			if len(runs) == 0 {
				return fmt.Errorf("fuzz-report: no fuzzing runs logged in %s", filepath.Join(filepath.Dir(path), "bench", "fuzz.tsv"))
			}
			out, err := report.ReplaceFuzz(doc, runs)
			if err != nil {
				return fmt.Errorf("fuzz-report: %s: %w", path, err)
			}
			if err := os.WriteFile(path, out, 0o644); err != nil {
				return fmt.Errorf("fuzz-report: %w", err)
			}
			fmt.Fprintf(os.Stderr, "bench: %s: Fuzzing section rewritten from %d runs\n", path, len(runs))
			return nil
		},
	}
	cmd.Flags().StringVar(&path, "report", "docs/BENCHMARKS.md", "the benchmark report")
	return cmd
}
