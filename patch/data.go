package patch

import (
	"context"
	"fmt"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch/loader"
)

// Data updates and callbacks: the parts of a patch that run inside the
// guest (docs/PATCH-FORMAT.md gives the order and contexts; this file is
// that order).

// dataItem is one LUCOS_DATA: a global whose old and new versions are kept
// coherent while old and new code both run.
type dataItem struct {
	name                string
	oldAddr, newAddr    uint64
	oldSize, newSize    uint64
	transfer, reverse   uint64
	transferName, rname string
}

// direction is the transfer function one way, with its source and
// destination: forward from the old instance to the new one.
func (d *dataItem) direction(forward bool) (fn uint64, name string, src, dst uint64) {
	if forward {
		return d.transfer, d.transferName, d.oldAddr, d.newAddr
	}
	return d.reverse, d.rname, d.newAddr, d.oldAddr
}

func dataItems(img *loader.Image) []*dataItem {
	var out []*dataItem
	for _, d := range img.Data {
		out = append(out, &dataItem{
			name: d.Spec.OldName, oldAddr: d.OldAddr, newAddr: d.NewAddr,
			oldSize: d.Spec.OldSize, newSize: d.Spec.NewSize,
			transfer: d.Transfer, reverse: d.Reverse,
			transferName: d.Spec.Transfer, rname: d.Spec.Reverse,
		})
	}
	return out
}

// callbacksOf returns p's callbacks of one kind, in declaration order.
func (p *Patch) callbacksOf(k loader.CallbackKind) []loader.Callback {
	var out []loader.Callback
	for _, cb := range p.callbacks {
		if cb.Spec.Kind == k {
			out = append(out, cb)
		}
	}
	return out
}

// needsTraps reports whether p watches data.
func (p *Patch) needsTraps() bool {
	return len(p.data) > 0 || len(p.callbacksOf(loader.CallbackData)) > 0
}

// runCallback runs one startup, cleanup or thread callback on a vCPU lucos
// picks, and returns its result.
// Precondition: the VM is paused.
func (e *Engine) runCallback(ctx context.Context, g *gdbstub.Client, p *Patch, cb loader.Callback, args ...uint64) (uint64, error) {
	site, err := e.pick(ctx, g, cb.Spec.NMISafe)
	if err != nil {
		return 0, fmt.Errorf("%s callback %s: %w", cb.Spec.Kind, cb.Spec.Fn, err)
	}
	ret, err := e.call(ctx, g, site, p, cb.Fn, args...)
	if err != nil {
		return ret, fmt.Errorf("%s callback %s: %w", cb.Spec.Kind, cb.Spec.Fn, err)
	}
	p.countCallback(cb.Spec.Kind.String())
	return ret, nil
}

// startup runs p's startup callbacks, each in its own pause; the first
// nonzero result aborts the apply.
func (e *Engine) startup(ctx context.Context, p *Patch) error {
	for _, cb := range p.callbacksOf(loader.CallbackStartup) {
		var ret uint64
		_, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) (err error) {
			ret, err = e.runCallback(ctx, g, p, cb)
			return err
		})
		if err != nil {
			return err
		}
		if rc := int32(ret); rc != 0 {
			return fmt.Errorf("startup callback %s returned %d: patch not applied", cb.Spec.Fn, rc)
		}
	}
	return nil
}

// transferAll runs the forward (or reverse) transfer of each LUCOS_DATA of
// p, on a vCPU with interrupts on or idle.
// Precondition: the VM is paused.
func (e *Engine) transferAll(ctx context.Context, g *gdbstub.Client, p *Patch, forward bool) error {
	if len(p.data) == 0 {
		return nil
	}
	dir := "reverse"
	if forward {
		dir = "forward"
	}
	site, err := e.pick(ctx, g, false)
	if err != nil {
		return fmt.Errorf("%s transfer: %w", dir, err)
	}
	for _, d := range p.data {
		fn, name, src, dst := d.direction(forward)
		if _, err := e.call(ctx, g, site, p, fn, src, dst); err != nil {
			return fmt.Errorf("%s transfer %s of %s: %w", dir, name, d.name, err)
		}
		p.transfers.Add(1)
	}
	return nil
}

// switchIn is the apply's switch, all with the VM paused: forward
// transfers, watches, jumps (to replacements and function-callback stubs). On failure what it did is
// undone (the transfers wrote only the patch's own new instances).
func (e *Engine) switchIn(ctx context.Context, g *gdbstub.Client, p *Patch) error {
	if err := e.transferAll(ctx, g, p, true); err != nil {
		return err
	}
	if err := e.watch(g, p); err != nil {
		e.traps.dropWatches(g, p)
		return err
	}
	// Function callbacks are among the jumps: to their stubs.
	if err := e.install(g, p.funcs); err != nil {
		e.traps.dropWatches(g, p)
		return err
	}
	return nil
}

// watch puts write watches on p's old and new data instances and on the
// instances of its data callbacks.
func (e *Engine) watch(g *gdbstub.Client, p *Patch) error {
	byAddr := map[uint64]*watch{}
	for _, d := range p.data {
		old := &watch{p: p, addr: d.oldAddr, size: d.oldSize, data: d, old: true}
		byAddr[d.oldAddr] = old
		if err := e.traps.addWatch(g, old); err != nil {
			return err
		}
		if err := e.traps.addWatch(g, &watch{p: p, addr: d.newAddr, size: d.newSize, data: d}); err != nil {
			return err
		}
	}
	for _, cb := range p.callbacksOf(loader.CallbackData) {
		if w := byAddr[cb.SymAddr]; w != nil {
			w.callbacks = append(w.callbacks, cb.Fn)
			continue
		}
		size := cb.Sym.Size
		if size == 0 || size > 4096 {
			size = 8
		}
		w := &watch{p: p, addr: cb.SymAddr, size: size, callbacks: []uint64{cb.Fn}}
		byAddr[cb.SymAddr] = w
		if err := e.traps.addWatch(g, w); err != nil {
			return err
		}
	}
	return nil
}

// unwatch drops p's watches: its update has terminated.
func (e *Engine) unwatch(ctx context.Context, p *Patch) error {
	if !p.needsTraps() {
		return nil
	}
	_, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) error { return e.traps.dropWatches(g, p) })
	return err
}

// switchOut is the rollback's switch, all with the VM paused: reverse
// transfers, watches kept (or put back) for the reverting window, original
// entries back (function callbacks go with them).
func (e *Engine) switchOut(ctx context.Context, g *gdbstub.Client, p *Patch, watching bool) error {
	if err := e.transferAll(ctx, g, p, false); err != nil {
		return err
	}
	if len(p.data) > 0 {
		if !watching {
			if err := e.watch(g, p); err != nil {
				e.traps.dropWatches(g, p)
				return err
			}
		}
	}
	return e.restore(g, p.funcs)
}

// cleanup runs p's cleanup callbacks (last declared first), then frees its
// shadow variables, before its slot is unmapped.
// Precondition: the VM is paused.
func (e *Engine) cleanup(ctx context.Context, g *gdbstub.Client, p *Patch) error {
	cbs := p.callbacksOf(loader.CallbackCleanup)
	for i := len(cbs) - 1; i >= 0; i-- {
		if _, err := e.runCallback(ctx, g, p, cbs[i]); err != nil {
			return err
		}
	}
	if p.rt.Exit == 0 {
		return nil
	}
	site, err := e.pick(ctx, g, false)
	if err != nil {
		return fmt.Errorf("free shadow variables: %w", err)
	}
	n, err := e.call(ctx, g, site, p, p.rt.Exit)
	if err != nil {
		return fmt.Errorf("free shadow variables: %w", err)
	}
	p.mu.Lock()
	p.shadowsFreed = int(int32(n))
	p.mu.Unlock()
	return nil
}

// threadCallbacks runs p's thread callbacks for each task newly found
// inside an old function, once per task.
func (e *Engine) threadCallbacks(ctx context.Context, p *Patch, holders []introspect.Holder) {
	cbs := p.callbacksOf(loader.CallbackThread)
	if len(cbs) == 0 {
		return
	}
	var tasks []uint64
	p.mu.Lock()
	for _, h := range holders {
		if h.Task != 0 && !p.threadSeen[h.Task] {
			p.threadSeen[h.Task] = true
			tasks = append(tasks, h.Task)
		}
	}
	p.mu.Unlock()
	if len(tasks) == 0 {
		return
	}
	_, err := e.m.WithPaused(ctx, func(g *gdbstub.Client) error {
		for _, t := range tasks {
			for _, cb := range cbs {
				if _, err := e.runCallback(ctx, g, p, cb, t); err != nil {
					return err
				}
			}
		}
		return nil
	})
	if err != nil {
		p.noteTrapError(err)
	}
}
