package gdbstub

import (
	"bytes"
	"context"
	"errors"
	"io"
	"net"
	"os"
	"path/filepath"
	"reflect"
	"runtime"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"
)

func TestDialStopped(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if got := c.Threads(); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("Threads = %v", got)
	}
	if c.Running() {
		t.Error("Running after Dial")
	}
	if c.Layout().Size() != 608 {
		t.Errorf("layout size %d", c.Layout().Size())
	}
	// No stop reply came unasked, so the client asked.
	if !slices.Contains(f.received(), "?") {
		t.Errorf("no '?' sent: %q", f.received())
	}
	ev, err := c.Stop(context.Background())
	if err != nil || ev.Signal != SignalTrap || ev.Thread != 1 {
		t.Errorf("Stop on a stopped VM = %+v, %v", ev, err)
	}
}

func TestDialRunning(t *testing.T) {
	f, c := dialFake(t, fakeOpts{running: true})
	// The unsolicited stop reply was consumed, and '?' (which makes QEMU
	// drop all breakpoints) was not needed.
	if slices.Contains(f.received(), "?") {
		t.Errorf("'?' sent although a stop reply came: %q", f.received())
	}
	if ev := c.LastStop(); ev.Signal != SignalInterrupt || ev.Thread != 1 || ev.Raw != "T02thread:01;" {
		t.Errorf("LastStop = %+v", ev)
	}
	if _, err := c.ReadRegister(1, "rip"); err != nil {
		t.Fatal(err)
	}
}

func TestDialNoAckMode(t *testing.T) {
	f, c := dialFake(t, fakeOpts{noAck: true})
	if c.ackMode {
		t.Error("still in ack mode")
	}
	if _, err := c.ReadRegister(2, "rip"); err != nil {
		t.Fatal(err)
	}
	_ = f
}

func TestDialContextDeadline(t *testing.T) {
	_, path := startFakeSilent(t)
	ctx, cancel := context.WithTimeout(context.Background(), 50*time.Millisecond)
	defer cancel()
	_, err := Dial(ctx, "unix", path)
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Dial to a silent stub: %v", err)
	}
}

// startFakeSilent accepts a connection and never answers.
func startFakeSilent(t *testing.T) (net.Listener, string) {
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
	go func() {
		conn, err := ln.Accept()
		if err != nil {
			return
		}
		t.Cleanup(func() { conn.Close() })
		io.Copy(io.Discard, conn)
	}()
	return ln, path
}

func TestRegisters(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	rip, err := c.ReadRegister(2, "rip")
	if err != nil || rip != 0xff34 {
		t.Fatalf("rip of vCPU 2 = %#x, %v", rip, err)
	}
	if err := c.WriteRegister(2, "eflags", 0x246); err != nil {
		t.Fatal(err)
	}
	regs, err := c.ReadRegisters(2)
	if err != nil {
		t.Fatal(err)
	}
	if v, _ := regs.Get("eflags"); v != 0x246 {
		t.Errorf("eflags = %#x", v)
	}
	if err := regs.Set("cr3", 0x5000); err != nil {
		t.Fatal(err)
	}
	if err := c.WriteRegisters(2, regs); err != nil {
		t.Fatal(err)
	}
	if v, err := c.ReadRegister(2, "cr3"); err != nil || v != 0x5000 {
		t.Errorf("cr3 = %#x, %v", v, err)
	}
	if v, err := c.ReadRegister(1, "rip"); err != nil || v != 0xfff0 {
		t.Errorf("rip of vCPU 1 = %#x, %v", v, err)
	}
	// One Hg per change of vCPU, exact packets.
	got := f.received()
	got = got[slices.Index(got, "Hg2"):]
	want := []string{"Hg2", "p10", "P11=46020000", "g", "G", "p1d", "Hg1", "p10"}
	for i := range got {
		if strings.HasPrefix(got[i], "G") {
			got[i] = "G"
		}
	}
	if !slices.Equal(got, want) {
		t.Errorf("packets %q, want %q", got, want)
	}
	if _, err := c.ReadRegister(3, "rip"); err == nil || !strings.Contains(err.Error(), "no vCPU thread 3") {
		t.Errorf("ReadRegister on vCPU 3: %v", err)
	}
	if _, err := c.ReadRegister(1, "st0"); err == nil {
		t.Error("ReadRegister of st0 succeeded")
	}
	if err := c.WriteRegister(1, "cs", 1<<32); err == nil {
		t.Error("WriteRegister of 33 bits into cs succeeded")
	}
}

func TestMemoryChunking(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	data := make([]byte, 10000)
	for i := range data {
		data[i] = byte(i * 7)
	}
	if err := c.WriteMemory(0x1234, data); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(data))
	if err := c.ReadMemory(0x1234, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, data) {
		t.Fatal("read back differs")
	}
	var writes, reads int
	for _, p := range f.received() {
		switch p[0] {
		case 'M':
			writes++
			if len(p) > len("M1234,700:")+2*0x700 {
				t.Errorf("M packet of %d bytes", len(p))
			}
		case 'm':
			reads++
		}
	}
	if writes != 6 || reads != 5 { // 10000/0x700, 10000/0x800, rounded up
		t.Errorf("%d M and %d m packets, want 6 and 5", writes, reads)
	}
	if f.maxFramed > maxPacketLen {
		t.Errorf("longest packet %d bytes", f.maxFramed)
	}
}

func TestStubErrors(t *testing.T) {
	_, c := dialFake(t, fakeOpts{})
	err := c.ReadMemory(0xffffffff81000000, make([]byte, 16))
	var se *StubError
	if !errors.As(err, &se) || se.Code != 0x14 {
		t.Fatalf("error %v, want StubError E14", err)
	}
	if want := "read 16 bytes at 0xffffffff81000000: E14 (bad address)"; !strings.HasPrefix(err.Error(), want) {
		t.Errorf("error %q, want prefix %q", err, want)
	}
	c.mu.Lock()
	c.cmd = append(c.cmd[:0], "qNoSuchThing"...)
	_, err = c.command()
	c.mu.Unlock()
	var ue *UnsupportedError
	if !errors.Is(err, ErrUnsupported) || !errors.As(err, &ue) {
		t.Errorf("error %v, want UnsupportedError", err)
	}
	if err := c.RemoveBreakpoint(0x1000); err == nil || !strings.Contains(err.Error(), "remove breakpoint at 0x1000: E22") {
		t.Errorf("removing a missing breakpoint: %v", err)
	}
	// Errors do not break the connection.
	if _, err := c.ReadRegister(1, "rip"); err != nil {
		t.Fatal(err)
	}
}

func TestPhysicalCached(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	for range 3 {
		if err := c.SetPhysical(true); err != nil {
			t.Fatal(err)
		}
	}
	if !c.Physical() {
		t.Error("Physical false")
	}
	if err := c.SetPhysical(false); err != nil {
		t.Fatal(err)
	}
	var n int
	for _, p := range f.received() {
		if strings.HasPrefix(p, "Qqemu.PhyMemMode") {
			n++
		}
	}
	if n != 2 {
		t.Errorf("%d Qqemu.PhyMemMode packets, want 2", n)
	}
}

func TestBreakpointsAndWatchpoints(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if err := c.InsertBreakpoint(0xffffffff81000000); err != nil {
		t.Fatal(err)
	}
	if err := c.InsertWatchpoint(WatchWrite, 0x1000, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveWatchpoint(WatchWrite, 0x1000, 4096); err != nil {
		t.Fatal(err)
	}
	if err := c.RemoveBreakpoint(0xffffffff81000000); err != nil {
		t.Fatal(err)
	}
	got := f.received()
	want := []string{"Z0,ffffffff81000000,1", "Z2,1000,1000", "z2,1000,1000", "z0,ffffffff81000000,1"}
	if !slices.Equal(got[len(got)-4:], want) {
		t.Errorf("packets %q, want %q", got[len(got)-4:], want)
	}
	if err := c.InsertWatchpoint(WatchKind(7), 0, 1); err == nil {
		t.Error("bad kind accepted")
	}
}

func TestMonitor(t *testing.T) {
	_, c := dialFake(t, fakeOpts{})
	out, err := c.Monitor("info registers")
	if err != nil {
		t.Fatal(err)
	}
	if out != "you said: info registers\n" {
		t.Errorf("output %q", out)
	}
}

// While the VM runs nothing but 0x03 may be sent.
func TestErrRunning(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	if !c.Running() {
		t.Fatal("not Running after Continue")
	}
	for name, call := range map[string]func() error{
		"ReadMemory":      func() error { return c.ReadMemory(0, make([]byte, 4)) },
		"WriteMemory":     func() error { return c.WriteMemory(0, []byte{1}) },
		"ReadRegister":    func() error { _, err := c.ReadRegister(1, "rip"); return err },
		"ReadRegisters":   func() error { _, err := c.ReadRegisters(1); return err },
		"WriteRegister":   func() error { return c.WriteRegister(1, "rip", 0) },
		"InsertBreakpint": func() error { return c.InsertBreakpoint(0) },
		"SetPhysical":     func() error { return c.SetPhysical(true) },
		"Continue":        func() error { _, err := c.Continue(); return err },
		"ContinueThread":  func() error { _, err := c.ContinueThread(1); return err },
		"Step":            func() error { _, err := c.Step(1); return err },
		"Monitor":         func() error { _, err := c.Monitor("info"); return err },
	} {
		if err := call(); !errors.Is(err, ErrRunning) {
			t.Errorf("%s while running: %v, want ErrRunning", name, err)
		}
	}
	ev, err := c.Stop(context.Background())
	if err != nil || ev.Signal != SignalInterrupt {
		t.Fatalf("Stop = %+v, %v", ev, err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if len(f.lost) != 0 || f.interrupts != 1 {
		t.Errorf("lost %q, %d interrupts", f.lost, f.interrupts)
	}
	if _, err := c.Wait(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Wait on a stopped VM: %v", err)
	}
}

// A breakpoint that stops the VM just before 0x03 arrives: QEMU sends no
// reply to the 0x03, and the breakpoint's stop is Stop's answer.
func TestStopRaceBreakpointFirst(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	f.mu.Lock()
	f.on03 = func(f *fakeStub) { f.sendLocked("T05thread:02;watch:2000;") }
	f.mu.Unlock()
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	ev, err := c.Stop(context.Background())
	if err != nil || ev.Reason != "watch" || ev.Addr != 0x2000 || ev.Thread != 2 {
		t.Fatalf("Stop = %+v, %v", ev, err)
	}
	// QEMU now points 'g' at the vCPU that hit the watchpoint: no Hg.
	n := len(f.received())
	if _, err := c.ReadRegister(2, "rip"); err != nil {
		t.Fatal(err)
	}
	if got := f.received()[n:]; !slices.Equal(got, []string{"p10"}) {
		t.Errorf("packets %q, want [p10]", got)
	}
}

// Stops by breakpoint and by 0x03 in every interleaving: each cycle gets
// exactly one stop, and the stream stays in step.
func TestStopRaceStress(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	var byBreak, byInterrupt int
	for i := range 300 {
		if _, err := c.Continue(); err != nil {
			t.Fatal(err)
		}
		f.mu.Lock()
		seen := f.interrupts
		f.mu.Unlock()
		var wg sync.WaitGroup
		wg.Go(func() {
			// Stop the VM as soon as it runs, unless 0x03 did.
			for {
				if f.stopBy("T05thread:02;swbreak:;") {
					return
				}
				f.mu.Lock()
				done := f.interrupts > seen
				f.mu.Unlock()
				if done {
					return
				}
				runtime.Gosched()
			}
		})
		// Not synchronisation: a delay that varies from cycle to cycle, so
		// that the 0x03 meets the breakpoint's stop at different moments.
		time.Sleep(time.Duration(i%7) * 20 * time.Microsecond)
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		ev, err := c.Stop(ctx)
		cancel()
		wg.Wait()
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		switch ev.Signal {
		case SignalTrap:
			byBreak++
		case SignalInterrupt:
			byInterrupt++
		}
		if v, err := c.ReadRegister(1, "rip"); err != nil || v != 0xfff0 {
			t.Fatalf("cycle %d: rip %#x, %v", i, v, err)
		}
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	t.Logf("%d stops by breakpoint (%d with a 0x03 that came too late), %d by 0x03", byBreak, f.ignored03, byInterrupt)
	if len(f.lost) != 0 {
		t.Errorf("packets lost while running: %q", f.lost)
	}
}

// QEMU swallows every byte but '+' and '$' while a packet it sent waits for
// its ack; console output while the VM runs is such a packet, so the 0x03
// must follow the ack.
func TestStopAfterConsoleOutput(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	f.mu.Lock()
	f.onResume = func(f *fakeStub, p string) { f.sendLocked("O6869") }
	f.mu.Unlock()
	read := make(chan struct{}, 1)
	c.testHook = func(ev string) {
		if ev == "read" {
			read <- struct{}{}
		}
	}
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	<-read // the console packet, whose ack is now pending
	if !c.ackPending.Load() {
		t.Fatal("no ack pending after the console packet")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
	defer cancel()
	ev, err := c.Stop(ctx)
	if err != nil || ev.Signal != SignalInterrupt {
		t.Fatalf("Stop = %+v, %v", ev, err)
	}
}

func TestWaitAndStopTogether(t *testing.T) {
	_, c := dialFake(t, fakeOpts{})
	blocked := make(chan struct{}, 3)
	c.testHook = func(ev string) {
		if ev == "finish" {
			blocked <- struct{}{}
		}
	}
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	type result struct {
		ev  StopEvent
		err error
	}
	waited := make(chan result)
	for range 2 {
		go func() {
			ev, err := c.Wait(context.Background())
			waited <- result{ev, err}
		}()
	}
	<-blocked // both Waits wait for the run's end
	<-blocked
	ev, err := c.Stop(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	for range 2 {
		r := <-waited
		if r.err != nil || !reflect.DeepEqual(r.ev, ev) {
			t.Errorf("Wait = %+v, %v; Stop got %+v", r.ev, r.err, ev)
		}
	}
}

func TestWaitBreakpoint(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if _, err := c.ContinueThread(2); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := c.Wait(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Wait before the stop: %v", err)
	}
	before := time.Now()
	f.stopRunning("T05thread:02;")
	ev, err := c.Wait(context.Background())
	if err != nil || ev.Thread != 2 || ev.Signal != SignalTrap {
		t.Fatalf("Wait = %+v, %v", ev, err)
	}
	if got := f.received(); got[len(got)-1] != "vCont;c:2" {
		t.Errorf("sent %q", got[len(got)-1])
	}
	if ev.At.Before(before) {
		t.Errorf("At %v before the stop was sent %v", ev.At, before)
	}
	if _, err := c.ContinueThread(5); err == nil {
		t.Error("ContinueThread(5) succeeded")
	}
}

func TestStep(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	f.mu.Lock()
	f.onResume = func(f *fakeStub, p string) {
		if p == "vCont;s:2" {
			f.running = false
			f.sendLocked("T05thread:02;")
		}
	}
	f.mu.Unlock()
	ev, err := c.Step(2)
	if err != nil || ev.Thread != 2 || c.Running() {
		t.Fatalf("Step = %+v, %v", ev, err)
	}
}

// Someone resumed the VM through QMP: the next packet only stops it.
func TestResumedElsewhere(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	f.resumeBehindBack()
	_, err := c.ReadRegister(1, "rip")
	if !errors.Is(err, ErrResumedElsewhere) {
		t.Fatalf("error %v, want ErrResumedElsewhere", err)
	}
	if v, err := c.ReadRegister(1, "rip"); err != nil || v != 0xfff0 {
		t.Fatalf("retry: %#x, %v", v, err)
	}
}

// With multiprocess extensions on (left on by an earlier client in QEMU
// 7.2), thread ids read "p01.02".
func TestMultiprocessThreadIDs(t *testing.T) {
	f, c := dialFake(t, fakeOpts{multiprocess: true, running: true})
	if got := c.Threads(); !slices.Equal(got, []int{1, 2}) {
		t.Errorf("Threads = %v", got)
	}
	if ev := c.LastStop(); ev.Thread != 1 {
		t.Errorf("LastStop = %+v", ev)
	}
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	if got := f.received(); got[len(got)-1] != "D;1" {
		t.Errorf("detach sent %q", got[len(got)-1])
	}
	if _, err := c.ReadRegister(1, "rip"); !errors.Is(err, ErrClosed) {
		t.Errorf("after Detach: %v", err)
	}
}

func TestDetachWhileRunning(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	defer f.mu.Unlock()
	if f.interrupts != 1 || len(f.lost) != 0 || f.packets[len(f.packets)-1] != "D" {
		t.Errorf("interrupts %d, lost %q, last %q", f.interrupts, f.lost, f.packets[len(f.packets)-1])
	}
}

func TestStopContextCanceled(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	f.mu.Lock()
	f.on03 = func(f *fakeStub) { f.running = true } // the 0x03 is lost
	f.mu.Unlock()
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Millisecond)
	_, err := c.Stop(ctx)
	cancel()
	if !errors.Is(err, context.DeadlineExceeded) {
		t.Fatalf("Stop: %v", err)
	}
	if !c.Running() {
		t.Fatal("not running")
	}
	f.stopRunning("T05thread:01;")
	ev, err := c.Wait(context.Background())
	if err != nil || ev.Signal != SignalTrap {
		t.Fatalf("Wait = %+v, %v", ev, err)
	}
}

func TestClosedWhileRunning(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	f.mu.Lock()
	f.conn.Close()
	f.mu.Unlock()
	if _, err := c.Wait(context.Background()); err == nil {
		t.Fatal("Wait after the stub went away succeeded")
	}
	if _, err := c.ReadRegister(1, "rip"); err == nil || !strings.Contains(err.Error(), "unusable") {
		t.Fatalf("ReadRegister after the stub went away: %v", err)
	}
}

func TestVMExited(t *testing.T) {
	f, c := dialFake(t, fakeOpts{})
	if _, err := c.Continue(); err != nil {
		t.Fatal(err)
	}
	f.stopRunning("W00")
	ev, err := c.Wait(context.Background())
	if err != nil || !ev.Exited {
		t.Fatalf("Wait = %+v, %v", ev, err)
	}
	if _, err := c.Continue(); err == nil || !strings.Contains(err.Error(), "exited") {
		t.Fatalf("Continue after exit: %v", err)
	}
}
