package report

import (
	"bufio"
	"bytes"
	"fmt"
	"io"
	"sort"
	"strconv"
	"strings"
	"time"
)

// FuzzRun is one target's run of `make fuzz`: a row of docs/bench/fuzz.tsv,
// which scripts/fuzz.sh appends to. Columns, tab-separated: date (UTC,
// RFC 3339), package, target, time (a Go duration), execs (empty when not
// recorded), result (ok, failed, deadline-race), note (for a failure: what
// it found and the commit that fixed it).
type FuzzRun struct {
	Date            string
	Package, Target string
	Time            time.Duration
	Execs           int64 // -1: not recorded
	Result          string
	Note            string
}

// ReadFuzzLog parses docs/bench/fuzz.tsv. Lines starting with '#' are
// comments.
func ReadFuzzLog(r io.Reader) ([]FuzzRun, error) {
	var runs []FuzzRun
	sc := bufio.NewScanner(r)
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		if line == "" || strings.HasPrefix(line, "#") {
			continue
		}
		f := strings.Split(line, "\t")
		if len(f) < 6 {
			return nil, fmt.Errorf("fuzz log line %d: %d fields, want at least 6", n, len(f))
		}
		d, err := time.ParseDuration(f[3])
		if err != nil || d < 0 {
			return nil, fmt.Errorf("fuzz log line %d: time %q", n, f[3])
		}
		execs := int64(-1)
		if f[4] != "" {
			if execs, err = strconv.ParseInt(f[4], 10, 64); err != nil || execs < 0 {
				return nil, fmt.Errorf("fuzz log line %d: execs %q", n, f[4])
			}
		}
		switch f[5] {
		case "ok", "failed", "deadline-race":
		default:
			return nil, fmt.Errorf("fuzz log line %d: result %q (ok, failed, deadline-race)", n, f[5])
		}
		run := FuzzRun{Date: f[0], Package: f[1], Target: f[2], Time: d, Execs: execs, Result: f[5]}
		if len(f) > 6 {
			run.Note = strings.Join(f[6:], " ")
		}
		runs = append(runs, run)
	}
	return runs, sc.Err()
}

// writeFuzz renders the fuzzing section: time and execs per target, summed
// over every run in the log, and each failure with what fixed it.
func writeFuzz(b *bytes.Buffer, runs []FuzzRun) {
	type sum struct {
		runs, failed int
		time         time.Duration
		execs        int64
		unrecorded   bool
	}
	per := map[string]*sum{}
	var total time.Duration
	var days []string
	for _, r := range runs {
		key := shortPkg(r.Package) + "." + r.Target
		s := per[key]
		if s == nil {
			s = &sum{}
			per[key] = s
		}
		s.runs++
		s.time += r.Time
		total += r.Time
		if r.Execs < 0 {
			s.unrecorded = true
		} else {
			s.execs += r.Execs
		}
		if r.Result == "failed" {
			s.failed++
		}
		if day := strings.SplitN(r.Date, "T", 2)[0]; len(days) == 0 || days[len(days)-1] != day {
			days = append(days, day)
		}
	}
	keys := make([]string, 0, len(per))
	for k := range per {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	fmt.Fprintf(b, "Run: `make fuzz FUZZTIME=3m` (scripts/fuzz.sh: every `go test -fuzz` target of the module in turn); "+
		"each run appends its rows to `docs/bench/fuzz.tsv`, which this section sums. %d runs of %d targets, %s of fuzzing in all (%s).\n\n",
		len(runs), len(per), fmtHours(total), strings.Join(days, ", "))
	b.WriteString("| target | runs | time | execs | failed |\n|---|---|---|---|---|\n")
	for _, k := range keys {
		s := per[k]
		execs := strconv.FormatInt(s.execs, 10)
		if s.unrecorded {
			execs = "≥ " + execs + " (some runs not counted)"
		}
		fmt.Fprintf(b, "| %s | %d | %s | %s | %d |\n", k, s.runs, fmtHours(s.time), execs, s.failed)
	}
	b.WriteString("\n")
	var found []FuzzRun
	for _, r := range runs {
		if r.Result == "failed" {
			found = append(found, r)
		}
	}
	if len(found) == 0 {
		b.WriteString("No run found a failure.\n\n")
		return
	}
	b.WriteString("Failures found (each reproducer is kept in its package's testdata/fuzz):\n\n")
	for _, r := range found {
		fmt.Fprintf(b, "- %s, %s.%s: %s\n", r.Date, shortPkg(r.Package), r.Target, r.Note)
	}
	b.WriteString("\n")
}

func shortPkg(p string) string { return strings.TrimPrefix(p, "github.com/lucos/lucos/") }

// fmtHours prints a duration as "1 h 50 min" or "3 min".
func fmtHours(d time.Duration) string {
	m := int(d.Round(time.Minute).Minutes())
	if m < 60 {
		return fmt.Sprintf("%d min", m)
	}
	return fmt.Sprintf("%d h %d min", m/60, m%60)
}

// ReplaceFuzz rewrites the Fuzzing section of a report written by Write
// from runs, leaving every other section as it was: make fuzz updates the
// report after a fuzzing run without rerunning the benchmarks. A report
// with no Fuzzing section gets one before its Claims.
func ReplaceFuzz(doc []byte, runs []FuzzRun) ([]byte, error) {
	var sec bytes.Buffer
	sec.WriteString("## Fuzzing\n\n")
	writeFuzz(&sec, runs)
	start := bytes.Index(doc, []byte("\n## Fuzzing\n"))
	if start < 0 {
		start = bytes.Index(doc, []byte("\n## Claims\n"))
		if start < 0 {
			return nil, fmt.Errorf("the report has neither a Fuzzing nor a Claims section")
		}
		out := append([]byte(nil), doc[:start+1]...)
		out = append(out, sec.Bytes()...)
		return append(out, doc[start+1:]...), nil
	}
	end := bytes.Index(doc[start+1:], []byte("\n## "))
	if end < 0 {
		end = len(doc) - start - 1
	}
	out := append([]byte(nil), doc[:start+1]...)
	out = append(out, sec.Bytes()...)
	return append(out, doc[start+1+end+1:]...), nil
}
