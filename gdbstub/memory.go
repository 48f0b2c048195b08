package gdbstub

import (
	"fmt"
	"strconv"
)

// ReadMemory reads len(buf) bytes of guest memory at addr ('m', in pieces
// that fit a packet). Addresses are physical or virtual as SetPhysical
// chose; QEMU translates virtual ones with the page tables of the vCPU last
// selected for registers or named by the last stop.
func (c *Client) ReadMemory(addr uint64, buf []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return fmt.Errorf("read %d bytes at %#x: %w", len(buf), addr, err)
	}
	for done := 0; done < len(buf); {
		n := min(len(buf)-done, c.maxRead)
		at := addr + uint64(done)
		c.cmd = append(c.cmd[:0], 'm')
		c.cmd = strconv.AppendUint(c.cmd, at, 16)
		c.cmd = append(c.cmd, ',')
		c.cmd = strconv.AppendUint(c.cmd, uint64(n), 16)
		p, err := c.command()
		if err != nil {
			return c.memError("read", len(buf), addr, at, err)
		}
		// A stub may return fewer bytes than asked.
		got := len(p) / 2
		if got == 0 || got > n || !decodeHex(buf[done:done+got], p) {
			return c.memError("read", len(buf), addr, at, fmt.Errorf("reply %q is not up to %d bytes of hex", truncate(p), n))
		}
		done += got
	}
	return nil
}

// WriteMemory writes data to guest memory at addr ('M', at most 0x700 bytes
// a packet: QEMU drops packets over 4096 characters without a word). Code
// must be written this way, not through a RAM mapping, for TCG to notice.
func (c *Client) WriteMemory(addr uint64, data []byte) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return fmt.Errorf("write %d bytes at %#x: %w", len(data), addr, err)
	}
	for done := 0; done < len(data); {
		n := min(len(data)-done, c.maxWrite)
		at := addr + uint64(done)
		c.cmd = append(c.cmd[:0], 'M')
		c.cmd = strconv.AppendUint(c.cmd, at, 16)
		c.cmd = append(c.cmd, ',')
		c.cmd = strconv.AppendUint(c.cmd, uint64(n), 16)
		c.cmd = append(c.cmd, ':')
		c.cmd = appendHex(c.cmd, data[done:done+n])
		if err := c.commandOK(); err != nil {
			return c.memError("write", len(data), addr, at, err)
		}
		done += n
	}
	return nil
}

func (c *Client) memError(op string, n int, addr, at uint64, err error) error {
	mode := ""
	if c.physical {
		mode = " (physical)"
	}
	if at != addr {
		return fmt.Errorf("%s %d bytes at %#x%s, at %#x: %w", op, n, addr, mode, at, err)
	}
	return fmt.Errorf("%s %d bytes at %#x%s: %w", op, n, addr, mode, err)
}

// SetPhysical makes 'm' and 'M' take guest-physical (on) or virtual (off)
// addresses (Qqemu.PhyMemMode). The mode is global in QEMU and survives
// reconnection; the client knows it from connecting on and sends nothing
// when it does not change.
func (c *Client) SetPhysical(on bool) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return fmt.Errorf("set physical memory mode: %w", err)
	}
	if !c.phyMemMode {
		return fmt.Errorf("set physical memory mode: %w", &UnsupportedError{Packet: `"Qqemu.PhyMemMode"`})
	}
	if on == c.physical {
		return nil
	}
	c.cmd = append(c.cmd[:0], "Qqemu.PhyMemMode:0"...)
	if on {
		c.cmd[len(c.cmd)-1] = '1'
	}
	if err := c.commandOK(); err != nil {
		return fmt.Errorf("set physical memory mode: %w", err)
	}
	c.physical = on
	return nil
}

// Physical reports whether 'm' and 'M' take physical addresses.
func (c *Client) Physical() bool {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.physical
}
