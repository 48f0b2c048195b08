package bench

import (
	"fmt"
	"os"
	"path/filepath"

	"github.com/lucos/lucos/bench/plot"
)

// Figure is a figure of a Result, drawn from the run's samples on demand
// (`lucos bench --report` draws them next to the report).
type Figure struct {
	File    string `json:"file"` // SVG file name, e.g. "underload-pause.svg"
	Caption string `json:"caption"`
	draw    func(path string) error
}

// Draw writes the figure into dir and returns its path.
func (f Figure) Draw(dir string) (string, error) {
	if f.draw == nil {
		return "", fmt.Errorf("figure %s: no samples (a result read back from JSON cannot be drawn)", f.File)
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	path := filepath.Join(dir, f.File)
	if err := f.draw(path); err != nil {
		return "", err
	}
	return path, nil
}

// histogramFigure, cdfFigure and barsFigure defer to package plot; the
// samples are copied so that the figure does not change with its inputs.
func histogramFigure(file, caption, title, xlabel string, series map[string][]float64) Figure {
	s := copySeries(series)
	return Figure{File: file, Caption: caption, draw: func(path string) error {
		return plot.Histogram(path, title, xlabel, s)
	}}
}

func cdfFigure(file, caption, title, xlabel string, logX bool, series map[string][]float64) Figure {
	s := copySeries(series)
	return Figure{File: file, Caption: caption, draw: func(path string) error {
		return plot.CDF(path, title, xlabel, logX, s)
	}}
}

func barsFigure(file, caption, title, ylabel string, bars []plot.Bar, refs map[string]float64) Figure {
	b := append([]plot.Bar(nil), bars...)
	return Figure{File: file, Caption: caption, draw: func(path string) error {
		return plot.Bars(path, title, ylabel, b, refs)
	}}
}

func copySeries(series map[string][]float64) map[string][]float64 {
	out := make(map[string][]float64, len(series))
	for k, v := range series {
		out[k] = append([]float64(nil), v...)
	}
	return out
}
