package patch_test

import (
	"bytes"
	"context"
	"debug/elf"
	"os"
	"os/exec"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"

	"github.com/lucos/lucos/initramfs"
	"github.com/lucos/lucos/internal/layout"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/patch"
)

// probePath is where getcpu-probe (patch/testdata/getcpu-probe.c) is in the guest.
const probePath = "/bin/getcpu-probe"

// buildProbe compiles getcpu-probe with the kernel's compiler, static and
// without libc (the guest has none).
func buildProbe(t *testing.T) []byte {
	t.Helper()
	cc, err := testvm.Image(t).Compiler()
	if err != nil {
		t.Fatal(err)
	}
	testreq.Tools(t, cc)
	out := filepath.Join(t.TempDir(), "getcpu-probe")
	cmd := exec.Command(cc, "-O2", "-static", "-nostdlib", "-no-pie", "-ffreestanding", "-fno-stack-protector",
		"-fno-builtin", "-fcf-protection=none", "-o", out, filepath.Join(repoDir(t), "patch/testdata/getcpu-probe.c"))
	if b, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("build getcpu-probe: %v\n%s", err, b)
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	return b
}

// shellRig boots a guest with getcpu-probe.
func shellRig(t *testing.T) *rig {
	t.Helper()
	probe := buildProbe(t)
	o := testvm.Options(t)
	prev := o.Extend
	o.Extend = func(a *initramfs.Archive) error {
		if prev != nil {
			if err := prev(a); err != nil {
				return err
			}
		}
		a.AddFile(probePath, 0o755, probe)
		return nil
	}
	return newRigWith(t, o)
}

// moduleLine is the guest's /proc/modules line of module name, or "".
func (r *rig) moduleLine(t *testing.T, name string) string {
	t.Helper()
	return strings.TrimSpace(r.sh(t, "grep '^"+name+" ' /proc/modules || true"))
}

// TestModuleShell: while a patch is applied it is a module of the guest,
// lucos_<dir>, through which the kernel finds its exception table, its
// ORC tables and its symbols; rmmod cannot take it; after rollback it is
// gone.
func TestModuleShell(t *testing.T) {
	r := shellRig(t)

	// The user-fault example: getcpu(2) reads and writes its cache argument
	// with unsafe_get_user and unsafe_put_user. A bad pointer faults in
	// patch code, and the program sees -EFAULT.
	t.Run("user fault", func(t *testing.T) {
		ko := buildPatch(t, "examples/patches/user-fault")
		if n := exTableEntries(t, ko); n < 2 {
			t.Fatalf("the module has %d __ex_table entries, want one per inline access", n)
		}
		const unpatched = "null 0\ngood 0 41\nunmapped 0\nreadonly 0 7\n"
		if out := r.sh(t, probePath); out != unpatched {
			t.Fatalf("before the patch getcpu-probe prints\n%s\nwant\n%s", out, unpatched)
		}
		p := r.apply(t, ko)
		if st := p.State(); st != patch.StateCommitted {
			t.Fatalf("patch is %s, want committed", st)
		}
		in := p.Info()
		if in.Module != "lucos_user_fault" {
			t.Errorf("module %q, want lucos_user_fault", in.Module)
		}
		// -14 is -EFAULT: the load from the unmapped page faults; from
		// read-only memory the load works and the store faults.
		const patched = "null 0\ngood 0 42\nunmapped -14\nreadonly -14 7\n"
		if out := r.sh(t, probePath); out != patched {
			t.Errorf("with the patch getcpu-probe prints\n%s\nwant\n%s", out, patched)
		}
		noKernelComplaints(t, r.m)

		// lsmod's view: permanent (an init, no exit), live, no user, tainted K.
		line := r.moduleLine(t, in.Module)
		if !regexp.MustCompile(`^lucos_user_fault \d+ 0 \[permanent\], Live 0x[0-9a-f]+ \(K\)$`).MatchString(line) {
			t.Errorf("/proc/modules: %q", line)
		}
		size, _ := strconv.ParseUint(strings.Fields(line + " 0 0")[1], 10, 64)
		if size == 0 || size > layout.SlotSize {
			t.Errorf("module size %d", size)
		}
		if out := r.sh(t, "lsmod | grep -c '^lucos_user_fault '"); out != "1\n" {
			t.Errorf("lsmod lists it %q times", out)
		}
		res, err := r.m.ExecScript(context.Background(), "rmmod lucos_user_fault")
		if err != nil {
			t.Fatal(err)
		}
		if res.Status == 0 || r.moduleLine(t, in.Module) != line {
			t.Errorf("rmmod: status %d, stderr %q; /proc/modules now %q", res.Status, res.Stderr, r.moduleLine(t, in.Module))
		}
		t.Logf("rmmod refused: %s", bytes.TrimSpace(res.Stderr))
		if out := r.sh(t, probePath); out != patched {
			t.Errorf("after rmmod getcpu-probe prints\n%s", out)
		}

		r.rollback(t, p)
		if out := r.sh(t, probePath); out != unpatched {
			t.Errorf("after rollback getcpu-probe prints\n%s\nwant\n%s", out, unpatched)
		}
		if line := r.moduleLine(t, "lucos_user_fault"); line != "" {
			t.Errorf("after rollback /proc/modules has %q", line)
		}
		if p.Info().Module != "" {
			t.Errorf("after rollback the patch names module %q", p.Info().Module)
		}
	})

	// hold-pipe-read: a reader blocked in the patch's new_pipe_read, which
	// called the original pipe_read. Its kernel stack, as the guest's own
	// ORC unwinder walks it, goes through the patch frame to the system call.
	t.Run("kallsyms and stack", func(t *testing.T) {
		ko := buildPatch(t, "patch/testdata/hold-pipe-read")
		p := r.apply(t, ko)
		if st := p.State(); st != patch.StateCommitted {
			t.Fatalf("patch is %s, want committed", st)
		}
		const mod = "lucos_hold_pipe_read"
		slot, err := strconv.ParseUint(strings.TrimPrefix(p.Info().SlotBase, "0x"), 16, 64)
		if err != nil {
			t.Fatal(err)
		}
		syms := r.sh(t, "grep '\\["+mod+"\\]$' /proc/kallsyms")
		m := regexp.MustCompile(`(?m)^([0-9a-f]{16}) t new_pipe_read\t\[` + mod + `\]$`).FindStringSubmatch(syms)
		if m == nil {
			t.Fatalf("/proc/kallsyms has no new_pipe_read [%s]:\n%s", mod, syms)
		}
		if addr, _ := strconv.ParseUint(m[1], 16, 64); addr < slot || addr >= slot+layout.SlotSize {
			t.Errorf("new_pipe_read at %#x, outside the patch's slot %#x", addr, slot)
		}
		t.Logf("%d symbols of %s in /proc/kallsyms", strings.Count(syms, "\n"), mod)

		pid := r.reader(t)
		stack := r.sh(t, "cat /proc/"+pid+"/stack")
		t.Logf("/proc/%s/stack:\n%s", pid, stack)
		want := []string{`pipe_read\+0x[0-9a-f]+/0x[0-9a-f]+$`, `new_pipe_read\+0x[0-9a-f]+/0x[0-9a-f]+ \[` + mod + `\]$`,
			`vfs_read\+`, `ksys_read\+`, `do_syscall_64\+`, `entry_SYSCALL_64_after_hwframe\+`}
		lines := strings.Split(strings.TrimSpace(stack), "\n")
		next := 0
		for _, l := range lines {
			if next < len(want) && regexp.MustCompile(want[next]).MatchString(l) {
				next++
			}
		}
		if next < len(want) {
			t.Errorf("the stack has no frame %q after the ones before it", want[next])
		}
		r.sh(t, "kill "+pid)
		r.rollback(t, p)
		if line := r.moduleLine(t, mod); line != "" {
			t.Errorf("after rollback /proc/modules has %q", line)
		}
		if out := r.sh(t, "grep -c '\\["+mod+"\\]$' /proc/kallsyms || true"); out != "0\n" {
			t.Errorf("after rollback /proc/kallsyms has %s symbols of %s", strings.TrimSpace(out), mod)
		}
	})
	noKernelComplaints(t, r.m)
}

// exTableEntries counts the __ex_table entries of a module (12 bytes each
// on x86-64).
func exTableEntries(t *testing.T, ko []byte) int {
	t.Helper()
	f, err := elf.NewFile(bytes.NewReader(ko))
	if err != nil {
		t.Fatal(err)
	}
	s := f.Section("__ex_table")
	if s == nil {
		return 0
	}
	return int(s.Size / 12)
}
