package gdbstub

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"slices"
	"strconv"
	"sync"
	"sync/atomic"
	"time"
)

// Client is a connection to one QEMU gdbstub. It is safe for concurrent use;
// commands are serialised.
type Client struct {
	conn   net.Conn
	closed atomic.Bool

	// ackMode is true when the stub refused QStartNoAckMode (QEMU 7.2 does).
	// Set during the handshake, then read-only.
	ackMode bool
	// ackPending: a packet from the stub awaits our '+'. The ack goes out in
	// front of the next thing we send rather than in a write of its own:
	// QEMU (system mode) does not wait for it, and the pause stays one
	// syscall shorter. Set by whichever goroutine reads.
	ackPending atomic.Bool

	mu sync.Mutex // serialises commands; guards everything below
	// rd is used by the goroutine holding mu while the VM is stopped, and by
	// the run's reader (await) while it runs.
	rd     packetReader
	wbuf   []byte // framed packet being written
	cmd    []byte // payload being built
	err    error  // sticky: the connection can no longer be used
	run    *run   // non-nil from a resume until its stop is absorbed
	last   StopEvent
	layout *Layout

	threads      []int
	packetSize   int  // largest packet the stub accepts, framing included
	maxRead      int  // bytes per 'm'
	maxWrite     int  // bytes per 'M'
	multiprocess bool // the stub writes thread ids as "pPID.TID"
	phyMemMode   bool // the stub has Qqemu.PhyMemMode
	physical     bool // m/M take physical addresses
	// redial makes a new connection (nil: none, as from NewClient);
	// reconnects counts its uses, cause is the failure that broke the
	// connection while connecting again fails, reconnecting is set while a
	// reconnection's handshake runs.
	redial       func(context.Context) (net.Conn, error)
	reconnects   int
	cause        error
	reconnecting bool

	// testHook, when a test sets it before the VM runs, hears of events
	// the tests synchronise on: "read" (await read a packet), "finish" (a
	// Stop or Wait is about to block for the end of a run).
	testHook func(event string)

	// gThread is the vCPU QEMU's 'g', 'p' and (in virtual mode) 'm'/'M'
	// act on: the last one selected with Hg, or the one a stop reply
	// named (QEMU selects it on every stop). 0 when unknown.
	gThread int

	// watches are the watchpoints inserted (RecoverLostWatches).
	watches []watchRange
	// swept is the time of the last stop RecoverLostWatches looked at.
	swept time.Time
	// lostWatches counts the hits RecoverLostWatches found.
	lostWatches atomic.Int64
}

// run is one period during which the VM runs, from a resume to its stop
// reply.
type run struct {
	done        chan struct{} // closed by await when the run is over
	interrupted bool          // 0x03 sent; guarded by Client.mu
	// Written by await before done is closed.
	ev    StopEvent
	err   error
	fatal bool // err broke the connection
}

// Dial connects to the gdbstub at addr (QEMU's -gdb socket; network "unix"
// or "tcp") and prepares the client: see NewClient. It returns with the VM
// stopped.
func Dial(ctx context.Context, network, addr string) (*Client, error) {
	return DialFunc(ctx, addr, func(ctx context.Context) (net.Conn, error) {
		var d net.Dialer
		return d.DialContext(ctx, network, addr)
	})
}

// DialFunc is Dial with the connection made by dial (name is for errors).
// The client keeps dial: if the connection breaks while the VM is stopped,
// the next command connects again (see Reconnects).
func DialFunc(ctx context.Context, name string, dial func(context.Context) (net.Conn, error)) (*Client, error) {
	conn, err := dial(ctx)
	if err != nil {
		return nil, fmt.Errorf("connect to gdbstub: %w", err)
	}
	c, err := NewClient(ctx, conn)
	if err != nil {
		conn.Close()
		return nil, fmt.Errorf("gdbstub %s: %w", name, err)
	}
	c.redial = dial
	return c, nil
}

// reconnectTimeout bounds a reconnection's dial and handshake.
const reconnectTimeout = 5 * time.Second

// Reconnects counts the connections made again after one broke. A command
// that was in flight when the connection broke fails with its error (it
// may or may not have reached QEMU); the next one, if the VM was stopped,
// goes over a new connection. QEMU keeps the VM stopped meanwhile and
// keeps its breakpoints, watchpoints and memory mode (the new handshake
// sends no '?', which would remove them).
func (c *Client) Reconnects() int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.reconnects
}

// recover connects again if the connection broke while the VM was
// stopped. Precondition: mu held.
func (c *Client) recover() error {
	if c.err == nil || c.redial == nil || c.closed.Load() || c.run != nil || c.reconnecting {
		return c.err
	}
	cause := c.cause
	if cause == nil {
		cause = c.err
	}
	c.conn.Close()
	ctx, cancel := context.WithTimeout(context.Background(), reconnectTimeout)
	defer cancel()
	conn, err := c.redial(ctx)
	if err != nil {
		c.cause, c.err = cause, fmt.Errorf("%w; connecting again: %v", cause, err)
		return c.err
	}
	prev := c.last
	c.conn, c.rd, c.ackMode, c.err = conn, packetReader{br: bufio.NewReaderSize(conn, 16<<10)}, true, nil
	c.ackPending.Store(false)
	conn.SetDeadline(time.Now().Add(reconnectTimeout))
	c.reconnecting = true
	sawStop, err := c.handshake(false)
	c.reconnecting = false
	conn.SetDeadline(time.Time{})
	if err != nil {
		conn.Close()
		c.cause, c.err = cause, fmt.Errorf("%w; connecting again: %v", cause, err)
		return c.err
	}
	if !sawStop {
		c.last = prev
	}
	c.cause = nil
	c.reconnects++
	return nil
}

// NewClient takes over a fresh connection to a gdbstub. QEMU stops the VM
// when a client connects and, if it was running, sends a stop reply
// unasked; NewClient consumes it (or asks '?' when none came), negotiates
// the protocol, reads the target description and the list of vCPUs, and
// returns with the VM stopped. ctx bounds the handshake only. On error the
// caller still owns conn.
func NewClient(ctx context.Context, conn net.Conn) (*Client, error) {
	c := &Client{
		conn:       conn,
		rd:         packetReader{br: bufio.NewReaderSize(conn, 16<<10)},
		ackMode:    true,
		packetSize: 0x400,
	}
	if dl, ok := ctx.Deadline(); ok {
		conn.SetDeadline(dl)
	}
	stop := context.AfterFunc(ctx, func() { conn.SetDeadline(time.Unix(1, 0)) })
	c.mu.Lock()
	_, err := c.handshake(true)
	c.mu.Unlock()
	if !stop() || ctx.Err() != nil || isTimeout(err) {
		// The connection's deadline is the context's: a timeout is the
		// context ending, even if its timer has not fired yet.
		switch {
		case ctx.Err() != nil:
			err = ctx.Err()
		case err == nil || isTimeout(err):
			err = context.DeadlineExceeded
		}
		return nil, fmt.Errorf("handshake: %w", err)
	}
	if err != nil {
		return nil, err
	}
	conn.SetDeadline(time.Time{})
	return c, nil
}

func isTimeout(err error) bool {
	var ne net.Error
	return errors.As(err, &ne) && ne.Timeout()
}

// handshake runs the connection setup and says whether the stub sent a
// stop reply unasked (the VM was running). Without one, ask sends '?' to
// learn why the VM stopped; a reconnection does not, since '?' removes
// every breakpoint and watchpoint. Precondition: mu held.
func (c *Client) handshake(ask bool) (sawStop bool, err error) {
	// QEMU stops the VM when we connect and, if it was running, sends a
	// stop reply before reading anything from us. No reply to
	// QStartNoAckMode looks like a stop reply, so whatever stop replies
	// precede it are that one.
	c.cmd = append(c.cmd[:0], "QStartNoAckMode"...)
	if err := c.write(c.cmd); err != nil {
		return false, err
	}
	for {
		p, err := c.readPacket()
		if err != nil {
			return sawStop, fmt.Errorf("QStartNoAckMode: %w", err)
		}
		if isStopReply(p) {
			if c.last, err = parseStopReply(p); err != nil {
				return sawStop, err
			}
			c.last.At = time.Now()
			sawStop = true
			continue
		}
		// "OK", or "" from QEMU 7.2 which does not know the packet.
		c.ackMode = string(p) != "OK"
		break
	}

	if err := c.negotiate(); err != nil {
		return sawStop, err
	}
	// The target description must be read after qSupported: QEMU answers
	// 'p' and 'P' with "unsupported" until a client has read target.xml.
	l, err := ReadLayout(c.readFeature)
	if err != nil {
		return sawStop, err
	}
	c.layout = l
	if err := c.listThreads(); err != nil {
		return sawStop, err
	}
	if !sawStop && ask {
		// Note: QEMU's '?' also removes every breakpoint and watchpoint.
		c.cmd = append(c.cmd[:0], '?')
		p, err := c.roundTrip(nil)
		if err != nil {
			return sawStop, fmt.Errorf("ask why the VM stopped ('?'): %w", err)
		}
		if c.last, err = parseStopReply(p); err != nil {
			return sawStop, err
		}
		c.last.At = time.Now()
	}
	c.gThread = 0
	return sawStop, c.checkLayout()
}

// negotiate learns what the stub supports. Precondition: mu held.
func (c *Client) negotiate() error {
	// No multiprocess+: thread ids stay plain numbers (but see parseThreadID).
	c.cmd = append(c.cmd[:0], "qSupported:swbreak+;hwbreak+;vContSupported+"...)
	p, err := c.command()
	if err != nil {
		return fmt.Errorf("qSupported: %w", err)
	}
	xfer := false
	for f := range bytes.SplitSeq(p, []byte{';'}) {
		switch {
		case bytes.HasPrefix(f, []byte("PacketSize=")):
			n, ok := parseHex(f[len("PacketSize="):])
			if !ok || n < 64 {
				return fmt.Errorf("qSupported: bad %q", f)
			}
			c.packetSize = int(min(n, maxPacketLen))
		case string(f) == "qXfer:features:read+":
			xfer = true
		}
	}
	if !xfer {
		return errors.New("the stub cannot send its target description (no qXfer:features:read+ in qSupported); lucos needs it to find registers")
	}
	c.maxRead = c.packetSize / 2
	c.maxWrite = min(0x700, (c.packetSize-32)/2)

	c.cmd = append(c.cmd[:0], "vCont?"...)
	if p, err = c.command(); err != nil {
		return fmt.Errorf("vCont?: %w", err)
	}
	acts := bytes.Split(p, []byte{';'})
	if !slices.ContainsFunc(acts, func(a []byte) bool { return string(a) == "c" }) ||
		!slices.ContainsFunc(acts, func(a []byte) bool { return string(a) == "s" }) {
		return fmt.Errorf("the stub's vCont lacks continue or step: %q", p)
	}

	c.cmd = append(c.cmd[:0], "qqemu.Supported"...)
	p, err = c.command()
	if errors.Is(err, ErrUnsupported) {
		return nil // not QEMU: no physical memory mode
	}
	if err != nil {
		return fmt.Errorf("qqemu.Supported: %w", err)
	}
	for f := range bytes.SplitSeq(p, []byte{';'}) {
		if string(f) == "PhyMemMode" {
			c.phyMemMode = true
		}
	}
	if c.phyMemMode {
		// The mode is global in QEMU and outlives connections.
		c.cmd = append(c.cmd[:0], "qqemu.PhyMemMode"...)
		if p, err = c.command(); err != nil {
			return fmt.Errorf("qqemu.PhyMemMode: %w", err)
		}
		c.physical = string(p) == "1"
	}
	return nil
}

// readFeature reads one target description file with qXfer. Precondition:
// mu held.
func (c *Client) readFeature(annex string) ([]byte, error) {
	var doc []byte
	chunk := c.packetSize - 16
	for {
		c.cmd = fmt.Appendf(c.cmd[:0], "qXfer:features:read:%s:%x,%x", annex, len(doc), chunk)
		p, err := c.command()
		if err != nil {
			return nil, err
		}
		switch p[0] {
		case 'l':
			return append(doc, p[1:]...), nil
		case 'm':
			if len(p) == 1 {
				return nil, &ProtocolError{Msg: "qXfer: empty 'm' chunk"}
			}
			doc = append(doc, p[1:]...)
			if len(doc) > maxReplyLen {
				return nil, &ProtocolError{Msg: "qXfer: document longer than 1 MiB"}
			}
		default:
			return nil, &ProtocolError{Msg: fmt.Sprintf("qXfer: reply %q", truncate(p))}
		}
	}
}

// listThreads reads the vCPU list. Precondition: mu held.
func (c *Client) listThreads() error {
	c.threads = c.threads[:0]
	c.cmd = append(c.cmd[:0], "qfThreadInfo"...)
	for {
		p, err := c.command()
		if err != nil {
			return fmt.Errorf("list vCPUs: %w", err)
		}
		if p[0] == 'l' {
			break
		}
		if p[0] != 'm' {
			return &ProtocolError{Msg: fmt.Sprintf("thread list reply %q", truncate(p))}
		}
		for id := range bytes.SplitSeq(p[1:], []byte{','}) {
			tid, ok := parseThreadID(id)
			if !ok || tid == 0 {
				return &ProtocolError{Msg: fmt.Sprintf("thread list: bad id %q", truncate(id))}
			}
			c.multiprocess = c.multiprocess || id[0] == 'p'
			c.threads = append(c.threads, tid)
		}
		c.cmd = append(c.cmd[:0], "qsThreadInfo"...)
	}
	if len(c.threads) == 0 {
		return errors.New("the stub lists no vCPUs")
	}
	return nil
}

// checkLayout matches the layout against a real 'g' reply: QEMU's 'g' may
// carry fewer registers than the description lists. Precondition: mu held.
func (c *Client) checkLayout() error {
	if err := c.selectThread(c.threads[0]); err != nil {
		return err
	}
	c.cmd = append(c.cmd[:0], 'g')
	p, err := c.command()
	if err != nil {
		return fmt.Errorf("read registers: %w", err)
	}
	if len(p)%2 != 0 {
		return &ProtocolError{Msg: "'g' reply of odd length"}
	}
	c.layout.fitG(len(p) / 2)
	return nil
}

// Close closes the connection. The VM stays as it is: stopped or running.
func (c *Client) Close() error {
	if c.closed.Swap(true) {
		return nil
	}
	err := c.conn.Close()
	c.mu.Lock()
	c.err = ErrClosed
	c.mu.Unlock()
	return err
}

// Detach resumes the VM and closes the connection ('D'). QEMU removes every
// breakpoint and watchpoint on detach. If the VM runs it is stopped first.
func (c *Client) Detach() error {
	if c.Running() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := c.Stop(ctx)
		cancel()
		if err != nil {
			return fmt.Errorf("detach: stop the VM first: %w", err)
		}
	}
	c.mu.Lock()
	err := c.settle()
	if err == nil {
		c.cmd = append(c.cmd[:0], 'D')
		if c.multiprocess {
			c.cmd = append(c.cmd, ";1"...)
		}
		_, err = c.command()
	}
	c.mu.Unlock()
	if err != nil {
		return fmt.Errorf("detach: %w", err)
	}
	return c.Close()
}

// Threads lists the vCPU thread ids (1..N).
func (c *Client) Threads() []int {
	c.mu.Lock()
	defer c.mu.Unlock()
	return slices.Clone(c.threads)
}

// Layout is the register layout of the target.
func (c *Client) Layout() *Layout { return c.layout }

func (c *Client) hasThread(tid int) bool { return slices.Contains(c.threads, tid) }

func (c *Client) threadError(tid int) error {
	return fmt.Errorf("no vCPU thread %d (threads are %v)", tid, c.threads)
}

// selectThread makes tid the vCPU of 'g', 'p' and 'm' ("Hg"). Precondition:
// mu held, VM stopped.
func (c *Client) selectThread(tid int) error {
	if c.gThread == tid {
		return nil
	}
	if !c.hasThread(tid) {
		return c.threadError(tid)
	}
	c.cmd = append(c.cmd[:0], 'H', 'g')
	c.cmd = strconv.AppendUint(c.cmd, uint64(tid), 16)
	if _, err := c.command(); err != nil {
		return fmt.Errorf("select vCPU %d: %w", tid, err)
	}
	c.gThread = tid
	return nil
}

// fail records an error that leaves the connection unusable and returns it.
// Precondition: mu held.
func (c *Client) fail(err error) error {
	if c.err == nil {
		c.err = fmt.Errorf("gdbstub connection unusable after: %w", err)
	}
	return err
}

// write sends one packet, preceded by a pending ack. Precondition: mu held.
func (c *Client) write(payload []byte) error {
	b := c.wbuf[:0]
	if c.ackPending.Swap(false) {
		b = append(b, '+')
	}
	start := len(b)
	b = appendPacket(b, payload)
	c.wbuf = b
	if len(b)-start > c.packetSize {
		// QEMU would drop it without a word and the reply would never come.
		return fmt.Errorf("packet %s is %d bytes, over the stub's limit of %d", packetName(payload), len(b)-start, c.packetSize)
	}
	if _, err := c.conn.Write(b); err != nil {
		return c.fail(err)
	}
	return nil
}

// readPacket reads the next packet. Precondition: mu held, VM stopped.
func (c *Client) readPacket() ([]byte, error) {
	p, err := c.rd.next()
	if err != nil {
		if errors.Is(err, errNak) {
			return nil, err
		}
		return nil, c.fail(err)
	}
	if c.ackMode {
		c.ackPending.Store(true)
	}
	return p, nil
}

// roundTrip sends c.cmd and returns the reply, valid until the next read.
// Console ('O') packets before the reply are appended, decoded, to console
// if it is not nil and dropped otherwise. Precondition: mu held, VM stopped.
func (c *Client) roundTrip(console *[]byte) ([]byte, error) {
	if err := c.recover(); err != nil {
		return nil, err
	}
	if err := c.write(c.cmd); err != nil {
		return nil, err
	}
	for {
		p, err := c.readPacket()
		if err != nil {
			return nil, err
		}
		if isConsole(p) {
			if console != nil {
				n := len(*console)
				*console = append(*console, make([]byte, len(p)/2)...)
				decodeHex((*console)[n:], p[1:])
			}
			continue
		}
		if isStopReply(p) && c.cmd[0] != '?' {
			// The VM ran although this client had stopped it: someone
			// resumed it behind our back (QMP "cont"). Our packet only
			// stopped it again and was dropped, and QEMU now points 'g'
			// at the vCPU the stop names.
			ev, err := parseStopReply(p)
			if err != nil {
				return nil, c.fail(err)
			}
			ev.At = time.Now()
			c.last, c.gThread = ev, ev.Thread
			return nil, fmt.Errorf("%s: %w", packetName(c.cmd), ErrResumedElsewhere)
		}
		return p, nil
	}
}

// command is roundTrip that turns "Exx" and empty replies into errors.
func (c *Client) command() ([]byte, error) {
	p, err := c.roundTrip(nil)
	if err != nil {
		return nil, err
	}
	if err := replyError(c.cmd, p); err != nil {
		return nil, err
	}
	return p, nil
}

// commandOK is command for packets whose only good reply is "OK".
func (c *Client) commandOK() error {
	p, err := c.roundTrip(nil)
	if err != nil {
		return err
	}
	return okReply(c.cmd, p)
}

// Monitor runs a QEMU monitor (HMP) command through the stub (qRcmd) and
// returns its output. Commands that change the run state ("stop", "cont")
// confuse the client's view of the VM: do not use them.
func (c *Client) Monitor(cmd string) (string, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return "", fmt.Errorf("monitor %q: %w", cmd, err)
	}
	c.cmd = append(c.cmd[:0], "qRcmd,"...)
	c.cmd = appendHex(c.cmd, []byte(cmd))
	var out []byte
	p, err := c.roundTrip(&out)
	if err == nil {
		err = replyError(c.cmd, p)
	}
	if err == nil && string(p) != "OK" {
		err = &ProtocolError{Msg: fmt.Sprintf("reply %q to qRcmd", truncate(p))}
	}
	if err != nil {
		return string(out), fmt.Errorf("monitor %q: %w", cmd, err)
	}
	return string(out), nil
}
