package vmm

import (
	"bufio"
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"net"
	"strconv"
	"strings"
	"sync"
)

// ExecResult is the outcome of a command run in the guest.
type ExecResult struct {
	Stdout []byte `json:"stdout"`
	Stderr []byte `json:"stderr"`
	Status int    `json:"status"`
}

// ErrChannelClosed means the guest's control channel went away (the guest
// powered off, crashed or QEMU exited) before a command finished.
var ErrChannelClosed = errors.New("guest control channel closed")

// controlChannel is the host end of the guest's second serial port, where
// the test and demo initramfs runs /sbin/lucos-ctl (initramfs/rootfs). It is a
// convenience for tests and demos; patching never depends on it.
type controlChannel struct {
	conn  net.Conn
	ready chan string // receives the guest's kernel release once

	mu      sync.Mutex
	nextID  int
	pending map[int]*pendingExec
	err     error // set when the reader stops
	wmu     sync.Mutex
}

type pendingExec struct {
	res   ExecResult
	ended bool // the guest sent the E line
	done  chan struct{}
}

func newControlChannel(conn net.Conn) *controlChannel {
	c := &controlChannel{conn: conn, ready: make(chan string, 1), pending: map[int]*pendingExec{}}
	go c.read()
	return c
}

func (c *controlChannel) read() {
	sc := bufio.NewScanner(c.conn)
	sc.Buffer(make([]byte, 64<<10), 1<<20)
	for sc.Scan() {
		c.handle(strings.TrimRight(sc.Text(), "\r"))
	}
	c.mu.Lock()
	c.err = ErrChannelClosed
	for id, p := range c.pending {
		close(p.done)
		delete(c.pending, id)
	}
	c.mu.Unlock()
}

// handle processes one line of the protocol documented in sbin/lucos-ctl.
func (c *controlChannel) handle(line string) {
	if rel, ok := strings.CutPrefix(line, "LUCOS-READY "); ok {
		select {
		case c.ready <- rel:
		default:
		}
		return
	}
	f := strings.SplitN(line, " ", 3)
	if len(f) < 3 {
		return
	}
	id, err := strconv.Atoi(f[1])
	if err != nil {
		return
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	p := c.pending[id]
	if p == nil {
		return
	}
	switch f[0] {
	case "O", "R":
		b, err := base64.StdEncoding.DecodeString(f[2])
		if err != nil {
			return
		}
		if f[0] == "O" {
			p.res.Stdout = append(p.res.Stdout, b...)
		} else {
			p.res.Stderr = append(p.res.Stderr, b...)
		}
	case "E":
		p.res.Status, _ = strconv.Atoi(f[2])
		p.ended = true
		delete(c.pending, id)
		close(p.done)
	}
}

// waitReady waits for the guest's LUCOS-READY line and returns the release it names.
func (c *controlChannel) waitReady(ctx context.Context) (string, error) {
	select {
	case rel := <-c.ready:
		return rel, nil
	case <-ctx.Done():
		return "", ctx.Err()
	}
}

// run runs a shell script in the guest and waits for its exit status.
func (c *controlChannel) run(ctx context.Context, script string) (*ExecResult, error) {
	c.mu.Lock()
	if c.err != nil {
		c.mu.Unlock()
		return nil, c.err
	}
	c.nextID++
	id := c.nextID
	p := &pendingExec{done: make(chan struct{})}
	c.pending[id] = p
	c.mu.Unlock()

	c.wmu.Lock()
	_, err := c.conn.Write(requestLines(id, script))
	c.wmu.Unlock()
	if err != nil {
		c.forget(id)
		return nil, fmt.Errorf("send command to guest: %w", err)
	}
	select {
	case <-p.done:
		c.mu.Lock()
		defer c.mu.Unlock()
		if !p.ended {
			return nil, ErrChannelClosed
		}
		return &p.res, nil
	case <-ctx.Done():
		c.forget(id)
		return nil, ctx.Err()
	}
}

func (c *controlChannel) forget(id int) {
	c.mu.Lock()
	delete(c.pending, id)
	c.mu.Unlock()
}

func (c *controlChannel) close() error { return c.conn.Close() }

// maxPart is the base64 carried by one request line: the guest reads its
// port in canonical mode, whose lines hold at most 4095 bytes.
const maxPart = 3000

// requestLines encodes a script as P lines and a final X line.
func requestLines(id int, script string) []byte {
	b64 := base64.StdEncoding.EncodeToString([]byte(script))
	var msg []byte
	for len(b64) > maxPart {
		msg = fmt.Appendf(msg, "P %d %s\n", id, b64[:maxPart])
		b64 = b64[maxPart:]
	}
	return fmt.Appendf(msg, "X %d %s\n", id, b64)
}

// ShellQuote quotes argv so that sh runs exactly that command.
func ShellQuote(argv []string) string {
	q := make([]string, len(argv))
	for i, a := range argv {
		q[i] = "'" + strings.ReplaceAll(a, "'", `'\''`) + "'"
	}
	return strings.Join(q, " ")
}

// Control is the default initramfs's control channel on a connection to
// the guest's second serial port, for a guest lucos did not boot: the
// attach tests boot a plain QEMU with lucos's initramfs and run commands
// in it through this.
type Control struct{ c *controlChannel }

// NewControl speaks the control protocol on conn.
func NewControl(conn net.Conn) *Control { return &Control{newControlChannel(conn)} }

// WaitReady waits for the guest's LUCOS-READY line and returns the
// kernel release it names.
func (c *Control) WaitReady(ctx context.Context) (string, error) { return c.c.waitReady(ctx) }

// ExecScript runs a shell script in the guest.
func (c *Control) ExecScript(ctx context.Context, script string) (*ExecResult, error) {
	return c.c.run(ctx, script)
}

// Close closes the connection.
func (c *Control) Close() error { return c.c.close() }
