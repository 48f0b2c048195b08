package gdbstub

import (
	"context"
	"errors"
	"fmt"
	"strconv"
	"time"
)

// Packets of the pause hot path, framed once.
var (
	continueAll  = []byte("vCont;c")
	interrupt    = []byte{0x03}
	interruptAck = []byte{'+', 0x03}
)

// Running reports whether the VM runs: it was resumed and its stop reply has
// not arrived.
func (c *Client) Running() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	if c.run == nil {
		return false
	}
	select {
	case <-c.run.done:
		return false
	default:
		return true
	}
}

// LastStop is the last stop reply received (or, right after connecting, the
// stop of the connection).
func (c *Client) LastStop() StopEvent {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.settle()
	return c.last
}

// Continue resumes every vCPU ("vCont;c"). It returns the time its packet
// left, which ends the pause the guest sees.
func (c *Client) Continue() (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return time.Time{}, fmt.Errorf("continue: %w", err)
	}
	t, err := c.resume(continueAll)
	if err != nil {
		return t, fmt.Errorf("continue: %w", err)
	}
	return t, nil
}

// ContinueThread resumes only vCPU tid ("vCont;c:tid"); the others stay
// stopped while guest time runs on. The stop reply ends the run for all.
func (c *Client) ContinueThread(tid int) (time.Time, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return time.Time{}, fmt.Errorf("continue vCPU %d: %w", tid, err)
	}
	if !c.hasThread(tid) {
		return time.Time{}, fmt.Errorf("continue vCPU %d: %w", tid, c.threadError(tid))
	}
	c.cmd = append(c.cmd[:0], "vCont;c:"...)
	c.cmd = strconv.AppendUint(c.cmd, uint64(tid), 16)
	t, err := c.resume(c.cmd)
	if err != nil {
		return t, fmt.Errorf("continue vCPU %d: %w", tid, err)
	}
	return t, nil
}

// Step executes one instruction on vCPU tid ("vCont;s:tid") and returns its
// stop. The other vCPUs stay stopped. QEMU steps with interrupts masked, so
// a vCPU halted in hlt never completes its step: Stop from another goroutine
// ends such a Step.
func (c *Client) Step(tid int) (StopEvent, error) {
	c.mu.Lock()
	if err := c.settle(); err != nil {
		c.mu.Unlock()
		return StopEvent{}, fmt.Errorf("step vCPU %d: %w", tid, err)
	}
	if !c.hasThread(tid) {
		c.mu.Unlock()
		return StopEvent{}, fmt.Errorf("step vCPU %d: %w", tid, c.threadError(tid))
	}
	c.cmd = append(c.cmd[:0], "vCont;s:"...)
	c.cmd = strconv.AppendUint(c.cmd, uint64(tid), 16)
	_, err := c.resume(c.cmd)
	r := c.run
	c.mu.Unlock()
	if err != nil {
		return StopEvent{}, fmt.Errorf("step vCPU %d: %w", tid, err)
	}
	ev, err := c.finish(context.Background(), r)
	if err != nil {
		return ev, fmt.Errorf("step vCPU %d: %w", tid, err)
	}
	return ev, nil
}

// Stop stops the VM and returns its stop. If the VM runs it sends 0x03 and
// waits for the stop reply. That reply may not be the interrupt's: when a
// breakpoint or watchpoint stopped the VM just before 0x03 arrived, QEMU
// ignores the 0x03, and the breakpoint's stop is the answer. If the VM is
// already stopped, Stop returns the last stop and sends nothing (QEMU would
// not answer). If ctx ends first, the VM may still stop later; a later Stop
// or Wait returns that stop. A watch hit QEMU dropped because the 0x03 met
// it is recovered (RecoverLostWatches): Stop then returns the watch's stop,
// and hits of other vCPUs QEMU recorded but did not report in its Others.
func (c *Client) Stop(ctx context.Context) (StopEvent, error) {
	c.mu.Lock()
	r := c.run
	if r == nil {
		ev, err := c.last, c.err
		c.mu.Unlock()
		if err != nil {
			return ev, err
		}
		return c.RecoverLostWatches(ev) // a stop Wait returned, not yet looked at
	}
	select {
	case <-r.done:
		c.mu.Unlock()
		ev, err := c.finish(ctx, r)
		if err != nil {
			return ev, err
		}
		return c.RecoverLostWatches(ev)
	default:
	}
	if !r.interrupted {
		r.interrupted = true
		// A pending ack goes first: while QEMU waits for the ack of a
		// packet it sent, it swallows every byte but '+' and '$'.
		b := interrupt
		if c.ackPending.Swap(false) {
			b = interruptAck
		}
		if _, err := c.conn.Write(b); err != nil {
			err = c.fail(err)
			c.mu.Unlock()
			return StopEvent{}, fmt.Errorf("stop: send 0x03: %w", err)
		}
	}
	c.mu.Unlock()
	ev, err := c.finish(ctx, r)
	if err != nil {
		return ev, fmt.Errorf("stop: %w", err)
	}
	return c.RecoverLostWatches(ev)
}

// Wait blocks until the running VM stops by itself (breakpoint, watchpoint,
// a Stop from another goroutine) and returns the stop. A stop goes to every
// Stop and Wait waiting for it, or to the first call after it; once a method
// has seen it, Wait returns ErrNotRunning and LastStop has it.
func (c *Client) Wait(ctx context.Context) (StopEvent, error) {
	c.mu.Lock()
	r := c.run
	err := c.err
	c.mu.Unlock()
	if r == nil {
		if err != nil {
			return StopEvent{}, err
		}
		return StopEvent{}, ErrNotRunning
	}
	ev, err := c.finish(ctx, r)
	if err != nil {
		return ev, fmt.Errorf("wait for the VM to stop: %w", err)
	}
	return ev, nil
}

// finish waits for the end of r and absorbs it.
func (c *Client) finish(ctx context.Context, r *run) (StopEvent, error) {
	if c.testHook != nil {
		c.testHook("finish")
	}
	select {
	case <-r.done:
	case <-ctx.Done():
		return StopEvent{}, ctx.Err()
	}
	c.mu.Lock()
	if c.run == r {
		c.settle()
	}
	c.mu.Unlock()
	return r.ev, r.err
}

// resume sends a vCont packet and starts the reader of its stop reply.
// Precondition: mu held, VM stopped.
func (c *Client) resume(pkt []byte) (time.Time, error) {
	if err := c.write(pkt); err != nil {
		return time.Time{}, err
	}
	t := time.Now()
	r := &run{done: make(chan struct{})}
	c.run = r
	c.gThread = 0
	go c.await(r)
	return t, nil
}

// await reads while the VM runs, until the stop reply. It owns c.rd until
// it closes r.done.
func (c *Client) await(r *run) {
	defer close(r.done)
	for {
		p, err := c.rd.next()
		at := time.Now()
		if err != nil {
			r.err, r.fatal = fmt.Errorf("read stop reply: %w", err), !errors.Is(err, errNak)
			return
		}
		if c.ackMode {
			c.ackPending.Store(true)
		}
		if c.testHook != nil {
			c.testHook("read")
		}
		if isStopReply(p) {
			r.ev, r.err = parseStopReply(p)
			if r.err != nil {
				r.ev.Raw = string(p)
			}
			r.ev.At = at
			return
		}
		if !isConsole(p) {
			// Nothing else comes while the VM runs: vCont has no reply
			// unless it is refused, and ContinueThread checks its thread.
			r.err = fmt.Errorf("while the VM runs the stub sent %q", truncate(p))
			r.fatal = true
			return
		}
	}
}

// settle absorbs the end of a run: the VM stopped, and the stop reply
// tells which vCPU QEMU now points 'g' at. It returns ErrRunning if the VM
// still runs, and the connection's sticky error if any. Precondition: mu
// held.
func (c *Client) settle() error {
	if r := c.run; r != nil {
		select {
		case <-r.done:
		default:
			return ErrRunning
		}
		c.run = nil
		switch {
		case r.fatal:
			c.fail(r.err)
		case r.ev.Exited:
			c.last = r.ev
			c.fail(fmt.Errorf("%s", r.ev))
		default:
			c.last = r.ev
			c.gThread = r.ev.Thread
		}
	}
	return c.recover()
}
