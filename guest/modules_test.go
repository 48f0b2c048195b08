package guest

import (
	"bytes"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
)

// testdata/modules is a piece of 6.1.0-57-cloud-amd64's modules tree: nfsd
// and everything it needs, tls, and isofs and udf, which share cdrom. Each
// file keeps only the .modinfo section of the real module:
//
//	objcopy -O elf64-x86-64 --only-section=.modinfo $MODULES/kernel/X.ko testdata/modules/kernel/X.ko
//
// testdata/modules.{dep,alias}.golden hold, for these modules, the
// dependencies and aliases depmod finds from the modules' symbols: busybox
// depmod, run on the host over the release's whole tree, gives the same
// dependency set and aliases for every one of its 1,121 modules. Each list
// is in LoadOrder's order, reversed: busybox modprobe loads it from the end.
const testModules = "testdata/modules"

func goldenTree(t *testing.T) *ModuleTree {
	t.Helper()
	tree, err := ScanModules(testModules)
	if err != nil {
		t.Fatal(err)
	}
	return tree
}

func TestModulesGolden(t *testing.T) {
	tree := goldenTree(t)
	for _, g := range []struct {
		file  string
		write func(*bytes.Buffer) error
	}{
		{"testdata/modules.dep.golden", func(b *bytes.Buffer) error { return tree.WriteDep(b) }},
		{"testdata/modules.alias.golden", func(b *bytes.Buffer) error { return tree.WriteAlias(b) }},
	} {
		want, err := os.ReadFile(g.file)
		if err != nil {
			t.Fatal(err)
		}
		var got bytes.Buffer
		if err := g.write(&got); err != nil {
			t.Fatal(err)
		}
		if got.String() != string(want) {
			t.Errorf("%s differs; got:\n%s", g.file, got.String())
		}
	}
}

func names(mods []Module) []string {
	var n []string
	for _, m := range mods {
		n = append(n, m.Name)
	}
	return n
}

func TestLoadOrder(t *testing.T) {
	tree := goldenTree(t)
	for name, want := range map[string][]string{
		"nfsd":      {"sunrpc", "grace", "lockd", "nfs_acl", "auth_rpcgss", "nfsd"},
		"tls":       {"tls"},
		"udf":       {"cdrom", "crc_itu_t", "udf"},
		"crc-itu-t": {"crc_itu_t"}, // the file's spelling names it too
	} {
		order, err := tree.LoadOrder(name)
		if err != nil {
			t.Fatal(err)
		}
		if got := names(order); !slices.Equal(got, want) {
			t.Errorf("LoadOrder(%s) = %v, want %v", name, got, want)
		}
	}
	if _, err := tree.LoadOrder("nfs"); !errors.Is(err, ErrNoModule) {
		t.Errorf("LoadOrder(nfs) = %v, want ErrNoModule", err)
	}
	m, ok := tree.Module("crc_itu_t")
	if !ok || m.Path != "kernel/lib/crc-itu-t.ko" {
		t.Errorf("Module(crc_itu_t) = %+v, %v", m, ok)
	}
}

func TestModuleName(t *testing.T) {
	for in, want := range map[string]string{
		"kernel/lib/crc-itu-t.ko":        "crc_itu_t",
		"kernel/fs/nfsd/nfsd.ko":         "nfsd",
		"kernel/fs/nfsd/nfsd.ko.xz":      "nfsd",
		"dm-mod":                         "dm_mod",
		"nf_conntrack":                   "nf_conntrack",
		"kernel/arch/x86/kvm/kvm-amd.ko": "kvm_amd",
	} {
		if got := ModuleName(in); got != want {
			t.Errorf("ModuleName(%q) = %q, want %q", in, got, want)
		}
	}
}

func TestReadModule(t *testing.T) {
	f, err := os.Open(filepath.Join(testModules, "kernel/fs/udf/udf.ko"))
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	m, err := ReadModule(f, "kernel/fs/udf/udf.ko")
	if err != nil {
		t.Fatal(err)
	}
	// depends=cdrom,crc-itu-t: the dash becomes an underscore.
	if m.Name != "udf" || !slices.Equal(m.Depends, []string{"cdrom", "crc_itu_t"}) || !slices.Equal(m.Aliases, []string{"fs-udf"}) {
		t.Errorf("ReadModule = %+v", m)
	}
	if _, err := ReadModule(strings.NewReader("not an ELF file"), "kernel/x.ko"); err == nil {
		t.Error("ReadModule accepted a file that is not ELF")
	}
}

func TestNewModuleTreeRefuses(t *testing.T) {
	for _, c := range []struct {
		name string
		mods []Module
		want error
	}{
		{"duplicate", []Module{{Name: "a", Path: "kernel/x/a.ko"}, {Name: "a", Path: "kernel/y/a.ko"}}, ErrDuplicateModule},
		{"missing", []Module{{Name: "a", Path: "kernel/a.ko", Depends: []string{"b"}}}, ErrMissingModule},
		{"cycle", []Module{
			{Name: "a", Path: "kernel/a.ko", Depends: []string{"b"}},
			{Name: "b", Path: "kernel/b.ko", Depends: []string{"c"}},
			{Name: "c", Path: "kernel/c.ko", Depends: []string{"a"}},
		}, ErrModuleCycle},
	} {
		if _, err := NewModuleTree(c.mods); !errors.Is(err, c.want) {
			t.Errorf("%s: NewModuleTree = %v, want %v", c.name, err, c.want)
		} else {
			t.Logf("%s: %v", c.name, err)
		}
	}
}

func FuzzParseModinfo(f *testing.F) {
	f.Add([]byte("alias=fs-nfsd\x00depends=sunrpc,lockd\x00name=nfsd\x00"))
	f.Add([]byte("depends=\x00=\x00alias=\x00depends=,,a-b,\x00"))
	f.Fuzz(func(t *testing.T, data []byte) {
		deps, aliases := parseModinfo(data)
		for _, d := range deps {
			if d == "" || strings.ContainsAny(d, "-,") {
				t.Errorf("dependency %q", d)
			}
		}
		for _, a := range aliases {
			if a == "" {
				t.Error("empty alias")
			}
		}
	})
}
