package testvm

import (
	"context"
	"io"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/guestmod"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/launch"
)

// Where the lucos_bugs test module (examples/guestmod/lucos_bugs) and its
// boot hook live in a guest booted with WithBugs.
const (
	BugsKOPath = guestmod.KOPath
	BugsHook   = guestmod.Hook
	BugsProc   = guestmod.Proc
)

// builtBugs is lucos_bugs built once per release.
type builtBugs struct {
	once sync.Once
	ko   string
	err  error
}

var (
	bugsMu sync.Mutex
	bugs   = map[string]*builtBugs{}
)

// BugsKO returns examples/guestmod/lucos_bugs built for the default guest's
// release: guestmod.Cached, in the image's cache directory, built once for
// each version of the module's source and looked up once per test process.
// Without the guest image, make or the kernel's compiler it skips (fails
// under CI); a compiler error or warning fails the test.
func BugsKO(t testing.TB) string {
	t.Helper()
	return BugsKOFor(t, "")
}

// BugsKOFor is BugsKO for release ("" for the default guest's).
func BugsKOFor(t testing.TB, release string) string {
	t.Helper()
	img := ImageOf(t, release)
	cc, err := img.Compiler()
	if err != nil {
		t.Fatalf("lucos_bugs: %v", err)
	}
	testreq.Tools(t, "make", cc)
	bugsMu.Lock()
	b := bugs[img.Release]
	if b == nil {
		b = &builtBugs{}
		bugs[img.Release] = b
	}
	bugsMu.Unlock()
	b.once.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		b.ko, b.err = buildBugs(ctx, img)
	})
	if b.err != nil {
		t.Fatalf("lucos_bugs: %v", b.err)
	}
	return b.ko
}

func buildBugs(ctx context.Context, img *guest.Image) (string, error) {
	return guestmod.Cached(ctx, img, io.Discard)
}

// WithBugs returns o with the lucos_bugs module added to the guest's
// initramfs at BugsKOPath and insmod'ed at boot by BugsHook, before the
// guest is ready; whatever o.Extend adds is kept.
func WithBugs(t testing.TB, o launch.Options) launch.Options {
	t.Helper()
	o.Extend = guestmod.Extend(BugsKOFor(t, o.Image.Release), o.Extend)
	return o
}
