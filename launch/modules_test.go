package launch_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// loaded returns the modules in the guest's /proc/modules and, for each,
// the modules that use it (its fourth field).
func loaded(t *testing.T, m *vmm.Machine) map[string][]string {
	t.Helper()
	res := testvm.Exec(t, m, "cat", "/proc/modules")
	mods := map[string][]string{}
	for _, line := range strings.Split(strings.TrimSpace(string(res.Stdout)), "\n") {
		f := strings.Fields(line)
		if len(f) < 4 {
			continue
		}
		var users []string
		if f[3] != "-" {
			users = strings.Split(strings.TrimSuffix(f[3], ","), ",")
		}
		mods[f[0]] = users
	}
	return mods
}

// sh runs script in the guest and fails t unless it exits 0.
func sh(t *testing.T, m *vmm.Machine, script string) string {
	t.Helper()
	res := testvm.Exec(t, m, "sh", "-c", script)
	if res.Status != 0 {
		t.Fatalf("%s: exit %d\nstdout: %s\nstderr: %s", script, res.Status, res.Stdout, res.Stderr)
	}
	return string(res.Stdout)
}

// TestStockModules boots the default guest and loads the release's own
// modules with busybox modprobe from the modules disk.
func TestStockModules(t *testing.T) {
	img := testvm.Image(t)
	m := testvm.Boot(t)
	tree, err := guest.ScanModules(img.ModulesDir)
	if err != nil {
		t.Fatal(err)
	}

	t.Run("mounted", func(t *testing.T) {
		out := sh(t, m, "grep ' /lib/modules/"+img.Release+" ' /proc/mounts")
		if f := strings.Fields(out); len(f) < 4 || f[2] != "ext4" || !slices.Contains(strings.Split(f[3], ","), "ro") {
			t.Errorf("modules disk mounted as %q, want ext4 read-only", out)
		}
		if strings.Contains(m.ConsoleTail(200), "cannot mount the modules disk") {
			t.Errorf("the hook %s failed:\n%s", launch.ModulesHook, m.ConsoleTail(200))
		}
	})

	// tls needs no other module.
	t.Run("tls", func(t *testing.T) {
		sh(t, m, "modprobe tls")
		if _, ok := loaded(t, m)["tls"]; !ok {
			t.Error("/proc/modules lacks tls after modprobe tls")
		}
	})

	// nfsd needs five: each must be loaded, and used by what needs it.
	t.Run("dependencies", func(t *testing.T) {
		order, err := tree.LoadOrder("nfsd")
		if err != nil {
			t.Fatal(err)
		}
		if len(order) < 4 {
			t.Fatalf("nfsd's load order %v: the test wants a module with dependencies", order)
		}
		sh(t, m, "modprobe nfsd")
		mods := loaded(t, m)
		for _, mod := range order {
			if _, ok := mods[mod.Name]; !ok {
				t.Errorf("/proc/modules lacks %s after modprobe nfsd", mod.Name)
			}
		}
		nfsd, _ := tree.Module("nfsd")
		for _, d := range nfsd.Depends {
			if !slices.Contains(mods[d], "nfsd") {
				t.Errorf("%s is used by %v, not nfsd", d, mods[d])
			}
		}
	})

	// The kernel asks /sbin/modprobe for "fs-iso9660" (an alias of isofs,
	// which needs cdrom) when a mount names the type; the mount itself
	// fails, /dev/null being no block device.
	t.Run("kernel request by alias", func(t *testing.T) {
		testvm.Exec(t, m, "mount", "-t", "iso9660", "/dev/null", "/tmp")
		mods := loaded(t, m)
		for _, want := range []string{"isofs", "cdrom"} {
			if _, ok := mods[want]; !ok {
				t.Errorf("/proc/modules lacks %s after mount -t iso9660", want)
			}
		}
	})

	// ext4 is built in: modprobe says yes from modules.builtin.
	t.Run("builtin", func(t *testing.T) {
		sh(t, m, "modprobe ext4")
	})
}
