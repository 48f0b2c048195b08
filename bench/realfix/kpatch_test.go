package realfix_test

import (
	"context"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/patch/srcdiff"
)

// failures are the kpatch -FAIL cases and what lucos refuses them with
// (kpatch/README.md says why each is refused).
var failures = map[string]struct {
	err  error
	text string
}{
	"symvers-disagreement-FAIL": {srcdiff.ErrNotBuilt, "drivers/usb/core/usb.c is not built into this kernel: CONFIG_USB is not set"},
	"warn-detect-FAIL":          {srcdiff.ErrNoChange, "nothing that runs changed"},
}

// TestKpatchSuite runs kpatch's integration tests (kpatch/, rebased onto
// Debian 6.1) on a 6.1.0-54 guest as kpatch's harness does: a -FAIL diff
// is refused; a diff with a LOADED test makes it fail before the patch,
// pass with it, fail after rollback; every other diff applies, commits and
// rolls back; then all patches with LOADED tests are applied together and
// all their tests pass.
func TestKpatchSuite(t *testing.T) {
	diffs, err := filepath.Glob("kpatch/*.patch")
	if err != nil || len(diffs) == 0 {
		t.Fatalf("no kpatch diffs: %v", err)
	}
	type built struct {
		name, loaded string
		modules      []string // the patch is for them: loaded first (lucos does not defer)
		ko           []byte
	}
	var cases []built
	for _, d := range diffs {
		name := strings.TrimSuffix(filepath.Base(d), ".patch")
		res, ko, err := buildDiff(t, d)
		if want, ok := failures[name]; ok {
			t.Run(name, func(t *testing.T) {
				if err == nil || !errors.Is(err, want.err) || !strings.Contains(err.Error(), want.text) {
					t.Errorf("built %v, err %v; want a refusal: %v, %q", res, err, want.err, want.text)
				}
			})
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		c := built{name: name, ko: ko}
		for _, ch := range res.Changes {
			if ch.Object != "vmlinux" && !slices.Contains(c.modules, ch.Object) {
				c.modules = append(c.modules, ch.Object)
			}
		}
		if b, err := os.ReadFile(filepath.Join("kpatch", name+"-LOADED.test")); err == nil {
			c.loaded = string(b)
		}
		cases = append(cases, c)
	}
	r := boot(t)
	loaded := func(t *testing.T, c built) bool {
		t.Helper()
		res := testvm.Exec(t, r.m, "sh", "-c", c.loaded)
		t.Logf("%s-LOADED.test: status %d%s", c.name, res.Status, strings.TrimRight("\n"+string(res.Stdout)+string(res.Stderr), "\n"))
		return res.Status == 0
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			for _, mod := range c.modules {
				if res := testvm.Exec(t, r.m, "modprobe", mod); res.Status != 0 {
					t.Fatalf("modprobe %s: %s%s", mod, res.Stdout, res.Stderr)
				}
			}
			if c.loaded != "" && loaded(t, c) {
				t.Fatalf("%s-LOADED.test passes before the patch", c.name)
			}
			p, err := r.e.Apply(context.Background(), c.ko, patch.Options{Wait: true, Timeout: time.Minute})
			r.settle(t, p, "apply", err)
			if c.loaded != "" && !loaded(t, c) {
				t.Errorf("%s-LOADED.test fails with the patch applied", c.name)
			}
			_, err = r.e.Rollback(context.Background(), p.ID(), patch.Options{Wait: true, Timeout: time.Minute})
			r.settle(t, p, "rollback", err)
			if c.loaded != "" && loaded(t, c) {
				t.Errorf("%s-LOADED.test passes after rollback", c.name)
			}
		})
	}
	t.Run("multiple", func(t *testing.T) {
		var ps []*patch.Patch
		for _, c := range cases {
			if c.loaded == "" {
				continue
			}
			p, err := r.e.Apply(context.Background(), c.ko, patch.Options{Wait: true, Timeout: time.Minute})
			r.settle(t, p, "apply", err)
			ps = append(ps, p)
		}
		for _, c := range cases {
			if c.loaded != "" && !loaded(t, c) {
				t.Errorf("%s-LOADED.test fails with all patches applied", c.name)
			}
		}
		for i := len(ps) - 1; i >= 0; i-- {
			_, err := r.e.Rollback(context.Background(), ps[i].ID(), patch.Options{Wait: true, Timeout: time.Minute})
			r.settle(t, ps[i], "rollback", err)
		}
	})
}
