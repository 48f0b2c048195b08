package bench

import (
	"bytes"
	"context"
	"fmt"
	"io"
	"os"
	"regexp"
	"strings"
	"time"

	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// The soak: apply and roll back example patches in rotation, many times,
// while a reader on each vCPU hammers the patched path and checks every
// line it reads. Every read must be the original or one of the patches'
// versions, never anything else; the guest must not oops.

// SoakConfig sets the soak's length.
type SoakConfig struct {
	Cycles int // apply/rollback cycles, over the rotation
}

// DefaultSoak is what `lucos bench soak` runs (--cycles).
var DefaultSoak = SoakConfig{Cycles: 10000}

// soakPatch is one patch of the rotation and the /proc/cmdline line it
// gives (after the original line and a space).
type soakPatch struct {
	dir  string
	kind string
	line *regexp.Regexp
}

var soakRotation = []soakPatch{
	{"cmdline-string", "code", regexp.MustCompile(`^lucos-patched$`)},
	{"static-call", "code calling a static call", regexp.MustCompile(`^lucos-inodes=[0-9]+$`)},
	{"new-data", "new data", regexp.MustCompile(`^[a-z-]+=[0-9]+$`)},
	{"multi", "three functions", regexp.MustCompile(`^lucos-multi$`)},
}

// soakReader runs on the guest until /tmp/soak.stop exists: it reads
// /proc/cmdline over and over, appends every line that is neither the
// original nor a patch's version to /tmp/soak.bad, counts its reads, and
// says when it has stopped. $1 is its number, $2 the original command line
// (read by the host before any patch: a reader that read it itself could
// start late, after the first apply, and take a patched line for it).
const soakReader = `orig=$2; n=0
while [ ! -e /tmp/soak.stop ]; do
	l=$(cat /proc/cmdline)
	case "$l" in
	"$orig"|"$orig lucos-patched"|"$orig lucos-inodes="*|"$orig lucos-reads="*|"$orig lucos-multi") ;;
	*) echo "$l" >> /tmp/soak.bad ;;
	esac
	n=$((n+1)); echo $n > /tmp/soak.n.$1
done
touch /tmp/soak.done.$1`

// Soak is the scenario with DefaultSoak.
func Soak(ctx context.Context, opts launch.Options, progress io.Writer) (*Result, error) {
	return RunSoak(ctx, opts, progress, DefaultSoak)
}

// RunSoak runs cfg.Cycles apply/rollback cycles.
func RunSoak(ctx context.Context, opts launch.Options, progress io.Writer, cfg SoakConfig) (*Result, error) {
	var dirs []string
	for _, p := range soakRotation {
		dirs = append(dirs, p.dir)
	}
	g, err := bootWorkloadGuest(ctx, opts, progress, "soak", dirs, false)
	if err != nil {
		return nil, err
	}
	defer g.Close()
	orig, err := g.cmdline(ctx)
	if err != nil {
		return nil, err
	}
	readers := max(1, len(g.m.GDB().Threads()))
	if _, err := g.m.ExecScript(ctx, "rm -f /tmp/soak.*"); err != nil {
		return nil, err
	}
	for i := range readers {
		if _, err := g.m.ExecScript(ctx, "(sh -c "+vmm.ShellQuote([]string{soakReader, "soak", fmt.Sprint(i), orig})+" >/dev/null 2>&1 &)"); err != nil {
			return nil, fmt.Errorf("start reader %d: %w", i, err)
		}
	}
	// Every reader has read once before the first apply.
	if _, err := g.m.ExecScript(ctx, fmt.Sprintf(`until [ "$(ls /tmp/soak.n.* 2>/dev/null | wc -l)" -ge %d ]; do usleep 1000; done`, readers)); err != nil {
		return nil, err
	}
	var pauses, commits, frees []float64
	wrong, failed := 0, 0
	var firstWrong, firstFailed string
	start := time.Now()
	for c := 0; c < cfg.Cycles; c++ {
		sp := soakRotation[c%len(soakRotation)]
		p, err := g.apply(ctx, sp.dir)
		if err != nil {
			// A refused or failed apply must leave the guest as it was;
			// the soak counts it and goes on.
			failed++
			firstFailed = cmp(firstFailed, fmt.Sprintf("cycle %d, %s: %v", c+1, sp.dir, err))
			fmt.Fprintf(progress, "soak: cycle %d: apply %s failed: %v\n", c+1, sp.dir, err)
			if err := g.awaitNoPendingCall(ctx); err != nil {
				return nil, fmt.Errorf("soak: cycle %d: %w", c+1, err)
			}
			got, err := g.cmdline(ctx)
			if err != nil {
				return nil, err
			}
			if got != orig {
				wrong++
				firstWrong = cmp(firstWrong, fmt.Sprintf("cycle %d, %s failed to apply: /proc/cmdline %q", c+1, sp.dir, got))
			}
			continue
		}
		in := p.Info()
		pauses = append(pauses, in.PauseUS)
		commits = append(commits, in.CommitMS)
		got, err := g.cmdline(ctx)
		if err != nil {
			return nil, err
		}
		if rest, ok := strings.CutPrefix(got, orig+" "); !ok || !sp.line.MatchString(rest) {
			wrong++
			firstWrong = cmp(firstWrong, fmt.Sprintf("cycle %d, %s applied: /proc/cmdline %q", c+1, sp.dir, got))
		}
		t0 := time.Now()
		if err := g.rollback(ctx, p); err != nil {
			return nil, fmt.Errorf("soak: cycle %d: roll back %s: %w", c+1, sp.dir, err)
		}
		frees = append(frees, float64(time.Since(t0).Microseconds())/1e3)
		if got, err = g.cmdline(ctx); err != nil {
			return nil, err
		}
		if got != orig {
			wrong++
			firstWrong = cmp(firstWrong, fmt.Sprintf("cycle %d, %s rolled back: /proc/cmdline %q", c+1, sp.dir, got))
		}
		if (c+1)%500 == 0 || c+1 == cfg.Cycles {
			fmt.Fprintf(progress, "soak: %d/%d cycles, %d wrong reads, %d failed applies (%v so far)\n", c+1, cfg.Cycles, wrong, failed, time.Since(start).Round(time.Second))
		}
	}
	elapsed := time.Since(start)
	res, err := g.m.ExecScript(ctx, fmt.Sprintf(`touch /tmp/soak.stop; until [ "$(ls /tmp/soak.done.* 2>/dev/null | wc -l)" -ge %d ]; do usleep 1000; done
cat /tmp/soak.n.* | awk '{s+=$1} END {print s+0}'; head -5 /tmp/soak.bad 2>/dev/null`, readers))
	if err != nil {
		return nil, err
	}
	lines := strings.SplitN(strings.TrimSpace(string(res.Stdout)), "\n", 2)
	guestReads := lines[0]
	if len(lines) == 2 && lines[1] != "" {
		wrong += strings.Count(lines[1], "\n") + 1
		firstWrong = cmp(firstWrong, "a guest reader read "+fmt.Sprintf("%q", strings.SplitN(lines[1], "\n", 2)[0]))
	}
	oopses, err := consoleComplaints(g.m.ConsoleLog())
	if err != nil {
		return nil, err
	}
	r := &Result{Scenario: "soak", Rows: []Row{
		distribution("switch pause", "µs", pauses),
		distribution("apply → committed", "ms", commits),
		distribution("rollback → slot freed", "ms", frees),
	}}
	r.Notes = append(r.Notes, fmt.Sprintf("%d apply/rollback cycles of %s in rotation in %v (%.1f cycles/s), %d reader(s) reading /proc/cmdline meanwhile (%s reads, each checked in the guest), /proc/cmdline also checked from the host after every apply and rollback: %d wrong reads, %d oopses or warnings in the guest's log.",
		cfg.Cycles, soakNames(), elapsed.Round(time.Second), float64(cfg.Cycles)/elapsed.Seconds(), readers, guestReads, wrong, oopses))
	if firstWrong != "" {
		r.Notes = append(r.Notes, "First wrong read: "+firstWrong+".")
	}
	r.Notes = append(r.Notes, fmt.Sprintf("Applies that failed: %d of %d, each checked to leave /proc/cmdline as it was.", failed, cfg.Cycles))
	if failed > 0 {
		r.Notes = append(r.Notes, "First failed apply: "+firstFailed+".")
	}
	if wrong > 0 || oopses > 0 || failed > 0 {
		return r, fmt.Errorf("soak: %d wrong reads (first: %s), %d oopses or warnings, %d failed applies (first: %s)", wrong, firstWrong, oopses, failed, firstFailed)
	}
	return r, nil
}

// awaitNoPendingCall waits until a guest call that timed out has returned
// (the engine takes no new call until then), for at most a minute.
func (g *workloadGuest) awaitNoPendingCall(ctx context.Context) error {
	deadline := time.Now().Add(time.Minute)
	for delay := time.Millisecond; g.e.PendingCall() != 0; delay = min(2*delay, 100*time.Millisecond) {
		if time.Now().After(deadline) {
			return fmt.Errorf("a guest call that timed out has not returned after a minute (vCPU %d)", g.e.PendingCall())
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(delay):
		}
	}
	return nil
}

func soakNames() string {
	var out []string
	for _, p := range soakRotation {
		out = append(out, p.dir+" ("+p.kind+")")
	}
	return strings.Join(out, ", ")
}

// cmp keeps the first non-empty of a, b.
func cmp(a, b string) string {
	if a != "" {
		return a
	}
	return b
}

// cmdline reads the guest's /proc/cmdline, without its newline.
func (g *workloadGuest) cmdline(ctx context.Context) (string, error) {
	res, err := g.m.Exec(ctx, "cat", "/proc/cmdline")
	if err != nil {
		return "", err
	}
	return strings.TrimSuffix(string(res.Stdout), "\n"), nil
}

// consoleComplaints counts the oopses, BUGs and warnings in a guest's
// console log.
func consoleComplaints(path string) (int, error) {
	log, err := os.ReadFile(path)
	if err != nil {
		return 0, err
	}
	n := 0
	for _, bad := range []string{"Oops", "BUG:", "WARNING:", "general protection", "Kernel panic"} {
		n += bytes.Count(log, []byte(bad))
	}
	return n, nil
}
