package bench

import (
	"math"
	"testing"
	"time"

	"github.com/lucos/lucos/bench/workload"
)

func near(a, b float64) bool { return math.Abs(a-b) < 1e-9*max(1, math.Abs(b)) }

func TestSpreadOf(t *testing.T) {
	for _, tc := range []struct {
		x    []float64
		want Spread
	}{
		{nil, Spread{}},
		{[]float64{3}, Spread{1, 3, 3, 3}},
		{[]float64{0.99, 1.01, 1.00}, Spread{3, 1.00, 0.99, 1.01}},
		{[]float64{4, 1, 3, 2}, Spread{4, 2.5, 1, 4}},
	} {
		if got := spreadOf(tc.x); got != tc.want {
			t.Errorf("spreadOf(%v) = %+v, want %+v", tc.x, got, tc.want)
		}
	}
}

func TestRatios(t *testing.T) {
	got, err := ratios([]float64{99, 200, 50}, []float64{100, 200, 100})
	if err != nil {
		t.Fatal(err)
	}
	for i, want := range []float64{0.99, 1, 0.5} {
		if !near(got[i], want) {
			t.Errorf("round %d: %v, want %v", i, got[i], want)
		}
	}
	for _, bad := range [][2][]float64{
		{{1, 2}, {1}},
		{{1}, {0}},
		{{1}, {math.NaN()}},
		{{math.Inf(1)}, {1}},
	} {
		if _, err := ratios(bad[0], bad[1]); err == nil {
			t.Errorf("ratios(%v, %v): no error", bad[0], bad[1])
		}
	}
}

func TestHostRate(t *testing.T) {
	if got := hostRate(1000, 0, 2*time.Second); got != 1000 {
		t.Errorf("no pause: %v", got)
	}
	// Paused 20 ms of a 2 s exec: 1% of the time lost.
	if got := hostRate(1000, 20*time.Millisecond, 2*time.Second); !near(got, 990) {
		t.Errorf("1%% paused: %v, want 990", got)
	}
	if got := hostRate(1000, 3*time.Second, 2*time.Second); got != 0 {
		t.Errorf("paused longer than the wall time: %v, want 0", got)
	}
}

func TestGuestTime(t *testing.T) {
	h := time.Unix(1000, 0)
	ref := clockRef{ClockSample: workload.ClockSample{Guest: 5e9, Host: h}, Paused: 7 * time.Millisecond}
	// 2 s of host time later, 3 ms of which the VM was paused.
	if got := ref.guestTime(h.Add(2*time.Second), 10*time.Millisecond); got != 5e9+2e9-3e6 {
		t.Errorf("guestTime = %d, want %d", got, int64(5e9+2e9-3e6))
	}
	// Before the reference, with no pause between.
	if got := ref.guestTime(h.Add(-time.Second), 7*time.Millisecond); got != 4e9 {
		t.Errorf("guestTime before ref = %d", got)
	}
}

// run is 1 s of buckets of 100 ms, 10 ops each, but the 5th bucket (400 to
// 500 ms) has 0 ops and the 6th covers 500 to 700 ms with 20.
func run() *workload.Result {
	r := &workload.Result{StartNS: 1e9}
	for i, ops := range []int64{10, 10, 10, 10, 0} {
		r.Buckets = append(r.Buckets, workload.Bucket{EndNS: 1e9 + int64(i+1)*1e8, Ops: ops})
	}
	r.Buckets = append(r.Buckets, workload.Bucket{EndNS: 1e9 + 7e8, Ops: 20})
	for i := 7; i < 10; i++ {
		r.Buckets = append(r.Buckets, workload.Bucket{EndNS: 1e9 + int64(i+1)*1e8, Ops: 10})
	}
	return r
}

func TestWindowOps(t *testing.T) {
	r := run()
	for _, tc := range []struct {
		from, to int64
		want     float64
		ok       bool
	}{
		{1e9, 2e9, 90, true},               // the whole run
		{1e9 + 5e7, 1e9 + 15e7, 10, true},  // half of two buckets
		{1e9 + 4e8, 1e9 + 5e8, 0, true},    // the empty bucket
		{1e9 + 45e7, 1e9 + 6e8, 10, true},  // half the empty one, half the long one
		{1e9 + 6e8, 1e9 + 7e8, 10, true},   // inside the long bucket
		{1e9 + 9e8, 1e9 + 9e8, 0, false},   // empty window
		{1e9 - 1, 1e9 + 1e8, 0, false},     // starts before the run
		{1e9 + 95e7, 2e9 + 1, 0, false},    // ends after it
		{1e9 + 3e8, 1e9 + 2e8, 0, false},   // backwards
		{1e9 + 999999999, 2e9, 1e-7, true}, // the last nanosecond
		{1e9 + 2e8 + 25e6, 1e9 + 2e8 + 75e6, 5, true},
	} {
		got, ok := windowOps(r, tc.from, tc.to)
		if ok != tc.ok || ok && !near(got, tc.want) {
			t.Errorf("windowOps(%d, %d) = %v, %v; want %v, %v", tc.from, tc.to, got, ok, tc.want, tc.ok)
		}
	}
	if _, ok := windowOps(&workload.Result{StartNS: 1}, 1, 2); ok {
		t.Error("a run without buckets has a window")
	}
}

func TestTypicalRate(t *testing.T) {
	// 90 ops in 1 s.
	if got := typicalRate(run()); !near(got, 90) {
		t.Errorf("typicalRate = %v, want 90", got)
	}
	// Rates 50, 100, 200, 300, 400 in buckets of 100 ms from 0.
	r := &workload.Result{}
	for i, ops := range []int64{5, 10, 20, 30, 40} {
		r.Buckets = append(r.Buckets, workload.Bucket{EndNS: int64(i+1) * 1e8, Ops: ops})
	}
	for _, tc := range []struct {
		exclude [][2]int64
		want    float64
	}{
		{nil, 210},
		{[][2]int64{{3e8, 5e8}}, 350.0 / 3}, // the last two buckets
		{[][2]int64{{0, 1e8}, {35e7, 36e7}}, 700.0 / 3}, // the first, and one touched inside
		{[][2]int64{{1e8, 2e8}}, 237.5},                 // exactly the second bucket
		{[][2]int64{{0, 5e8}}, 210},                     // every bucket: all count
		{[][2]int64{{5e8, 6e8}, {-1e8, 0}}, 210},        // windows outside the run
	} {
		if got := typicalRate(r, tc.exclude...); !near(got, tc.want) {
			t.Errorf("typicalRate excluding %v = %v, want %v", tc.exclude, got, tc.want)
		}
	}
	if got := typicalRate(&workload.Result{}); got != 0 {
		t.Errorf("no buckets: %v", got)
	}
}

func TestWindowRate(t *testing.T) {
	r := run()
	// 1 s around the empty bucket: 90 ops over 1 s, no pause.
	got, ok := windowRate(r, 1e9, 2e9, 0, 100)
	if !ok || !near(got, 0.9) {
		t.Errorf("windowRate = %v, %v; want 0.9", got, ok)
	}
	// The same window with 125 ms of pauses inside it: 90 ops in 1.125 s.
	got, ok = windowRate(r, 1e9, 2e9, 125*time.Millisecond, 100)
	if !ok || !near(got, 0.8) {
		t.Errorf("with pauses: %v, %v; want 0.8", got, ok)
	}
	if _, ok := windowRate(r, 0, 2e9, 0, 100); ok {
		t.Error("window outside the run accepted")
	}
	if _, ok := windowRate(r, 1e9, 2e9, 0, 0); ok {
		t.Error("zero typical rate accepted")
	}
}
