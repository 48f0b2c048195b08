package gdbstub

import (
	"bufio"
	"bytes"
	"context"
	"encoding/hex"
	"fmt"
	"net"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"
)

// fakeStub is an in-process gdbstub that behaves as QEMU 7.2 does where it
// matters to the client: it acks every packet with '+' (and refuses
// QStartNoAckMode), and its byte handling follows QEMU's gdb_read_byte:
// while a packet it sent is unacknowledged it swallows every byte but '+'
// and '$'; while the VM runs any other byte stops the VM (and is lost).
type fakeStub struct {
	t    *testing.T
	conn net.Conn

	mu         sync.Mutex
	running    bool
	lastUnack  bool     // a sent packet waits for '+'
	packets    []string // payloads received, in order
	maxFramed  int      // longest framed packet received
	lost       []string // packets dropped because the VM ran
	interrupts int      // 0x03 bytes that stopped the VM
	ignored03  int      // 0x03 bytes ignored (VM stopped or ack pending)
	noAck      bool
	physical   bool
	regs       map[int][]byte // vCPU -> 'g' image
	mem        []byte         // guest memory from 0
	gThread    int
	breaks     map[string]bool
	threadFmt  string // "%02x" or "p01.%02x"
	onResume   func(f *fakeStub, pkt string)
	on03       func(f *fakeStub) // replaces the default T02 stop
	noAckReply string            // reply to QStartNoAckMode
}

type fakeOpts struct {
	running      bool // the VM runs when the client connects
	multiprocess bool
	noAck        bool // accept QStartNoAckMode
}

// startFake serves one client on a unix socket and returns its address.
func startFake(t *testing.T, o fakeOpts) (*fakeStub, string) {
	t.Helper()
	dir, err := os.MkdirTemp("", "gdbfake")
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { os.RemoveAll(dir) })
	path := filepath.Join(dir, "s")
	ln, err := net.Listen("unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { ln.Close() })
	raw, err := os.ReadFile("testdata/g-reset.hex")
	if err != nil {
		t.Fatal(err)
	}
	g := make([]byte, len(raw)/2)
	hex.Decode(g, raw)
	g2 := bytes.Clone(g)
	g2[128] = 0x34 // rip of vCPU 2: 0xf034
	f := &fakeStub{
		t:         t,
		running:   o.running,
		regs:      map[int][]byte{1: g, 2: g2},
		mem:       make([]byte, 1<<20),
		breaks:    map[string]bool{},
		threadFmt: "%02x",
		gThread:   1,
	}
	if o.multiprocess {
		f.threadFmt = "p01.%02x"
	}
	if o.noAck {
		f.noAckReply = "OK"
	}
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		f.mu.Lock()
		f.conn = conn
		if f.running {
			// QEMU stops the VM when a client connects.
			f.running = false
			f.sendLocked("T02thread:" + f.tid(1) + ";")
		}
		f.mu.Unlock()
		f.serve(conn)
	}()
	t.Cleanup(func() {
		f.mu.Lock()
		if f.conn != nil {
			f.conn.Close()
		}
		f.mu.Unlock()
	})
	return f, path
}

func (f *fakeStub) tid(n int) string { return fmt.Sprintf(f.threadFmt, n) }

func dialFake(t *testing.T, o fakeOpts) (*fakeStub, *Client) {
	t.Helper()
	f, path := startFake(t, o)
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := Dial(ctx, "unix", path)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c
}

// sendLocked sends a packet. Precondition: f.mu held.
func (f *fakeStub) sendLocked(payload string) {
	f.lastUnack = !f.noAck
	f.conn.Write(appendPacket(nil, []byte(payload)))
}

// stopBy stops the running VM with the given stop reply, as a breakpoint
// would. It reports whether the VM was running.
func (f *fakeStub) stopBy(reply string) bool {
	f.mu.Lock()
	defer f.mu.Unlock()
	if !f.running {
		return false
	}
	f.running = false
	f.sendLocked(reply)
	return true
}

// stopRunning waits until the VM runs, then stops it with reply.
func (f *fakeStub) stopRunning(reply string) {
	for range 5000 {
		if f.stopBy(reply) {
			return
		}
		time.Sleep(time.Millisecond)
	}
	f.t.Errorf("fake stub: the VM never ran")
}

// resumeBehindBack makes the VM run as a QMP "cont" would.
func (f *fakeStub) resumeBehindBack() {
	f.mu.Lock()
	f.running = true
	f.mu.Unlock()
}

func (f *fakeStub) received() []string {
	f.mu.Lock()
	defer f.mu.Unlock()
	return append([]string(nil), f.packets...)
}

func (f *fakeStub) serve(conn net.Conn) {
	br := bufio.NewReader(conn)
	var pkt []byte
	inPacket := false
	for {
		b, err := br.ReadByte()
		if err != nil {
			return
		}
		f.mu.Lock()
		if f.lastUnack {
			// QEMU waits for the ack of its last packet.
			if b == '+' || b == '$' {
				f.lastUnack = false
			}
			if b != '$' {
				if b == 0x03 {
					f.ignored03++
				}
				f.mu.Unlock()
				continue
			}
		}
		if f.running && !inPacket {
			// Any byte stops the running VM and is lost.
			f.running = false
			if b == 0x03 {
				f.interrupts++
				if f.on03 != nil {
					f.on03(f)
				} else {
					f.sendLocked("T02thread:" + f.tid(1) + ";")
				}
			} else {
				f.lost = append(f.lost, string(b))
				f.sendLocked("T02thread:" + f.tid(1) + ";")
			}
			f.mu.Unlock()
			continue
		}
		switch {
		case !inPacket && b == '$':
			inPacket, pkt = true, pkt[:0]
		case !inPacket && b == 0x03:
			f.ignored03++
		case !inPacket:
			// '+' or noise: ignored.
		case b == '#':
			c1, _ := br.ReadByte()
			c2, _ := br.ReadByte()
			inPacket = false
			if len(pkt)+4 > f.maxFramed {
				f.maxFramed = len(pkt) + 4
			}
			if len(pkt)+4 > maxPacketLen {
				// QEMU drops it silently.
				f.t.Errorf("fake stub: packet of %d bytes dropped", len(pkt)+4)
				break
			}
			var sum byte
			for _, x := range pkt {
				sum += x
			}
			if want, _ := unhexByte(c1, c2); want != sum {
				f.conn.Write([]byte{'-'})
				break
			}
			body := unescape(pkt)
			f.packets = append(f.packets, body)
			f.conn.Write([]byte{'+'})
			f.handle(body)
		default:
			pkt = append(pkt, b)
		}
		f.mu.Unlock()
	}
}

func unescape(p []byte) string {
	var out []byte
	for i := 0; i < len(p); i++ {
		if p[i] == '}' && i+1 < len(p) {
			i++
			out = append(out, p[i]^0x20)
			continue
		}
		out = append(out, p[i])
	}
	return string(out)
}

// handle answers one packet. Precondition: f.mu held.
func (f *fakeStub) handle(p string) {
	reply := func(s string) { f.sendLocked(s) }
	switch {
	case p == "QStartNoAckMode":
		reply(f.noAckReply)
		f.noAck = f.noAckReply == "OK"
	case strings.HasPrefix(p, "qSupported"):
		reply("PacketSize=1000;qXfer:features:read+;vContSupported+;multiprocess+")
	case p == "vCont?":
		reply("vCont;c;C;s;S")
	case p == "qqemu.Supported":
		reply("sstepbits;sstep;PhyMemMode")
	case p == "qqemu.PhyMemMode":
		reply(map[bool]string{false: "0", true: "1"}[f.physical])
	case strings.HasPrefix(p, "Qqemu.PhyMemMode:"):
		f.physical = p[len(p)-1] == '1'
		reply("OK")
	case strings.HasPrefix(p, "qXfer:features:read:"):
		var annex string
		var off, n int
		rest := strings.TrimPrefix(p, "qXfer:features:read:")
		i := strings.LastIndexByte(rest, ':')
		annex = rest[:i]
		fmt.Sscanf(rest[i+1:], "%x,%x", &off, &n)
		doc, err := os.ReadFile(filepath.Join("testdata", annex))
		if err != nil {
			reply("E00")
			return
		}
		n = min(n, (maxPacketLen-5)/2) // as QEMU does
		if off+n >= len(doc) {
			reply("l" + string(doc[off:]))
		} else {
			reply("m" + string(doc[off:off+n]))
		}
	case p == "qfThreadInfo":
		reply("m" + f.tid(1))
	case p == "qsThreadInfo":
		if f.packets[len(f.packets)-2] == "qfThreadInfo" {
			reply("m" + f.tid(2))
		} else {
			reply("l")
		}
	case p == "?":
		reply("T05thread:" + f.tid(1) + ";")
	case strings.HasPrefix(p, "Hg"):
		n, _ := strconv.ParseInt(p[2:], 16, 0)
		if f.regs[int(n)] == nil {
			reply("E22")
			return
		}
		f.gThread = int(n)
		reply("OK")
	case p == "g":
		reply(hex.EncodeToString(f.regs[f.gThread]))
	case strings.HasPrefix(p, "G"):
		b, _ := hex.DecodeString(p[1:])
		copy(f.regs[f.gThread], b)
		reply("OK")
	case strings.HasPrefix(p, "p"):
		n, _ := strconv.ParseInt(p[1:], 16, 0)
		off, size := fakeRegOffset(int(n))
		reply(hex.EncodeToString(f.regs[f.gThread][off : off+size]))
	case strings.HasPrefix(p, "P"):
		num, val, _ := strings.Cut(p[1:], "=")
		n, _ := strconv.ParseInt(num, 16, 0)
		off, _ := fakeRegOffset(int(n))
		b, _ := hex.DecodeString(val)
		copy(f.regs[f.gThread][off:], b)
		reply("OK")
	case strings.HasPrefix(p, "m"):
		var addr, n uint64
		fmt.Sscanf(p[1:], "%x,%x", &addr, &n)
		switch {
		case n > maxPacketLen/2:
			reply("E22")
		case addr+n > uint64(len(f.mem)):
			reply("E14")
		default:
			reply(hex.EncodeToString(f.mem[addr : addr+n]))
		}
	case strings.HasPrefix(p, "M"):
		var addr, n uint64
		head, data, _ := strings.Cut(p[1:], ":")
		fmt.Sscanf(head, "%x,%x", &addr, &n)
		b, _ := hex.DecodeString(data)
		if uint64(len(b)) != n || addr+n > uint64(len(f.mem)) {
			reply("E14")
			return
		}
		copy(f.mem[addr:], b)
		reply("OK")
	case strings.HasPrefix(p, "Z"):
		f.breaks[p[1:]] = true
		reply("OK")
	case strings.HasPrefix(p, "z"):
		if !f.breaks[p[1:]] {
			reply("E22")
			return
		}
		delete(f.breaks, p[1:])
		reply("OK")
	case strings.HasPrefix(p, "vCont;"):
		// No reply until the VM stops.
		f.running = true
		if f.onResume != nil {
			f.onResume(f, p)
		}
	case strings.HasPrefix(p, "qRcmd,"):
		cmd, _ := hex.DecodeString(p[len("qRcmd,"):])
		reply("O" + hex.EncodeToString([]byte("you said: ")))
		reply("O" + hex.EncodeToString(append(cmd, '\n')))
		reply("OK")
	case p == "D" || p == "D;1":
		f.running = true
		reply("OK")
	default:
		reply("")
	}
}

// fakeRegOffset maps a register number to its place in the 'g' image, for
// the registers the tests use.
func fakeRegOffset(n int) (off, size int) {
	switch {
	case n < 16:
		return 8 * n, 8
	case n == 16:
		return 128, 8
	case n >= 17 && n <= 23:
		return 136 + 4*(n-17), 4
	case n >= 24 && n <= 32:
		return 164 + 8*(n-24), 8
	}
	panic(fmt.Sprintf("fake stub: register %d", n))
}
