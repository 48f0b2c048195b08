package gdbstub

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testreq"
)

// These tests run the real qemu-system-x86_64 with no kernel at all: SeaBIOS
// (or, with -S, the vCPU at its reset vector) is guest enough to drive the
// gdbstub. They skip when QEMU is missing, except under CI=true.

func qemuBinary(t testing.TB) string {
	t.Helper()
	return testreq.Tools(t, "qemu-system-x86_64")
}

// startQEMU starts a 2-vCPU TCG VM with its gdbstub on a unix socket and
// returns the socket path. paused keeps the vCPUs at reset (-S).
func startQEMU(t testing.TB, paused bool) string {
	t.Helper()
	bin := qemuBinary(t)
	dir, err := os.MkdirTemp("", "lucos-gdb")
	if err != nil {
		t.Fatal(err)
	}
	sock := filepath.Join(dir, "gdb.sock")
	args := []string{
		"-M", "pc", "-accel", "tcg", "-nodefaults", "-display", "none",
		"-monitor", "none", "-serial", "none", "-m", "64", "-smp", "2",
		"-gdb", "unix:" + sock + ",server=on,wait=off",
	}
	if paused {
		args = append(args, "-S")
	}
	cmd := exec.Command(bin, args...)
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan struct{})
	go func() { cmd.Wait(); close(exited) }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		os.RemoveAll(dir)
	})
	for deadline := time.Now().Add(10 * time.Second); ; {
		if _, err := os.Stat(sock); err == nil {
			return sock
		}
		select {
		case <-exited:
			t.Fatalf("qemu exited: %s", out.String())
		case <-time.After(5 * time.Millisecond):
		}
		if time.Now().After(deadline) {
			t.Fatalf("qemu did not create %s: %s", sock, out.String())
		}
	}
}

func dialQEMU(t testing.TB, sock string) *Client {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	for {
		c, err := Dial(ctx, "unix", sock)
		// QEMU creates the socket file a moment before it listens.
		if errors.Is(err, syscall.ECONNREFUSED) && ctx.Err() == nil {
			time.Sleep(5 * time.Millisecond)
			continue
		}
		if err != nil {
			t.Fatal(err)
		}
		t.Cleanup(func() { c.Close() })
		return c
	}
}

func must[T any](t testing.TB) func(T, error) T {
	return func(v T, err error) T {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return v
	}
}

func check(t testing.TB, err error) {
	t.Helper()
	if err != nil {
		t.Fatal(err)
	}
}

func TestQEMUConnect(t *testing.T) {
	c := dialQEMU(t, startQEMU(t, true))
	if got := c.Threads(); !slices.Equal(got, []int{1, 2}) {
		t.Fatalf("Threads = %v", got)
	}
	if c.Layout().Size() != 608 {
		t.Errorf("'g' is %d bytes, want 608", c.Layout().Size())
	}
	for _, tid := range c.Threads() {
		regs := must[*Registers](t)(c.ReadRegisters(tid))
		for name, want := range map[string]uint64{"rip": 0xfff0, "cs": 0xf000, "eflags": 2, "cr0": 0x60000010, "efer": 0} {
			if got, err := regs.Get(name); err != nil || got != want {
				t.Errorf("vCPU %d %s = %#x, %v; want %#x", tid, name, got, err, want)
			}
			if got, err := c.ReadRegister(tid, name); err != nil || got != want {
				t.Errorf("vCPU %d ReadRegister(%s) = %#x, %v; want %#x", tid, name, got, err, want)
			}
		}
	}
	if ev := c.LastStop(); ev.Thread != 1 || ev.Exited {
		t.Errorf("LastStop = %+v", ev)
	}
	out := must[string](t)(c.Monitor("info status"))
	if !strings.Contains(out, "paused") {
		t.Errorf("info status: %q", out)
	}
}

func TestQEMUMemory(t *testing.T) {
	sock := startQEMU(t, true)
	c := dialQEMU(t, sock)
	data := make([]byte, 5000)
	for i := range data {
		data[i] = byte(i*13 + 1)
	}
	check(t, c.SetPhysical(true))
	check(t, c.WriteMemory(0x100000, data))
	got := make([]byte, len(data))
	check(t, c.ReadMemory(0x100000, got))
	if !bytes.Equal(got, data) {
		t.Fatal("physical read back differs")
	}

	// With paging off, virtual addresses are physical ones.
	check(t, c.SetPhysical(false))
	check(t, c.WriteMemory(0x200003, []byte("lucos")))
	virt := make([]byte, 5)
	check(t, c.ReadMemory(0x200003, virt))
	check(t, c.SetPhysical(true))
	phys := make([]byte, 5)
	check(t, c.ReadMemory(0x200003, phys))
	if string(virt) != "lucos" || string(phys) != "lucos" {
		t.Errorf("virtual %q, physical %q", virt, phys)
	}

	// QEMU keeps the mode across connections; a new client learns it.
	c.Close()
	c = dialQEMU(t, sock)
	if !c.Physical() {
		t.Error("physical mode not seen after reconnecting")
	}
	if err := c.ReadMemory(0x100000, got[:16]); err != nil || !bytes.Equal(got[:16], data[:16]) {
		t.Errorf("read after reconnect: % x, %v", got[:16], err)
	}
}

// loopAddr is where the watchpoint test puts its code: vCPU 1 runs it in
// real mode with cs = 0x2000.
const (
	loopAddr = 0x20000
	loopData = 0x1000
)

// loop16 is real-mode code that counts in ax and stores it at loopData
// forever:
//
//	0: 40        inc ax
//	1: a3 00 10  mov [0x1000], ax
//	4: eb fa     jmp 0
var loop16 = []byte{0x40, 0xa3, 0x00, 0x10, 0xeb, 0xfa}

// startLoop puts vCPU 1 (stopped at reset) on loop16.
func startLoop(t testing.TB, c *Client) {
	t.Helper()
	check(t, c.SetPhysical(true))
	check(t, c.WriteMemory(loopAddr, loop16))
	// In real mode QEMU loads a written selector with base selector<<4.
	check(t, c.WriteRegister(1, "cs", loopAddr>>4))
	check(t, c.WriteRegister(1, "rip", 0))
}

func TestQEMUWatchpointAndBreakpoint(t *testing.T) {
	c := dialQEMU(t, startQEMU(t, true))
	startLoop(t, c)
	// Point QEMU's 'g' at vCPU 2, to see that the stop moves it back.
	if rip := must[uint64](t)(c.ReadRegister(2, "rip")); rip != 0xfff0 {
		t.Fatalf("vCPU 2 rip %#x", rip)
	}

	check(t, c.InsertWatchpoint(WatchWrite, loopData, 2))
	must[time.Time](t)(c.Continue())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev := must[StopEvent](t)(c.Wait(ctx))
	if ev.Reason != "watch" || ev.Addr != loopData || ev.Thread != 1 || ev.Signal != SignalTrap {
		t.Fatalf("watchpoint stop %+v (%s)", ev, ev.Raw)
	}
	// Reported after the write: memory holds the new ax.
	rip := must[uint64](t)(c.ReadRegister(1, "rip")) // no Hg: the stop selected vCPU 1
	c.mu.Lock()
	c.gThread = 0 // force an explicit Hg1
	c.mu.Unlock()
	if again := must[uint64](t)(c.ReadRegister(1, "rip")); again != rip {
		t.Fatalf("rip %#x without Hg, %#x with: QEMU did not select the stopped vCPU", rip, again)
	}
	rax := must[uint64](t)(c.ReadRegister(1, "rax"))
	var mem [2]byte
	check(t, c.ReadMemory(loopData, mem[:]))
	if got := binary.LittleEndian.Uint16(mem[:]); got != uint16(rax) {
		t.Errorf("memory %#x, ax %#x", got, uint16(rax))
	}
	t.Logf("watchpoint: %s, rip %#x, ax %#x", ev.Raw, rip, uint16(rax))
	check(t, c.RemoveWatchpoint(WatchWrite, loopData, 2))

	// A breakpoint on the jmp (linear address: cs base + ip).
	check(t, c.WriteRegister(1, "rip", 0))
	check(t, c.InsertBreakpoint(loopAddr+4))
	must[time.Time](t)(c.Continue())
	ev = must[StopEvent](t)(c.Wait(ctx))
	if ev.Signal != SignalTrap || ev.Thread != 1 || ev.Reason != "" {
		t.Fatalf("breakpoint stop %+v", ev)
	}
	if rip := must[uint64](t)(c.ReadRegister(1, "rip")); rip != 4 {
		t.Errorf("rip at the breakpoint %#x, want 4", rip)
	}
	// QEMU does not step over a breakpoint at the resume address.
	must[time.Time](t)(c.Continue())
	ev = must[StopEvent](t)(c.Wait(ctx))
	if rip := must[uint64](t)(c.ReadRegister(1, "rip")); rip != 4 || ev.Signal != SignalTrap {
		t.Errorf("after continuing from the breakpoint: %+v, rip %#x", ev, rip)
	}
	check(t, c.RemoveBreakpoint(loopAddr+4))

	// Single steps: jmp, then inc.
	for _, want := range []uint64{0, 1} {
		ev := must[StopEvent](t)(c.Step(1))
		rip := must[uint64](t)(c.ReadRegister(1, "rip"))
		if ev.Thread != 1 || ev.Signal != SignalTrap || rip != want {
			t.Errorf("step: %+v, rip %#x, want %#x", ev, rip, want)
		}
	}
	if c.Running() {
		t.Error("running after Step")
	}
}

// The 0x03 race on the real thing: a breakpoint the vCPU reaches within
// microseconds of Continue, then Stop at once. Whichever comes first, each
// cycle must get one stop and leave the protocol in step.
func TestQEMUStopRace(t *testing.T) {
	c := dialQEMU(t, startQEMU(t, true))
	startLoop(t, c)
	check(t, c.InsertBreakpoint(loopAddr+4))
	count := map[int]int{}
	for i := range 100 {
		check(t, c.WriteRegister(1, "rip", 1))
		must[time.Time](t)(c.Continue())
		if i%2 == 1 {
			time.Sleep(time.Duration(i) * time.Microsecond)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ev, err := c.Stop(ctx)
		cancel()
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		count[ev.Signal]++
		if ev.Signal == SignalTrap {
			if rip := must[uint64](t)(c.ReadRegister(1, "rip")); rip != 4 {
				t.Fatalf("cycle %d: breakpoint stop with rip %#x", i, rip)
			}
		}
	}
	t.Logf("stops: %d by the breakpoint, %d by 0x03", count[SignalTrap], count[SignalInterrupt])
}

func TestQEMUContinueStop(t *testing.T) {
	sock := startQEMU(t, false)
	c := dialQEMU(t, sock)
	// The VM ran SeaBIOS: connecting stopped it and QEMU said so unasked.
	if ev := c.LastStop(); ev.Signal != SignalInterrupt || ev.Raw != "T02thread:01;" {
		t.Errorf("connect stop %+v", ev)
	}
	var rips []uint64
	for i := range 100 {
		must[time.Time](t)(c.Continue())
		if !c.Running() {
			t.Fatalf("cycle %d: not running after Continue", i)
		}
		ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
		ev, err := c.Stop(ctx)
		cancel()
		if err != nil {
			t.Fatalf("cycle %d: %v", i, err)
		}
		if ev.Signal != SignalInterrupt || !slices.Contains(c.Threads(), ev.Thread) {
			t.Fatalf("cycle %d: stop %+v", i, ev)
		}
		if i%10 == 0 {
			rips = append(rips, must[uint64](t)(c.ReadRegister(1, "rip")))
		}
	}
	t.Logf("vCPU 1 rip samples: %#x", rips)

	// Detach leaves the VM running; the next client's connection stops it.
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
	c = dialQEMU(t, sock)
	if ev := c.LastStop(); ev.Signal != SignalInterrupt {
		t.Errorf("stop on reconnecting after Detach: %+v", ev)
	}
}

// QEMU 7.2 keeps multiprocess mode on for every later client once one asked
// for it: thread ids then read "p01.02".
func TestQEMUMultiprocessLeftOn(t *testing.T) {
	sock := startQEMU(t, true)
	conn, err := net.Dial("unix", sock)
	if err != nil {
		t.Fatal(err)
	}
	conn.Write(appendPacket(nil, []byte("qSupported:multiprocess+")))
	time.Sleep(50 * time.Millisecond)
	conn.Close()

	c := dialQEMU(t, sock)
	if got := c.Threads(); !slices.Equal(got, []int{1, 2}) || !c.multiprocess {
		t.Fatalf("Threads = %v, multiprocess %v", got, c.multiprocess)
	}
	must[time.Time](t)(c.Continue())
	ev := must[StopEvent](t)(c.Stop(context.Background()))
	if ev.Thread != 1 || !strings.Contains(ev.Raw, "p01.01") {
		t.Errorf("stop %+v", ev)
	}
	if err := c.Detach(); err != nil {
		t.Fatal(err)
	}
}

// QEMU answers 0x03 sent to a stopped VM with nothing: Stop must not send it.
func TestQEMUStopWhenStopped(t *testing.T) {
	c := dialQEMU(t, startQEMU(t, true))
	for range 3 {
		if _, err := c.Stop(context.Background()); err != nil {
			t.Fatal(err)
		}
	}
	if _, err := c.ReadRegister(1, "rip"); err != nil {
		t.Fatal(err)
	}
	if _, err := c.Wait(context.Background()); !errors.Is(err, ErrNotRunning) {
		t.Errorf("Wait: %v", err)
	}
}

// BenchmarkStopContinue measures one pause of a busy guest (vCPU 1 in a
// store loop): Stop (0x03 to stop reply) then Continue, with the work a
// pause of lucos typically does in between.
func BenchmarkStopContinue(b *testing.B) {
	for _, bc := range []struct {
		name string
		work func(b *testing.B, c *Client)
	}{
		{"bare", nil},
		{"M5", func(b *testing.B, c *Client) {
			if err := c.WriteMemory(0x30000, []byte{0x0f, 0x1f, 0x44, 0x00, 0x00}); err != nil {
				b.Fatal(err)
			}
		}},
		{"p-rip-cs-cr3-x2", func(b *testing.B, c *Client) {
			for _, tid := range []int{1, 2} {
				for _, r := range []string{"rip", "cs", "cr3"} {
					if _, err := c.ReadRegister(tid, r); err != nil {
						b.Fatal(err)
					}
				}
			}
		}},
		{"g-x2", func(b *testing.B, c *Client) {
			for _, tid := range []int{1, 2} {
				if _, err := c.ReadRegisters(tid); err != nil {
					b.Fatal(err)
				}
			}
		}},
	} {
		b.Run(bc.name, func(b *testing.B) {
			c := dialQEMU(b, startQEMU(b, true))
			startLoop(b, c)
			var stops, pauses []time.Duration
			if _, err := c.Continue(); err != nil {
				b.Fatal(err)
			}
			b.ReportAllocs()
			for b.Loop() {
				t0 := time.Now()
				ev, err := c.Stop(context.Background())
				if err != nil {
					b.Fatal(err)
				}
				if bc.work != nil {
					bc.work(b, c)
				}
				resumed, err := c.Continue()
				if err != nil {
					b.Fatal(err)
				}
				stops = append(stops, ev.At.Sub(t0))
				pauses = append(pauses, resumed.Sub(ev.At))
			}
			b.StopTimer()
			if _, err := c.Stop(context.Background()); err != nil {
				b.Fatal(err)
			}
			b.ReportMetric(pct(stops, 50), "stop-p50-µs")
			b.ReportMetric(pct(stops, 99), "stop-p99-µs")
			b.ReportMetric(pct(pauses, 50), "pause-p50-µs")
			b.ReportMetric(pct(pauses, 99), "pause-p99-µs")
		})
	}
}

// pct is the p-th percentile of d in microseconds.
func pct(d []time.Duration, p int) float64 {
	if len(d) == 0 {
		return 0
	}
	s := slices.Clone(d)
	sort.Slice(s, func(i, j int) bool { return s[i] < s[j] })
	return float64(s[(len(s)-1)*p/100]) / float64(time.Microsecond)
}

// The connection breaks while the VM is stopped: the command in flight
// fails, the next goes over a new connection; the VM stayed stopped (the
// loop's counter did not move), and the breakpoint and the physical memory
// mode are still in place, so the VM runs on to the breakpoint.
func TestQEMUReconnectWhileStopped(t *testing.T) {
	c := dialQEMU(t, startQEMU(t, true))
	startLoop(t, c)
	check(t, c.InsertBreakpoint(loopAddr+4))
	must[time.Time](t)(c.Continue())
	ev := must[StopEvent](t)(c.Wait(context.Background()))
	if ev.Signal != SignalTrap {
		t.Fatalf("stop %+v, want the breakpoint", ev)
	}
	var before [2]byte
	check(t, c.ReadMemory(loopData, before[:]))

	c.conn.Close() // as if the socket dropped
	var b [2]byte
	if err := c.ReadMemory(loopData, b[:]); err == nil {
		t.Fatal("a read over the dropped connection succeeded")
	}
	if n := c.Reconnects(); n != 0 {
		t.Fatalf("%d reconnects before the next command", n)
	}
	check(t, c.ReadMemory(loopData, b[:]))
	if n := c.Reconnects(); n != 1 {
		t.Fatalf("%d reconnects, want 1", n)
	}
	if b != before {
		t.Fatalf("the counter moved from % x to % x: the VM ran while the connection was down", before, b)
	}
	if !c.physical {
		t.Error("the client forgot physical memory mode")
	}
	must[time.Time](t)(c.Continue())
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Second)
	defer cancel()
	ev, err := c.Wait(ctx)
	if err != nil || ev.Signal != SignalTrap {
		t.Fatalf("after the reconnection: %+v, %v; want the breakpoint again", ev, err)
	}
	if rip := must[uint64](t)(c.ReadRegister(1, "rip")); rip != 4 {
		t.Errorf("stopped at rip %#x, want the breakpoint at 4", rip)
	}
}
