package bench

import (
	"context"
	"fmt"
	"io"
	"time"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/launch"
)

// Read compares guest-physical read throughput through the shared RAM
// mapping with reads through the gdbstub (physical mode, VM paused).
func Read(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	const chunk = 4096
	buf := make([]byte, chunk)
	const mapBytes, gdbBytes = 256 << 20, 4 << 20
	base := uint64(layout.PatchRegionBase - mapBytes)

	var viaMap, viaGDB []float64
	for round := 0; round < 5; round++ {
		fmt.Fprintf(progress, "read: round %d/5\n", round+1)
		t0 := time.Now()
		for off := uint64(0); off < mapBytes; off += chunk {
			if err := m.ReadPhys(base+off, buf); err != nil {
				return nil, err
			}
		}
		viaMap = append(viaMap, float64(mapBytes)/(1<<20)/time.Since(t0).Seconds())

		var took time.Duration
		_, err := m.WithPaused(ctx, func(g *gdbstub.Client) error {
			if err := g.SetPhysical(true); err != nil {
				return err
			}
			defer g.SetPhysical(false)
			t0 := time.Now()
			for off := uint64(0); off < gdbBytes; off += chunk {
				if err := g.ReadMemory(base+off, buf); err != nil {
					return err
				}
			}
			took = time.Since(t0)
			return nil
		})
		if err != nil {
			return nil, err
		}
		viaGDB = append(viaGDB, float64(gdbBytes)/(1<<20)/took.Seconds())
	}
	a, b := distribution("gdbstub 'm' packets (VM paused)", "MiB/s", viaGDB), distribution("shared RAM mapping", "MiB/s", viaMap)
	a.Ratio, b.Ratio = "1", fmt.Sprintf("%.0f×", b.P50/a.P50)
	return &Result{Scenario: "guest-physical read throughput", Rows: []Row{a, b}, Notes: []string{
		fmt.Sprintf("4 KiB reads; %d MiB per round through the mapping, %d MiB through the gdbstub; 5 rounds.", mapBytes>>20, gdbBytes>>20),
	}}, nil
}
