package vmm

import (
	"bytes"
	"fmt"
	"io"
	"net"
	"os"
	"strings"
	"sync"
)

// consoleTap reads the guest's serial console (ttyS0): it appends everything
// to console.log, copies it to an optional writer, and keeps the last lines
// for error messages. Input for an interactive console goes through Write.
type consoleTap struct {
	conn net.Conn
	log  *os.File

	mu   sync.Mutex
	out  io.Writer // may be nil; guarded by mu
	last []byte    // the last tailBytes bytes of output
	done chan struct{}
}

const tailBytes = 8 << 10

func newConsoleTap(conn net.Conn, logPath string, out io.Writer) (*consoleTap, error) {
	f, err := os.Create(logPath)
	if err != nil {
		return nil, fmt.Errorf("create console log: %w", err)
	}
	t := &consoleTap{conn: conn, log: f, out: out, done: make(chan struct{})}
	go t.pump()
	return t, nil
}

func (t *consoleTap) pump() {
	defer close(t.done)
	buf := make([]byte, 32<<10)
	for {
		n, err := t.conn.Read(buf)
		if n > 0 {
			b := buf[:n]
			t.log.Write(b)
			t.mu.Lock()
			if t.out != nil {
				t.out.Write(b)
			}
			t.last = append(t.last, b...)
			if len(t.last) > 2*tailBytes {
				t.last = append(t.last[:0], t.last[len(t.last)-tailBytes:]...)
			}
			t.mu.Unlock()
		}
		if err != nil {
			return
		}
	}
}

// setOutput changes where console output is copied (nil: log only).
func (t *consoleTap) setOutput(w io.Writer) {
	t.mu.Lock()
	t.out = w
	t.mu.Unlock()
}

// Write sends input to the guest console.
func (t *consoleTap) Write(p []byte) (int, error) { return t.conn.Write(p) }

// tail returns the last n lines of console output.
func (t *consoleTap) tail(n int) string {
	if t == nil {
		return ""
	}
	t.mu.Lock()
	b := bytes.TrimRight(t.last, "\r\n")
	t.mu.Unlock()
	lines := strings.Split(strings.ReplaceAll(string(b), "\r", ""), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// crashMarkers start the report of a kernel crash on the console.
var crashMarkers = []string{"------------[ cut here ]", "BUG: ", "Oops: ", "general protection fault", "invalid opcode", "Kernel panic"}

// report is what a boot that stopped leaves to read: from the first line
// of a kernel crash report when the console holds one (up to maxLines), so
// that the error shows the oops from its first line; else the last n lines.
func (t *consoleTap) report(n, maxLines int) string {
	all := t.tail(1 << 20)
	lines := strings.Split(all, "\n")
	for i, l := range lines {
		for _, m := range crashMarkers {
			if strings.Contains(l, m) {
				return strings.Join(lines[i:min(len(lines), i+maxLines)], "\n")
			}
		}
	}
	return t.tail(n)
}

func (t *consoleTap) close() {
	t.conn.Close()
	<-t.done
	t.log.Close()
}

// Console gives interactive access to the serial console: output is copied
// to out from now on (nil stops it) and the returned writer sends keystrokes.
func (m *Machine) Console(out io.Writer) io.Writer {
	m.console.setOutput(out)
	return m.console
}
