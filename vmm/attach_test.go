package vmm

import (
	"errors"
	"os"
	"os/exec"
	"syscall"
	"testing"
)

// processIDs reads the effective ids: a child started as another user
// (here nobody, 65534) is reported as that user, not as its parent.
func TestProcessIDs(t *testing.T) {
	uid, gid, err := processIDs(os.Getpid())
	if err != nil || uid != os.Geteuid() || gid != os.Getegid() {
		t.Fatalf("processIDs(self) = %d, %d, %v; want %d, %d", uid, gid, err, os.Geteuid(), os.Getegid())
	}
	if os.Geteuid() != 0 {
		t.Skip("starting a process as another user needs root")
	}
	cmd := exec.Command("sleep", "30")
	cmd.SysProcAttr = &syscall.SysProcAttr{Credential: &syscall.Credential{Uid: 65534, Gid: 65534}}
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	defer func() { cmd.Process.Kill(); cmd.Wait() }()
	if uid, gid, err := processIDs(cmd.Process.Pid); err != nil || uid != 65534 || gid != 65534 {
		t.Fatalf("processIDs(child as nobody) = %d, %d, %v; want 65534, 65534", uid, gid, err)
	}
	// Root hands its run directory to that user, as attach does for a
	// QEMU that libvirt runs as libvirt-qemu.
	dir := t.TempDir()
	if err := shareRunDir(dir, cmd.Process.Pid); err != nil {
		t.Fatal(err)
	}
	fi, err := os.Stat(dir)
	if err != nil {
		t.Fatal(err)
	}
	if st := fi.Sys().(*syscall.Stat_t); st.Uid != 65534 || st.Gid != 65534 {
		t.Errorf("run directory owned by %d:%d after shareRunDir, want 65534:65534", st.Uid, st.Gid)
	}
	if _, _, err := processIDs(1 << 30); err == nil || !errors.Is(err, os.ErrNotExist) {
		t.Errorf("processIDs of no process: %v, want a not-exist error", err)
	}
}
