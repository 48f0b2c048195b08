package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"time"

	"github.com/lucos/lucos/bench/realfix"
	"github.com/lucos/lucos/bench/workload"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/srcdiff"
	"github.com/lucos/lucos/vmm"
)

// RealFixConfig is what `lucos bench realfix` runs.
type RealFixConfig struct {
	// Dir holds the diffs to try; "" = the built-in corpus (bench/realfix).
	Dir string
	// Workload runs in the guest while each fix is applied and rolled back.
	Workload string
	// Run is how long the workload runs around each fix.
	Run time.Duration
}

// DefaultRealFix is what `lucos bench realfix` runs.
var DefaultRealFix = RealFixConfig{Workload: "syscall", Run: 3 * time.Second}

// FixOutcome is what happened to one fix, end to end.
type FixOutcome struct {
	Fix       realfix.Fix       `json:"fix"`
	Built     bool              `json:"built"`
	BuildSecs float64           `json:"build_s"`
	Changes   []*srcdiff.Change `json:"changes,omitempty"`
	Modules   []string          `json:"modules,omitempty"` // loaded first: the fix is in their code
	Applied   bool              `json:"applied"`
	PauseUS   float64           `json:"pause_us"`
	CommitMS  float64           `json:"commit_ms"`
	// Check: the fix's check before, with and after the patch ("" when
	// the fix has none): "vulnerable", "fixed" or the check's error.
	Before, During, After string
	RolledBack            bool   `json:"rolled_back"`
	Refused               string `json:"refused,omitempty"` // why it stopped, naming the step
}

// RealFix is the real-fix evaluation: each diff of the corpus is built
// into a patch for the 6.1.0-54 guest, applied while a workload runs,
// checked where it can be seen from inside the guest, and rolled back.
func RealFix(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	out, err := RunRealFix(ctx, opts, progress, DefaultRealFix)
	if err != nil {
		return nil, err
	}
	return realFixResult(out, opts), nil
}

// RunRealFix runs the evaluation with cfg and returns each fix's outcome.
func RunRealFix(ctx context.Context, opts launch.Options, progress io.Writer, cfg RealFixConfig) ([]*FixOutcome, error) {
	if opts.Image.Release == "" {
		opts.Image.Release = realfix.Release
	}
	tmp, err := os.MkdirTemp("", "lucos-bench-realfix-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(tmp)
	fixes, err := realfix.Load(cfg.Dir, tmp)
	if err != nil {
		return nil, err
	}
	var outs []*FixOutcome
	kos := map[string][]byte{}
	for _, f := range fixes {
		o := &FixOutcome{Fix: f}
		outs = append(outs, o)
		fmt.Fprintf(progress, "realfix: building %s\n", f.File)
		t0 := time.Now()
		res, err := srcdiff.Build(ctx, srcdiff.Options{Diffs: []string{f.Path}, Release: opts.Image.Release,
			CacheDir: opts.Image.CacheDir, Output: filepath.Join(tmp, f.File+".ko")})
		o.BuildSecs = time.Since(t0).Seconds()
		if err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			o.Refused = "build: " + firstLine(err.Error())
			continue
		}
		o.Built, o.Changes = true, res.Changes
		for _, ch := range res.Changes {
			if ch.Object != "vmlinux" && !slices.Contains(o.Modules, ch.Object) {
				o.Modules = append(o.Modules, ch.Object)
			}
		}
		if kos[f.File], err = os.ReadFile(res.KO); err != nil {
			return nil, err
		}
	}

	check, err := realfix.BuildCheck(ctx, tmp)
	if err != nil {
		return nil, err
	}
	opts.Extend = realfix.Extend(check, opts.Extend)
	g, err := bootWorkloadGuest(ctx, opts, progress, "realfix", nil, false)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	for _, o := range outs {
		if !o.Built {
			continue
		}
		fmt.Fprintf(progress, "realfix: %s\n", o.Fix.File)
		if err := g.realFixCycle(ctx, o, kos[o.Fix.File], cfg); err != nil {
			if ctx.Err() != nil {
				return nil, ctx.Err()
			}
			o.Refused = err.Error()
		}
	}
	return outs, nil
}

// realFixCycle applies one fix with the workload running, checks it, and
// rolls it back.
func (g *workloadGuest) realFixCycle(ctx context.Context, o *FixOutcome, ko []byte, cfg RealFixConfig) error {
	for _, mod := range o.Modules {
		res, err := g.m.Exec(ctx, "modprobe", mod)
		if err != nil {
			return fmt.Errorf("load module %s: %w", mod, err)
		}
		if res.Status != 0 {
			return fmt.Errorf("load module %s: modprobe exit status %d%s", mod, res.Status, guestOutput(res))
		}
	}
	var err error
	if o.Before, err = g.fixCheck(ctx, o.Fix); err != nil {
		return err
	}
	logStart := g.consoleSize()
	run, err := workload.Start(ctx, g.m, cfg.Workload, cfg.Run)
	if err != nil {
		return err
	}
	waited := false
	defer func() {
		if !waited { // the workload must not outlive the cycle
			run.Wait(context.WithoutCancel(ctx))
		}
	}()
	p, err := g.e.Apply(ctx, ko, patch.Options{})
	if err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	if err := g.settle(ctx, p, patch.StateCommitted); err != nil {
		return fmt.Errorf("apply: %w", err)
	}
	in := p.Info()
	o.Applied, o.PauseUS, o.CommitMS = true, in.PauseUS, in.CommitMS
	if o.During, err = g.fixCheck(ctx, o.Fix); err != nil {
		return err
	}
	if err := g.rollback(ctx, p); err != nil {
		return fmt.Errorf("rollback: %w", err)
	}
	o.RolledBack = true
	if o.After, err = g.fixCheck(ctx, o.Fix); err != nil {
		return err
	}
	waited = true
	if _, err := run.Wait(ctx); err != nil {
		return fmt.Errorf("the workload beside the fix: %w", err)
	}
	if oops := g.oopses(logStart); oops != "" {
		return fmt.Errorf("the guest's kernel logged %q", oops)
	}
	return nil
}

// fixCheck runs the fix's check in the guest: "fixed", "vulnerable", or
// "" when the fix has none.
func (g *workloadGuest) fixCheck(ctx context.Context, f realfix.Fix) (string, error) {
	if f.Check == "" {
		return "", nil
	}
	res, err := g.m.Exec(ctx, "sh", "-c", f.Check)
	if err != nil {
		return "", fmt.Errorf("check %q: %w", f.Check, err)
	}
	switch res.Status {
	case 0:
		return "fixed", nil
	case 1:
		return "vulnerable", nil
	}
	return "", fmt.Errorf("check %q failed (status %d)%s", f.Check, res.Status, guestOutput(res))
}

// consoleSize is how much the guest's console has logged so far.
func (g *workloadGuest) consoleSize() int64 {
	st, err := os.Stat(g.m.ConsoleLog())
	if err != nil {
		return 0
	}
	return st.Size()
}

// oopses returns the first line the guest's console logged since from
// that says its kernel went wrong, or "".
func (g *workloadGuest) oopses(from int64) string {
	b, err := os.ReadFile(g.m.ConsoleLog())
	if err != nil || int64(len(b)) < from {
		return ""
	}
	for _, l := range strings.Split(string(b[from:]), "\n") {
		for _, bad := range []string{"Oops", "BUG:", "general protection fault", "WARNING: CPU", "Kernel panic", "divide error"} {
			if strings.Contains(l, bad) {
				return strings.TrimSpace(l)
			}
		}
	}
	return ""
}

// guestOutput is a failed command's output, for an error.
func guestOutput(res *vmm.ExecResult) string {
	if res == nil {
		return ""
	}
	if s := strings.TrimSpace(string(res.Stdout) + string(res.Stderr)); s != "" {
		return ": " + s
	}
	return ""
}

func firstLine(s string) string {
	l, _, _ := strings.Cut(s, "\n")
	return l
}

// realFixResult turns the outcomes into the scenario's rows and its table.
func realFixResult(outs []*FixOutcome, opts launch.Options) *Result {
	var pauses, commits []float64
	for _, o := range outs {
		if o.Applied {
			pauses = append(pauses, o.PauseUS)
			commits = append(commits, o.CommitMS)
		}
	}
	r := &Result{Scenario: "realfix"}
	r.Rows = append(r.Rows, distribution("real fix applied: switch pause", "µs", pauses), distribution("real fix applied → committed", "ms", commits))
	var table bytes.Buffer
	FixTable(&table, outs)
	r.Notes = append(r.Notes, fmt.Sprintf("Each fix of bench/realfix/fixes (upstream stable fixes in Debian 6.1.190-1 → 6.1.192-1) built by `lucos patch build --diff` for %s, applied with the %s workload running, checked in the guest where it can be seen simply, rolled back.", orDefault(opts.Image.Release, realfix.Release), DefaultRealFix.Workload), table.String())
	return r
}

func orDefault(s, d string) string {
	if s == "" {
		return d
	}
	return s
}

// FixTable writes one markdown row per fix.
func FixTable(w io.Writer, outs []*FixOutcome) {
	fmt.Fprintln(w, "| fix | kind | built | functions | modules | pause µs | commit ms | check before / with / after | rolled back | refused |")
	fmt.Fprintln(w, "|---|---|---|---|---|---|---|---|---|---|")
	for _, o := range outs {
		var fns []string
		for _, ch := range o.Changes {
			if ch.Kind != "data" {
				fns = append(fns, ch.Kind+" "+ch.Name)
			}
		}
		check := "no simple check"
		if o.Fix.Check != "" {
			check = strings.Join([]string{or(o.Before), or(o.During), or(o.After)}, " / ")
		}
		pause, commit := "–", "–"
		if o.Applied {
			pause, commit = fmt.Sprintf("%.0f", o.PauseUS), fmt.Sprintf("%.1f", o.CommitMS)
		}
		fmt.Fprintf(w, "| %s | %s | %s | %s | %s | %s | %s | %s | %s | %s |\n", strings.TrimSuffix(o.Fix.File, ".patch"), or(o.Fix.Kind),
			yesNo(o.Built), strings.Join(fns, ", "), strings.Join(o.Modules, ", "), pause, commit, check, yesNo(o.RolledBack), strings.ReplaceAll(o.Refused, "|", "\\|"))
	}
}

func or(s string) string {
	if s == "" {
		return "–"
	}
	return s
}

func yesNo(b bool) string {
	if b {
		return "yes"
	}
	return "no"
}
