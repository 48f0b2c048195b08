package workload

import (
	"errors"
	"math"
	"os"
	"strings"
	"testing"
	"time"
)

// testdata/oltp.out is the output of `lucos-workload oltp 2` in the TCG guest.
func TestParseGolden(t *testing.T) {
	out, err := os.ReadFile("testdata/oltp.out")
	if err != nil {
		t.Fatal(err)
	}
	r, err := Parse("oltp", out)
	if err != nil {
		t.Fatal(err)
	}
	if r.Name != "oltp" || r.Ops <= 0 || r.Elapsed < 2*time.Second || len(r.Buckets) == 0 || len(r.Buckets) > 20 {
		t.Fatalf("implausible result %+v", r)
	}
	var sum int64
	for i, b := range r.Buckets {
		sum += b.Ops
		if rate := r.Rate(i); rate <= 0 || math.IsInf(rate, 0) {
			t.Errorf("bucket %d: rate %v", i, rate)
		}
	}
	if sum != r.Ops {
		t.Errorf("buckets add up to %d, total %d", sum, r.Ops)
	}
}

func TestParse(t *testing.T) {
	out := "start 1000\nb 101000 5\nb 201500 7\n\nb 301000 0\ntotal 12 300000 40000.000\n"
	r, err := Parse("fs", []byte(out))
	if err != nil {
		t.Fatal(err)
	}
	want := Result{Name: "fs", StartNS: 1000, Ops: 12, Elapsed: 300 * time.Microsecond, OpsPerSec: 40000,
		Buckets: []Bucket{{101000, 5}, {201500, 7}, {301000, 0}}}
	if r.Name != want.Name || r.StartNS != want.StartNS || r.Ops != want.Ops || r.Elapsed != want.Elapsed ||
		r.OpsPerSec != want.OpsPerSec || len(r.Buckets) != 3 || r.Buckets[1] != want.Buckets[1] {
		t.Errorf("Parse = %+v, want %+v", r, want)
	}
	if got := r.Rate(1); math.Abs(got-7/100.5e-6) > 1e-6 {
		t.Errorf("Rate(1) = %v", got)
	}
}

func TestParseTruncated(t *testing.T) {
	full := "start 1000\nb 101000 5\nb 201000 7\ntotal 12 200000 60000.000\n"
	for _, cut := range []int{0, 5, len("start 1000\n"), len("start 1000\nb 101000 5\nb 2")} {
		_, err := Parse("cpu", []byte(full[:cut]))
		var pe *ParseError
		if !errors.Is(err, ErrTruncated) && !errors.As(err, &pe) {
			t.Errorf("cut at %d: %v, want ErrTruncated or a ParseError", cut, err)
		}
	}
	if _, err := Parse("cpu", []byte(full[:strings.Index(full, "total")])); !errors.Is(err, ErrTruncated) {
		t.Errorf("no total line: %v, want ErrTruncated", err)
	}
}

func TestParseGarbage(t *testing.T) {
	for _, tc := range []struct{ out, msg string }{
		{"hello\n", "unknown line"},
		{"b 100 1\ntotal 1 100 1e7\n", "after the start line"},
		{"start 0\nstart 0\n", "first"},
		{"start 10\nb 10 1\n", "not after 10"},
		{"start 10\nb 20 1\nb 15 1\n", "not after 20"},
		{"start 10\nb 20 -1\n", "not a count"},
		{"start 10\nb 20 x\n", "not a count"},
		{"start 10\nb 20 1 2\n", "want `b"},
		{"start 10\ntotal 0 10 0\n", "no buckets"},
		{"start 10\nb 20 1\ntotal 2 10 200000000\n", "add up"},
		{"start 10\nb 20 1\ntotal 1 20 50000000\n", "last bucket"},
		{"start 10\nb 20 1\ntotal 1 10 7\n", "ops/s"},
		{"start 10\nb 20 1\ntotal 1 10 NaN\n", "not a rate"},
		{"start 10\nb 20 1\ntotal 1 10 100000000.000\nb 30 1\n", "after the total"},
	} {
		_, err := Parse("cpu", []byte(tc.out))
		var pe *ParseError
		if !errors.As(err, &pe) || !strings.Contains(err.Error(), tc.msg) {
			t.Errorf("Parse(%q) = %v, want a ParseError about %q", tc.out, err, tc.msg)
		}
	}
}

func FuzzParse(f *testing.F) {
	f.Add([]byte("start 1000\nb 101000 5\nb 201000 7\ntotal 12 200000 60000.000\n"))
	if b, err := os.ReadFile("testdata/oltp.out"); err == nil {
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, out []byte) {
		r, err := Parse("cpu", out)
		if err != nil {
			return
		}
		var sum int64
		prev := r.StartNS
		for _, b := range r.Buckets {
			if b.EndNS <= prev || b.Ops < 0 {
				t.Fatalf("accepted bad bucket %+v after %d", b, prev)
			}
			prev, sum = b.EndNS, sum+b.Ops
		}
		if sum != r.Ops || r.Elapsed <= 0 || len(r.Buckets) == 0 {
			t.Fatalf("accepted inconsistent %+v", r)
		}
	})
}
