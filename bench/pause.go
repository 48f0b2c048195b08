package bench

import (
	"context"
	"fmt"
	"io"
	"strings"
	"time"

	"github.com/lucos/lucos/launch"
)

// PauseCount is the number of pause/resume cycles Pause measures.
const PauseCount = 1000

// Pause boots a guest, makes every vCPU busy, then pauses and resumes the
// whole VM PauseCount times. It reports the guest-visible pause (stop reply
// to continue: what the guest loses) and the host's stop latency (0x03 sent
// to stop reply: the guest still runs meanwhile).
func Pause(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	if _, err := m.ExecScript(ctx, BusyLoops(m.CPUs())); err != nil {
		return nil, err
	}
	time.Sleep(500 * time.Millisecond)
	var pause, stop []float64
	for i := 0; i < PauseCount; i++ {
		if i%250 == 0 {
			fmt.Fprintf(progress, "pause: %d/%d\n", i, PauseCount)
		}
		t0 := time.Now()
		if err := m.Pause(ctx); err != nil {
			return nil, err
		}
		stop = append(stop, micros(time.Since(t0)))
		d, err := m.Resume()
		if err != nil {
			return nil, err
		}
		pause = append(pause, micros(d))
		time.Sleep(time.Millisecond)
	}
	return &Result{Scenario: "pause of all vCPUs", Rows: []Row{
		distribution("guest-visible pause (stop reply → continue)", "µs", pause),
		distribution("stop latency (0x03 → stop reply; guest still runs)", "µs", stop),
	}, Notes: []string{fmt.Sprintf("%d cycles, %d vCPUs each running a busy shell loop, %s, 1 ms between cycles.", PauseCount, m.CPUs(), accelNote(m))}}, nil
}

// BusyLoops is a guest shell script that starts n endless busy loops in the
// background, one per vCPU; each writes a progress counter to /tmp/busy.N.
func BusyLoops(n int) string {
	var b strings.Builder
	for i := 0; i < n; i++ {
		fmt.Fprintf(&b, "(i=0; while :; do i=$((i+1)); [ $((i %% 500)) = 0 ] && echo $i > /tmp/busy.%d; done) >/dev/null 2>&1 &\n", i)
	}
	return b.String()
}
