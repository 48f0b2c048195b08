package gdbstub

import (
	"errors"
	"fmt"
)

var (
	// ErrRunning is returned by methods that need the VM stopped (every
	// packet but the 0x03 interrupt) while it runs: a byte sent to QEMU
	// while the VM runs stops it and the packet is lost.
	ErrRunning = errors.New("gdbstub: VM is running; stop it first")

	// ErrNotRunning is returned by Wait when the VM is stopped.
	ErrNotRunning = errors.New("gdbstub: VM is not running")

	// ErrUnsupported matches an UnsupportedError: the stub does not know
	// the packet.
	ErrUnsupported = errors.New("gdbstub: packet not supported by the stub")

	// ErrResumedElsewhere: the VM was running although this client had
	// stopped it, so someone else resumed it (QMP "cont", a monitor
	// command). The packet only stopped the VM again and was lost; the VM
	// is stopped now and the call can be retried.
	ErrResumedElsewhere = errors.New("gdbstub: VM was resumed by someone else; it is stopped again, retry")

	// ErrClosed is returned after Close or Detach.
	ErrClosed = errors.New("gdbstub: client closed")
)

// StubError is an error reply ("Exx") of the stub to a packet.
//
// QEMU writes errno values as decimal digits: "E14" is EFAULT (the address
// is not mapped), "E22" is EINVAL (bad argument, unknown thread, no such
// breakpoint). Code holds the two digits read as hex, as the protocol says
// (0x14 for "E14").
type StubError struct {
	Packet string // the packet sent, shortened
	Code   int
}

func (e *StubError) Error() string {
	s := fmt.Sprintf("E%02x", e.Code)
	switch e.Code {
	case 0x14:
		s += " (bad address)"
	case 0x22:
		s += " (invalid argument)"
	}
	return s + " in reply to " + e.Packet
}

// UnsupportedError is an empty reply: the stub does not support Packet.
type UnsupportedError struct {
	Packet string
}

func (e *UnsupportedError) Error() string {
	return fmt.Sprintf("stub does not support %s (empty reply)", e.Packet)
}

// Is makes errors.Is(err, ErrUnsupported) true.
func (e *UnsupportedError) Is(target error) bool { return target == ErrUnsupported }

// replyError returns the error an "Exx", "E.message" or empty reply to pkt
// stands for, or nil for any other reply.
func replyError(pkt, reply []byte) error {
	if len(reply) == 0 {
		return &UnsupportedError{Packet: packetName(pkt)}
	}
	if reply[0] != 'E' {
		return nil
	}
	if len(reply) == 3 {
		if code, ok := unhexByte(reply[1], reply[2]); ok {
			return &StubError{Packet: packetName(pkt), Code: int(code)}
		}
	}
	if len(reply) > 2 && reply[1] == '.' {
		return fmt.Errorf("stub error %q in reply to %s", reply[2:], packetName(pkt))
	}
	return nil
}

// packetName is pkt shortened for error messages: data written by 'M' or 'G'
// is left out.
func packetName(pkt []byte) string {
	if len(pkt) > 0 && (pkt[0] == 'M' || pkt[0] == 'G' || pkt[0] == 'X') {
		for i, b := range pkt {
			if b == ':' {
				return fmt.Sprintf("%q", string(pkt[:i+1])+"...")
			}
		}
		if pkt[0] == 'G' && len(pkt) > 1 {
			return `"G..."`
		}
	}
	return fmt.Sprintf("%q", truncate(pkt))
}
