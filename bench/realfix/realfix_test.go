package realfix_test

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/bench/realfix"
	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/srcdiff"
	"github.com/lucos/lucos/vmm"
)

func TestLoadCorpus(t *testing.T) {
	fixes, err := realfix.Load("", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	if len(fixes) != 9 {
		t.Fatalf("%d fixes, want the corpus's 9", len(fixes))
	}
	f := fixes[0]
	if f.File != "01-timens-nsec-validate.patch" || f.CVE != "CVE-2026-93146" || f.Kind != "A" || f.Check == "" ||
		!strings.HasPrefix(f.Subject, "time/namespace:") {
		t.Errorf("first fix: %+v", f)
	}
	if _, err := os.Stat(f.Path); err != nil {
		t.Errorf("the fix is not written out: %v", err)
	}
	dir := t.TempDir()
	os.WriteFile(filepath.Join(dir, "x.diff"), []byte("# Check: true\n--- a/f.c\n+++ b/f.c\n"), 0o644)
	other, err := realfix.Load(dir, "")
	if err != nil || len(other) != 1 || other[0].Check != "true" {
		t.Errorf("a directory's fix with its own check: %+v, %v", other, err)
	}
}

// rig is a 6.1.0-54 guest with lucos-fixcheck and a patch engine.
type rig struct {
	m *vmm.Machine
	k *introspect.Kernel
	e *patch.Engine
}

func boot(t *testing.T) *rig {
	t.Helper()
	opts := testvm.Options(t)
	opts.Image.Release = realfix.Release
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	img, err := guest.Fetch(ctx, opts.Image)
	if err != nil {
		testvm.Unavailable(t, "guest %s: %v", realfix.Release, err)
	}
	bin, err := realfix.BuildCheck(ctx, t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	opts.Extend = realfix.Extend(bin, nil)
	m := testvm.Boot(t, opts)
	ki, err := kimage.Load(ctx, img.Kernel, img.Dir)
	if err != nil {
		t.Fatal(err)
	}
	k, err := introspect.Attach(ctx, m, ki)
	if err != nil {
		t.Fatal(err)
	}
	e, err := patch.New(m, k, slog.New(slog.DiscardHandler))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(e.Close)
	return &rig{m: m, k: k, e: e}
}

// build builds a corpus fix for the 6.1.0-54 guest (fetching and preparing
// its source the first time).
func build(t *testing.T, file string) (*srcdiff.Result, []byte) {
	t.Helper()
	fixes, err := realfix.Load("", t.TempDir())
	if err != nil {
		t.Fatal(err)
	}
	for _, f := range fixes {
		if f.File == file {
			res, ko, err := buildDiff(t, f.Path)
			if err != nil {
				t.Fatalf("build %s: %v", file, err)
			}
			return res, ko
		}
	}
	t.Fatalf("no fix %s in the corpus", file)
	return nil, nil
}

// buildDiff builds the diff at path for the 6.1.0-54 guest.
func buildDiff(t *testing.T, path string) (*srcdiff.Result, []byte, error) {
	t.Helper()
	testreq.Tools(t, "gcc-12", "make", "patch", "flex", "bison", "pahole")
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	res, err := srcdiff.Build(ctx, srcdiff.Options{Diffs: []string{path}, Release: realfix.Release, Output: filepath.Join(t.TempDir(), "fix.ko")})
	if err != nil {
		return nil, nil, err
	}
	ko, err := os.ReadFile(res.KO)
	if err != nil {
		t.Fatal(err)
	}
	return res, ko, nil
}

func (r *rig) check(t *testing.T, cmd string) string {
	t.Helper()
	res := testvm.Exec(t, r.m, "sh", "-c", cmd)
	switch res.Status {
	case 0:
		return "fixed"
	case 1:
		return "vulnerable"
	}
	t.Fatalf("%s: status %d: %s%s", cmd, res.Status, res.Stdout, res.Stderr)
	return ""
}

func (r *rig) settle(t *testing.T, p *patch.Patch, op string, err error) {
	t.Helper()
	if err != nil {
		t.Fatalf("%s: %v", op, err)
	}
	want := patch.StateCommitted
	if op == "rollback" {
		want = patch.StateRolledBack
	}
	if in := p.Info(); in.State != want {
		var held []string
		for _, h := range in.HeldBy {
			held = append(held, fmt.Sprintf("pid %d (%s) %s %s", h.PID, h.Comm, h.Kind, r.k.FormatAddr(h.Value)))
		}
		t.Fatalf("after %s the patch is %s, held by %s (last check error: %s)", op, in.State, strings.Join(held, ", "), in.CheckError)
	}
}

// The first test: the timens fix, built from its diff, applied to
// a running 6.1.0-54 guest, is live — a negative nanosecond offset is
// refused — and after rollback it is gone again.
func TestTimensFixLive(t *testing.T) {
	res, ko := build(t, "01-timens-nsec-validate.patch")
	if len(res.Changes) != 1 || res.Changes[0].Name != "proc_timens_set_offset" || res.Changes[0].Kind != "changed" {
		t.Fatalf("changes: %v, want proc_timens_set_offset changed", res.Changes)
	}
	r := boot(t)
	check := realfix.CheckPath + " timens"
	if got := r.check(t, check); got != "vulnerable" {
		t.Fatalf("before the patch the guest is %s", got)
	}
	p, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: time.Minute})
	r.settle(t, p, "apply", err)
	if got := r.check(t, check); got != "fixed" {
		t.Fatalf("with the patch the guest is %s", got)
	}
	_, err = r.e.Rollback(context.Background(), p.ID(), patch.Options{Wait: true, Timeout: time.Minute})
	r.settle(t, p, "rollback", err)
	if got := r.check(t, check); got != "vulnerable" {
		t.Fatalf("after rollback the guest is %s", got)
	}
}

// A fix in a module (tls.ko) targets that module: refused while it is not
// loaded, with the module named and nothing written; applied, committed and
// rolled back once the guest has loaded it.
func TestModuleFix(t *testing.T) {
	res, ko := build(t, "13-tls-rx-restore-msg-iter.patch")
	for _, ch := range res.Changes {
		if ch.Object != "tls" {
			t.Fatalf("change %v is not in module tls", ch)
		}
	}
	r := boot(t)
	_, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: time.Minute})
	if err == nil || !strings.Contains(err.Error(), "module tls is not loaded") || !errors.Is(err, kimage.ErrNotFound) {
		t.Fatalf("apply with tls not loaded: %v; want a refusal naming the module", err)
	}
	if got := r.e.List(); len(got) != 0 {
		t.Fatalf("a patch refused at link time is listed: %+v", got)
	}
	if res := testvm.Exec(t, r.m, "modprobe", "tls"); res.Status != 0 {
		t.Fatalf("modprobe tls: %s%s", res.Stdout, res.Stderr)
	}
	p, err := r.e.Apply(context.Background(), ko, patch.Options{Wait: true, Timeout: time.Minute})
	r.settle(t, p, "apply", err)
	for _, f := range p.Info().Funcs {
		if !strings.HasPrefix(f.Name, "tls:") {
			t.Errorf("redirected %q, want a tls: function", f.Name)
		}
	}
	_, err = r.e.Rollback(context.Background(), p.ID(), patch.Options{Wait: true, Timeout: time.Minute})
	r.settle(t, p, "rollback", err)
}
