package plot

import (
	"fmt"
	"image/color"
	"math"

	gplot "gonum.org/v1/plot"
	"gonum.org/v1/plot/plotter"
	"gonum.org/v1/plot/vg"
	"gonum.org/v1/plot/vg/draw"
)

// Histogram draws the distribution of each series as a histogram, overlaid in
// distinct translucent colours (series in sorted name order), with dashed and
// dotted vertical lines at each series' p50 and p99. The series share one set
// of bins over the range of all samples, so overlaid shapes compare; the bin
// count is Rice's rule, 2·∛n for the largest series, kept within 5..50. The y
// axis is the fraction of each series' samples, so series of different sizes
// compare too. The figure is written to path as SVG.
func Histogram(path, title, xlabel string, series map[string][]float64) error {
	names, err := sortedSeries(series)
	if err != nil {
		return fmt.Errorf("histogram %s: %w", path, err)
	}
	lo, hi, nmax := math.Inf(1), math.Inf(-1), 0
	for _, xs := range series {
		for _, x := range xs {
			lo, hi = math.Min(lo, x), math.Max(hi, x)
		}
		nmax = max(nmax, len(xs))
	}
	lo, hi = widen(lo, hi, false)
	nbins := min(max(int(math.Ceil(2*math.Cbrt(float64(nmax)))), 5), 50)
	binw := (hi - lo) / float64(nbins)

	f := newFigure(title, xlabel, "fraction of samples")
	var hists []*histogramSeries
	top := 0.0
	for i, name := range names {
		h := &histogramSeries{lo: lo, width: binw, weights: make([]float64, nbins), colour: colour(i)}
		for _, x := range series[name] {
			b := min(int((x-lo)/binw), nbins-1) // hi falls in the last bin
			h.weights[b] += 1 / float64(len(series[name]))
		}
		for _, w := range h.weights {
			top = math.Max(top, w)
		}
		hists = append(hists, h)
	}
	top *= 1.05
	for _, h := range hists {
		f.p.Add(h)
	}
	for i, name := range names {
		s := sorted(series[name])
		f.legend.Add(fmt.Sprintf("%s (n=%d)", name, len(s)), hists[i])
		for _, q := range []struct {
			label  string
			p      float64
			dashes []vg.Length
		}{{"p50", 0.5, dashed}, {"p99", 0.99, dotted}} {
			v := quantile(s, q.p)
			l, err := plotter.NewLine(plotter.XYs{{X: v, Y: 0}, {X: v, Y: top}})
			if err != nil {
				return fmt.Errorf("histogram %s: %w", path, err)
			}
			l.LineStyle = draw.LineStyle{Color: colour(i), Width: lineWidth, Dashes: q.dashes}
			f.p.Add(l)
			f.legend.Add(fmt.Sprintf("  %s %s", q.label, formatNum(v)), l)
		}
	}
	f.p.Y.Min, f.p.Y.Max = 0, top
	return f.save(path)
}

// histogramSeries is one series' bins: filled translucent so overlaps show,
// outlined as one step line so the bins do not turn into a grid.
type histogramSeries struct {
	lo, width float64
	weights   []float64
	colour    color.RGBA
}

func (h *histogramSeries) Plot(c draw.Canvas, p *gplot.Plot) {
	trX, trY := p.Transforms(&c)
	outline := []vg.Point{{X: trX(h.lo), Y: trY(0)}}
	for i, w := range h.weights {
		x0, x1 := trX(h.lo+float64(i)*h.width), trX(h.lo+float64(i+1)*h.width)
		y := trY(w)
		if w > 0 {
			bin := []vg.Point{{X: x0, Y: trY(0)}, {X: x1, Y: trY(0)}, {X: x1, Y: y}, {X: x0, Y: y}}
			c.FillPolygon(translucent(h.colour, 0x50), c.ClipPolygonXY(bin))
		}
		outline = append(outline, vg.Point{X: x0, Y: y}, vg.Point{X: x1, Y: y})
	}
	outline = append(outline, vg.Point{X: trX(h.lo + float64(len(h.weights))*h.width), Y: trY(0)})
	c.StrokeLines(draw.LineStyle{Color: h.colour, Width: vg.Points(1)}, c.ClipLinesXY(outline)...)
}

func (h *histogramSeries) DataRange() (xmin, xmax, ymin, ymax float64) {
	ymax = 0
	for _, w := range h.weights {
		ymax = math.Max(ymax, w)
	}
	return h.lo, h.lo + float64(len(h.weights))*h.width, 0, ymax
}

func (h *histogramSeries) Thumbnail(c *draw.Canvas) {
	pts := corners(c.Rectangle)
	c.FillPolygon(translucent(h.colour, 0x50), pts)
	c.StrokeLines(draw.LineStyle{Color: h.colour, Width: vg.Points(1)}, append(pts, pts[0]))
}
