package workload

import (
	"bytes"
	"context"
	"errors"
	"os/exec"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testreq"
)

// build builds lucos-workload for a test, skipping (failing under CI) when
// the host cannot.
func build(t *testing.T) string {
	t.Helper()
	if testing.Short() {
		t.Skip("fetches libsqlite3-dev and runs gcc (not with -short)")
	}
	testreq.Tools(t, "gcc")
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	var progress bytes.Buffer
	bin, err := Build(ctx, "", t.TempDir(), &progress)
	switch {
	case errors.Is(err, ErrNoToolchain), errors.Is(err, guest.ErrNoApt), errors.Is(err, guest.ErrArchiveUnreachable):
		testreq.Unavailable(t, "cannot build lucos-workload: %v", err)
	case err != nil:
		t.Fatalf("Build: %v\n%s", err, progress.String())
	}
	t.Logf("%s", strings.TrimSpace(progress.String()))
	return bin
}

func TestBuildStatic(t *testing.T) {
	bin := build(t)
	if err := checkStatic(bin); err != nil {
		t.Fatal(err)
	}
	if out, err := exec.Command("file", bin).Output(); err == nil {
		t.Logf("%s", bytes.TrimSpace(out))
		if !bytes.Contains(out, []byte("statically linked")) {
			t.Errorf("file(1) says %s", out)
		}
	}
}

// The program runs on the host too (it is a static x86-64 binary): check
// its interface there, where it is fast.
func TestProgramOnHost(t *testing.T) {
	bin := build(t)
	out, err := exec.Command(bin, "list").Output()
	if err != nil {
		t.Fatal(err)
	}
	if got := strings.Fields(string(out)); !slices.Equal(got, Names) {
		t.Errorf("list = %q, want Names %q", got, Names)
	}
	for _, argv := range [][]string{{}, {"nope", "1"}, {"cpu"}, {"cpu", "0"}, {"cpu", "x"}, {"cpu", "1", "0"}, {"cpu", "1", "100", "extra"}} {
		cmd := exec.Command(bin, argv...)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		err := cmd.Run()
		var ee *exec.ExitError
		if !errors.As(err, &ee) || ee.ExitCode() != 2 || stderr.Len() == 0 {
			t.Errorf("%q: %v (stderr %q), want exit 2 with a message", argv, err, stderr.String())
		}
	}
	for _, name := range Names {
		out, err := exec.Command(bin, name, "0.3", "50").Output()
		if err != nil {
			t.Fatalf("%s: %v", name, err)
		}
		r, err := Parse(name, out)
		if err != nil {
			t.Fatalf("%s: %v\n%s", name, err, out)
		}
		if r.Ops <= 0 || len(r.Buckets) == 0 || len(r.Buckets) > 6 || r.Elapsed < 300*time.Millisecond {
			t.Errorf("%s: implausible %+v", name, r)
		}
		t.Logf("host %-8s %12.0f ops/s", name, r.OpsPerSec)
	}
}
