package introspect_test

import (
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/introspect"
)

// TestModulesMatchGuestKallsyms: with lucos_bugs loaded, Modules finds it
// and its symbols are exactly the guest's /proc/kallsyms lines tagged
// [lucos_bugs], in name, type and address (the module exports nothing, so
// /proc/kallsyms shows the typetab letters unchanged).
func TestModulesMatchGuestKallsyms(t *testing.T) { testvm.EachKernel(t, testModulesMatchGuestKallsyms) }

func testModulesMatchGuestKallsyms(t *testing.T, release string) {
	img := loadImageOf(t, release)
	m := testvm.Boot(t, testvm.WithBugs(t, testvm.OptionsOf(t, release)))
	k := attach(t, m, img)

	mods, err := k.Modules()
	if err != nil {
		t.Fatal(err)
	}
	var bugs *introspect.Module
	for i := range mods {
		t.Logf("module %s at %#x, %#x bytes, %d symbols", mods[i].Name, mods[i].Base, mods[i].Size, len(mods[i].Symbols))
		if mods[i].Name == "lucos_bugs" {
			bugs = &mods[i]
		}
	}
	if bugs == nil {
		t.Fatalf("no lucos_bugs among %d modules\nconsole:\n%s", len(mods), m.ConsoleTail(20))
	}
	op, err := bugs.Symbol("lucos_bugs_deadlock_op", 0)
	if err != nil {
		t.Fatal(err)
	}
	if op.Type != 'T' && op.Type != 't' || op.Addr < bugs.Base || op.Addr >= bugs.Base+bugs.Size || op.Size == 0 {
		t.Errorf("lucos_bugs_deadlock_op: %+v; module at [%#x, %#x)", op, bugs.Base, bugs.Base+bugs.Size)
	}

	res := testvm.Exec(t, m, "sh", "-c", `grep '\[lucos_bugs\]$' /proc/kallsyms`)
	var guest []string
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		f := strings.Fields(line)
		if len(f) != 4 {
			t.Fatalf("/proc/kallsyms line %q", line)
		}
		addr, err := strconv.ParseUint(f[0], 16, 64)
		if err != nil || addr == 0 {
			t.Fatalf("/proc/kallsyms line %q: no address (kptr_restrict?)", line)
		}
		guest = append(guest, fmt.Sprintf("%016x %s %s", addr, f[1], f[2]))
	}
	var ours []string
	for _, s := range bugs.Symbols {
		ours = append(ours, fmt.Sprintf("%016x %c %s", s.Addr, s.Type, s.Name))
	}
	slices.Sort(guest)
	slices.Sort(ours)
	if !slices.Equal(guest, ours) {
		t.Errorf("lucos_bugs symbols differ\nguest /proc/kallsyms:\n%s\nlucos:\n%s", strings.Join(guest, "\n"), strings.Join(ours, "\n"))
	}
	t.Logf("%d lucos_bugs symbols agree with /proc/kallsyms", len(ours))
}
