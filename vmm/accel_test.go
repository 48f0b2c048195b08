package vmm

import (
	"errors"
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
