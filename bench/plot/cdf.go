package plot

import (
	"fmt"
	"math"
	"strconv"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// CDF draws the empirical cumulative distribution of each series as a step
// line (series in sorted name order), with grey reference lines at 0.5 (p50)
// and 0.99 (p99): where a series crosses them is its p50 and p99. With logX
// the x axis is logarithmic, for series orders of magnitude apart, and every
// sample must be positive. The figure is written to path as SVG.
func CDF(path, title, xlabel string, logX bool, series map[string][]float64) error {
	names, err := sortedSeries(series)
	if err != nil {
		return fmt.Errorf("cdf %s: %w", path, err)
	}
	lo, hi := math.Inf(1), math.Inf(-1)
	for _, name := range names {
		for i, x := range series[name] {
			if logX && x <= 0 {
				return fmt.Errorf("cdf %s: series %q: sample %d is %v, not positive as a log axis needs: %w", path, name, i, x, ErrBadSample)
			}
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
	}
	lo, hi = widen(lo, hi, logX)

	f := newFigure(title, xlabel, "fraction of samples ≤ x")
	f.p.Add(&plotter.Grid{Vertical: plotter.DefaultGridLineStyle, Horizontal: plotter.DefaultGridLineStyle})
	f.p.X.Min, f.p.X.Max = lo, hi
	f.p.Y.Min, f.p.Y.Max = 0, 1
	f.p.Y.Tick.Marker = gplot.ConstantTicks{{Value: 0, Label: "0"}, {Value: 0.25, Label: "0.25"}, {Value: 0.5, Label: "0.5"}, {Value: 0.75, Label: "0.75"}, {Value: 1, Label: "1"}}
	if logX {
		f.p.X.Scale = gplot.LogScale{}
		f.p.X.Tick.Marker = logTicks{}
	}

	for i, name := range names {
		s := sorted(series[name])
		// Start from 0 at the first sample; each sample then steps up by 1/n.
		pts := plotter.XYs{{X: s[0], Y: 0}}
		for j, x := range s {
			pts = append(pts, plotter.XY{X: x, Y: float64(j+1) / float64(len(s))})
		}
		l, err := plotter.NewLine(pts)
		if err != nil {
			return fmt.Errorf("cdf %s: %w", path, err)
		}
		l.StepStyle = plotter.PostStep
		l.LineStyle = draw.LineStyle{Color: colour(i), Width: lineWidth}
		f.p.Add(l)
		f.legend.Add(fmt.Sprintf("%s (n=%d)", name, len(s)), l)
	}
	for _, q := range []struct {
		label  string
		p      float64
		dashes []vg.Length
	}{{"p50", 0.5, dashed}, {"p99", 0.99, dotted}} {
		l, err := plotter.NewLine(plotter.XYs{{X: lo, Y: q.p}, {X: hi, Y: q.p}})
		if err != nil {
			return fmt.Errorf("cdf %s: %w", path, err)
		}
		l.LineStyle = draw.LineStyle{Color: grey, Width: vg.Points(1), Dashes: q.dashes}
		f.p.Add(l)
		f.legend.Add(q.label, l)
	}
	return f.save(path)
}

// logTicks labels 1, 2 and 5 times each power of ten in range when the range
// spans at most three decades, else only the powers of ten, and every tick if
// that would leave fewer than two labelled; the other integer multiples get
// unlabelled minor ticks. gonum's LogTicks labels only powers of ten, which
// leaves a range inside one decade with no labels at all.
type logTicks struct{}

func (logTicks) Ticks(lo, hi float64) []gplot.Tick {
	dense := math.Log10(hi/lo) <= 3
	var ticks []gplot.Tick
	labelled := 0
	for e := int(math.Floor(math.Log10(lo))); e <= int(math.Ceil(math.Log10(hi))); e++ {
		for m := 1; m < 10; m++ {
			v := decimal(m, e)
			if v < lo || v > hi {
				continue
			}
			t := gplot.Tick{Value: v}
			if m == 1 || dense && (m == 2 || m == 5) {
				t.Label = strconv.FormatFloat(v, 'f', -1, 64)
				labelled++
			}
			ticks = append(ticks, t)
		}
	}
	if labelled < 2 {
		for i := range ticks {
			ticks[i].Label = strconv.FormatFloat(ticks[i].Value, 'f', -1, 64)
		}
	}
	return ticks
}

// decimal is m·10^e as the nearest float64, so 2·10^-1 prints as 0.2.
func decimal(m, e int) float64 {
	if e < 0 {
		return float64(m) / math.Pow10(-e)
	}
	return float64(m) * math.Pow10(e)
}
