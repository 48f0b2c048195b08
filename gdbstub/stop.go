package gdbstub

import (
	"bytes"
	"fmt"
	"time"
)

// GDB signal numbers QEMU reports in stop replies.
const (
	SignalInterrupt = 2 // stopped by 0x03 (or by QMP "stop")
	SignalTrap      = 5 // breakpoint, watchpoint or single step
)

// StopEvent is a stop reply: why the VM stopped, and on which vCPU.
type StopEvent struct {
	Signal int
	// Thread is the vCPU (1-based) the stub names. After a 0x03 QEMU names
	// the first vCPU, not the one that was running.
	Thread int
	// Reason is "watch", "rwatch" or "awatch" for a watchpoint (Addr is the
	// watched address), "swbreak" or "hwbreak" when the stub says so (QEMU
	// 7.2 does not: a breakpoint stop has no reason), otherwise "".
	Reason string
	Addr   uint64
	// Also is a second watched store the stop covers (HasAlso): when a
	// lost hit is recovered by a step (RecoverLostWatches), the stepped
	// instruction's own watched store is done by the time QEMU reports
	// the first, and is never reported itself.
	Also    uint64
	HasAlso bool
	// Others are watch hits of other vCPUs at the same stop, recorded by
	// QEMU but not reported (it reports one vCPU's per stop), recovered
	// by RecoverLostWatches: each is the stop of a step of that vCPU.
	Others []StopEvent
	// Exited is set by a 'W' (exit status) or 'X' (killed by Signal) reply:
	// the VM is gone.
	Exited     bool
	ExitStatus int
	Raw        string    // the packet as received
	At         time.Time // when the reply arrived
}

func (e StopEvent) String() string {
	switch {
	case e.Exited && e.Raw != "" && e.Raw[0] == 'X':
		return fmt.Sprintf("VM killed by signal %d", e.Signal)
	case e.Exited:
		return fmt.Sprintf("VM exited with status %d", e.ExitStatus)
	case e.Reason == "watch" || e.Reason == "rwatch" || e.Reason == "awatch":
		return fmt.Sprintf("signal %d on thread %d (%s %#x)", e.Signal, e.Thread, e.Reason, e.Addr)
	case e.Reason != "":
		return fmt.Sprintf("signal %d on thread %d (%s)", e.Signal, e.Thread, e.Reason)
	}
	return fmt.Sprintf("signal %d on thread %d", e.Signal, e.Thread)
}

// isStopReply reports whether p has the shape of a stop reply. No reply to
// another packet that lucos sends starts with these letters.
func isStopReply(p []byte) bool {
	if len(p) < 3 {
		return false
	}
	switch p[0] {
	case 'S', 'T', 'W', 'X':
		_, ok := unhexByte(p[1], p[2])
		return ok
	}
	return false
}

// isConsole reports whether p is an 'O' packet: console output, hex encoded.
// "OK" is not one.
func isConsole(p []byte) bool {
	if len(p) < 3 || p[0] != 'O' || len(p)%2 != 1 {
		return false
	}
	for _, c := range p[1:] {
		if _, ok := unhex(c); !ok {
			return false
		}
	}
	return true
}

// parseStopReply parses "S05", "T05thread:p01.02;watch:1000;", "W00" or
// "X09". It fills all but At.
func parseStopReply(p []byte) (StopEvent, error) {
	if !isStopReply(p) {
		return StopEvent{}, fmt.Errorf("not a stop reply: %q", truncate(p))
	}
	ev := StopEvent{Raw: string(p)}
	n, _ := unhexByte(p[1], p[2])
	switch p[0] {
	case 'S':
		ev.Signal = int(n)
		if len(p) != 3 {
			return StopEvent{}, fmt.Errorf("stop reply %q: trailing bytes after the signal", truncate(p))
		}
		return ev, nil
	case 'W':
		ev.Exited, ev.ExitStatus = true, int(n)
		return ev, nil // ";process:pid" may follow; lucos has one process.
	case 'X':
		ev.Exited, ev.Signal = true, int(n)
		return ev, nil
	}
	ev.Signal = int(n)
	for rest := p[3:]; len(rest) > 0; {
		field := rest
		if i := bytes.IndexByte(rest, ';'); i >= 0 {
			field, rest = rest[:i], rest[i+1:]
		} else {
			rest = nil
		}
		key, val, ok := bytes.Cut(field, []byte{':'})
		if !ok {
			return StopEvent{}, fmt.Errorf("stop reply %q: field %q has no ':'", truncate(p), truncate(field))
		}
		switch string(key) {
		case "thread":
			tid, ok := parseThreadID(val)
			if !ok {
				return StopEvent{}, fmt.Errorf("stop reply %q: bad thread id %q", truncate(p), truncate(val))
			}
			ev.Thread = tid
		case "watch", "rwatch", "awatch":
			addr, ok := parseHex(val)
			if !ok {
				return StopEvent{}, fmt.Errorf("stop reply %q: bad watch address %q", truncate(p), truncate(val))
			}
			ev.Reason, ev.Addr = string(key), addr
		case "swbreak", "hwbreak":
			ev.Reason = string(key)
		}
		// Other keys (register values "nn:...", "core", "library", ...) say
		// nothing lucos uses.
	}
	return ev, nil
}

// parseThreadID parses a thread id as QEMU writes it: "02", or "p01.02"
// once a client has asked for multiprocess extensions (QEMU 7.2 keeps that
// mode for every later connection). It returns the thread part.
func parseThreadID(s []byte) (int, bool) {
	if len(s) > 0 && s[0] == 'p' {
		_, tid, ok := bytes.Cut(s[1:], []byte{'.'})
		if !ok {
			return 0, false
		}
		s = tid
	}
	v, ok := parseHex(s)
	if !ok || v > 1<<31-1 {
		return 0, false
	}
	return int(v), true
}
