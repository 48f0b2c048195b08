package gdbstub

import (
	"errors"
	"fmt"
	"slices"
	"strconv"
	"time"
)

// A Batch is a list of commands for a stopped VM, sent in one write and
// answered in order: a pause that needs eleven packets costs one round trip
// instead of eleven. The protocol allows it: QEMU's system-mode stub
// handles the packets of a write one after another, answers each, and does
// not wait for our ack before the next ('$' abandons a reply waiting for
// one: gdb_read_byte). No command in a batch resumes the VM.
//
// A command that fails does not stop the ones after it: they were sent
// already, and they run. Flush reads every reply and reports every failure,
// so the caller knows exactly what happened (on QEMU, physical writes never
// fail, and register and watchpoint commands fail only for arguments the
// batch checks as it builds them).
type Batch struct {
	c   *Client
	ops []batchOp
	err error // a command that could not be built
}

// batchOp is one command of a batch.
type batchOp struct {
	tid      int  // the vCPU it acts on ('g', 'G', 'p', 'P'), or 0
	physical int8 // the memory mode it needs: 1 physical, 0 any
	build    func(c *Client) []byte
	// done checks the reply and applies what the command changed to the
	// client's view of the stub. nil: the reply must be "OK".
	done func(c *Client, pkt, reply []byte) error
	what string // for errors
}

// batchWrite bounds the bytes of one write: the stub's replies to them queue
// in our socket buffer until the write is done, so a huge write could fill
// it and stall both ends.
const batchWrite = 32 << 10

// Batch starts an empty batch for c.
func (c *Client) Batch() *Batch { return &Batch{c: c} }

// Len is the number of commands queued (a physical write of more than one
// packet counts its packets).
func (b *Batch) Len() int { return len(b.ops) }

// WritePhysical queues a write of data to guest-physical memory at pa,
// split into packets ('M' in physical mode; the batch switches the mode if
// needed). Like WriteMemory, it goes through QEMU, so TCG notices a write
// over translated code.
func (b *Batch) WritePhysical(pa uint64, data []byte) {
	for done := 0; done < len(data); {
		n := min(len(data)-done, b.c.maxWrite)
		at, piece := pa+uint64(done), data[done:done+n]
		b.ops = append(b.ops, batchOp{physical: 1, what: fmt.Sprintf("write %d bytes at guest-physical %#x", n, at),
			build: func(c *Client) []byte {
				c.cmd = append(c.cmd[:0], 'M')
				c.cmd = strconv.AppendUint(c.cmd, at, 16)
				c.cmd = append(c.cmd, ',')
				c.cmd = strconv.AppendUint(c.cmd, uint64(n), 16)
				c.cmd = append(c.cmd, ':')
				return appendHex(c.cmd, piece)
			}})
		done += n
	}
}

// InsertWatchpoint queues a watchpoint insertion (see Client.InsertWatchpoint).
func (b *Batch) InsertWatchpoint(kind WatchKind, addr, length uint64) { b.z('Z', kind, addr, length) }

// RemoveWatchpoint queues a watchpoint removal.
func (b *Batch) RemoveWatchpoint(kind WatchKind, addr, length uint64) { b.z('z', kind, addr, length) }

func (b *Batch) z(op byte, kind WatchKind, addr, length uint64) {
	if kind != WatchWrite && kind != WatchRead && kind != WatchAccess {
		b.fail(fmt.Errorf("unknown watchpoint kind %d", kind))
		return
	}
	w := watchRange{kind, addr, length}
	b.ops = append(b.ops, batchOp{what: fmt.Sprintf("%c%d,%#x,%d", op, kind, addr, length),
		build: func(c *Client) []byte {
			c.cmd = append(c.cmd[:0], op, byte('0'+kind), ',')
			c.cmd = strconv.AppendUint(c.cmd, addr, 16)
			c.cmd = append(c.cmd, ',')
			return strconv.AppendUint(c.cmd, length, 16)
		},
		done: func(c *Client, pkt, reply []byte) error {
			if err := okReply(pkt, reply); err != nil {
				return err
			}
			c.trackWatch(op, w)
			return nil
		}})
}

// WriteRegister queues a write of one integer register of vCPU tid ('P').
func (b *Batch) WriteRegister(tid int, name string, v uint64) {
	reg, err := b.intRegister(tid, name)
	if err != nil {
		b.fail(fmt.Errorf("write %s of vCPU %d: %w", name, tid, err))
		return
	}
	var val [8]byte
	if err := putLE(val[:reg.Size], name, v); err != nil {
		b.fail(fmt.Errorf("write %s of vCPU %d: %w", name, tid, err))
		return
	}
	b.ops = append(b.ops, batchOp{tid: tid, what: fmt.Sprintf("write %s of vCPU %d", name, tid),
		build: func(c *Client) []byte {
			c.cmd = append(c.cmd[:0], 'P')
			c.cmd = strconv.AppendUint(c.cmd, uint64(reg.Num), 16)
			c.cmd = append(c.cmd, '=')
			return appendHex(c.cmd, val[:reg.Size])
		}})
}

// WriteRegisters queues a write of every register of vCPU tid ('G'; see
// Client.WriteRegisters for what that includes on x86).
func (b *Batch) WriteRegisters(tid int, r *Registers) {
	if !b.c.hasThread(tid) {
		b.fail(fmt.Errorf("write registers of vCPU %d: %w", tid, b.c.threadError(tid)))
		return
	}
	if len(r.raw) != b.c.layout.size {
		b.fail(fmt.Errorf("write registers of vCPU %d: image is %d bytes, the layout has %d", tid, len(r.raw), b.c.layout.size))
		return
	}
	raw := slices.Clone(r.raw)
	b.ops = append(b.ops, batchOp{tid: tid, what: fmt.Sprintf("write registers of vCPU %d", tid),
		build: func(c *Client) []byte { return appendHex(append(c.cmd[:0], 'G'), raw) }})
}

// ReadRegisters queues a read of every register of vCPU tid ('g'). The
// registers it returns are filled in by a Flush that reports no error for
// this command.
func (b *Batch) ReadRegisters(tid int) *Registers {
	r := &Registers{layout: b.c.layout}
	if !b.c.hasThread(tid) {
		b.fail(fmt.Errorf("read registers of vCPU %d: %w", tid, b.c.threadError(tid)))
		return r
	}
	b.ops = append(b.ops, batchOp{tid: tid, what: fmt.Sprintf("read registers of vCPU %d", tid),
		build: func(c *Client) []byte { return append(c.cmd[:0], 'g') },
		done: func(c *Client, pkt, reply []byte) error {
			if err := replyError(pkt, reply); err != nil {
				return err
			}
			raw := make([]byte, c.layout.size)
			if !decodeHex(raw, reply) {
				return c.fail(&ProtocolError{Msg: fmt.Sprintf("'g' reply of %d characters for a %d-byte layout", len(reply), c.layout.size)})
			}
			r.raw = raw
			return nil
		}})
	return r
}

// ReadRegister queues a read of one integer register of vCPU tid ('p')
// into *v, set by a Flush that reports no error for this command.
func (b *Batch) ReadRegister(tid int, name string, v *uint64) {
	reg, err := b.intRegister(tid, name)
	if err != nil {
		b.fail(fmt.Errorf("read %s of vCPU %d: %w", name, tid, err))
		return
	}
	b.ops = append(b.ops, batchOp{tid: tid, what: fmt.Sprintf("read %s of vCPU %d", name, tid),
		build: func(c *Client) []byte {
			return strconv.AppendUint(append(c.cmd[:0], 'p'), uint64(reg.Num), 16)
		},
		done: func(c *Client, pkt, reply []byte) error {
			if err := replyError(pkt, reply); err != nil {
				return err
			}
			var raw [8]byte
			if !decodeHex(raw[:reg.Size], reply) {
				return fmt.Errorf("reply %q is not %d bytes of hex", truncate(reply), reg.Size)
			}
			x, err := getLE(raw[:reg.Size], name)
			*v = x
			return err
		}})
}

func (b *Batch) intRegister(tid int, name string) (Register, error) {
	if !b.c.hasThread(tid) {
		return Register{}, b.c.threadError(tid)
	}
	reg, err := b.c.layout.lookup(name)
	if err != nil {
		return Register{}, err
	}
	switch reg.Size {
	case 1, 2, 4, 8:
		return reg, nil
	}
	return Register{}, fmt.Errorf("register %s is %d bytes, not an integer", name, reg.Size)
}

func (b *Batch) fail(err error) {
	if b.err == nil {
		b.err = err
	}
}

// Flush sends the queued commands and reads their replies; the batch is
// then empty. It returns every command's failure, joined, each naming its
// command. A batch whose commands could not all be built sends nothing.
// Precondition: the VM is stopped.
func (b *Batch) Flush() error {
	ops, berr := b.ops, b.err
	b.ops, b.err = nil, nil
	if berr != nil {
		return berr
	}
	if len(ops) == 0 {
		return nil
	}
	c := b.c
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil { // connects again if the connection broke
		return err
	}
	// The batch with the mode and thread selections it needs, as the stub
	// will see it.
	var seq []batchOp
	sel, phys := c.gThread, c.physical
	for _, op := range ops {
		if op.physical == 1 && !phys {
			if !c.phyMemMode {
				return fmt.Errorf("%s: %w", op.what, &UnsupportedError{Packet: `"Qqemu.PhyMemMode"`})
			}
			seq = append(seq, batchOp{what: "set physical memory mode",
				build: func(c *Client) []byte { return append(c.cmd[:0], "Qqemu.PhyMemMode:1"...) },
				done: func(c *Client, pkt, reply []byte) error {
					if err := okReply(pkt, reply); err != nil {
						return err
					}
					c.physical = true
					return nil
				}})
			phys = true
		}
		if op.tid != 0 && op.tid != sel {
			tid := op.tid
			seq = append(seq, batchOp{what: fmt.Sprintf("select vCPU %d", tid),
				build: func(c *Client) []byte {
					return strconv.AppendUint(append(c.cmd[:0], 'H', 'g'), uint64(tid), 16)
				},
				done: func(c *Client, pkt, reply []byte) error {
					if err := okReply(pkt, reply); err != nil {
						c.gThread = 0 // the commands after it act on some vCPU: which, we cannot say
						return err
					}
					c.gThread = tid
					return nil
				}})
			sel = tid
		}
		seq = append(seq, op)
	}
	var errs []error
	for len(seq) > 0 {
		sent, err := c.sendBatch(seq)
		if err != nil {
			return errors.Join(append(errs, err)...)
		}
		for i, pkt := range sent {
			op := seq[i]
			if err := c.batchReply(op, pkt); err != nil {
				err = fmt.Errorf("%s: %w", op.what, err)
				errs = append(errs, err)
				if c.err != nil { // the connection is gone: no more replies
					return errors.Join(errs...)
				}
			}
		}
		seq = seq[len(sent):]
	}
	return errors.Join(errs...)
}

// sendBatch writes the first commands of seq in one write, at most
// batchWrite bytes (at least one command), and returns their payloads as
// sent (valid until the next write).
// Precondition: mu held, VM stopped.
func (c *Client) sendBatch(seq []batchOp) ([][]byte, error) {
	buf := c.wbuf[:0]
	if c.ackPending.Swap(false) {
		buf = append(buf, '+')
	}
	var at []int
	for _, op := range seq {
		start := len(buf)
		buf = appendPacket(buf, op.build(c))
		if len(buf)-start > c.packetSize {
			return nil, fmt.Errorf("%s: packet is %d bytes, over the stub's limit of %d", op.what, len(buf)-start, c.packetSize)
		}
		if len(at) > 0 && len(buf) > batchWrite {
			buf = buf[:start]
			break
		}
		at = append(at, start, len(buf))
	}
	c.wbuf = buf
	if _, err := c.conn.Write(buf); err != nil {
		return nil, c.fail(err)
	}
	sent := make([][]byte, len(at)/2)
	for i := range sent {
		sent[i] = buf[at[2*i]+1 : at[2*i+1]-3] // "$...#xx"; escapes left in: it only names the packet
	}
	return sent, nil
}

// batchReply reads the reply to op, sent as pkt.
// Precondition: mu held, VM stopped.
func (c *Client) batchReply(op batchOp, pkt []byte) error {
	for {
		p, err := c.readPacket()
		if err != nil {
			return err
		}
		if isConsole(p) {
			continue
		}
		if isStopReply(p) {
			// The VM ran although this client had stopped it (see
			// roundTrip): this packet only stopped it again and was
			// dropped. The ones after it are handled as usual.
			ev, err := parseStopReply(p)
			if err != nil {
				return c.fail(err)
			}
			ev.At = time.Now()
			c.last, c.gThread = ev, ev.Thread
			return ErrResumedElsewhere
		}
		if op.done == nil {
			return okReply(pkt, p)
		}
		return op.done(c, pkt, p)
	}
}

// okReply checks a reply that must be "OK".
func okReply(pkt, reply []byte) error {
	if err := replyError(pkt, reply); err != nil {
		return err
	}
	if string(reply) != "OK" {
		return &ProtocolError{Msg: fmt.Sprintf("reply %q to %s, want OK", truncate(reply), packetName(pkt))}
	}
	return nil
}

// trackWatch keeps c.watches in step with an inserted or removed
// watchpoint. Precondition: mu held.
func (c *Client) trackWatch(op byte, w watchRange) {
	if i := slices.Index(c.watches, w); op == 'z' && i >= 0 {
		c.watches = slices.Delete(c.watches, i, i+1)
	} else if op == 'Z' {
		c.watches = append(c.watches, w)
	}
}
