package vmm_test

import (
	"bytes"
	"context"
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

// kernelData returns the physical and virtual address of the kernel
// variable sym, as the guest's /proc/kallsyms and page tables give them,
// and checks that guest RAM holds want there. (Searching RAM for want
// instead found, now and then, a stray copy in memory the kernel-image
// mapping still covers, and TestWatchpointFires watched the wrong bytes.)
func kernelData(t *testing.T, m *vmm.Machine, sym string, want []byte) (phys, virt uint64) {
	t.Helper()
	res := testvm.Exec(t, m, "sh", "-c", "grep ' "+sym+"$' /proc/kallsyms")
	f := strings.Fields(string(res.Stdout))
	if len(f) != 3 {
		t.Fatalf("/proc/kallsyms has no single %s: %q", sym, res.Stdout)
	}
	virt, err := strconv.ParseUint(f[0], 16, 64)
	if err != nil {
		t.Fatal(err)
	}
	if phys, err = gva2gpa(m, virt); err != nil {
		t.Fatal(err)
	}
	got := make([]byte, len(want))
	if err := m.ReadPhys(phys, got); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(got, want) {
		t.Fatalf("%s at %#x (physical %#x) holds %q, want %q", sym, virt, phys, got, want)
	}
	return phys, virt
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

func TestBannerMappingMatchesGDB(t *testing.T) {
	m := sharedGuest(t)
	version := bytes.TrimSuffix(testvm.Exec(t, m, "cat", "/proc/version").Stdout, []byte("\n"))
	if !bytes.HasPrefix(version, []byte("Linux version "+m.Release()+" ")) {
		t.Fatalf("/proc/version = %q", version)
	}
	// linux_banner is /proc/version's text followed by a newline and NUL.
	addr, _ := kernelData(t, m, "linux_banner", append(version, '\n', 0))
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
	uts, _ := kernelData(t, m, "init_uts_ns", utsName(m, "lucos-guest"))
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
	_, uts := kernelData(t, m, "init_uts_ns", utsName(m, "lucos-guest"))
	nodeVirt := uts + 65
	_, err := m.WithPaused(ctx, func(g *gdbstub.Client) error {
		return g.InsertWatchpoint(gdbstub.WatchWrite, nodeVirt, 8)
	})
	if err != nil {
		t.Fatal(err)
	}

	type execDone struct {
		res *vmm.ExecResult
		err error
	}
	done := make(chan execDone, 1)
	go func() {
		res, err := m.Exec(ctx, "hostname", "watched")
		done <- execDone{res, err}
	}()
	// The stop, or the end of the exec without one: then the write was not
	// trapped (or never made), and the test says which.
	stopped := make(chan error, 1)
	var ev gdbstub.StopEvent
	wctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		var err error
		ev, err = m.WaitStop(wctx)
		stopped <- err
	}()
	select {
	case err := <-stopped:
		if err != nil {
			t.Fatalf("waiting for the watchpoint: %v", err)
		}
	case d := <-done:
		cancel()
		<-stopped
		if d.err != nil {
			t.Fatalf("hostname did not run: %v", d.err)
		}
		t.Fatalf("hostname ran (%+v) and the watchpoint did not fire; uname -n now %q", d.res,
			strings.TrimSpace(string(testvm.Exec(t, m, "uname", "-n").Stdout)))
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
	if d := <-done; d.err != nil || d.res.Status != 0 {
		t.Fatalf("hostname failed: %+v, %v", d.res, d.err)
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
	// The script returns once both loops have counted.
	if _, err := m.ExecScript(ctx, bench.BusyLoops(2)+"until [ -s /tmp/busy.0 ] && [ -s /tmp/busy.1 ]; do usleep 1000; done\n"); err != nil {
		t.Fatal(err)
	}
	counter := func() int {
		res := testvm.Exec(t, m, "sh", "-c", "cat /tmp/busy.0 /tmp/busy.1 2>/dev/null | awk '{s+=$1} END {print s+0}'")
		n, _ := strconv.Atoi(strings.TrimSpace(string(res.Stdout)))
		return n
	}
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
	// Pause and resume back to back until the output is all there: the
	// guest runs only between a resume and the next stop.
	var o out
	n := 0
	for done := false; !done; n++ {
		if err := m.Pause(ctx); err != nil {
			t.Fatalf("pause %d: %v", n, err)
		}
		if _, err := m.Resume(); err != nil {
			t.Fatalf("resume %d: %v", n, err)
		}
		select {
		case o = <-streamed:
			done = true
		default:
		}
	}
	if n < 20 {
		t.Errorf("the output came across only %d pauses", n)
	}
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
		t.Errorf("busy loops did not advance across %d pauses: %d -> %d", n, before, after)
	}
	st := m.Pauses()
	if st.Count != n {
		t.Errorf("pause log has %d entries, want %d", st.Count, n)
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
