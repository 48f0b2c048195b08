package gdbstub

import (
	"bufio"
	"errors"
	"fmt"
)

// maxPacketLen is the largest packet QEMU accepts: it silently drops longer
// ones, so every packet lucos sends (framing included) stays at or below it.
const maxPacketLen = 4096

// maxReplyLen bounds a decoded reply, so that a broken peer cannot make the
// client grow its buffer without end. QEMU's replies stay near 4 KiB.
const maxReplyLen = 1 << 20

// errNak reports that the stub answered '-': it saw a bad checksum and
// dropped the packet, so no reply to it will come.
var errNak = errors.New("stub rejected the packet checksum ('-')")

// ProtocolError is a malformed packet from the stub. After one the byte
// stream can no longer be trusted, and the client refuses further commands.
type ProtocolError struct {
	Msg string
}

func (e *ProtocolError) Error() string { return "gdbstub protocol: " + e.Msg }

// appendPacket appends payload framed as "$payload#xx" to dst, escaping the
// four bytes the protocol reserves ('$', '#', '}', '*'). The checksum covers
// the bytes as sent.
func appendPacket(dst, payload []byte) []byte {
	dst = append(dst, '$')
	var sum byte
	for _, b := range payload {
		switch b {
		case '$', '#', '}', '*':
			dst = append(dst, '}', b^0x20)
			sum += '}' + (b ^ 0x20)
		default:
			dst = append(dst, b)
			sum += b
		}
	}
	return append(dst, '#', hexDigits[sum>>4], hexDigits[sum&0xf])
}

const hexDigits = "0123456789abcdef"

// packetReader decodes the packets a stub sends. The bytes between packets
// (acks '+', and the stray '+' QEMU 7.2 sends for every packet it receives)
// are skipped.
type packetReader struct {
	br  *bufio.Reader
	buf []byte // the decoded body of the last packet
}

// decodeState carries run-length and escape decoding across the pieces of a
// packet body that bufio hands out.
type decodeState struct {
	sum     byte
	escaped bool // the previous byte was '}'
	repeat  bool // the previous byte was '*'
}

// next returns the body of the next packet, decoded: '}' escapes undone and
// run-length encoding ("x*n": n-29 more copies of x) expanded. The slice is
// valid until the following call.
func (r *packetReader) next() ([]byte, error) {
	for {
		b, err := r.br.ReadByte()
		if err != nil {
			return nil, err
		}
		switch b {
		case '$':
			return r.body(true)
		case '%':
			// A notification (non-stop mode, which lucos never enables).
			if _, err := r.body(false); err != nil {
				return nil, err
			}
		case '-':
			return nil, errNak
		}
		// Anything else ('+' acks, line noise) is not part of a packet.
	}
}

// body reads a packet body after its '$' up to and including the checksum.
func (r *packetReader) body(keep bool) ([]byte, error) {
	r.buf = r.buf[:0]
	var st decodeState
	for {
		chunk, rerr := r.br.ReadSlice('#')
		if rerr != nil && !errors.Is(rerr, bufio.ErrBufferFull) {
			return nil, rerr
		}
		end := len(chunk)
		if rerr == nil {
			end-- // drop the '#'
		}
		if err := r.decode(&st, chunk[:end]); err != nil {
			return nil, err
		}
		if rerr == nil {
			break
		}
	}
	if st.escaped || st.repeat {
		return nil, &ProtocolError{Msg: "packet ends inside an escape or run-length sequence"}
	}
	hi, err := r.br.ReadByte()
	if err != nil {
		return nil, err
	}
	lo, err := r.br.ReadByte()
	if err != nil {
		return nil, err
	}
	want, ok := unhexByte(hi, lo)
	if !ok {
		return nil, &ProtocolError{Msg: fmt.Sprintf("bad checksum characters %q", string([]byte{hi, lo}))}
	}
	if want != st.sum {
		return nil, &ProtocolError{Msg: fmt.Sprintf("checksum %02x, computed %02x, for %q", want, st.sum, truncate(r.buf))}
	}
	if !keep {
		r.buf = r.buf[:0]
	}
	return r.buf, nil
}

func (r *packetReader) decode(st *decodeState, raw []byte) error {
	for _, b := range raw {
		st.sum += b
		switch {
		case st.escaped:
			st.escaped = false
			r.buf = append(r.buf, b^0x20)
		case st.repeat:
			st.repeat = false
			n := int(b) - 29
			if n < 0 {
				return &ProtocolError{Msg: fmt.Sprintf("run-length count %q below 29", b)}
			}
			if len(r.buf)+n > maxReplyLen {
				return &ProtocolError{Msg: "packet longer than 1 MiB"}
			}
			last := r.buf[len(r.buf)-1]
			for range n {
				r.buf = append(r.buf, last)
			}
		case b == '}':
			st.escaped = true
		case b == '*':
			if len(r.buf) == 0 {
				return &ProtocolError{Msg: "run-length '*' with nothing to repeat"}
			}
			st.repeat = true
		case b == '$':
			return &ProtocolError{Msg: "'$' inside a packet"}
		default:
			if len(r.buf) >= maxReplyLen {
				return &ProtocolError{Msg: "packet longer than 1 MiB"}
			}
			r.buf = append(r.buf, b)
		}
	}
	return nil
}

// truncate shortens a packet for an error message.
func truncate(p []byte) string {
	const max = 48
	if len(p) > max {
		return string(p[:max]) + "..."
	}
	return string(p)
}

func unhex(c byte) (byte, bool) {
	switch {
	case c >= '0' && c <= '9':
		return c - '0', true
	case c >= 'a' && c <= 'f':
		return c - 'a' + 10, true
	case c >= 'A' && c <= 'F':
		return c - 'A' + 10, true
	}
	return 0, false
}

func unhexByte(hi, lo byte) (byte, bool) {
	h, ok1 := unhex(hi)
	l, ok2 := unhex(lo)
	return h<<4 | l, ok1 && ok2
}

// parseHex parses a big-endian hex number such as an address or thread id.
func parseHex(s []byte) (uint64, bool) {
	if len(s) == 0 || len(s) > 16 {
		return 0, false
	}
	var v uint64
	for _, c := range s {
		d, ok := unhex(c)
		if !ok {
			return 0, false
		}
		v = v<<4 | uint64(d)
	}
	return v, true
}

// decodeHex decodes hex digits into dst, which must be len(src)/2 long.
func decodeHex(dst, src []byte) bool {
	if len(src) != 2*len(dst) {
		return false
	}
	for i := range dst {
		b, ok := unhexByte(src[2*i], src[2*i+1])
		if !ok {
			return false
		}
		dst[i] = b
	}
	return true
}

// appendHex appends src as hex digits.
func appendHex(dst, src []byte) []byte {
	for _, b := range src {
		dst = append(dst, hexDigits[b>>4], hexDigits[b&0xf])
	}
	return dst
}
