// Package bench holds lucos's benchmark scenarios. Each boots real guests
// under QEMU, measures one thing and returns a Result that prints as a table
// row and as JSON. Timings are reported as distributions or ratios from one
// run, never as single absolute numbers: the machines are noisy.
package bench

import (
	"context"
	"fmt"
	"io"
	"sort"
	"strings"
	"time"

	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// accelNote says in a scenario's note how the guest ran: the accelerator,
// and under TCG its threading (vmm.TCGThreads), which changes anything that
// waits for another vCPU.
func accelNote(m *vmm.Machine) string {
	accel, _ := m.Accel()
	if accel != vmm.AccelTCG {
		return strings.ToUpper(string(accel))
	}
	if m.TCGThreads() == vmm.TCGThreadsMulti {
		return "TCG with a host thread per vCPU"
	}
	return "TCG with all vCPUs on one host thread"
}

// Result is one scenario's outcome.
type Result struct {
	Scenario string   `json:"scenario"`
	Rows     []Row    `json:"rows"`
	Notes    []string `json:"notes,omitempty"`
	Figures  []Figure `json:"figures,omitempty"` // drawn from the run's samples by Figure.Draw
	// Overhead is the overhead scenario's verdicts, per workload.
	Overhead []OverheadVerdict `json:"overhead,omitempty"`
}

// Row is one measured quantity.
type Row struct {
	What  string  `json:"what"`
	N     int     `json:"n"`
	P50   float64 `json:"p50"`
	P99   float64 `json:"p99,omitempty"`
	Min   float64 `json:"min"`
	Max   float64 `json:"max"`
	Unit  string  `json:"unit"`
	Ratio string  `json:"ratio,omitempty"` // against the scenario's baseline row
}

// Scenario runs one benchmark on guests launched from opts.
type Scenario struct {
	Name  string
	Brief string
	Run   func(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error)
}

// Scenarios lists every benchmark in the order `lucos bench all` runs them.
var Scenarios = []Scenario{
	{"boot", "boot to the guest's shell: lucos vs plain QEMU, same kernel and initramfs", Boot},
	{"pause", "guest-visible pause of all vCPUs, guest busy on every vCPU", Pause},
	{"read", "guest-physical read throughput: shared mapping vs gdbstub", Read},
	{"introspect", "parse symbols and BTF, attach, snapshot and scan every kernel stack", Introspect},
	{"apply", "apply/rollback of a code patch, guest busy, next to in-guest Linux livepatch", Apply},
	{"apply-6.12", "apply, on the current 6.12 kernel (IBT, __pfx padding, call-depth tracking)", OnSeries("6.12", Apply)},
	{"data", "data coherence: cost of a trapped write, slowdown while an instance is watched", Data},
	{"overhead", "relative performance of workloads: no patch, a committed code patch, a coherence window", Overhead},
	{"underload", "apply/rollback with workloads running: pauses, commit, throughput; next to in-guest Linux livepatch", UnderLoad},
	{"realfix", "real stable fixes from source diffs: built, applied under load, checked in the guest, rolled back", RealFix},
	{"soak", "apply/rollback of example patches in rotation, thousands of times, every read of the patched path checked", Soak},
}

// OnSeries runs scenario on the current release of a kernel series
// (guest.IsSeries), whatever release the other scenarios boot, so that
// one `lucos bench all` measures both kernels lucos supports.
func OnSeries(series string, scenario func(context.Context, launch.Options, io.Writer) (*Result, error)) func(context.Context, launch.Options, io.Writer) (*Result, error) {
	return func(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
		if opts.Kernel != "" || opts.Initrd != "" {
			return nil, fmt.Errorf("this scenario boots the Debian %s kernel: drop --kernel and --initrd", series)
		}
		opts.Image.Release = series
		r, err := scenario(ctx, opts, progress)
		if r != nil {
			// Its figures must not overwrite those of the default release.
			for i := range r.Figures {
				r.Figures[i].File = series + "-" + r.Figures[i].File
			}
		}
		return r, err
	}
}

// Lookup finds a scenario by name.
func Lookup(name string) (Scenario, error) {
	var names []string
	for _, s := range Scenarios {
		if s.Name == name {
			return s, nil
		}
		names = append(names, s.Name)
	}
	return Scenario{}, fmt.Errorf("unknown benchmark %q (have: %s, all)", name, strings.Join(names, ", "))
}

// distribution summarises samples (already in the unit wanted).
func distribution(what, unit string, x []float64) Row {
	s := append([]float64(nil), x...)
	sort.Float64s(s)
	r := Row{What: what, N: len(s), Unit: unit}
	if len(s) == 0 {
		return r
	}
	q := func(p float64) float64 {
		i := int(p*float64(len(s))+0.5) - 1
		return s[max(0, min(i, len(s)-1))]
	}
	r.P50, r.P99, r.Min, r.Max = q(0.5), q(0.99), s[0], s[len(s)-1]
	return r
}

func micros(d time.Duration) float64 { return float64(d.Nanoseconds()) / 1e3 }

// Markdown renders results as tables.
func Markdown(w io.Writer, results []*Result) {
	for _, r := range results {
		fmt.Fprintf(w, "### %s\n\n| what | n | p50 | p99 | min | max | unit | ratio |\n|---|---|---|---|---|---|---|---|\n", r.Scenario)
		for _, row := range r.Rows {
			fmt.Fprintf(w, "| %s | %d | %s | %s | %s | %s | %s | %s |\n", row.What, row.N, num(row.P50), num(row.P99), num(row.Min), num(row.Max), row.Unit, row.Ratio)
		}
		for _, n := range r.Notes {
			fmt.Fprintf(w, "\n%s\n", n)
		}
		fmt.Fprintln(w)
	}
}

func num(v float64) string {
	switch {
	case v == 0:
		return "–"
	case v >= 100:
		return fmt.Sprintf("%.0f", v)
	case v >= 10:
		return fmt.Sprintf("%.1f", v)
	}
	return fmt.Sprintf("%.2f", v)
}
