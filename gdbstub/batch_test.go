package gdbstub

import (
	"bytes"
	"context"
	"net"
	"strings"
	"sync/atomic"
	"testing"
	"time"
)

// countingConn counts the writes the client makes.
type countingConn struct {
	net.Conn
	writes *atomic.Int64
}

func (c countingConn) Write(b []byte) (int, error) {
	c.writes.Add(1)
	return c.Conn.Write(b)
}

// dialCounting connects to a fake stub and counts the client's writes.
func dialCounting(t *testing.T) (*fakeStub, *Client, *atomic.Int64) {
	t.Helper()
	f, path := startFake(t, fakeOpts{})
	var writes atomic.Int64
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	c, err := DialFunc(ctx, path, func(ctx context.Context) (net.Conn, error) {
		conn, err := (&net.Dialer{}).DialContext(ctx, "unix", path)
		if err != nil {
			return nil, err
		}
		return countingConn{conn, &writes}, nil
	})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { c.Close() })
	return f, c, &writes
}

func TestBatchIsOneWrite(t *testing.T) {
	f, c, writes := dialCounting(t)
	big := bytes.Repeat([]byte{0xab}, 0x900) // two 'M' packets
	b := c.Batch()
	b.WritePhysical(0x1000, []byte{0xe9, 1, 2, 3, 4})
	b.WritePhysical(0x8000, big)
	b.InsertWatchpoint(WatchWrite, 0x2000, 8)
	b.WriteRegister(2, "rip", 0x1234)
	regs := b.ReadRegisters(1)
	var rip2 uint64
	b.ReadRegister(2, "rip", &rip2)
	b.WriteRegister(1, "rax", 7)
	if b.Len() != 8 {
		t.Errorf("Len = %d, want 8 (the large write is two packets)", b.Len())
	}
	handshake := len(f.received())
	before := writes.Load()
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load() - before; n != 1 {
		t.Errorf("the batch took %d writes, want 1", n)
	}
	f.mu.Lock()
	gotMem := bytes.Equal(f.mem[0x1000:0x1005], []byte{0xe9, 1, 2, 3, 4}) && bytes.Equal(f.mem[0x8000:0x8900], big)
	f.mu.Unlock()
	if !gotMem {
		t.Error("guest memory does not hold the batch's writes")
	}
	if rip2 != 0x1234 {
		t.Errorf("rip of vCPU 2 read back in the same batch = %#x, want 0x1234", rip2)
	}
	if rip, err := regs.Get("rip"); err != nil || rip != 0xfff0 {
		t.Errorf("rip of vCPU 1 = %#x, %v; want 0xfff0", rip, err)
	}
	if rax, err := c.ReadRegister(1, "rax"); err != nil || rax != 7 {
		t.Errorf("rax of vCPU 1 after the batch = %d, %v; want 7 (the batch's Hg1 before 'P')", rax, err)
	}
	// The mode and the thread selections the batch added, in order.
	var got []string
	for _, p := range f.received()[handshake:] {
		switch {
		case strings.HasPrefix(p, "Qqemu.PhyMemMode"), strings.HasPrefix(p, "Hg"), strings.HasPrefix(p, "Z"):
			got = append(got, p)
		case strings.HasPrefix(p, "M"):
			got = append(got, p[:strings.IndexByte(p, ',')])
		case p == "g" || strings.HasPrefix(p, "p") || strings.HasPrefix(p, "P"):
			got = append(got, p[:1])
		}
	}
	want := "Qqemu.PhyMemMode:1 M1000 M8000 M8700 Z2,2000,8 Hg2 P Hg1 g Hg2 p Hg1 P p"
	if strings.Join(got, " ") != want {
		t.Errorf("packets %q\nwant    %q", strings.Join(got, " "), want)
	}
	if len(c.watches) != 1 {
		t.Errorf("client tracks %d watches, want 1", len(c.watches))
	}
}

func TestBatchReportsEveryFailureAndRunsTheRest(t *testing.T) {
	f, c, _ := dialCounting(t)
	b := c.Batch()
	b.WritePhysical(0x1000, []byte{1})
	b.WritePhysical(1<<40, []byte{2}) // past the fake's memory: E14
	b.WritePhysical(0x1001, []byte{3})
	b.RemoveWatchpoint(WatchWrite, 0x3000, 4) // never inserted: E22
	err := b.Flush()
	if err == nil {
		t.Fatal("Flush of a batch with two failing commands: no error")
	}
	for _, want := range []string{"guest-physical 0x10000000000", "z2,0x3000,4"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %q", err, want)
		}
	}
	f.mu.Lock()
	ran := f.mem[0x1000] == 1 && f.mem[0x1001] == 3
	f.mu.Unlock()
	if !ran {
		t.Error("the commands around the failed one did not run")
	}
	// The connection is still in step: the next command gets its own reply.
	buf := make([]byte, 2)
	if err := c.ReadMemory(0x1000, buf); err != nil || !bytes.Equal(buf, []byte{1, 3}) {
		t.Errorf("read after the batch: % x, %v", buf, err)
	}
}

func TestBatchBuildErrorSendsNothing(t *testing.T) {
	f, c, writes := dialCounting(t)
	n := len(f.received())
	b := c.Batch()
	b.WritePhysical(0x1000, []byte{1})
	b.WriteRegister(9, "rip", 0)
	before := writes.Load()
	if err := b.Flush(); err == nil || !strings.Contains(err.Error(), "vCPU 9") {
		t.Fatalf("Flush with a command for vCPU 9: %v", err)
	}
	if writes.Load() != before || len(f.received()) != n {
		t.Error("a batch that could not be built sent packets")
	}
}

func TestLargeBatchIsSplitIntoWrites(t *testing.T) {
	f, c, writes := dialCounting(t)
	b := c.Batch()
	data := make([]byte, 64<<10)
	for i := range data {
		data[i] = byte(i * 7)
	}
	b.WritePhysical(0x10000, data) // 38 packets, ~140 KB framed
	before := writes.Load()
	if err := b.Flush(); err != nil {
		t.Fatal(err)
	}
	if n := writes.Load() - before; n < 2 || n > 8 {
		t.Errorf("%d writes for %d framed bytes, want ~%d", n, 2*len(data), 2*len(data)/batchWrite+1)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if !bytes.Equal(f.mem[0x10000:0x20000], data) {
		t.Error("guest memory does not hold the large batch")
	}
}
