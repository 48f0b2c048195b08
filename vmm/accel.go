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

// TCGThreads is how TCG runs the vCPUs: each on its own host thread
// (multi), or all of them in turn on one (single).
//
// QEMU 7.2's multi-threaded TCG can keep a translation of code that another
// vCPU rewrites while it is being translated, and a guest kernel patching
// its own text (jump labels, static calls, livepatch) then runs the bytes it
// has replaced: the 6.12 guest took the int3 of a finished text_poke_bp
// ("Oops: int3" at sched_clock_idle_wakeup_event+0x5 and
// sched_clock_cpu+0x9, when late init marks sched_clock stable) in about 1
// boot in 60 on a loaded host. On one thread nothing translates while
// something writes.
//
// One thread has its own cost. It runs a busy vCPU for up to 100 ms of guest
// time before the next (QEMU's round-robin kick period, not configurable),
// so whatever waits for another busy vCPU waits that long: under a workload
// on every vCPU, an in-guest livepatch transition took p50 1687 ms on one
// thread against 82 ms on two, and the 6.12 apply benchmark 15 min against
// 72 s. The 6.1 guest was never seen to take the stale int3 in the many
// hundreds of boots of the suite on several threads. So auto chooses one
// thread for kernels from 6.12 on, several below.
type TCGThreads string

const (
	TCGThreadsAuto   TCGThreads = "auto"
	TCGThreadsSingle TCGThreads = "single"
	TCGThreadsMulti  TCGThreads = "multi"
)

// ParseTCGThreads checks a --tcg-threads value.
func ParseTCGThreads(s string) (TCGThreads, error) {
	switch t := TCGThreads(s); t {
	case TCGThreadsAuto, TCGThreadsSingle, TCGThreadsMulti:
		return t, nil
	}
	return "", fmt.Errorf("unknown TCG threading %q (want auto, single or multi)", s)
}

// Resolve picks single or multi for a guest kernel release ("6.12.118+deb12-
// cloud-amd64"), and says why.
func (t TCGThreads) Resolve(release string) (TCGThreads, string) {
	if t == TCGThreadsSingle || t == TCGThreadsMulti {
		return t, "asked for"
	}
	var major, minor int
	if _, err := fmt.Sscanf(release, "%d.%d", &major, &minor); err != nil {
		return TCGThreadsSingle, "auto: release " + release + " unknown, one thread is safe"
	}
	if major > 6 || major == 6 && minor >= 12 {
		return TCGThreadsSingle, "auto: " + release + " rewrites its text while another vCPU translates it (QEMU 7.2 keeps stale code), one thread"
	}
	return TCGThreadsMulti, "auto: " + release + " runs on a thread per vCPU"
}
