package vmm_test

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"os"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/bench"
	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// One guest serves the tests that do not need a fresh one.
var (
	shared     *vmm.Machine
	sharedOnce sync.Once
	sharedErr  error
)

func sharedGuest(t *testing.T) *vmm.Machine {
	t.Helper()
	opts := testvm.Options(t)
	sharedOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		shared, sharedErr = launch.Start(ctx, opts)
	})
	if sharedErr != nil {
		t.Fatalf("boot guest: %v", sharedErr)
	}
	return shared
}

func TestMain(m *testing.M) {
	code := m.Run()
	if shared != nil {
		shared.Close()
	}
	os.Exit(code)
}

func TestBootTwoCPUs(t *testing.T) {
	m := sharedGuest(t)
	res := testvm.Exec(t, m, "grep", "-c", "^processor", "/proc/cpuinfo")
	if got := strings.TrimSpace(string(res.Stdout)); got != "2" || res.Status != 0 {
		t.Fatalf("guest sees %q processors (status %d), want 2", got, res.Status)
	}
	res = testvm.Exec(t, m, "cat", "/proc/cmdline")
	if !strings.Contains(string(res.Stdout), "memmap=16M$0x10000000") {
		t.Errorf("patch region not reserved on the guest command line: %q", res.Stdout)
	}
	res = testvm.Exec(t, m, "uname", "-r")
	if got := strings.TrimSpace(string(res.Stdout)); got != m.Release() {
		t.Errorf("uname -r = %q, want %q", got, m.Release())
	}
}

func TestExecStatusAndStreams(t *testing.T) {
	m := sharedGuest(t)
	res := testvm.Exec(t, m, "sh", "-c", "echo out; echo err >&2; exit 3")
	if res.Status != 3 || string(res.Stdout) != "out\n" || string(res.Stderr) != "err\n" {
		t.Fatalf("got status %d stdout %q stderr %q", res.Status, res.Stdout, res.Stderr)
	}
	// Arguments reach the guest verbatim, quotes and all.
	arg := `it's "quoted" $HOME ; * \n`
	res = testvm.Exec(t, m, "printf", "%s", arg)
	if string(res.Stdout) != arg {
		t.Fatalf("printf %%s %q printed %q", arg, res.Stdout)
	}
}

func TestExecConcurrent(t *testing.T) {
	m := sharedGuest(t)
	var wg sync.WaitGroup
	errs := make(chan error, 8)
	for i := 0; i < 8; i++ {
		wg.Add(1)
		go func(i int) {
			defer wg.Done()
			res, err := m.ExecScript(context.Background(), fmt.Sprintf("sleep 0.2; seq 1 %d", 1000*(i+1)))
			if err != nil {
				errs <- err
				return
			}
			lines := strings.Fields(string(res.Stdout))
			if len(lines) != 1000*(i+1) || lines[len(lines)-1] != strconv.Itoa(1000*(i+1)) {
				errs <- fmt.Errorf("command %d: got %d lines", i, len(lines))
			}
		}(i)
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

// kernelData finds pattern in the kernel image's data in guest RAM and
// returns its physical and kernel-image virtual address. Copies elsewhere
// (a process's struct utsname, the page cache) are told apart by the
// kernel-image mapping: it is linear, so a vCPU's kernel RIP and its physical
// address give the one offset under which the kernel's own copy maps back.
func kernelData(t *testing.T, m *vmm.Machine, pattern []byte) (phys, virt uint64) {
	t.Helper()
	var delta uint64
	_, err := m.WithPaused(context.Background(), func(g *gdbstub.Client) error {
		for _, tid := range g.Threads() {
			rip, err := g.ReadRegister(tid, "rip")
			if err != nil {
				return err
			}
			if rip < 0xffffffff80000000 {
				continue
			}
			pa, err := gva2gpa(m, rip)
			if err != nil {
				return err
			}
			delta = rip - pa
			return nil
		}
		return errors.New("no vCPU stopped in the kernel image")
	})
	if err != nil {
		t.Fatal(err)
	}
	matches, err := findPhys(m, pattern)
	if err != nil {
		t.Fatal(err)
	}
	for _, pa := range matches {
		if back, err := gva2gpa(m, pa+delta); err == nil && back == pa {
			return pa, pa + delta
		}
	}
	t.Fatalf("%q: %d copies in guest RAM, none in the kernel image", pattern, len(matches))
	return 0, 0
}

// utsName is the start of the kernel's struct new_utsname: six 65-byte
// fields sysname, nodename, release, ...
func utsName(m *vmm.Machine, nodename string) []byte {
	b := make([]byte, 65*3)
	copy(b, "Linux")
	copy(b[65:], nodename)
	copy(b[130:], m.Release())
	return b
}

// findPhys scans guest RAM through the shared mapping for every copy of pattern.
func findPhys(m *vmm.Machine, pattern []byte) ([]uint64, error) {
	const chunk = 1 << 20
	buf := make([]byte, chunk+len(pattern))
	var found []uint64
	for base := uint64(0); base+uint64(len(buf)) <= m.Memory(); base += chunk {
		if err := m.ReadPhys(base, buf); err != nil {
			return nil, err
		}
		for off := 0; ; {
			i := bytes.Index(buf[off:chunk+len(pattern)-1], pattern)
			if i < 0 {
				break
			}
			found = append(found, base+uint64(off+i))
			off += i + 1
		}
	}
	return found, nil
}

func TestBannerMappingMatchesGDB(t *testing.T) {
	m := sharedGuest(t)
	version := bytes.TrimSuffix(testvm.Exec(t, m, "cat", "/proc/version").Stdout, []byte("\n"))
	if !bytes.HasPrefix(version, []byte("Linux version "+m.Release()+" ")) {
		t.Fatalf("/proc/version = %q", version)
	}
	// linux_banner is /proc/version's text followed by a newline and NUL.
	addr, _ := kernelData(t, m, append(version, '\n', 0))
	viaMap := make([]byte, len(version)+2)
	if err := m.ReadPhys(addr, viaMap); err != nil {
		t.Fatal(err)
	}
	viaGDB := make([]byte, len(viaMap))
	_, err := m.WithPaused(context.Background(), func(g *gdbstub.Client) error {
		if err := g.SetPhysical(true); err != nil {
			return err
		}
		defer g.SetPhysical(false)
		return g.ReadMemory(addr, viaGDB)
	})
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(viaMap, viaGDB) {
		t.Fatalf("at %#x the mapping reads\n%q\nbut the gdbstub reads\n%q", addr, viaMap, viaGDB)
	}
}

// TestGDBWriteSeenByGuest writes the kernel's hostname through the gdbstub
// and checks the guest's uname -n reports it.
func TestGDBWriteSeenByGuest(t *testing.T) {
	m := testvm.Boot(t)
	uts, _ := kernelData(t, m, utsName(m, "lucos-guest"))
	node := uts + 65
	newName := []byte("written-by-lucos\x00")
	_, err := m.WithPaused(context.Background(), func(g *gdbstub.Client) error {
		if err := g.SetPhysical(true); err != nil {
			return err
		}
		defer g.SetPhysical(false)
		return g.WriteMemory(node, newName)
	})
	if err != nil {
		t.Fatal(err)
	}
	res := testvm.Exec(t, m, "uname", "-n")
	if got := strings.TrimSpace(string(res.Stdout)); got != "written-by-lucos" {
		t.Fatalf("guest's uname -n = %q after the write", got)
	}
}

// TestWatchpointFires watches the kernel's nodename and has the guest set
// its hostname: the VM stops in the kernel on the vCPU that wrote it.
func TestWatchpointFires(t *testing.T) {
	m := testvm.Boot(t)
	ctx := context.Background()
	_, uts := kernelData(t, m, utsName(m, "lucos-guest"))
	nodeVirt := uts + 65
	_, err := m.WithPaused(ctx, func(g *gdbstub.Client) error {
		return g.InsertWatchpoint(gdbstub.WatchWrite, nodeVirt, 8)
	})
	if err != nil {
		t.Fatal(err)
	}

	done := make(chan *vmm.ExecResult, 1)
	go func() {
		res, _ := m.Exec(ctx, "hostname", "watched")
		done <- res
	}()
	wctx, cancel := context.WithTimeout(ctx, time.Minute)
	defer cancel()
	ev, err := m.WaitStop(wctx)
	if err != nil {
		t.Fatalf("watchpoint did not fire: %v", err)
	}
	if ev.Reason != "watch" || ev.Addr != nodeVirt {
		t.Errorf("stop %+v, want a write watch at %#x", ev, nodeVirt)
	}
	rip, err := m.GDB().ReadRegister(ev.Thread, "rip")
	if err != nil {
		t.Fatal(err)
	}
	if rip < 0xffffffff80000000 {
		t.Errorf("watchpoint reported at rip %#x, not in the kernel", rip)
	}
	t.Logf("write to nodename by vCPU %d at rip %#x", ev.Thread, rip)
	if err := m.GDB().RemoveWatchpoint(gdbstub.WatchWrite, nodeVirt, 8); err != nil {
		t.Fatal(err)
	}
	if _, err := m.Resume(); err != nil {
		t.Fatal(err)
	}
	select {
	case res := <-done:
		if res == nil || res.Status != 0 {
			t.Fatalf("hostname failed: %+v", res)
		}
	case <-time.After(time.Minute):
		t.Fatal("hostname did not finish after the watchpoint was removed")
	}
	if got := strings.TrimSpace(string(testvm.Exec(t, m, "uname", "-n").Stdout)); got != "watched" {
		t.Errorf("uname -n = %q", got)
	}
}

func gva2gpa(m *vmm.Machine, va uint64) (uint64, error) {
	out, err := m.HumanMonitor(fmt.Sprintf("gva2gpa %#x", va))
	if err != nil {
		return 0, err
	}
	hex, ok := strings.CutPrefix(strings.TrimSpace(out), "gpa: 0x")
	pa, err := strconv.ParseUint(hex, 16, 64)
	if !ok || err != nil {
		return 0, fmt.Errorf("gva2gpa %#x: %q", va, out)
	}
	return pa, nil
}

// TestPauseResumeBusyGuest pauses the VM 200 times while both vCPUs run busy
// loops and a command streams output: the guest keeps running, the output
// is intact.
func TestPauseResumeBusyGuest(t *testing.T) {
	m := testvm.Boot(t)
	ctx := context.Background()
	if _, err := m.ExecScript(ctx, bench.BusyLoops(2)); err != nil {
		t.Fatal(err)
	}
	counter := func() int {
		res := testvm.Exec(t, m, "sh", "-c", "cat /tmp/busy.0 /tmp/busy.1 2>/dev/null | awk '{s+=$1} END {print s+0}'")
		n, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		return n
	}
	time.Sleep(500 * time.Millisecond)
	before := counter()

	type out struct {
		res *vmm.ExecResult
		err error
	}
	streamed := make(chan out, 1)
	go func() {
		res, err := m.ExecScript(ctx, "i=0; while [ $i -lt 3000 ]; do i=$((i+1)); echo line-$i; done")
		streamed <- out{res, err}
	}()
	for i := 0; i < 200; i++ {
		if err := m.Pause(ctx); err != nil {
			t.Fatalf("pause %d: %v", i, err)
		}
		if _, err := m.Resume(); err != nil {
			t.Fatalf("resume %d: %v", i, err)
		}
		time.Sleep(time.Millisecond)
	}
	o := <-streamed
	if o.err != nil {
		t.Fatal(o.err)
	}
	var want strings.Builder
	for i := 1; i <= 3000; i++ {
		fmt.Fprintf(&want, "line-%d\n", i)
	}
	if string(o.res.Stdout) != want.String() {
		t.Errorf("output streamed across the pauses is not intact (%d bytes, want %d)", len(o.res.Stdout), want.Len())
	}
	after := counter()
	if after <= before {
		t.Errorf("busy loops did not advance across 200 pauses: %d -> %d", before, after)
	}
	st := m.Pauses()
	if st.Count != 200 {
		t.Errorf("pause log has %d entries, want 200", st.Count)
	}
	t.Logf("busy counter %d -> %d; pause p50 %v p99 %v", before, after, st.P50, st.P99)
}

// TestExecMany runs many commands back to back while both vCPUs are busy
// (a regression test: in raw tty mode busybox's read lost the start of a
// request that followed another closely), then one script far longer than
// a tty line.
func TestExecMany(t *testing.T) {
	m := testvm.Boot(t)
	if _, err := m.ExecScript(context.Background(), bench.BusyLoops(2)); err != nil {
		t.Fatal(err)
	}
	for i := 0; i < 200; i++ {
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		res, err := m.Exec(ctx, "echo", strconv.Itoa(i))
		cancel()
		if err != nil {
			t.Fatalf("command %d: %v", i, err)
		}
		if got := strings.TrimSpace(string(res.Stdout)); got != strconv.Itoa(i) {
			t.Fatalf("command %d printed %q", i, got)
		}
	}
	long := strings.Repeat("x", 20000)
	res := testvm.Exec(t, m, "sh", "-c", "printf %s "+long+" | wc -c")
	if got := strings.TrimSpace(string(res.Stdout)); got != "20000" {
		t.Fatalf("a 20 kB script printed %q", got)
	}
}
