package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/launch"
)

// introspectRounds is how many snapshots Introspect takes.
const introspectRounds = 50

// Introspect measures what seeing the guest costs: parsing the kernel
// image's symbols and BTF (cold, then from lucos's cache), attaching to the
// running kernel (KASLR slide, banner check), and taking a snapshot of every
// task and kernel stack with the guest paused, then scanning it.
func Introspect(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return nil, err
	}
	var cold, cached []float64
	for i := 0; i < 3; i++ {
		dir, err := os.MkdirTemp("", "lucos-bench-kimage-")
		if err != nil {
			return nil, err
		}
		t0 := time.Now()
		if _, err := kimage.Load(ctx, img.Kernel, dir); err != nil {
			return nil, err
		}
		cold = append(cold, time.Since(t0).Seconds()*1e3)
		t0 = time.Now()
		if _, err := kimage.Load(ctx, img.Kernel, dir); err != nil {
			return nil, err
		}
		cached = append(cached, time.Since(t0).Seconds()*1e3)
		os.RemoveAll(dir)
	}
	fmt.Fprintln(progress, "introspect: booting the guest")
	m, err := launch.Start(ctx, opts)
	if err != nil {
		return nil, err
	}
	defer m.Close()
	ki, err := kimage.Load(ctx, img.Kernel, img.KImageCache())
	if err != nil {
		return nil, err
	}
	t0 := time.Now()
	k, err := introspect.Attach(ctx, m, ki)
	if err != nil {
		return nil, err
	}
	attach := time.Since(t0).Seconds() * 1e3
	sym, err := ki.Symbols.Find("do_nanosleep", 0)
	if err != nil {
		return nil, err
	}
	r := []introspect.Range{{Start: sym.Addr + k.Slide, End: sym.Addr + k.Slide + sym.Size}}
	var pause, scan []float64
	var tasks, words int
	for i := 0; i < introspectRounds; i++ {
		s, err := k.Snapshot(ctx)
		if err != nil {
			return nil, err
		}
		pause = append(pause, micros(s.Pause))
		t0 := time.Now()
		s.Scan(r)
		scan = append(scan, micros(time.Since(t0)))
		tasks, words = len(s.Tasks), s.StackWords()
	}
	return &Result{Scenario: "introspection", Rows: []Row{
		distribution("parse symbols + BTF from vmlinuz, cold", "ms", cold),
		distribution("parse symbols + BTF, from lucos's cache", "ms", cached),
		{What: "attach (KASLR slide from the IDT, banner check)", N: 1, P50: attach, Min: attach, Max: attach, Unit: "ms"},
		distribution("snapshot: guest pause to read all tasks and copy their stacks", "µs", pause),
		distribution("scan all stacks for one function (host only)", "µs", scan),
	}, Notes: []string{fmt.Sprintf("%s; %d tasks, %d stack words per snapshot; %d snapshots of an idle guest.", ki.Release, tasks, words, introspectRounds)}}, nil
}
