package testvm_test

import (
	"fmt"
	"regexp"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/vmm"
)

// sh runs script in the guest and returns its stdout; a non-zero status
// fails the test.
func sh(t *testing.T, m *vmm.Machine, script string) string {
	t.Helper()
	res := testvm.Exec(t, m, "sh", "-c", script)
	if res.Status != 0 {
		t.Fatalf("%s: status %d, stderr %q, stdout %q\nconsole:\n%s", script, res.Status, res.Stderr, res.Stdout, m.ConsoleTail(30))
	}
	return string(res.Stdout)
}

// waitFor is a guest shell loop: up to 20 s until cond holds.
func waitFor(cond string) string {
	return fmt.Sprintf(`i=0; until %s; do [ $i -ge 200 ] && { echo "timed out waiting for: %s" >&2; exit 1; }; sleep 0.1; i=$((i+1)); done`,
		cond, strings.ReplaceAll(cond, `"`, `'`))
}

// TestBugsModule boots a guest with lucos_bugs and checks each of its
// files from the guest, the deadlock last: it leaves a vCPU spinning.
func TestBugsModule(t *testing.T) {
	m := testvm.Boot(t, testvm.WithBugs(t, testvm.Options(t)))
	const p = testvm.BugsProc

	t.Run("loaded", func(t *testing.T) {
		out := sh(t, m, "grep '^lucos_bugs ' /proc/modules; ls "+p+"; cat /proc/sys/kernel/tainted; dmesg | grep -i lucos_bugs || true")
		t.Logf("guest:\n%s", out)
		for _, f := range []string{"deadlock", "stats", "seen", "sessions"} {
			if !regexp.MustCompile(`(?m)^` + f + `$`).MatchString(out) {
				t.Errorf("no %s/%s", p, f)
			}
		}
	})

	t.Run("stats", func(t *testing.T) {
		out := sh(t, m, "cd "+p+" && cat stats && echo 'add 5' > stats && echo 'add 7' > stats && cat stats && cat seen")
		if want := "count=0 total_ms=0\ncount=2 total_ms=12\n0\n"; out != want {
			t.Errorf("got %q, want %q", out, want)
		}
		for _, bad := range []string{"add", "add x", "hold -1", "nonsense"} {
			if res := testvm.Exec(t, m, "sh", "-c", "echo '"+bad+"' > "+p+"/stats"); res.Status == 0 {
				t.Errorf("writing %q succeeded", bad)
			}
		}
	})

	t.Run("hold", func(t *testing.T) {
		// The writer sleeps inside lucos_bugs_stats_hold (its wchan) with
		// nothing counted, until "release".
		out := sh(t, m, "cd "+p+" && { echo 'hold 30' > stats & pid=$!; } && "+
			waitFor(`[ "$(cat /proc/$pid/wchan 2>/dev/null)" = lucos_bugs_stats_hold ]`)+" && "+
			`echo "$(cut -d' ' -f3 /proc/$pid/stat) $(cat seen) $(cat stats)" && `+
			"echo release > stats && wait $pid && echo \"status $?\" && cat seen stats")
		want := "S 0 count=2 total_ms=12\nstatus 0\n3\ncount=3 total_ms=42\n"
		if out != want {
			t.Errorf("got %q, want %q", out, want)
		}
	})

	t.Run("sessions", func(t *testing.T) {
		out := sh(t, m, "cd "+p+" && echo a > sessions && echo bb > sessions && echo $$ && "+
			"sh -c 'echo c > sessions; echo $$' && cat sessions")
		f := strings.Split(strings.TrimSpace(out), "\n")
		if len(f) != 4 {
			t.Fatalf("got %q", out)
		}
		want := fmt.Sprintf("%s sh 2\n%s sh 1\n", f[0], f[1])
		if got := f[2] + "\n" + f[3] + "\n"; got != want {
			t.Errorf("sessions %q, want %q", got, want)
		}
	})

	t.Run("deadlock-ok", func(t *testing.T) {
		out := sh(t, m, "cd "+p+" && cat deadlock && echo ok > deadlock && echo ok > deadlock && cat deadlock")
		if want := "ok 0\nok 2\n"; out != want {
			t.Errorf("got %q, want %q", out, want)
		}
		if res := testvm.Exec(t, m, "sh", "-c", "echo nonsense > "+p+"/deadlock"); res.Status == 0 {
			t.Errorf("writing nonsense succeeded")
		}
	})

	// The bug: "trigger" returns holding lucos_bugs_lock; the write still
	// succeeds and the writer lives on, but a reader then spins in
	// spin_lock for good (state R, never done).
	t.Run("deadlock-trigger", func(t *testing.T) {
		if out := sh(t, m, "echo trigger > "+p+"/deadlock; echo \"status $?\"; sh -c 'true'; echo alive"); out != "status 0\nalive\n" {
			t.Fatalf("trigger: %q", out)
		}
		out := sh(t, m, "cat "+p+"/deadlock > /dev/null 2>&1 & pid=$!; sleep 2; "+
			`echo "$(cut -d' ' -f3 /proc/$pid/stat) $(cat /proc/$pid/comm)"; sleep 1; [ -d /proc/$pid ] && echo stuck`)
		if want := "R cat\nstuck\n"; out != want {
			t.Errorf("reader after trigger: %q, want %q", out, want)
		}
		if c := m.ConsoleTail(40); strings.Contains(c, "BUG:") || strings.Contains(c, "segfault") {
			t.Errorf("the guest complained:\n%s", c)
		}
	})
}
