package patch_test

import (
	"context"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/patch"
)

// TestExamples applies every example patch to one running guest: the
// guest's output changes as the example says, and after rollback it is
// exactly what it was before.
func TestExamples(t *testing.T) {
	forKernels(t, newRigOf, testExamples)
}

func testExamples(t *testing.T, r *rig) {
	cases := []struct {
		dir    string
		script string
		after  func(before, after string) bool
	}{
		{"cmdline-string", "cat /proc/cmdline", func(b, a string) bool {
			return a == strings.TrimSuffix(b, "\n")+" lucos-patched\n"
		}},
		// The numbers in /proc/meminfo move; its lines do not.
		{"meminfo-string", "sed 's/[0-9 ]//g' /proc/meminfo", func(b, a string) bool {
			return a == b+"LucosPatched:kB\n"
		}},
		{"uname", "uname -r; uname -s", func(b, a string) bool {
			lines := strings.SplitN(b, "\n", 2)
			return a == lines[0]+"-lucos\n"+lines[1]
		}},
		{"static-call", "cat /proc/cmdline", func(b, a string) bool {
			return regexp.MustCompile(`^` + regexp.QuoteMeta(strings.TrimSuffix(b, "\n")) + ` lucos-inodes=[1-9][0-9]*\n$`).MatchString(a)
		}},
		{"multi", "cat /proc/cmdline /proc/version; grep -c lucos-multi /proc/loadavg", func(b, a string) bool {
			return strings.Count(a, "lucos-multi") == 2 && strings.HasSuffix(a, "\n1\n") && strings.HasSuffix(b, "\n0\n")
		}},
		{"new-data", "cat /proc/cmdline; cat /proc/cmdline", func(b, a string) bool {
			m := regexp.MustCompile(`lucos-reads=(\d+)\n.*lucos-reads=(\d+)\n$`).FindStringSubmatch(a)
			return len(m) == 3 && m[1] != m[2]
		}},
	}
	for _, c := range cases {
		t.Run(c.dir, func(t *testing.T) {
			ko := r.build(t, "examples/patches/"+c.dir)
			before := r.sh(t, c.script)
			p := r.apply(t, ko)
			if st := p.State(); st != patch.StateCommitted {
				t.Fatalf("patch is %s, want committed (held by %+v)", st, p.Info().HeldBy)
			}
			after := r.sh(t, c.script)
			if !c.after(before, after) {
				t.Errorf("after apply:\n%s\nbefore:\n%s", after, before)
			}
			listed := false
			for _, in := range r.e.List() {
				listed = listed || in.ID == p.ID() && in.State == patch.StateCommitted
			}
			if !listed {
				t.Errorf("patch list does not show %s committed: %+v", p.ID(), r.e.List())
			}
			r.rollback(t, p)
			if again := r.sh(t, c.script); again != before {
				t.Errorf("after rollback:\n%s\nwant exactly:\n%s", again, before)
			}
			t.Logf("pause %.0f µs, committed after %.2f ms", p.Info().PauseUS, p.Info().CommitMS)
		})
	}
	noKernelComplaints(t, r.m)
}

// TestHammer: both vCPUs read /proc/cmdline in tight loops while the patch
// is applied and rolled back 200 times; every line read is either the old or
// the new one and the kernel complains of nothing.
func TestHammer(t *testing.T) {
	r := newRig(t)
	ko := buildPatch(t, "examples/patches/cmdline-string")
	old := r.sh(t, "cat /proc/cmdline")
	r.sh(t, `for i in 0 1; do (while [ ! -e /tmp/stop ]; do cat /proc/cmdline; done > /tmp/hammer.$i 2>&1) & done`)
	cycles := 200
	if testing.Short() {
		cycles = 20
	}
	var pauses []float64
	for i := 0; i < cycles; i++ {
		p := r.apply(t, ko)
		pauses = append(pauses, p.Info().PauseUS)
		r.rollback(t, p)
	}
	r.sh(t, "touch /tmp/stop; sleep 0.5")
	out := r.sh(t, "cat /tmp/hammer.0 /tmp/hammer.1")
	newLine := strings.TrimSuffix(old, "\n") + " lucos-patched"
	counts := map[string]int{}
	for _, line := range strings.Split(strings.TrimSuffix(out, "\n"), "\n") {
		switch line {
		case strings.TrimSuffix(old, "\n"):
			counts["old"]++
		case newLine:
			counts["new"]++
		default:
			t.Fatalf("corrupt line read during the hammer: %q", line)
		}
	}
	if counts["new"] == 0 || counts["old"] == 0 {
		t.Errorf("lines: %v; want both old and new ones\nguest processes:\n%s\nconsole:\n%s", counts, r.sh(t, "ps"), r.m.ConsoleTail(40))
	}
	t.Logf("%d apply/rollback cycles; lines read: %v", cycles, counts)
	noKernelComplaints(t, r.m)
}

// TestRefusals: each bad patch is refused with a clear message, and the
// guest's memory that lucos could write is byte-identical afterwards.
func TestRefusals(t *testing.T) {
	forKernels(t, newRigOf, testRefusals)
}

func testRefusals(t *testing.T, r *rig) {
	good := r.build(t, "examples/patches/cmdline-string")
	// The same module, its vermagic naming another kernel of the same
	// length ("6.1.0-57" → "6.0.0-57", "6.12.118" → "6.02.118").
	rel := []byte(r.k.Release())
	rel[2] ^= 1
	other := string(rel)
	otherRelease := []byte(strings.ReplaceAll(string(good), r.k.Release(), other))
	cases := []struct {
		name  string
		ko    func(t *testing.T) []byte
		setup string
		want  string
	}{
		{"other release", func(*testing.T) []byte { return otherRelease }, "", "built for"},
		{"unknown symbol", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-unknown-symbol") }, "", "lucos_no_such_symbol"},
		{"ambiguous static", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-ambiguous") }, "", "sympos"},
		{"__param", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-param") }, "", "__param"},
		{"not a function start", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-not-function") }, "", "not"},
		{"traced by ftrace", func(*testing.T) []byte { return good },
			"mount -t tracefs nodev /sys/kernel/tracing 2>/dev/null; echo cmdline_proc_show > /sys/kernel/tracing/set_ftrace_filter && echo function > /sys/kernel/tracing/current_tracer",
			"traced by ftrace"},
		{"not an ELF file", func(*testing.T) []byte { return []byte("hello") }, "", "ELF"},
		{"data update of read-only data", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-data-rodata") }, "", "not kernel data"},
		{"callback on a missing function", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-callback-missing") }, "", "lucos_no_such_function"},
		{"watch on a function", func(t *testing.T) []byte { return r.build(t, "examples/patches/bad/bad-watch-function") }, "", "not kernel data"},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			ko := c.ko(t)
			if c.setup != "" {
				r.sh(t, c.setup)
				defer r.sh(t, "echo nop > /sys/kernel/tracing/current_tracer; echo > /sys/kernel/tracing/set_ftrace_filter")
			}
			before := r.fingerprint(t)
			p, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: 10 * time.Second})
			if err == nil {
				r.rollback(t, p)
			}
			if err == nil || !strings.Contains(err.Error(), c.want) {
				t.Fatalf("apply: %v; want a refusal mentioning %q", err, c.want)
			}
			t.Logf("refused: %v", err)
			if after := r.fingerprint(t); after != before {
				t.Errorf("guest memory changed by a refused patch")
			}
		})
	}
	// The same patch twice: the second is refused while the first is live.
	t.Run("same patch twice", func(t *testing.T) {
		p := r.apply(t, good)
		defer r.rollback(t, p)
		before := r.fingerprint(t)
		_, err := r.e.Apply(context.Background(), good, patch.Options{Wait: true})
		if err == nil || !strings.Contains(err.Error(), "already redirected") {
			t.Fatalf("second apply: %v", err)
		}
		if after := r.fingerprint(t); after != before {
			t.Errorf("guest memory changed by the refused second apply")
		}
	})
	noKernelComplaints(t, r.m)
}
