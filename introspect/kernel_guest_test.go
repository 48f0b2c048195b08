package introspect_test

import (
	"context"
	"fmt"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/vmm"
)

func loadImage(t *testing.T) *kimage.Image {
	t.Helper()
	g := testvm.Image(t)
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
	img := loadImage(t)
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
func TestTasksMatchGuestPS(t *testing.T) {
	img := loadImage(t)
	m := testvm.Boot(t)
	k := attach(t, m, img)
	var diff string
	for try := 0; try < 3; try++ {
		// $PPID is the control channel's subshell for this command: every
		// process ps lists below it existed before and outlives the command.
		res := testvm.Exec(t, m, "sh", "-c", "echo $PPID; ps -o pid,comm")
		lines := strings.Split(strings.TrimSpace(string(res.Stdout)), "\n")
		limit, _ := strconv.Atoi(lines[0])
		var guest []proc
		for _, l := range lines[2:] {
			f := strings.Fields(l)
			pid, _ := strconv.Atoi(f[0])
			if pid < limit {
				guest = append(guest, proc{pid, strings.Trim(strings.Join(f[1:], " "), "[]")})
			}
		}
		tasks, err := k.Tasks(context.Background())
		if err != nil {
			t.Fatal(err)
		}
		var ours []proc
		for _, tk := range tasks {
			if tk.PID > 0 && tk.PID == tk.TGID && tk.PID < limit {
				ours = append(ours, proc{tk.PID, tk.Comm})
			}
		}
		sort.Slice(ours, func(i, j int) bool { return ours[i].pid < ours[j].pid })
		diff = compare(guest, ours)
		if diff == "" {
			t.Logf("%d processes agree (kernel threads included)", len(ours))
			return
		}
		time.Sleep(time.Second) // a kernel worker came or went: look again
	}
	t.Fatal(diff)
}

// compare matches pids and comms. /proc decorates a workqueue worker's
// comm with its current work ("kworker/0:0-rcu_gp", cut to 15 characters);
// task_struct.comm holds the plain name.
func compare(guest, ours []proc) string {
	same := len(guest) == len(ours)
	for i := 0; same && i < len(guest); i++ {
		g, o := guest[i], ours[i]
		same = g.pid == o.pid && (g.comm == o.comm ||
			strings.HasPrefix(o.comm, "kworker/") && strings.HasPrefix(g.comm, o.comm+"-"))
	}
	if same {
		return ""
	}
	return fmt.Sprintf("guest ps:\n%v\nlucos:\n%v", guest, ours)
}

// TestStackScanFindsBlockedTasks: sleep is inside do_nanosleep, a cat
// reading an empty pipe inside pipe_read; neither is inside an unrelated
// function.
func TestStackScanFindsBlockedTasks(t *testing.T) {
	img := loadImage(t)
	m := testvm.Boot(t)
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
func TestUnwindMatchesProcStack(t *testing.T) {
	img := loadImage(t)
	m := testvm.Boot(t)
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
	running := map[uint64]bool{}
	for _, v := range before.VCPUs {
		running[v.Current] = true
	}
	compared := 0
	for _, task := range before.Tasks {
		got, err := trace(before, task.Addr)
		if err != nil {
			t.Errorf("pid %d (%s): %v; frames %q", task.PID, task.Comm, err, got)
			continue
		}
		again, _ := trace(after, task.Addr)
		want, ok := procStack[task.PID]
		if running[task.Addr] || !ok || strings.Join(got, " ") != strings.Join(again, " ") || task.Idle {
			continue // ran between the snapshots, or exited
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
