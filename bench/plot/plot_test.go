package plot

import (
	"bytes"
	"encoding/xml"
	"errors"
	"io"
	"math"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

// pauses returns n heavy-tailed samples like a pause distribution in µs.
func pauses(seed uint64, n int, median float64) []float64 {
	r := rand.New(rand.NewPCG(seed, 1))
	xs := make([]float64, n)
	for i := range xs {
		xs[i] = median * math.Exp(0.6*r.NormFloat64())
	}
	return xs
}

type drawFunc func(path string) error

var figures = map[string]drawFunc{
	"histogram": func(path string) error {
		return Histogram(path, "guest-visible pause", "pause (µs)", map[string][]float64{
			"lucos switch pause": pauses(1, 1000, 60),
			"load pause":         pauses(2, 300, 150),
		})
	},
	"cdf": func(path string) error {
		return CDF(path, "apply → committed", "time (ms)", true, map[string][]float64{
			"lucos":           pauses(3, 100, 1.08),
			"Linux livepatch": pauses(4, 5, 1605),
		})
	},
	"cdf-linear": func(path string) error {
		return CDF(path, "stop latency", "latency (µs)", false, map[string][]float64{"stop": pauses(5, 200, 151)})
	},
	"bars": func(path string) error {
		return Bars(path, "guest throughput during patching", "throughput ratio", []Bar{
			{Group: "cpu", Series: "committed code patch", Value: 0.998, Low: 0.996, High: 0.999},
			{Group: "cpu", Series: "coherence window", Value: 0.97, Low: 0.95, High: 0.985},
			{Group: "syscall", Series: "committed code patch", Value: 0.996, Low: 0.992, High: 1.001},
			{Group: "syscall", Series: "coherence window", Value: 0.955, Low: 0.94, High: 0.96},
			{Group: "memory", Series: "committed code patch", Value: 1.002},
		}, map[string]float64{"target": 0.995, "floor": 0.95})
	},
}

// checkSVG parses the file as XML and checks it is an SVG of the figure size.
func checkSVG(t *testing.T, path string) []byte {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	d := xml.NewDecoder(bytes.NewReader(b))
	var root *xml.StartElement
	for {
		tok, err := d.Token()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatalf("%s: not well-formed XML: %v", path, err)
		}
		if se, ok := tok.(xml.StartElement); ok && root == nil {
			root = &se
		}
	}
	if root == nil || root.Name.Local != "svg" {
		t.Fatalf("%s: root element is not <svg>", path)
	}
	for _, a := range root.Attr {
		if a.Name.Local == "width" && !strings.HasPrefix(a.Value, "453.5") {
			t.Errorf("%s: width %s, want 16 cm (453.54pt)", path, a.Value)
		}
	}
	return b
}

func TestFiguresAreSVG(t *testing.T) {
	dir := t.TempDir()
	for name, draw := range figures {
		path := filepath.Join(dir, name+".svg")
		if err := draw(path); err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		b := checkSVG(t, path)
		if !bytes.Contains(b, []byte("sans-serif")) {
			t.Errorf("%s: font fallback not applied", name)
		}
	}
	if d := os.Getenv("LUCOS_PLOT_KEEP"); d != "" {
		// Look at the figures: LUCOS_PLOT_KEEP=/tmp/figs go test ./bench/plot/
		for name, draw := range figures {
			if err := draw(filepath.Join(d, name+".svg")); err != nil {
				t.Fatal(err)
			}
		}
	}
}

func TestFiguresAreDeterministic(t *testing.T) {
	dir := t.TempDir()
	for name, draw := range figures {
		a, b := filepath.Join(dir, name+"-a.svg"), filepath.Join(dir, name+"-b.svg")
		if err := draw(a); err != nil {
			t.Fatal(err)
		}
		if err := draw(b); err != nil {
			t.Fatal(err)
		}
		ba, _ := os.ReadFile(a)
		bb, _ := os.ReadFile(b)
		if !bytes.Equal(ba, bb) {
			t.Errorf("%s: two saves of the same figure differ", name)
		}
	}
}

func TestOneSample(t *testing.T) {
	dir := t.TempDir()
	one := map[string][]float64{"one": {42}}
	for name, draw := range map[string]drawFunc{
		"histogram": func(p string) error { return Histogram(p, "t", "x", one) },
		"cdf":       func(p string) error { return CDF(p, "t", "x", false, one) },
		"cdf-log":   func(p string) error { return CDF(p, "t", "x", true, one) },
		"cdf-zero":  func(p string) error { return CDF(p, "t", "x", false, map[string][]float64{"z": {0}}) },
		"bars": func(p string) error {
			return Bars(p, "t", "ratio", []Bar{{Group: "cpu", Series: "s", Value: 1}}, nil)
		},
	} {
		path := filepath.Join(dir, name+".svg")
		if err := draw(path); err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		checkSVG(t, path)
	}
}

func TestBadInput(t *testing.T) {
	dir := t.TempDir()
	for _, tc := range []struct {
		name string
		draw drawFunc
		want error
	}{
		{"histogram no series", func(p string) error { return Histogram(p, "t", "x", nil) }, ErrNoSamples},
		{"histogram empty series", func(p string) error {
			return Histogram(p, "t", "x", map[string][]float64{"a": {1}, "b": {}})
		}, ErrNoSamples},
		{"histogram NaN", func(p string) error {
			return Histogram(p, "t", "x", map[string][]float64{"a": {1, math.NaN()}})
		}, ErrBadSample},
		{"cdf no series", func(p string) error { return CDF(p, "t", "x", false, map[string][]float64{}) }, ErrNoSamples},
		{"cdf log of zero", func(p string) error {
			return CDF(p, "t", "x", true, map[string][]float64{"a": {0, 1}})
		}, ErrBadSample},
		{"cdf Inf", func(p string) error {
			return CDF(p, "t", "x", false, map[string][]float64{"a": {math.Inf(1)}})
		}, ErrBadSample},
		{"bars none", func(p string) error { return Bars(p, "t", "y", nil, nil) }, ErrNoSamples},
		{"bars spread outside value", func(p string) error {
			return Bars(p, "t", "y", []Bar{{Group: "g", Series: "s", Value: 0.9, Low: 0.95, High: 0.99}}, nil)
		}, ErrBadSample},
		{"bars duplicate", func(p string) error {
			return Bars(p, "t", "y", []Bar{{Group: "g", Series: "s", Value: 1}, {Group: "g", Series: "s", Value: 1}}, nil)
		}, ErrBadSample},
		{"bars NaN reference", func(p string) error {
			return Bars(p, "t", "y", []Bar{{Group: "g", Series: "s", Value: 1}}, map[string]float64{"r": math.NaN()})
		}, ErrBadSample},
	} {
		path := filepath.Join(dir, strings.ReplaceAll(tc.name, " ", "-")+".svg")
		err := tc.draw(path)
		if !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want %v", tc.name, err, tc.want)
		}
		if _, serr := os.Stat(path); serr == nil {
			t.Errorf("%s: wrote %s despite the error", tc.name, path)
		}
	}
}

func TestQuantileMatchesBench(t *testing.T) {
	// bench's nearest-rank rule: p99 of 1..100 is 99, p50 is 50.
	s := make([]float64, 100)
	for i := range s {
		s[i] = float64(i + 1)
	}
	if q := quantile(s, 0.5); q != 50 {
		t.Errorf("p50 = %v, want 50", q)
	}
	if q := quantile(s, 0.99); q != 99 {
		t.Errorf("p99 = %v, want 99", q)
	}
}

func TestLogTicks(t *testing.T) {
	labels := func(lo, hi float64) []string {
		var l []string
		for _, tk := range (logTicks{}).Ticks(lo, hi) {
			if tk.Label != "" {
				l = append(l, tk.Label)
			}
		}
		return l
	}
	for _, tc := range []struct {
		lo, hi float64
		want   string
	}{
		{0.5, 500, "0.5 1 2 5 10 20 50 100 200 500"},
		{0.05, 20000, "0.1 1 10 100 1000 10000"},
		{3, 4.5, "3 4"},
		{28, 63, "30 40 50 60"},
	} {
		if got := strings.Join(labels(tc.lo, tc.hi), " "); got != tc.want {
			t.Errorf("ticks [%v, %v] = %q, want %q", tc.lo, tc.hi, got, tc.want)
		}
	}
}
