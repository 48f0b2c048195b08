package gdbstub

import (
	"errors"
	"fmt"
	"strconv"
)

// WatchKind is the access a watchpoint catches; the values are the Z packet
// types.
type WatchKind int

const (
	WatchWrite  WatchKind = 2 // reported as "watch", after the write
	WatchRead   WatchKind = 3 // "rwatch"
	WatchAccess WatchKind = 4 // "awatch"
)

func (k WatchKind) String() string {
	switch k {
	case WatchWrite:
		return "write"
	case WatchRead:
		return "read"
	case WatchAccess:
		return "access"
	}
	return "WatchKind(" + strconv.Itoa(int(k)) + ")"
}

// InsertBreakpoint sets a software breakpoint at the virtual address addr
// ("Z0,addr,1"). It applies to every vCPU. QEMU does not step over a
// breakpoint at the address a vCPU resumes from: it stops there again at
// once, so remove it before resuming.
func (c *Client) InsertBreakpoint(addr uint64) error {
	if err := c.z('Z', 0, addr, 1); err != nil {
		return fmt.Errorf("insert breakpoint at %#x: %w", addr, err)
	}
	return nil
}

// RemoveBreakpoint removes the breakpoint at addr ("z0,addr,1").
func (c *Client) RemoveBreakpoint(addr uint64) error {
	if err := c.z('z', 0, addr, 1); err != nil {
		return fmt.Errorf("remove breakpoint at %#x: %w", addr, err)
	}
	return nil
}

// InsertWatchpoint watches length bytes at the virtual address addr
// ("Z2"/"Z3"/"Z4"). Under TCG any number of watchpoints of any length
// work; under KVM they take the four debug registers.
func (c *Client) InsertWatchpoint(kind WatchKind, addr, length uint64) error {
	if err := c.z('Z', kind, addr, length); err != nil {
		err = fmt.Errorf("insert %s watchpoint on %d bytes at %#x: %w", kind, length, addr, err)
		var se *StubError
		if errors.As(err, &se) {
			err = fmt.Errorf("%w (under KVM watchpoints use the 4 debug registers: at most 4, of 1, 2, 4 or 8 aligned bytes)", err)
		}
		return err
	}
	return nil
}

// RemoveWatchpoint removes a watchpoint set with the same arguments.
func (c *Client) RemoveWatchpoint(kind WatchKind, addr, length uint64) error {
	if err := c.z('z', kind, addr, length); err != nil {
		return fmt.Errorf("remove %s watchpoint on %d bytes at %#x: %w", kind, length, addr, err)
	}
	return nil
}

func (c *Client) z(op byte, kind WatchKind, addr, length uint64) error {
	if kind != 0 && kind != WatchWrite && kind != WatchRead && kind != WatchAccess {
		return fmt.Errorf("unknown watchpoint kind %d", kind)
	}
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return err
	}
	c.cmd = append(c.cmd[:0], op, byte('0'+kind), ',')
	c.cmd = strconv.AppendUint(c.cmd, addr, 16)
	c.cmd = append(c.cmd, ',')
	c.cmd = strconv.AppendUint(c.cmd, length, 16)
	if err := c.commandOK(); err != nil {
		return err
	}
	if kind != 0 {
		c.trackWatch(op, watchRange{kind, addr, length})
	}
	return nil
}
