package vmm

import (
	"testing"
	"time"
)

func TestPauseLog(t *testing.T) {
	l := NewPauseLog()
	if s, tot := l.Stats(), l.Total(); s.Count != 0 || tot != 0 {
		t.Fatalf("empty log: %+v, total %v", s, tot)
	}
	for _, d := range []time.Duration{3, 1, 2, 10} {
		l.Add(d * time.Microsecond)
	}
	if got := l.Total(); got != 16*time.Microsecond {
		t.Errorf("Total = %v, want 16µs", got)
	}
	s := l.Stats()
	want := PauseStats{Count: 4, P50: 2 * time.Microsecond, P99: 10 * time.Microsecond, Max: 10 * time.Microsecond, Last: 10 * time.Microsecond}
	if s != want {
		t.Errorf("Stats = %+v, want %+v", s, want)
	}
	if got := l.Samples(); len(got) != 4 || got[0] != 3*time.Microsecond {
		t.Errorf("Samples = %v, want them in order", got)
	}
}
