package introspect_test

import (
	"context"
	"strconv"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/vmm"
)

func loadImage(t *testing.T) *kimage.Image {
	t.Helper()
	return loadImageOf(t, "")
}

// loadImageOf loads the image of release ("" for the default guest).
func loadImageOf(t *testing.T, release string) *kimage.Image {
	t.Helper()
	g := testvm.ImageOf(t, release)
	img, err := kimage.Load(context.Background(), g.Kernel, g.Dir)
	if err != nil {
		t.Fatalf("load kernel image: %v", err)
	}
	return img
}

func attach(t *testing.T, m *vmm.Machine, img *kimage.Image) *introspect.Kernel {
	t.Helper()
	k, err := introspect.Attach(context.Background(), m, img)
	if err != nil {
		t.Fatalf("attach: %v\nconsole:\n%s", err, m.ConsoleTail(20))
	}
	return k
}

// guestSymbols reads the guest's own /proc/kallsyms, the test's oracle.
func guestSymbols(t *testing.T, m *vmm.Machine, names ...string) map[string]uint64 {
	t.Helper()
	res := testvm.Exec(t, m, "sh", "-c", "grep -wE '"+strings.Join(names, "|")+"' /proc/kallsyms")
	out := map[string]uint64{}
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		f := strings.Fields(line)
		if len(f) >= 3 && len(f) == 3 {
			a, _ := strconv.ParseUint(f[0], 16, 64)
			out[f[2]] = a
		}
	}
	return out
}

// TestKASLRSlide boots the guest twice: the slides differ (KASLR is on) and
// lucos's addresses match the guest's /proc/kallsyms both times.
func TestKASLRSlide(t *testing.T) {
	img := loadImage(t) // the slide is found the same way on 6.12, whose tests attach on every boot
	names := []string{"linux_banner", "cmdline_proc_show", "init_task", "do_nanosleep", "pipe_read"}
	slides := map[uint64]bool{}
	for boot := 0; boot < 4 && len(slides) < 2; boot++ {
		m := testvm.Boot(t)
		k := attach(t, m, img)
		want := guestSymbols(t, m, names...)
		for _, n := range names {
			got, err := k.Addr(n, 0)
			if err != nil || got != want[n] {
				t.Errorf("boot %d: %s at %#x (%v), guest says %#x", boot, n, got, err, want[n])
			}
		}
		t.Logf("boot %d: slide %#x", boot, k.Slide)
		slides[k.Slide] = true
		m.Close()
	}
	if len(slides) < 2 {
		t.Errorf("every boot had the same slide: is KASLR off?")
	}
}

// TestAttachRefusesOtherKernel: an image whose banner differs is refused.
func TestAttachRefusesOtherKernel(t *testing.T) {
	img := loadImage(t)
	m := testvm.Boot(t)
	other := *img
	other.BannerAddr += 0x40 // points at other bytes: as if another build
	if _, err := introspect.Attach(context.Background(), m, &other); err == nil {
		t.Fatal("attached to a kernel whose banner differs")
	}
}

type proc struct {
	pid  int
	comm string
}

// TestTasksMatchGuestPS compares lucos's task list with the guest's own ps.
// Two task lists, read before and after the guest's ps, bracket it: a
// process in both lived through the ps and must be in it, and every process
// ps lists must be in one of them (pids grow, so a process with a pid below
// the command's own existed before the command began).
func TestTasksMatchGuestPS(t *testing.T) { testvm.EachKernel(t, testTasksMatchGuestPS) }

func testTasksMatchGuestPS(t *testing.T, release string) {
	img := loadImageOf(t, release)
	m := testvm.Boot(t, testvm.OptionsOf(t, release))
	k := attach(t, m, img)
	processes := func() map[int]string {
		tasks, err := k.Tasks(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		out := map[int]string{}
		for _, tk := range tasks {
			if tk.PID > 0 && tk.PID == tk.TGID {
				out[tk.PID] = tk.Comm
			}
		}
		return out
	}
	before := processes()
	// $PPID is the control channel's subshell for this command: every
	// process ps lists below it existed before the command.
	res := testvm.Exec(t, m, "sh", "-c", "echo $PPID; ps -o pid,comm")
	after := processes()
	lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
	limit, err := strconv.Atoi(lines[0])
	if err != nil || len(lines) < 3 {
		t.Fatalf("guest ps: %q", res.Stdout)
	}
	guest := map[int]string{}
	for _, l := range lines[2:] {
		f := strings.Fields(l)
		pid, _ := strconv.Atoi(f[0])
		if pid < limit {
			guest[pid] = strings.Trim(strings.Join(f[1:], " "), "[]")
		}
	}
	for pid, comm := range guest {
		if !sameComm(comm, before[pid]) && !sameComm(comm, after[pid]) {
			t.Errorf("guest ps lists pid %d (%s); lucos read %q before and %q after", pid, comm, before[pid], after[pid])
		}
	}
	lived := 0
	for pid, comm := range before {
		if _, still := after[pid]; !still || pid >= limit {
			continue
		}
		lived++
		if g, ok := guest[pid]; !ok || !sameComm(g, comm) && !sameComm(g, after[pid]) {
			t.Errorf("pid %d (%s) lived through the guest's ps, which lists it as %q", pid, comm, g)
		}
	}
	if lived < 10 {
		t.Errorf("only %d processes below pid %d: %v", lived, limit, before)
	}
	t.Logf("%d processes agree (kernel threads included)", lived)
}

// sameComm matches a comm from ps with task_struct.comm. /proc decorates a
// workqueue worker's comm with its current work ("kworker/0:0-rcu_gp", cut
// to 15 characters); task_struct.comm holds the plain name.
func sameComm(ps, ours string) bool {
	return ours != "" && (ps == ours || strings.HasPrefix(ours, "kworker/") && strings.HasPrefix(ps, ours+"-"))
}

// TestStackScanFindsBlockedTasks: sleep is inside do_nanosleep, a cat
// reading an empty pipe inside pipe_read; neither is inside an unrelated
// function.
func TestStackScanFindsBlockedTasks(t *testing.T) {
	testvm.EachKernel(t, testStackScanFindsBlockedTasks)
}

func testStackScanFindsBlockedTasks(t *testing.T, release string) {
	img := loadImageOf(t, release)
	m := testvm.Boot(t, testvm.OptionsOf(t, release))
	k := attach(t, m, img)
	// The script returns once both are asleep.
	res := testvm.Exec(t, m, "sh", "-c", `sleep 1000 >/dev/null 2>&1 & a=$!; echo $a
		sleep 1000 | cat >/dev/null 2>&1 & b=$!; echo $b
		for p in $a $b; do until grep -q '^[0-9]* ([a-z]*) S' /proc/$p/stat; do usleep 1000; done; done`)
	pids := strings.Fields(string(res.Stdout))
	sleepPID, _ := strconv.Atoi(pids[0])
	catPID, _ := strconv.Atoi(pids[1])

	rangeOf := func(name string) introspect.Range {
		s, err := img.Symbols.Find(name, 0)
		if err != nil {
			t.Fatal(err)
		}
		return introspect.Range{Start: s.Addr + k.Slide, End: s.Addr + k.Slide + s.Size}
	}
	snap, err := k.Snapshot(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("snapshot: %d tasks, %d stack words, pause %v", len(snap.Tasks), snap.StackWords(), snap.Pause)
	holds := func(name string, pid int) bool {
		for _, h := range snap.Scan([]introspect.Range{rangeOf(name)}) {
			if h.PID == pid {
				return true
			}
		}
		return false
	}
	if !holds("do_nanosleep", sleepPID) {
		t.Errorf("sleep (pid %d) not found inside do_nanosleep", sleepPID)
	}
	if !holds("pipe_read", catPID) {
		t.Errorf("cat (pid %d) not found inside pipe_read", catPID)
	}
	for _, unrelated := range []string{"cmdline_proc_show", "pipe_write"} {
		if h := snap.Scan([]introspect.Range{rangeOf(unrelated)}); len(h) > 0 {
			t.Errorf("%s is held by %+v", unrelated, h)
		}
	}
	if holds("pipe_read", sleepPID) {
		t.Errorf("sleep found inside pipe_read")
	}
	for _, tk := range snap.Tasks {
		if tk.PID == catPID {
			var names []string
			for _, f := range snap.Frames(tk.Addr, 8) {
				names = append(names, k.FormatAddr(f))
			}
			t.Logf("cat's frames: %v", names)
		}
	}
}

// TestUnwindMatchesProcStack: every task of an idle guest unwinds exactly
// with the guest's own ORC tables, and each switched-out task's frames are
// those the guest's /proc/PID/stack prints (which leaves out the
// scheduler's and the lock functions' frames).
func TestUnwindMatchesProcStack(t *testing.T) { testvm.EachKernel(t, testUnwindMatchesProcStack) }

func testUnwindMatchesProcStack(t *testing.T, release string) {
	img := loadImageOf(t, release)
	m := testvm.Boot(t, testvm.OptionsOf(t, release))
	k := attach(t, m, img)
	// Tasks asleep in known places; the script returns once both sleep.
	testvm.Exec(t, m, "sh", "-c", `sleep 1000 >/dev/null 2>&1 & a=$!
		sleep 1000 | cat >/dev/null 2>&1 & b=$!
		for p in $a $b; do until grep -q '^[0-9]* ([a-z]*) S' /proc/$p/stat; do usleep 1000; done; done`)

	ctx := context.Background()
	before, err := k.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	res := testvm.Exec(t, m, "sh", "-c", `for p in /proc/[0-9]*; do echo "== ${p#/proc/}"; cat $p/stack 2>/dev/null; done`)
	after, err := k.Snapshot(ctx)
	if err != nil {
		t.Fatal(err)
	}
	procStack := map[int][]string{}
	pid := -1
	for _, line := range strings.Split(string(res.Stdout), "\n") {
		if p, ok := strings.CutPrefix(line, "== "); ok {
			pid, _ = strconv.Atoi(p)
			procStack[pid] = []string{}
			continue
		}
		// [<0>] pipe_read+0x3df/0x470 [module]
		if f := strings.Fields(line); len(f) >= 2 && pid >= 0 {
			procStack[pid] = append(procStack[pid], strings.Split(f[1], "/")[0])
		}
	}
	inSched := func(a uint64) bool {
		for _, r := range [][2]string{{"__sched_text_start", "__sched_text_end"}, {"__lock_text_start", "__lock_text_end"}} {
			lo, err1 := k.Addr(r[0], 0)
			hi, err2 := k.Addr(r[1], 0)
			if err1 == nil && err2 == nil && a >= lo && a < hi {
				return true
			}
		}
		return false
	}
	trace := func(s *introspect.Snapshot, task uint64) ([]string, error) {
		tr := s.Unwind(task)
		var out []string
		for _, f := range tr.Frames {
			if !inSched(f.IP) {
				out = append(out, k.FormatAddr(f.IP))
			}
		}
		return out, tr.Err
	}
	// A task that ran between the snapshots may have been anywhere when
	// the guest read its stack: compared are those that stayed switched
	// out throughout (same context-switch count, on no vCPU in either).
	running := map[uint64]bool{}
	for _, s := range []*introspect.Snapshot{before, after} {
		for _, v := range s.VCPUs {
			running[v.Current] = true
		}
	}
	switchesAfter := map[uint64]uint64{}
	for _, task := range after.Tasks {
		switchesAfter[task.Addr] = task.Switches
	}
	compared := 0
	for _, task := range before.Tasks {
		got, err := trace(before, task.Addr)
		if err != nil {
			t.Errorf("pid %d (%s): %v; frames %q", task.PID, task.Comm, err, got)
			continue
		}
		sw, alive := switchesAfter[task.Addr]
		want, ok := procStack[task.PID]
		if running[task.Addr] || !ok || !alive || sw != task.Switches || task.Idle {
			continue // ran between the snapshots, or exited
		}
		if again, _ := trace(after, task.Addr); strings.Join(got, " ") != strings.Join(again, " ") {
			t.Errorf("pid %d (%s) did not run between the snapshots, yet its stack changed:\nbefore %q\nafter  %q", task.PID, task.Comm, got, again)
		}
		compared++
		if strings.Join(got, " ") != strings.Join(want, " ") {
			t.Errorf("pid %d (%s):\nlucos  %q\nguest  %q", task.PID, task.Comm, got, want)
		}
	}
	t.Logf("%d tasks unwound, %d compared with /proc/PID/stack", len(before.Tasks), compared)
	if compared < 10 {
		t.Errorf("only %d tasks stayed put to compare", compared)
	}
}
