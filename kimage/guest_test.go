package kimage_test

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"io"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/vmm"
)

// testvmKernel is the path of the default guest's kernel.
func testvmKernel(t *testing.T) string { return testvm.Image(t).Kernel }

// loadReal loads the default guest's kernel, fetching it on first use (the
// test skips without it, except under CI).
func loadReal(t *testing.T) *kimage.Image {
	t.Helper()
	gimg := testvm.Image(t)
	ctx, cancel := context.WithTimeout(context.Background(), 2*time.Minute)
	defer cancel()
	start := time.Now()
	img, err := kimage.Load(ctx, gimg.Kernel, t.TempDir())
	if err != nil {
		t.Fatalf("load %s: %v", gimg.Kernel, err)
	}
	t.Logf("loaded %s in %v: %d symbols from %s; %v", gimg.Release, time.Since(start), img.Symbols.Len(), img.SymbolSource, img.Kallsyms)
	if img.Release != gimg.Release {
		t.Fatalf("banner release %q, guest cache says %q", img.Release, gimg.Release)
	}
	return img
}

// kallsymsLine is one line of /proc/kallsyms.
type kallsymsLine struct {
	addr   uint64
	typ    byte
	name   string
	module string
}

func parseProcKallsyms(t *testing.T, text []byte) []kallsymsLine {
	t.Helper()
	var out []kallsymsLine
	sc := bufio.NewScanner(bytes.NewReader(text))
	for n := 1; sc.Scan(); n++ {
		f := strings.Fields(sc.Text())
		if len(f) < 3 || len(f[1]) != 1 {
			t.Fatalf("/proc/kallsyms line %d: %q", n, sc.Text())
		}
		a, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil {
			t.Fatalf("/proc/kallsyms line %d: %q: %v", n, sc.Text(), err)
		}
		l := kallsymsLine{addr: a, typ: f[1][0], name: f[2]}
		if len(f) > 3 {
			l.module = strings.Trim(f[3], "[]")
		}
		out = append(out, l)
	}
	return out
}

// guestFile reads a file of the guest, gzipped in transit: the control
// channel is a serial port.
func guestFile(t *testing.T, m *vmm.Machine, path string) []byte {
	t.Helper()
	start := time.Now()
	res := testvm.Exec(t, m, "sh", "-c", "gzip -c < "+path)
	if res.Status != 0 {
		t.Fatalf("read %s in the guest: status %d: %s", path, res.Status, res.Stderr)
	}
	zr, err := gzip.NewReader(bytes.NewReader(res.Stdout))
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	data, err := io.ReadAll(zr)
	if err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	t.Logf("read %s from the guest: %d bytes (%d gzipped) in %v", path, len(data), len(res.Stdout), time.Since(start))
	return data
}

// TestOracleGuest boots the real guest once and compares the image's view
// with the running kernel's own.
func TestOracleGuest(t *testing.T) {
	img := loadReal(t)
	m := testvm.Boot(t)
	t.Run("kallsyms", func(t *testing.T) { oracleKallsyms(t, img, m) })
	t.Run("banner", func(t *testing.T) {
		if got := guestFile(t, m, "/proc/version"); string(got) != string(img.Banner()) {
			t.Errorf("/proc/version %q, image banner %q", got, img.Banner())
		}
	})
	t.Run("btf", func(t *testing.T) {
		// A digest: the serial control channel moves ~100 KB/s.
		res := testvm.Exec(t, m, "sha256sum", "/sys/kernel/btf/vmlinux")
		got, _, _ := strings.Cut(string(res.Stdout), " ")
		sum := sha256.Sum256(img.BTFRaw())
		if want := hex.EncodeToString(sum[:]); got != want {
			t.Errorf("/sys/kernel/btf/vmlinux sha256 %q (status %d, %s), image .BTF (%d bytes) %s", got, res.Status, res.Stderr, len(img.BTFRaw()), want)
		}
	})
}

// oracleKallsyms compares every symbol of the guest's /proc/kallsyms with
// the table decoded from the image, in order: name, type, and address
// (plus the KASLR slide, measured here from _text).
func oracleKallsyms(t *testing.T, img *kimage.Image, m *vmm.Machine) {
	raw := guestFile(t, m, "/proc/kallsyms")
	lines := parseProcKallsyms(t, raw)
	var guest []kallsymsLine
	modules := map[string]int{}
	for _, l := range lines {
		if l.module != "" {
			modules[l.module]++
			continue
		}
		guest = append(guest, l)
	}
	t.Logf("guest /proc/kallsyms: %d lines, %d of vmlinux, module-tagged: %v", len(lines), len(guest), modules)

	ours := img.Symbols.All()
	text, err := img.Symbols.Find("_text", 0)
	if err != nil {
		t.Fatal(err)
	}
	var guestText uint64
	for _, l := range guest {
		if l.name == "_text" {
			guestText = l.addr
			break
		}
	}
	if guestText == 0 {
		t.Fatal("guest /proc/kallsyms has no _text (kptr_restrict hides addresses?)")
	}
	slide := guestText - text.Addr
	t.Logf("KASLR slide %#x (guest _text %#x, image _text %#x)", slide, guestText, text.Addr)
	if slide%(2<<20) != 0 {
		t.Errorf("slide %#x is not 2 MiB aligned", slide)
	}

	if len(guest) != len(ours) {
		t.Errorf("guest has %d vmlinux symbols, the image %d", len(guest), len(ours))
	}
	n := min(len(guest), len(ours))
	agree := 0
	var diffs []string
	for i := 0; i < n; i++ {
		g, o := guest[i], ours[i]
		want := o.Addr + slide
		if o.Type == 'A' {
			want = o.Addr // absolute per-CPU offsets are not slid
		}
		if g.name == o.Name && g.typ == o.Type && g.addr == want {
			agree++
			continue
		}
		if len(diffs) < 50 {
			diffs = append(diffs, fmt.Sprintf("#%d guest %016x %c %s, image %016x (+slide %016x) %c %s",
				i, g.addr, g.typ, g.name, o.Addr, want, o.Type, o.Name))
		}
	}
	pct := 100 * float64(agree) / float64(max(len(guest), 1))
	t.Logf("agreement: %d of %d guest vmlinux symbols (%.4f%%) in name, type and address", agree, len(guest), pct)
	for _, d := range diffs {
		t.Log("differs: " + d)
	}
	if pct < 99.9 {
		t.Errorf("only %.4f%% of the guest's kallsyms agree with the image (want >= 99.9%%)", pct)
	}
}
