package report

import (
	"bytes"
	"context"
	"errors"
	"flag"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/bench"
)

var update = flag.Bool("update", false, "rewrite testdata/golden.md from Write's output")

var machine = Machine{
	Date:      "2026-11-27",
	Host:      "vm",
	CPU:       "Intel(R) Xeon(R) Processor, virtualized",
	Cores:     2,
	MemoryGiB: 24,
	QEMU:      "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)",
	Kernel:    "6.1.0-56-cloud-amd64",
	Accel:     "TCG",
	Command:   "make bench",
	Duration:  12*time.Minute + 34*time.Second + 400*time.Millisecond,
}

func sections() []Section {
	boot := &bench.Result{Scenario: "boot to shell", Rows: []bench.Row{
		{What: "plain qemu-system-x86_64", N: 5, P50: 4172, P99: 4405, Min: 3982, Max: 4405, Unit: "ms", Ratio: "1.00"},
		{What: "lucos run", N: 5, P50: 4342, P99: 4439, Min: 4138, Max: 4439, Unit: "ms", Ratio: "1.04"},
	}, Notes: []string{"5 interleaved boots each, 2 vCPUs, TCG."}}
	apply := &bench.Result{Scenario: "apply and roll back cmdline-string, guest busy", Rows: []bench.Row{
		{What: "lucos apply: guest-visible pause of the switch", N: 100, P50: 0.06, P99: 0.12, Min: 0.03, Max: 0.14, Unit: "ms"},
		{What: "lucos apply → committed", N: 100, P50: 1.08, P99: 9.13, Min: 0.59, Max: 9.74, Unit: "ms", Ratio: "1"},
		{What: "Linux livepatch: insmod → transition done", N: 5, P50: 1605, P99: 1919, Min: 1527, Max: 1919, Unit: "ms", Ratio: "1481× lucos"},
	}, Notes: []string{"lucos: 100 apply+rollback cycles with --wait.", "Linux livepatch: the same change as a klp module, 5 cycles."}}
	return []Section{
		{Result: boot, Name: "boot", Brief: "boot to the guest's shell: lucos vs plain QEMU"},
		{Result: apply, Name: "apply", Brief: "apply/rollback of a code patch, guest busy", Figures: []Figure{
			{Path: "bench/apply-pause.svg", Caption: "guest-visible pause of the switch"},
			{Path: "bench/apply-commit-cdf.svg", Caption: "apply → committed, lucos vs Linux livepatch"},
		}},
	}
}

var claims = []Claim{
	{Text: "The switch pauses the guest for 0.12 ms at p99.", Scenario: "apply", Row: "lucos apply: guest-visible pause of the switch"},
	{Text: "lucos commits a patch ~1,500× sooner than Linux livepatch.", Scenario: "apply", Row: "Linux livepatch: insmod → transition done"},
	{Text: "Booting under lucos costs 4% over plain QEMU.", Scenario: "boot to shell", Row: "lucos run"},
}

func TestWriteGolden(t *testing.T) {
	var b bytes.Buffer
	fuzz, err := ReadFuzzLog(strings.NewReader(fuzzLog))
	if err != nil {
		t.Fatal(err)
	}
	if err := Write(&b, machine, sections(), claims, fuzz); err != nil {
		t.Fatal(err)
	}
	golden := filepath.Join("testdata", "golden.md")
	if *update {
		if err := os.WriteFile(golden, b.Bytes(), 0o644); err != nil {
			t.Fatal(err)
		}
	}
	want, err := os.ReadFile(golden)
	if err != nil {
		t.Fatalf("%v (run go test ./bench/report/ -update to create it)", err)
	}
	if got := b.String(); got != string(want) {
		t.Errorf("Write differs from %s (go test ./bench/report/ -update rewrites it):\n%s", golden, got)
	}
}

func TestWriteRefuses(t *testing.T) {
	for _, tc := range []struct {
		name     string
		sections []Section
		claims   []Claim
		want     error
	}{
		{"claim with unknown scenario", sections(), []Claim{{Text: "x", Scenario: "pause", Row: "lucos run"}}, ErrUntracedClaim},
		{"claim with unknown row", sections(), []Claim{{Text: "x", Scenario: "boot", Row: "lucos boot"}}, ErrUntracedClaim},
		{"section without result", []Section{{Name: "boot"}}, nil, nil},
		{"figure outside docs", []Section{{Result: &bench.Result{Scenario: "s"}, Figures: []Figure{{Path: "../README.svg"}}}}, nil, nil},
		{"absolute figure", []Section{{Result: &bench.Result{Scenario: "s"}, Figures: []Figure{{Path: "/tmp/a.svg"}}}}, nil, nil},
		{"two sections for one scenario", []Section{{Result: &bench.Result{Scenario: "s"}}, {Result: &bench.Result{Scenario: "s"}}}, nil, nil},
	} {
		var b bytes.Buffer
		err := Write(&b, machine, tc.sections, tc.claims, nil)
		if err == nil || tc.want != nil && !errors.Is(err, tc.want) {
			t.Errorf("%s: got %v, want an error (%v)", tc.name, err, tc.want)
		}
		if b.Len() != 0 {
			t.Errorf("%s: wrote %d bytes despite the error", tc.name, b.Len())
		}
	}
}

// A run that watched the host says what else ran; one that did not says nothing.
func TestOtherLoad(t *testing.T) {
	m := machine
	m.OtherLoad = "other QEMU processes during 12% of the run"
	var b bytes.Buffer
	if err := Write(&b, m, sections(), nil, nil); err != nil {
		t.Fatal(err)
	}
	if !strings.Contains(b.String(), "- Duration: 12m34s\n- Other load: other QEMU processes during 12% of the run\n") {
		t.Errorf("no other-load line after the duration:\n%s", b.String())
	}
}

func TestAnchors(t *testing.T) {
	a := anchorSet{}
	var b bytes.Buffer
	for _, tc := range []struct{ heading, want string }{
		{"boot to the guest's shell: lucos vs plain QEMU", "boot-to-the-guests-shell-lucos-vs-plain-qemu"},
		{"apply/rollback of a code patch, guest busy", "applyrollback-of-a-code-patch-guest-busy"},
		{"guest-physical read throughput", "guest-physical-read-throughput"},
		{"pause → µs", "pause--µs"},
		{"Machine", "machine"},
		{"Machine", "machine-1"},
	} {
		if got := a.heading(&b, "##", tc.heading); got != tc.want {
			t.Errorf("anchor of %q = %q, want %q", tc.heading, got, tc.want)
		}
	}
}

func TestParseCPUInfo(t *testing.T) {
	const cpuinfo = "processor\t: 0\nvendor_id\t: GenuineIntel\nmodel name\t: Intel(R) Xeon(R) Processor\n" +
		"flags\t\t: fpu vme de pse tsc msr hypervisor lahf_lm\n\nprocessor\t: 1\nmodel name\t: Intel(R) Xeon(R) Processor\n"
	if got, want := parseCPUInfo(strings.NewReader(cpuinfo)), "Intel(R) Xeon(R) Processor, virtualized"; got != want {
		t.Errorf("parseCPUInfo = %q, want %q", got, want)
	}
	bare := strings.ReplaceAll(cpuinfo, " hypervisor", "")
	if got, want := parseCPUInfo(strings.NewReader(bare)), "Intel(R) Xeon(R) Processor"; got != want {
		t.Errorf("parseCPUInfo without hypervisor = %q, want %q", got, want)
	}
	if got := parseCPUInfo(strings.NewReader("processor\t: 0\nBogoMIPS\t: 50.00\n")); got != "" {
		t.Errorf("parseCPUInfo without a model name = %q, want empty", got)
	}
}

func TestParseMemInfo(t *testing.T) {
	if got := parseMemInfo(strings.NewReader("MemTotal:       24684092 kB\nMemFree:        1 kB\n")); got != 24 {
		t.Errorf("parseMemInfo = %d, want 24", got)
	}
	if got := parseMemInfo(strings.NewReader("MemFree: 1 kB\n")); got != 0 {
		t.Errorf("parseMemInfo without MemTotal = %d, want 0", got)
	}
}

func TestParseQEMUVersion(t *testing.T) {
	out := "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n"
	if got, want := parseQEMUVersion(out), "7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)"; got != want {
		t.Errorf("parseQEMUVersion = %q, want %q", got, want)
	}
}

func TestProbe(t *testing.T) {
	m := Probe(context.Background(), "6.1.0-56-cloud-amd64", "TCG", "make bench")
	if m.Cores <= 0 || m.Date == "" || m.Kernel != "6.1.0-56-cloud-amd64" || m.Accel != "TCG" || m.Command != "make bench" {
		t.Errorf("Probe = %+v", m)
	}
	if _, err := os.Stat("/proc/meminfo"); err == nil && m.MemoryGiB <= 0 {
		t.Errorf("Probe read no memory size from /proc/meminfo: %+v", m)
	}
}

const fuzzLog = `# date	package	target	time	execs	result	note
2026-12-06T10:00:00Z	github.com/lucos/lucos/gdbstub	FuzzReadPacket	3m	3900000	ok
2026-12-06T10:03:00Z	github.com/lucos/lucos/introspect	FuzzUnwind	3m		failed	reads near 2^64 wrapped past a stack copy's bounds; fixed in 3f30dde
2026-12-07T09:00:00Z	github.com/lucos/lucos/gdbstub	FuzzReadPacket	1h	70000000	ok
`

func TestReadFuzzLogRefuses(t *testing.T) {
	for _, bad := range []string{
		"2026-12-06T10:00:00Z\tp\tFuzzX\t3m\t12\n",          // 5 fields
		"2026-12-06T10:00:00Z\tp\tFuzzX\tthree\t12\tok\n",   // time
		"2026-12-06T10:00:00Z\tp\tFuzzX\t3m\t-4\tok\n",      // execs
		"2026-12-06T10:00:00Z\tp\tFuzzX\t3m\t12\tcrashed\n", // result
	} {
		if _, err := ReadFuzzLog(strings.NewReader(bad)); err == nil {
			t.Errorf("ReadFuzzLog(%q): no error", bad)
		}
	}
}

// TestReplaceFuzz: rewriting the Fuzzing section from the same log leaves
// the report byte for byte as Write made it; from a longer log only that
// section changes; a report without one gets it before the Claims.
func TestReplaceFuzz(t *testing.T) {
	runs, err := ReadFuzzLog(strings.NewReader(fuzzLog))
	if err != nil {
		t.Fatal(err)
	}
	var with, without bytes.Buffer
	if err := Write(&with, machine, sections(), claims, runs); err != nil {
		t.Fatal(err)
	}
	if err := Write(&without, machine, sections(), claims, nil); err != nil {
		t.Fatal(err)
	}
	got, err := ReplaceFuzz(with.Bytes(), runs)
	if err != nil || !bytes.Equal(got, with.Bytes()) {
		t.Fatalf("same runs: err %v, changed:\n%s", err, got)
	}
	got, err = ReplaceFuzz(without.Bytes(), runs)
	if err != nil || !bytes.Equal(got, with.Bytes()) {
		t.Fatalf("no section before: err %v, got:\n%s", err, got)
	}
	more := append(runs[:len(runs):len(runs)], FuzzRun{Date: "2026-12-08T00:00:00Z", Package: "github.com/lucos/lucos/patch", Target: "FuzzDecodeRecord", Time: time.Minute, Execs: 42, Result: "ok"})
	got, err = ReplaceFuzz(with.Bytes(), more)
	if err != nil || !bytes.Contains(got, []byte("patch.FuzzDecodeRecord")) {
		t.Fatalf("more runs: err %v, got:\n%s", err, got)
	}
	head := with.Bytes()[:bytes.Index(with.Bytes(), []byte("## Fuzzing"))]
	tailAt := bytes.Index(with.Bytes(), []byte("## Claims"))
	if !bytes.HasPrefix(got, head) || !bytes.HasSuffix(got, with.Bytes()[tailAt:]) {
		t.Fatalf("more runs changed other sections:\n%s", got)
	}
}
