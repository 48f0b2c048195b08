package report

import (
	"bufio"
	"context"
	"io"
	"math"
	"os"
	"os/exec"
	"runtime"
	"strconv"
	"strings"
	"time"
)

// Machine describes where a run happened. Empty fields print as "unknown".
type Machine struct {
	Date      string // of the run, YYYY-MM-DD (UTC)
	Host      string // host name
	CPU       string // model name, ", virtualized" when the CPU says it runs under a hypervisor
	Cores     int    // usable by this process
	MemoryGiB int    // total, rounded to the nearest GiB
	QEMU      string // version line of qemu-system-x86_64, less "QEMU emulator version "
	Kernel    string // the guest's kernel release
	Accel     string // QEMU accelerator the guests ran under (KVM, TCG)
	Command   string // what produced the run, e.g. "make bench"
	Duration  time.Duration
	// OtherLoad says what else ran on the host during the run, when the
	// caller watched (say, other QEMU processes); "" = not watched.
	OtherLoad string
}

// Probe fills Machine from this host; the guest's release, the accelerator
// and the command come from the caller, who knows them. A fact Probe cannot
// read is left empty rather than failing the report. Duration is left for the
// caller to set when the run ends.
func Probe(ctx context.Context, release, accel, command string) Machine {
	m := Machine{
		Date:    time.Now().UTC().Format(time.DateOnly),
		Cores:   runtime.NumCPU(),
		Kernel:  release,
		Accel:   accel,
		Command: command,
	}
	m.Host, _ = os.Hostname()
	if f, err := os.Open("/proc/cpuinfo"); err == nil {
		m.CPU = parseCPUInfo(f)
		f.Close()
	}
	if f, err := os.Open("/proc/meminfo"); err == nil {
		m.MemoryGiB = parseMemInfo(f)
		f.Close()
	}
	if out, err := exec.CommandContext(ctx, "qemu-system-x86_64", "--version").Output(); err == nil {
		m.QEMU = parseQEMUVersion(string(out))
	}
	return m
}

// parseCPUInfo returns the first "model name" of /proc/cpuinfo, marked
// virtualized when the flags include "hypervisor"; "" if there is none.
func parseCPUInfo(r io.Reader) string {
	var model string
	virtual := false
	sc := bufio.NewScanner(r)
	sc.Buffer(nil, 1<<20) // flags lines are long
	for sc.Scan() {
		key, val, ok := strings.Cut(sc.Text(), ":")
		if !ok {
			continue
		}
		switch strings.TrimSpace(key) {
		case "model name":
			if model == "" {
				model = strings.TrimSpace(val)
			}
		case "flags":
			if !virtual {
				virtual = strings.Contains(" "+val+" ", " hypervisor ")
			}
		}
	}
	if model != "" && virtual {
		model += ", virtualized"
	}
	return model
}

// parseMemInfo returns MemTotal of /proc/meminfo in GiB, rounded; 0 if absent.
func parseMemInfo(r io.Reader) int {
	sc := bufio.NewScanner(r)
	for sc.Scan() {
		f := strings.Fields(sc.Text())
		if len(f) == 3 && f[0] == "MemTotal:" && f[2] == "kB" {
			kb, err := strconv.ParseUint(f[1], 10, 64)
			if err != nil {
				return 0
			}
			return int(math.Round(float64(kb) / (1 << 20)))
		}
	}
	return 0
}

// parseQEMUVersion takes the first line of `qemu-system-x86_64 --version`.
func parseQEMUVersion(out string) string {
	line, _, _ := strings.Cut(out, "\n")
	return strings.TrimSpace(strings.TrimPrefix(line, "QEMU emulator version "))
}
