package bench

import (
	"context"
	"fmt"
	"io"
	"os"
	"strings"
	"time"

	"github.com/lucos/lucos/bench/workload"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/guestmod"
	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

// workloadGuest is the guest of the workload scenarios (overhead,
// underload): lucos-workload and the lucos_bugs module in its initramfs
// (and, if asked, the livepatch twin of cmdline-string), a patch engine
// attached, and the example patches built.
type workloadGuest struct {
	m        *vmm.Machine
	k        *introspect.Kernel
	e        *patch.Engine
	ko       map[string][]byte // example patches by directory name
	tmp      string
	progress io.Writer
}

// bootWorkloadGuest builds what the guest needs, boots it and attaches an
// engine. patches are example directories under examples/patches.
func bootWorkloadGuest(ctx context.Context, opts launch.Options, progress io.Writer, scenario string, patches []string, withKLP bool) (_ *workloadGuest, err error) {
	g := &workloadGuest{ko: map[string][]byte{}, progress: progress}
	if g.tmp, err = os.MkdirTemp("", "lucos-bench-"+strings.Map(func(r rune) rune {
		if 'a' <= r && r <= 'z' || '0' <= r && r <= '9' {
			return r
		}
		return '-'
	}, scenario)+"-"); err != nil {
		return nil, err
	}
	defer func() {
		if err != nil {
			g.Close()
		}
	}()
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		return nil, err
	}
	fmt.Fprintf(progress, "%s: building lucos-workload, lucos_bugs and %d patches\n", scenario, len(patches))
	bin, err := workload.Build(ctx, opts.Image.CacheDir, g.tmp, progress)
	if err != nil {
		return nil, err
	}
	extend := workload.Extend(bin)
	if prev := opts.Extend; prev != nil { // what the scenario adds
		w := extend
		extend = func(a *initramfs.Archive) error {
			if err := w(a); err != nil {
				return err
			}
			return prev(a)
		}
	}
	if withKLP {
		klp, err := buildKLP(ctx, img.Release, g.tmp)
		if err != nil {
			return nil, err
		}
		extend = extendKLP(klp, extend)
	}
	bugs, err := guestmod.Cached(ctx, img, progress)
	if err != nil {
		return nil, err
	}
	opts.Extend = guestmod.Extend(bugs, extend)
	for _, p := range patches {
		if g.ko[p], err = BuildExample(ctx, "patches/"+p, img.Release, g.tmp); err != nil {
			return nil, fmt.Errorf("build %s: %w", p, err)
		}
	}
	fmt.Fprintf(progress, "%s: booting the guest\n", scenario)
	if g.m, err = launch.Start(ctx, opts); err != nil {
		return nil, err
	}
	if g.k, g.e, err = patch.Attach(ctx, g.m, opts.Image.CacheDir); err != nil {
		return nil, err
	}
	return g, nil
}

func (g *workloadGuest) Close() {
	if g.e != nil {
		g.e.Close()
	}
	if g.m != nil {
		g.m.Close()
	}
	os.RemoveAll(g.tmp)
}

// settleTimeout fails a run in which a transition does not settle in time.
const settleTimeout = time.Minute

// slowSettle is when a transition is worth a progress line naming what
// holds it.
const slowSettle = time.Second

// apply applies example name and waits for it to commit.
func (g *workloadGuest) apply(ctx context.Context, name string) (*patch.Patch, error) {
	p, err := g.e.Apply(ctx, g.ko[name], patch.Options{})
	if err != nil {
		return nil, err
	}
	return p, g.settle(ctx, p, patch.StateCommitted)
}

// settle waits until p is in state want, saying what holds it if that
// takes long.
func (g *workloadGuest) settle(ctx context.Context, p *patch.Patch, want patch.State) error {
	start := time.Now()
	told := false
	// The engine times the transition itself; polling only decides when
	// to go on, and backs off so as not to take the host's CPU.
	delay := time.Millisecond
	for {
		in := p.Info()
		switch {
		case in.State == want:
			return nil
		case in.State == patch.StateFailed:
			return fmt.Errorf("%s failed: %s", in.Name, in.History[len(in.History)-1].Note)
		case time.Since(start) > settleTimeout:
			return fmt.Errorf("%s: %s after %v (held by %s)", in.Name, in.State, settleTimeout, g.holders(in))
		case !told && time.Since(start) > slowSettle:
			fmt.Fprintf(g.progress, "%s: still %s after %v, held by %s\n", in.Name, in.State, slowSettle, g.holders(in))
			told = true
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
		delay = min(2*delay, 50*time.Millisecond)
	}
}

// holders says what holds a transition, as `lucos patch list` does.
func (g *workloadGuest) holders(in patch.Info) string {
	if len(in.HeldBy) == 0 {
		return "nothing (yet)"
	}
	var out []string
	for _, h := range in.HeldBy {
		out = append(out, fmt.Sprintf("pid %d (%s) %s %s", h.PID, h.Comm, h.Kind, g.k.FormatAddr(h.Value)))
	}
	return strings.Join(out, ", ")
}

// rollback rolls p back and waits until its slot is free.
func (g *workloadGuest) rollback(ctx context.Context, p *patch.Patch) error {
	if _, err := g.e.Rollback(ctx, p.ID(), patch.Options{}); err != nil {
		return err
	}
	return g.settle(ctx, p, patch.StateRolledBack)
}

// clock reads the guest's clock and the VM's paused total right after.
func (g *workloadGuest) clock(ctx context.Context) (clockRef, error) {
	c, err := workload.GuestClock(ctx, g.m)
	if err != nil {
		return clockRef{}, err
	}
	return clockRef{ClockSample: c, Paused: g.m.PausedTotal()}, nil
}
