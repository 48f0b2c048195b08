// Package plot draws the figures of docs/BENCHMARKS.md from benchmark
// samples: histograms and CDFs of timings, and grouped bars of ratios. It sits
// after the scenarios in the data path (samples in, SVG files out) and knows
// nothing about guests.
//
// Every figure is a 16×9 cm SVG on a white background (readable in GitHub's
// dark theme too), with its legend in a column to the right of the axes so it
// never hides data. Output is a pure function of the input: the same samples
// give the same bytes, so regenerated docs diff cleanly.
//
// Input rules, the same for every function: a figure with no series, a series
// with no samples or a sample that is NaN or infinite is an error wrapping
// ErrNoSamples or ErrBadSample, and no file is written. A series of one sample
// is drawn: a single bin, a single step, p50 = p99 = that sample.
package plot

import (
	"bytes"
	"errors"
	"fmt"
	"image/color"
	"math"
	"os"
	"sort"
	"strings"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/font"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
	"gonum.org/v1/plot/vg/vgsvg"
)

var (
	// ErrNoSamples: the figure has nothing to draw (no series, or an empty one).
	ErrNoSamples = errors.New("no samples")
	// ErrBadSample: a value is NaN or infinite, or a bar's spread does not
	// contain its value.
	ErrBadSample = errors.New("bad sample")
)

// Figure size and text sizes.
const (
	width  = 16 * vg.Centimeter
	height = 9 * vg.Centimeter
	margin = 2 * vg.Millimeter

	titleSize  = 12
	labelSize  = 11
	tickSize   = 10
	legendSize = 10
)

// sans is Liberation Sans, compiled into gonum. The SVG names it by family,
// and a viewer without it falls back through fontFallback.
var sans = font.Font{Typeface: "Liberation", Variant: "Sans"}

// fontFallback replaces the bare family gonum writes, so a browser without
// Liberation (most) picks a metric-compatible sans instead of its default serif.
var fontFallback = strings.NewReplacer(
	"font-family:Liberation Sans;",
	"font-family:Liberation Sans,Arimo,Arial,Helvetica,sans-serif;",
)

// palette is Okabe and Ito's colour-blind-safe set, in the order series take
// them (sorted by name for maps, first appearance for bars).
var palette = []color.RGBA{
	{0x00, 0x72, 0xB2, 0xFF}, // blue
	{0xD5, 0x5E, 0x00, 0xFF}, // vermillion
	{0x00, 0x9E, 0x73, 0xFF}, // green
	{0xCC, 0x79, 0xA7, 0xFF}, // reddish purple
	{0xE6, 0x9F, 0x00, 0xFF}, // orange
	{0x56, 0xB4, 0xE9, 0xFF}, // sky blue
	{0x00, 0x00, 0x00, 0xFF}, // black
}

func colour(i int) color.RGBA { return palette[i%len(palette)] }

// translucent is c at the given opacity, premultiplied as image/color wants.
func translucent(c color.RGBA, alpha uint8) color.RGBA {
	f := func(v uint8) uint8 { return uint8(uint16(v) * uint16(alpha) / 0xFF) }
	return color.RGBA{f(c.R), f(c.G), f(c.B), alpha}
}

var (
	grey      = color.RGBA{0x60, 0x60, 0x60, 0xFF}
	dashed    = []vg.Length{vg.Points(4), vg.Points(2)}
	dotted    = []vg.Length{vg.Points(1), vg.Points(2)}
	dashDot   = []vg.Length{vg.Points(5), vg.Points(2), vg.Points(1), vg.Points(2)}
	lineWidth = vg.Points(1.5)
)

// figure is a plot plus the legend drawn beside it.
type figure struct {
	p      *gplot.Plot
	legend gplot.Legend
}

func newFigure(title, xlabel, ylabel string) *figure {
	p := gplot.New()
	p.Title.Text = title
	p.Title.TextStyle.Font = font.From(sans, titleSize)
	p.Title.Padding = 3 * vg.Millimeter
	p.X.Label.Text = xlabel
	p.Y.Label.Text = ylabel
	for _, a := range []*gplot.Axis{&p.X, &p.Y} {
		a.Label.TextStyle.Font = font.From(sans, labelSize)
		a.Tick.Label.Font = font.From(sans, tickSize)
	}
	l := gplot.NewLegend()
	l.TextStyle.Font = font.From(sans, legendSize)
	l.Top, l.Left = true, true
	l.Padding = vg.Points(2)
	return &figure{p: p, legend: l}
}

// render draws the figure and returns the SVG bytes.
func (f *figure) render() []byte {
	c := vgsvg.New(width, height)
	full := draw.New(c)
	full.SetColor(color.White)
	full.Fill(full.Rectangle.Path())

	dc := draw.Crop(full, margin, -margin, margin, -margin)
	// The legend column is as wide as gonum measures the legend in Liberation
	// Sans, plus a fifth for a wider fallback font (DejaVu Sans is ~15% wider).
	var legendW vg.Length
	if r := f.legend.Rectangle(dc); r.Max.X > r.Min.X {
		legendW = min((r.Max.X-r.Min.X)*6/5, (dc.Max.X-dc.Min.X)*45/100)
	}
	gap := 4 * vg.Millimeter
	if legendW == 0 {
		gap = 0
	}
	f.p.Draw(draw.Crop(dc, 0, -legendW-gap, 0, 0))
	if legendW > 0 {
		// Start the legend level with the top of the axes, below the title.
		top := f.p.Title.TextStyle.Rectangle(f.p.Title.Text).Size().Y + f.p.Title.Padding
		f.legend.Draw(draw.Crop(dc, dc.Max.X-dc.Min.X-legendW, 0, 0, -top))
	}
	var buf bytes.Buffer
	c.WriteTo(&buf) // writes to memory: cannot fail
	return []byte(fontFallback.Replace(buf.String()))
}

func (f *figure) save(path string) error {
	if err := os.WriteFile(path, f.render(), 0o644); err != nil {
		return fmt.Errorf("plot: %w", err)
	}
	return nil
}

// sortedSeries checks series and returns its names in sorted order.
func sortedSeries(series map[string][]float64) ([]string, error) {
	if len(series) == 0 {
		return nil, fmt.Errorf("no series: %w", ErrNoSamples)
	}
	names := make([]string, 0, len(series))
	for name, xs := range series {
		if len(xs) == 0 {
			return nil, fmt.Errorf("series %q: %w", name, ErrNoSamples)
		}
		for i, x := range xs {
			if math.IsNaN(x) || math.IsInf(x, 0) {
				return nil, fmt.Errorf("series %q: sample %d is %v: %w", name, i, x, ErrBadSample)
			}
		}
		names = append(names, name)
	}
	sort.Strings(names)
	return names, nil
}

func sorted(xs []float64) []float64 {
	s := append([]float64(nil), xs...)
	sort.Float64s(s)
	return s
}

// quantile of sorted samples by the nearest-rank rule bench uses for its
// rows, so a figure's p50 and p99 match the table's.
func quantile(s []float64, p float64) float64 {
	i := int(p*float64(len(s))+0.5) - 1
	return s[max(0, min(i, len(s)-1))]
}

// formatNum prints a value with about three significant digits, as the
// tables do.
func formatNum(v float64) string {
	a := math.Abs(v)
	switch {
	case v == 0:
		return "0"
	case a >= 100:
		return fmt.Sprintf("%.0f", v)
	case a >= 10:
		return fmt.Sprintf("%.1f", v)
	case a >= 0.1:
		return fmt.Sprintf("%.2f", v)
	}
	return fmt.Sprintf("%.3g", v)
}

// widen returns a non-empty range around [lo, hi], which may be one point.
func widen(lo, hi float64, logScale bool) (float64, float64) {
	if lo < hi {
		return lo, hi
	}
	if logScale {
		return lo / 1.5, hi * 1.5
	}
	d := math.Abs(lo) * 0.1
	if d == 0 {
		d = 1
	}
	return lo - d, hi + d
}

// corners lists r's corners anticlockwise from the bottom left.
func corners(r vg.Rectangle) []vg.Point {
	return []vg.Point{r.Min, {X: r.Max.X, Y: r.Min.Y}, r.Max, {X: r.Min.X, Y: r.Max.Y}}
}
