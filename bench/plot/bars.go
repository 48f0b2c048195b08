package plot

import (
	"fmt"
	"image/color"
	"math"
	"sort"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Bar is one ratio in a grouped bar chart: the Series bar of Group (say, the
// "coherence window" bar of the "syscall" workload). Low and High are the
// ends of its spread in the same units as Value (not offsets from it), drawn
// as an error bar; leave both zero for a bar without one.
type Bar struct {
	Group, Series    string
	Value, Low, High float64
}

// Bars draws ratios as grouped bars: one group per distinct Group and one
// bar per distinct Series within it, both in order of first appearance in
// bars. Each bar grows from the baseline 1.0, drawn as a solid line, up or
// down to its value, so the bar's length is the change against the baseline.
// refs adds a labelled horizontal line for each target (say "target": 0.995),
// ordered by value. The figure is written to path as SVG.
func Bars(path, title, ylabel string, bars []Bar, refs map[string]float64) error {
	if len(bars) == 0 {
		return fmt.Errorf("bars %s: no bars: %w", path, ErrNoSamples)
	}
	const baseline = 1.0
	var groups, names []string
	groupIdx, seriesIdx := map[string]int{}, map[string]int{}
	seen := map[[2]string]bool{}
	lo, hi := baseline, baseline
	for _, b := range bars {
		if seen[[2]string{b.Group, b.Series}] {
			return fmt.Errorf("bars %s: group %q has two %q bars: %w", path, b.Group, b.Series, ErrBadSample)
		}
		seen[[2]string{b.Group, b.Series}] = true
		if err := checkBar(b); err != nil {
			return fmt.Errorf("bars %s: %w", path, err)
		}
		if _, ok := groupIdx[b.Group]; !ok {
			groupIdx[b.Group] = len(groups)
			groups = append(groups, b.Group)
		}
		if _, ok := seriesIdx[b.Series]; !ok {
			seriesIdx[b.Series] = len(names)
			names = append(names, b.Series)
		}
		lo, hi = math.Min(lo, b.Value), math.Max(hi, b.Value)
		if hasSpread(b) {
			lo, hi = math.Min(lo, b.Low), math.Max(hi, b.High)
		}
	}
	refNames := make([]string, 0, len(refs))
	for name, v := range refs {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("bars %s: reference %q is %v: %w", path, name, v, ErrBadSample)
		}
		refNames = append(refNames, name)
		lo, hi = math.Min(lo, v), math.Max(hi, v)
	}
	sort.Slice(refNames, func(i, j int) bool {
		a, b := refNames[i], refNames[j]
		if refs[a] != refs[b] {
			return refs[a] > refs[b]
		}
		return a < b
	})

	f := newFigure(title, "", ylabel)
	f.p.NominalX(groups...)
	f.p.Add(&plotter.Grid{Horizontal: plotter.DefaultGridLineStyle})
	pad := (hi - lo) * 0.08
	if pad == 0 {
		pad = 0.01
	}
	f.p.Y.Min, f.p.Y.Max = lo-pad, hi+pad

	for i, name := range names {
		s := &barSeries{index: i, count: len(names), groups: len(groups), baseline: baseline, colour: colour(i)}
		for _, b := range bars {
			if b.Series == name {
				s.bars = append(s.bars, placedBar{group: groupIdx[b.Group], Bar: b})
			}
		}
		f.p.Add(s)
		f.legend.Add(name, s)
	}
	base, err := horizontal(-0.5, float64(len(groups))-0.5, baseline, draw.LineStyle{Color: color.Black, Width: vg.Points(1)})
	if err != nil {
		return fmt.Errorf("bars %s: %w", path, err)
	}
	f.p.Add(base)
	f.legend.Add("baseline "+formatRatio(baseline), base)
	styles := [][]vg.Length{dashed, dotted, dashDot}
	for i, name := range refNames {
		l, err := horizontal(-0.5, float64(len(groups))-0.5, refs[name], draw.LineStyle{Color: grey, Width: lineWidth, Dashes: styles[i%len(styles)]})
		if err != nil {
			return fmt.Errorf("bars %s: %w", path, err)
		}
		f.p.Add(l)
		f.legend.Add(fmt.Sprintf("%s %s", name, formatRatio(refs[name])), l)
	}
	return f.save(path)
}

func checkBar(b Bar) error {
	for _, v := range []float64{b.Value, b.Low, b.High} {
		if math.IsNaN(v) || math.IsInf(v, 0) {
			return fmt.Errorf("bar %s/%s: value %v: %w", b.Group, b.Series, v, ErrBadSample)
		}
	}
	if hasSpread(b) && (b.Low > b.Value || b.High < b.Value) {
		return fmt.Errorf("bar %s/%s: spread [%v, %v] does not contain value %v: %w", b.Group, b.Series, b.Low, b.High, b.Value, ErrBadSample)
	}
	return nil
}

func hasSpread(b Bar) bool { return b.Low != 0 || b.High != 0 }

// formatRatio keeps the digits that tell 0.995 from 0.99.
func formatRatio(v float64) string { return fmt.Sprintf("%.4g", v) }

func horizontal(x0, x1, y float64, sty draw.LineStyle) (*plotter.Line, error) {
	l, err := plotter.NewLine(plotter.XYs{{X: x0, Y: y}, {X: x1, Y: y}})
	if err != nil {
		return nil, err
	}
	l.LineStyle = sty
	return l, nil
}

type placedBar struct {
	group int
	Bar
}

// barSeries is one Series across the groups. Groups sit at x = 0, 1, …
// (gonum's nominal axis); a group's bars share the middle 80% of its unit.
type barSeries struct {
	index, count, groups int
	baseline             float64
	colour               color.RGBA
	bars                 []placedBar
}

const groupSpan = 0.8

func (s *barSeries) Plot(c draw.Canvas, p *gplot.Plot) {
	trX, trY := p.Transforms(&c)
	w := groupSpan / float64(s.count)
	whisker := draw.LineStyle{Color: color.Black, Width: vg.Points(1)}
	for _, b := range s.bars {
		x0 := float64(b.group) - groupSpan/2 + float64(s.index)*w
		x1 := x0 + w
		r := vg.Rectangle{
			Min: vg.Point{X: trX(x0), Y: trY(math.Min(s.baseline, b.Value))},
			Max: vg.Point{X: trX(x1), Y: trY(math.Max(s.baseline, b.Value))},
		}
		c.FillPolygon(s.colour, c.ClipPolygonXY(corners(r)))
		if !hasSpread(b.Bar) {
			continue
		}
		mid, capW := trX((x0+x1)/2), (trX(x1)-trX(x0))/4
		yl, yh := trY(b.Low), trY(b.High)
		c.StrokeLines(whisker, c.ClipLinesXY(
			[]vg.Point{{X: mid, Y: yl}, {X: mid, Y: yh}},
			[]vg.Point{{X: mid - capW, Y: yl}, {X: mid + capW, Y: yl}},
			[]vg.Point{{X: mid - capW, Y: yh}, {X: mid + capW, Y: yh}},
		)...)
	}
}

func (s *barSeries) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymin, ymax = s.baseline, s.baseline
	for _, b := range s.bars {
		ymin, ymax = math.Min(ymin, b.Value), math.Max(ymax, b.Value)
		if hasSpread(b.Bar) {
			ymin, ymax = math.Min(ymin, b.Low), math.Max(ymax, b.High)
		}
	}
	return -0.5, float64(s.groups) - 0.5, ymin, ymax
}

func (s *barSeries) Thumbnail(c *draw.Canvas) {
	c.FillPolygon(s.colour, corners(c.Rectangle))
}
