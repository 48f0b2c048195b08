package guest

import (
	"bytes"
	"context"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"testing"
	"time"

	"github.com/lucos/lucos/internal/testreq"
)

func TestBootModules(t *testing.T) {
	// The cloud kernel has NVMe and ext4 built in: none.
	if boot, err := goldenTree(t).BootModules(); err != nil || len(boot) != 0 {
		t.Errorf("cloud tree: BootModules = %v, %v; want none", names(boot), err)
	}
	// A kernel with both as modules (depends= as in Debian's generic flavour).
	tree, err := NewModuleTree([]Module{
		{Name: "nvme", Path: "kernel/drivers/nvme/host/nvme.ko", Depends: []string{"nvme_core"}},
		{Name: "nvme_core", Path: "kernel/drivers/nvme/host/nvme-core.ko", Depends: []string{"crc_t10dif"}},
		{Name: "crc_t10dif", Path: "kernel/lib/crc-t10dif.ko"},
		{Name: "ext4", Path: "kernel/fs/ext4/ext4.ko", Depends: []string{"mbcache", "crc16", "jbd2", "crc_t10dif"}},
		{Name: "mbcache", Path: "kernel/fs/mbcache.ko"},
		{Name: "crc16", Path: "kernel/lib/crc16.ko"},
		{Name: "jbd2", Path: "kernel/fs/jbd2/jbd2.ko"},
		{Name: "tls", Path: "kernel/net/tls/tls.ko"},
	})
	if err != nil {
		t.Fatal(err)
	}
	boot, err := tree.BootModules()
	want := []string{"crc_t10dif", "nvme_core", "nvme", "mbcache", "crc16", "jbd2", "ext4"}
	if err != nil || !slices.Equal(names(boot), want) {
		t.Errorf("BootModules = %v, %v; want %v", names(boot), err, want)
	}
}

// TestModulesDisk builds the disk of the testdata tree and reads it back
// with debugfs, without mounting it.
func TestModulesDisk(t *testing.T) {
	if _, err := Mke2fs(); err != nil {
		requireTools(t, "mke2fs")
	}
	debugfs, err := exec.LookPath("debugfs")
	if err != nil {
		debugfs = "/usr/sbin/debugfs"
		testreq.File(t, debugfs, "Debian package e2fsprogs")
	}
	const rel = "6.1.0-57-cloud-amd64"
	dir := t.TempDir()
	im := imageAt(dir, rel)
	if err := os.CopyFS(im.ModulesDir, os.DirFS(testModules)); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(filepath.Join(im.ModulesDir, "modules.builtin"), []byte("kernel/fs/ext4/ext4.ko\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, modulesDiskPrefix+"0123456789abcdef"+modulesDiskSuffix)
	if err := os.WriteFile(stale, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	disk, err := im.ModulesDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !os.IsNotExist(err) {
		t.Errorf("the disk of an earlier format is still there: %v", err)
	}
	cat := func(p string) string {
		t.Helper()
		out, err := exec.Command(debugfs, "-R", "cat "+p, disk.Path).Output()
		if err != nil {
			t.Fatalf("debugfs cat %s: %v", p, err)
		}
		return string(out)
	}
	for file, want := range map[string]string{"/modules.dep": "testdata/modules.dep.golden", "/modules.alias": "testdata/modules.alias.golden"} {
		w, err := os.ReadFile(want)
		if err != nil {
			t.Fatal(err)
		}
		if got := cat(file); got != string(w) {
			t.Errorf("%s on the disk:\n%s\nwant %s", file, got, want)
		}
	}
	if got := cat("/modules.builtin"); got != "kernel/fs/ext4/ext4.ko\n" {
		t.Errorf("/modules.builtin on the disk: %q", got)
	}
	ko, _ := os.ReadFile(filepath.Join(testModules, "kernel/net/tls/tls.ko"))
	if got := cat("/kernel/net/tls/tls.ko"); got != string(ko) {
		t.Errorf("kernel/net/tls/tls.ko on the disk has %d bytes, want the %d of the tree", len(got), len(ko))
	}
	out, err := exec.Command(debugfs, "-R", "stats", disk.Path).Output()
	if err != nil {
		t.Fatal(err)
	}
	if !bytes.Contains(out, []byte("Filesystem volume name:   "+ModulesLabel+"\n")) {
		t.Errorf("disk label: debugfs stats says\n%s", out)
	}

	// Named by contents: the second call finds it.
	fi, _ := os.Stat(disk.Path)
	again, err := im.ModulesDisk(ctx)
	if err != nil {
		t.Fatal(err)
	}
	fi2, _ := os.Stat(again.Path)
	if again.Path != disk.Path || !os.SameFile(fi, fi2) {
		t.Errorf("second ModulesDisk built %s again (first %s)", again.Path, disk.Path)
	}
	if m, _ := filepath.Glob(filepath.Join(dir, ".*")); len(m) != 0 {
		t.Errorf("left behind: %v", m)
	}
}
