package workload

import (
	"bufio"
	"bytes"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
)

// ErrTruncated: the output ends before its total line (the program was
// killed, or the guest went away).
var ErrTruncated = errors.New("lucos-workload output is truncated")

// ParseError is output that is not what lucos-workload prints.
type ParseError struct {
	Line int    // 1-based
	Text string // the line
	Msg  string
}

func (e *ParseError) Error() string {
	return fmt.Sprintf("lucos-workload output line %d %q: %s", e.Line, e.Text, e.Msg)
}

// Parse parses the output of `lucos-workload NAME SECONDS [BUCKET_MS]` (the
// format is at the top of src/lucos-workload.c) and checks it is consistent:
// bucket ends strictly increase from the start, the buckets add up to the
// total, the last bucket ends the run, and ops/s is ops over elapsed time.
func Parse(name string, out []byte) (*Result, error) {
	r := &Result{Name: name}
	var sum int64
	haveStart, haveTotal := false, false
	sc := bufio.NewScanner(bytes.NewReader(out))
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		bad := func(format string, args ...any) error {
			return &ParseError{Line: n, Text: line, Msg: fmt.Sprintf(format, args...)}
		}
		f := strings.Fields(line)
		if len(f) == 0 {
			continue
		}
		if haveTotal {
			return nil, bad("after the total line")
		}
		if f[0] != "start" && f[0] != "b" && f[0] != "total" {
			return nil, bad("unknown line")
		}
		nums := make([]int64, 0, 3)
		for _, s := range f[1:] {
			if f[0] == "total" && len(nums) == 2 {
				break // ops/s is a float, parsed below
			}
			v, err := strconv.ParseInt(s, 10, 64)
			if err != nil || v < 0 {
				return nil, bad("%q is not a count", s)
			}
			nums = append(nums, v)
		}
		switch f[0] {
		case "start":
			if haveStart || len(f) != 2 {
				return nil, bad("want one `start <ns>` line, first")
			}
			r.StartNS, haveStart = nums[0], true
		case "b":
			if !haveStart || len(f) != 3 {
				return nil, bad("want `b <end_ns> <ops>` after the start line")
			}
			prev := r.StartNS
			if len(r.Buckets) > 0 {
				prev = r.Buckets[len(r.Buckets)-1].EndNS
			}
			if nums[0] <= prev {
				return nil, bad("bucket ends at %d, not after %d", nums[0], prev)
			}
			r.Buckets = append(r.Buckets, Bucket{EndNS: nums[0], Ops: nums[1]})
			sum += nums[1]
		case "total":
			if !haveStart || len(f) != 4 {
				return nil, bad("want `total <ops> <elapsed_ns> <ops_per_sec>` after the start line")
			}
			rate, err := strconv.ParseFloat(f[3], 64)
			if err != nil || rate < 0 || math.IsInf(rate, 0) || math.IsNaN(rate) {
				return nil, bad("%q is not a rate", f[3])
			}
			r.Ops, r.Elapsed, r.OpsPerSec = nums[0], time.Duration(nums[1]), rate
			switch {
			case len(r.Buckets) == 0:
				return nil, bad("no buckets before the total")
			case r.Ops != sum:
				return nil, bad("total %d ops, buckets add up to %d", r.Ops, sum)
			case r.Elapsed <= 0:
				return nil, bad("elapsed time is 0")
			case r.StartNS+nums[1] != r.Buckets[len(r.Buckets)-1].EndNS:
				return nil, bad("the run ends at %d, the last bucket at %d", r.StartNS+nums[1], r.Buckets[len(r.Buckets)-1].EndNS)
			}
			want := float64(r.Ops) / r.Elapsed.Seconds()
			if math.Abs(rate-want) > 1e-3+1e-6*want {
				return nil, bad("%s ops/s, but %d ops in %v is %.3f", f[3], r.Ops, r.Elapsed, want)
			}
			haveTotal = true
		}
	}
	if err := sc.Err(); err != nil {
		return nil, fmt.Errorf("lucos-workload output: %w", err)
	}
	if !haveTotal {
		return nil, fmt.Errorf("%w: %d lines, %d buckets, no total line", ErrTruncated, n, len(r.Buckets))
	}
	return r, nil
}
