package vmm

import (
	"errors"
	"strings"
	"testing"
)

func TestKVMVerdict(t *testing.T) {
	mods := func(names ...string) func(string) bool {
		return func(n string) bool {
			for _, m := range names {
				if m == n {
					return true
				}
			}
			return false
		}
	}
	cases := []struct {
		name    string
		cpuinfo string
		loaded  func(string) bool
		ok      bool
	}{
		{"intel", "processor : 0\nflags : fpu vmx sse\n", mods("kvm", "kvm_intel"), true},
		{"amd", "flags\t: fpu svm\n", mods("kvm", "kvm_amd"), true},
		{"pvm", "flags : fpu hypervisor\n", mods("kvm", "kvm_pvm"), false},
		{"vmx without module", "flags : vmx\n", mods("kvm"), false},
	}
	for _, c := range cases {
		err := kvmVerdict(c.cpuinfo, c.loaded)
		if (err == nil) != c.ok {
			t.Errorf("%s: err = %v", c.name, err)
		}
		if err != nil && !errors.Is(err, ErrKVMUnusable) {
			t.Errorf("%s: %v is not ErrKVMUnusable", c.name, err)
		}
	}
}

func TestTCGThreadsResolve(t *testing.T) {
	for _, c := range []struct {
		asked   TCGThreads
		release string
		want    TCGThreads
	}{
		{TCGThreadsAuto, "6.1.0-57-cloud-amd64", TCGThreadsMulti},
		{TCGThreadsAuto, "6.12.118+deb12-cloud-amd64", TCGThreadsSingle},
		{TCGThreadsAuto, "7.0.0-1-amd64", TCGThreadsSingle},
		{TCGThreadsAuto, "5.10.0-30-amd64", TCGThreadsMulti},
		{TCGThreadsAuto, "not a release", TCGThreadsSingle},
		{"", "6.1.0-57-cloud-amd64", TCGThreadsMulti},
		{TCGThreadsSingle, "6.1.0-57-cloud-amd64", TCGThreadsSingle},
		{TCGThreadsMulti, "6.12.118+deb12-cloud-amd64", TCGThreadsMulti},
	} {
		got, why := c.asked.Resolve(c.release)
		if got != c.want || why == "" {
			t.Errorf("%q.Resolve(%q) = %q (%q), want %q", c.asked, c.release, got, why, c.want)
		}
	}
	if _, err := ParseTCGThreads("many"); err == nil {
		t.Error("ParseTCGThreads(many) accepted")
	}
}

func TestICountRefusesMultiThreadedTCG(t *testing.T) {
	c := Config{Kernel: "bzImage", CPUs: 1, ICount: true, TCGThreads: TCGThreadsMulti}
	c.setDefaults()
	if err := c.validate(); err == nil || !strings.Contains(err.Error(), "one thread") {
		t.Fatalf("validate = %v, want the one-thread refusal", err)
	}
}
