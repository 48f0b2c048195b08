package introspect_test

import (
	"context"
	"errors"
	"fmt"
	"math/rand"
	"strconv"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/vmm"
)

// gva2gpa asks QEMU's own translation (on its current vCPU).
func gva2gpa(m *vmm.Machine, va uint64) (uint64, bool, error) {
	out, err := m.HumanMonitor(fmt.Sprintf("gva2gpa %#x", va))
	if err != nil {
		return 0, false, err
	}
	out = strings.TrimSpace(out)
	if out == "Unmapped" {
		return 0, false, nil
	}
	hex, ok := strings.CutPrefix(out, "gpa: 0x")
	pa, err := strconv.ParseUint(hex, 16, 64)
	if !ok || err != nil {
		return 0, false, fmt.Errorf("gva2gpa %#x: %q", va, out)
	}
	return pa, true, nil
}

// TestWalkerAgreesWithQEMU samples thousands of kernel addresses — the
// kernel image, the direct map, vmalloc'ed stacks and whatever else is
// mapped — plus unmapped holes, and compares the walker with QEMU.
func TestWalkerAgreesWithQEMU(t *testing.T) { testvm.EachKernel(t, testWalkerAgreesWithQEMU) }

func testWalkerAgreesWithQEMU(t *testing.T, release string) {
	m := testvm.Boot(t, testvm.OptionsOf(t, release))
	ctx := context.Background()
	if err := m.Pause(ctx); err != nil {
		t.Fatal(err)
	}
	defer m.Resume()
	g := m.GDB()
	cr3, err := g.ReadRegister(g.Threads()[0], "cr3")
	if err != nil {
		t.Fatal(err)
	}
	w := &introspect.Walker{Mem: m, Root: introspect.KernelPGD(cr3)}

	var maps []introspect.Mapping
	if err := w.Ranges(0xffff800000000000, ^uint64(0), func(mp introspect.Mapping) bool {
		maps = append(maps, mp)
		return true
	}); err != nil {
		t.Fatal(err)
	}
	// Every vCPU's kernel stack pointer (vmap'ed stacks under Debian's config).
	var samples []uint64
	for _, tid := range g.Threads() {
		rsp, err := g.ReadRegister(tid, "rsp")
		if err != nil {
			t.Fatal(err)
		}
		if rsp >= 0xffff800000000000 {
			samples = append(samples, rsp, rsp-4096)
		}
	}
	// Weight the regions: pages of each size class, so the few large-page
	// regions (kernel image, direct map) are sampled as much as vmalloc.
	bySize := map[uint64][]introspect.Mapping{}
	for _, mp := range maps {
		bySize[mp.Size] = append(bySize[mp.Size], mp)
	}
	rnd := rand.New(rand.NewSource(1))
	for size, ms := range bySize {
		for i := 0; i < 1000; i++ {
			mp := ms[rnd.Intn(len(ms))]
			samples = append(samples, mp.VA+uint64(rnd.Int63n(int64(size))))
		}
		t.Logf("%d mappings of %d KiB", len(ms), size>>10)
	}
	// Unmapped addresses: just past random mappings, when nothing is there.
	for i := 0; i < 300; i++ {
		mp := maps[rnd.Intn(len(maps))]
		samples = append(samples, mp.VA+mp.Size+uint64(rnd.Int63n(4096)))
	}

	var agree, unmapped int
	for _, va := range samples {
		want, mapped, err := gva2gpa(m, va)
		if err != nil {
			t.Fatal(err)
		}
		got, err := w.Phys(va)
		var ue *introspect.UnmappedError
		switch {
		case !mapped && errors.As(err, &ue):
			unmapped++
			agree++
		case mapped && err == nil && got == want:
			agree++
		default:
			t.Errorf("%#x: walker %#x (%v), QEMU %#x (mapped %v)", va, got, err, want, mapped)
		}
	}
	t.Logf("%d of %d addresses agree (%d unmapped in both)", agree, len(samples), unmapped)
	if len(samples) < 2000 {
		t.Errorf("only %d samples", len(samples))
	}
}
