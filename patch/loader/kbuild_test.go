package loader

import (
	"bytes"
	"context"
	"flag"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"sort"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testreq"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/sdk"
)

var update = flag.Bool("update", false, "rebuild testdata/*.ko from testdata/*.c with the guest's kbuild")

// testdataDir and sdkInclude are found from this file, not the working
// directory or a fixed checkout path.
func testdataDir() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "testdata")
}

func sdkInclude() string {
	_, file, _, _ := runtime.Caller(0)
	return filepath.Join(filepath.Dir(file), "..", "..", "sdk", "include")
}

var (
	kbuildOnce sync.Once
	kbuildMods map[string][]byte
	kbuildErr  error
	kbuildSkip string
	kbuildImg  *guest.Image
)

// testModules builds every testdata/*.c as a patch module with the guest's
// kbuild (once per test binary) and returns the .ko files by base name.
func testModules(t testing.TB) map[string][]byte {
	t.Helper()
	img := testvm.Image(t)
	kbuildOnce.Do(func() {
		kbuildImg = img
		kbuildMods, kbuildSkip, kbuildErr = buildModules(img, "*")
	})
	if kbuildSkip != "" {
		testreq.Unavailable(t, "%s", kbuildSkip)
	}
	if kbuildErr != nil {
		t.Fatal(kbuildErr)
	}
	return kbuildMods
}

// buildModules builds the testdata/*.c whose base names match pattern.
func buildModules(img *guest.Image, pattern string) (map[string][]byte, string, error) {
	cc, err := img.Compiler()
	if err != nil {
		return nil, "", err
	}
	if _, err := exec.LookPath(cc); err != nil {
		return nil, fmt.Sprintf("kbuild needs %s (apt-get install %s)", cc, cc), nil
	}
	if _, err := exec.LookPath("make"); err != nil {
		return nil, "kbuild needs make", nil
	}
	srcs, err := filepath.Glob(filepath.Join(testdataDir(), pattern+".c"))
	if err != nil || len(srcs) == 0 {
		return nil, "", fmt.Errorf("no testdata/%s.c: %v", pattern, err)
	}
	dir, err := os.MkdirTemp("", "lucos-loader-kbuild-")
	if err != nil {
		return nil, "", err
	}
	defer os.RemoveAll(dir)
	// testdata/rt_<name>.c is linked with the SDK runtime, as lucos patch
	// build links every patch: module rt_<name> of rt_<name>_main.o and
	// rt_<name>_rt.o. The others are modules of one file each.
	var objs []string
	var composites strings.Builder
	for _, src := range srcs {
		b, err := os.ReadFile(src)
		if err != nil {
			return nil, "", err
		}
		base := filepath.Base(src)
		stem := strings.TrimSuffix(base, ".c")
		files := map[string][]byte{base: b}
		if strings.HasPrefix(stem, "rt_") {
			files = map[string][]byte{stem + "_main.c": b, stem + "_rt.c": sdk.Runtime}
			fmt.Fprintf(&composites, "%s-y := %s_main.o %s_rt.o\n", stem, stem, stem)
		}
		for name, b := range files {
			if err := os.WriteFile(filepath.Join(dir, name), b, 0o644); err != nil {
				return nil, "", err
			}
		}
		objs = append(objs, stem+".o")
	}
	sort.Strings(objs)
	kb := fmt.Sprintf("obj-m += %s\n%sccflags-y += -I%s\n", strings.Join(objs, " "), composites.String(), sdkInclude())
	if err := os.WriteFile(filepath.Join(dir, "Kbuild"), []byte(kb), 0o644); err != nil {
		return nil, "", err
	}
	ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
	defer cancel()
	cmd := exec.CommandContext(ctx, "make", "-C", img.BuildDir, "M="+dir, "modules",
		"KBUILD_MODPOST_WARN=1", fmt.Sprintf("-j%d", runtime.NumCPU()))
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	if err := cmd.Run(); err != nil {
		return nil, "", fmt.Errorf("kbuild of testdata: %v\n%s", err, out.String())
	}
	mods := map[string][]byte{}
	for _, o := range objs {
		name := strings.TrimSuffix(o, ".o")
		ko := filepath.Join(dir, name+".ko")
		b, err := os.ReadFile(ko)
		if err != nil {
			return nil, "", err
		}
		mods[name] = b
		if *update {
			// Commit small objects: debug info is most of a .ko.
			dst := filepath.Join(testdataDir(), name+".ko")
			if out, err := exec.Command("objcopy", "--strip-debug", ko, dst).CombinedOutput(); err != nil {
				return nil, "", fmt.Errorf("objcopy %s: %v\n%s", name, err, out)
			}
		}
	}
	return mods, "", nil
}

var (
	kimgOnce sync.Once
	kimg     *kimage.Image
	kimgErr  error
)

// testKernel returns the symbols and types of the default guest's kernel.
func testKernel(t testing.TB) *kimage.Image {
	t.Helper()
	img := testvm.Image(t)
	kimgOnce.Do(func() {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Minute)
		defer cancel()
		kimg, kimgErr = kimage.Load(ctx, img.Kernel, img.Dir)
	})
	if kimgErr != nil {
		t.Fatalf("load the guest kernel image: %v", kimgErr)
	}
	return kimg
}

// golden returns a committed testdata/<name>.ko.
func golden(t testing.TB, name string) []byte {
	t.Helper()
	b, err := os.ReadFile(filepath.Join(testdataDir(), name+".ko"))
	if err != nil {
		t.Fatalf("%v (regenerate with go test -run TestKbuild -update)", err)
	}
	return b
}

// TestKbuild builds the testdata patches and parses each; with -update it
// refreshes the committed objects.
func TestKbuild(t *testing.T) {
	mods := testModules(t)
	for name, ko := range mods {
		m, err := Parse(ko)
		switch name {
		case "extable", "noruntime", "rt_badsig":
			if err == nil {
				t.Errorf("%s: Parse accepted it", name)
			}
			continue
		}
		if err != nil {
			t.Errorf("%s: %v", name, err)
			continue
		}
		var secs []string
		for _, s := range m.Sections {
			secs = append(secs, fmt.Sprintf("%s(%s)", s.Name, s.Treatment))
		}
		t.Logf("%s: %d bytes, build id %s, sections %s", name, len(ko), m.BuildID, strings.Join(secs, " "))
	}
}
