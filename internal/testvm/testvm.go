// Package testvm boots real guests for integration tests. A test that needs
// QEMU or the guest image skips with the reason when the machine lacks them,
// except under CI (CI=true), where it fails: the README's test command
// installs everything, so a missing part there is a defect.
package testvm

import (
	"context"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// InCI reports whether the test runs under CI (see package testreq).
func InCI() bool { return testreq.InCI() }

// Unavailable skips t with reason, or fails it under CI.
func Unavailable(t testing.TB, reason string, args ...any) {
	t.Helper()
	testreq.Unavailable(t, reason, args...)
}

// OtherSeries is the second kernel series the examples' end-to-end tests
// run on, besides the default guest's (guest.DefaultSeries): Debian's 6.12
// for bookworm, with IBT, __pfx padding and call-depth tracking built in.
const OtherSeries = "6.12"

// Kernels are the releases (or series) the examples' tests run on: ""
// for the default guest, then OtherSeries.
var Kernels = []string{"", OtherSeries}

// KernelName names a release of Kernels for a subtest: "6.1" or "6.12".
func KernelName(release string) string {
	if release == "" {
		return guest.DefaultSeries
	}
	return release
}

// EachKernel runs test as a subtest per release of Kernels, named by its
// series ("6.1", "6.12").
func EachKernel(t *testing.T, test func(t *testing.T, release string)) {
	for _, rel := range Kernels {
		t.Run(KernelName(rel), func(t *testing.T) { test(t, rel) })
	}
}

// Image returns the default guest image, fetching it on first use.
func Image(t testing.TB) *guest.Image {
	t.Helper()
	return ImageOf(t, "")
}

// ImageOf returns the image of release (a release or a series; "" for the
// default guest), fetching it on first use.
func ImageOf(t testing.TB, release string) *guest.Image {
	t.Helper()
	if testing.Short() {
		t.Skip("boots a guest; -short given")
	}
	ctx, cancel := context.WithTimeout(context.Background(), 15*time.Minute)
	defer cancel()
	img, err := guest.Fetch(ctx, guest.Options{Release: release})
	if err != nil {
		Unavailable(t, "guest image %s unavailable: %v", KernelName(release), err)
	}
	return img
}

// Options returns launch options for the default guest with 2 vCPUs.
func Options(t testing.TB) launch.Options {
	t.Helper()
	return OptionsOf(t, "")
}

// OptionsOf returns launch options for a guest of release ("" for the
// default) with 2 vCPUs.
func OptionsOf(t testing.TB, release string) launch.Options {
	t.Helper()
	testreq.Tools(t, "qemu-system-x86_64")
	if _, err := guest.Mke2fs(); err != nil { // builds the modules disk
		Unavailable(t, "%v", err)
	}
	ImageOf(t, release)
	return launch.Options{Image: guest.Options{Release: release}, VM: vmm.Config{CPUs: 2, Accel: vmm.AccelTCG}}
}

// Boot boots the default guest (or opts, if given) and closes it when the test ends.
func Boot(t testing.TB, opts ...launch.Options) *vmm.Machine {
	t.Helper()
	var o launch.Options
	if len(opts) > 0 {
		o = opts[0]
	} else {
		o = Options(t)
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	m, err := launch.Start(ctx, o)
	if err != nil {
		t.Fatalf("boot guest: %v", err)
	}
	t.Cleanup(func() { m.Close() })
	return m
}

// Exec runs argv in the guest and fails the test on a transport error.
func Exec(t testing.TB, m *vmm.Machine, argv ...string) *vmm.ExecResult {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	res, err := m.Exec(ctx, argv...)
	if err != nil {
		t.Fatalf("exec %q: %v\nconsole:\n%s", argv, err, m.ConsoleTail(20))
	}
	return res
}
