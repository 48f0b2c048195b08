package vmm

import (
	"errors"
	"fmt"
	"os"
	"strings"
)

// Accel is the QEMU accelerator a VM runs under.
type Accel string

const (
	AccelAuto Accel = "auto"
	AccelTCG  Accel = "tcg"
	AccelKVM  Accel = "kvm"
)

// ErrKVMUnusable means /dev/kvm cannot run a stock kernel on this host.
var ErrKVMUnusable = errors.New("KVM cannot run a stock guest kernel on this host")

// ParseAccel checks a --accel value.
func ParseAccel(s string) (Accel, error) {
	switch a := Accel(s); a {
	case AccelAuto, AccelTCG, AccelKVM:
		return a, nil
	}
	return "", fmt.Errorf("unknown accelerator %q (want tcg, kvm or auto)", s)
}

// ProbeKVM reports whether KVM on this host can run a stock kernel. A usable
// KVM needs /dev/kvm, hardware virtualization (vmx or svm in /proc/cpuinfo)
// and the kvm_intel or kvm_amd module. Paravirtual KVMs such as kvm_pvm expose
// /dev/kvm without any of that, and a stock kernel crawls and then dies under
// them (xrstor64/cmpxchg16b emulation), so they are refused.
func ProbeKVM() error {
	f, err := os.OpenFile("/dev/kvm", os.O_RDWR, 0)
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKVMUnusable, err)
	}
	f.Close()
	cpuinfo, err := os.ReadFile("/proc/cpuinfo")
	if err != nil {
		return fmt.Errorf("%w: %v", ErrKVMUnusable, err)
	}
	return kvmVerdict(string(cpuinfo), moduleLoaded)
}

func moduleLoaded(name string) bool {
	_, err := os.Stat("/sys/module/" + name)
	return err == nil
}

// kvmVerdict is the pure part of ProbeKVM.
func kvmVerdict(cpuinfo string, loaded func(string) bool) error {
	var flags []string
	for _, line := range strings.Split(cpuinfo, "\n") {
		if k, v, ok := strings.Cut(line, ":"); ok && strings.TrimSpace(k) == "flags" {
			flags = strings.Fields(v)
			break
		}
	}
	has := func(f string) bool {
		for _, x := range flags {
			if x == f {
				return true
			}
		}
		return false
	}
	var module string
	switch {
	case has("vmx"):
		module = "kvm_intel"
	case has("svm"):
		module = "kvm_amd"
	default:
		why := "the CPU has no vmx or svm flag"
		if loaded("kvm_pvm") {
			why += "; /dev/kvm is kvm_pvm, a paravirtual KVM"
		}
		return fmt.Errorf("%w: %s (use --accel tcg)", ErrKVMUnusable, why)
	}
	if !loaded(module) {
		return fmt.Errorf("%w: module %s is not loaded (use --accel tcg)", ErrKVMUnusable, module)
	}
	return nil
}

// resolve turns auto into a concrete accelerator and checks kvm.
func (a Accel) resolve() (Accel, string, error) {
	switch a {
	case AccelTCG:
		return AccelTCG, "asked for", nil
	case AccelKVM:
		if err := ProbeKVM(); err != nil {
			return "", "", err
		}
		return AccelKVM, "asked for", nil
	default:
		if err := ProbeKVM(); err != nil {
			return AccelTCG, "auto: " + err.Error(), nil
		}
		return AccelKVM, "auto: the KVM probe passed", nil
	}
}
