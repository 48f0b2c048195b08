package guest

import (
	"bytes"
	"debug/elf"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"
)

// The release's stock modules, made loadable by the guest's busybox
// modprobe. Debian writes modules.dep with depmod when the image package is
// installed; lucos never installs it, so the tree in the cache has none.
// ModuleTree makes the index on the host instead, from each .ko alone:
//
//  1. Read the .modinfo section (NUL-separated key=value strings) with
//     debug/elf: its depends= names the modules whose symbols it uses,
//     alias= the names the kernel may ask for it by (request_module).
//  2. Name each module as modprobe does: its file name without ".ko", '-'
//     as '_' (depends= uses the same form, with '-' sometimes kept).
//  3. Check the tree: one file per name, every dependency present, no cycle.
//  4. For each module, list every module it needs, directly or not, in an
//     order that loads each before its users. modules.dep writes that list
//     from the last to load to the first, as kmod's depmod does: busybox
//     modprobe loads the list from its end and never recurses itself.
//
// Measured on 6.1.0-57-cloud-amd64 (1,121 modules, 91 MB): steps 1-4 take
// 75 ms with the files in the page cache, 0.4 s from disk; busybox depmod
// in the guest takes 7.7 s under TCG for the same result.
//
// Soft dependencies (softdep=) and modules.symbols are not written: busybox
// modprobe ignores the first, and the second serves only symbol_request(),
// which no module of the cloud kernel needs.

// Module is one loadable module of a release's tree.
type Module struct {
	// Name is what modprobe and /proc/modules call it: the file name
	// without ".ko", '-' as '_' ("crc_itu_t" for crc-itu-t.ko).
	Name string
	// Path is the file, relative to the modules directory
	// ("kernel/lib/crc-itu-t.ko").
	Path string
	// Depends names the modules it needs loaded first (depends=).
	Depends []string
	// Aliases are the patterns it answers to besides its name (alias=,
	// "fs-nfsd", "pci:v00001AF4d00001001sv*sd*bc*sc*i*").
	Aliases []string
}

// ModuleName is the name modprobe gives the module file at path.
func ModuleName(path string) string {
	base := filepath.Base(path)
	if i := strings.Index(base, ".ko"); i > 0 {
		base = base[:i]
	}
	return strings.ReplaceAll(base, "-", "_")
}

// ReadModule reads the .modinfo of the module file r; path is its place in
// the tree, relative to the modules directory.
func ReadModule(r io.ReaderAt, path string) (Module, error) {
	f, err := elf.NewFile(r)
	if err != nil {
		return Module{}, fmt.Errorf("module %s: %w", path, err)
	}
	defer f.Close()
	s := f.Section(".modinfo")
	if s == nil {
		return Module{}, fmt.Errorf("module %s: no .modinfo section", path)
	}
	data, err := s.Data()
	if err != nil {
		return Module{}, fmt.Errorf("module %s: .modinfo: %w", path, err)
	}
	m := Module{Name: ModuleName(path), Path: path}
	m.Depends, m.Aliases = parseModinfo(data)
	return m, nil
}

// parseModinfo returns the dependencies (normalised names) and aliases in
// a .modinfo section's contents.
func parseModinfo(data []byte) (depends, aliases []string) {
	for _, kv := range bytes.Split(data, []byte{0}) {
		k, v, ok := strings.Cut(string(kv), "=")
		if !ok {
			continue
		}
		switch k {
		case "depends":
			for _, d := range strings.Split(v, ",") {
				if d = strings.TrimSpace(d); d != "" {
					depends = append(depends, ModuleName(d))
				}
			}
		case "alias":
			if v != "" {
				aliases = append(aliases, v)
			}
		}
	}
	return depends, aliases
}

// ModuleTree is the checked set of a release's modules.
type ModuleTree struct {
	modules []Module       // by Path
	byName  map[string]int // index in modules
}

// Errors of a tree that modprobe could not use.
var (
	ErrDuplicateModule = errors.New("two module files have the same name")
	ErrMissingModule   = errors.New("module depends on a module that is not in the tree")
	ErrModuleCycle     = errors.New("modules depend on each other in a cycle")
	ErrNoModule        = errors.New("no such module")
)

// NewModuleTree checks mods and indexes them.
func NewModuleTree(mods []Module) (*ModuleTree, error) {
	t := &ModuleTree{modules: slices.Clone(mods), byName: make(map[string]int, len(mods))}
	slices.SortFunc(t.modules, func(a, b Module) int { return strings.Compare(a.Path, b.Path) })
	for i, m := range t.modules {
		if j, ok := t.byName[m.Name]; ok {
			return nil, fmt.Errorf("%w: %s and %s are both %s", ErrDuplicateModule, t.modules[j].Path, m.Path, m.Name)
		}
		t.byName[m.Name] = i
	}
	for _, m := range t.modules {
		for _, d := range m.Depends {
			if _, ok := t.byName[d]; !ok {
				return nil, fmt.Errorf("%w: %s (%s) depends on %s", ErrMissingModule, m.Name, m.Path, d)
			}
		}
	}
	for _, m := range t.modules {
		if _, err := t.LoadOrder(m.Name); err != nil {
			return nil, err
		}
	}
	return t, nil
}

// ScanModules reads every .ko under dir/kernel (dir is a modules directory,
// Image.ModulesDir) and checks the tree.
func ScanModules(dir string) (*ModuleTree, error) {
	var mods []Module
	root := os.DirFS(dir)
	err := fs.WalkDir(root, "kernel", func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return err
		}
		if !d.Type().IsRegular() || path.Ext(p) != ".ko" {
			return nil
		}
		f, err := os.Open(filepath.Join(dir, filepath.FromSlash(p)))
		if err != nil {
			return err
		}
		defer f.Close()
		m, err := ReadModule(f, p)
		if err != nil {
			return err
		}
		mods = append(mods, m)
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("modules of %s: %w", dir, err)
	}
	t, err := NewModuleTree(mods)
	if err != nil {
		return nil, fmt.Errorf("modules of %s: %w", dir, err)
	}
	return t, nil
}

// Modules returns every module, by path.
func (t *ModuleTree) Modules() []Module { return slices.Clone(t.modules) }

// Module returns the module called name ('-' and '_' alike).
func (t *ModuleTree) Module(name string) (Module, bool) {
	i, ok := t.byName[ModuleName(name)]
	if !ok {
		return Module{}, false
	}
	return t.modules[i], true
}

// LoadOrder returns the modules that loading name loads: everything it
// needs, directly or not, each before the modules that need it, and name
// itself last. Dependencies are visited in their depends= order.
func (t *ModuleTree) LoadOrder(name string) ([]Module, error) {
	const (
		visiting = 1
		done     = 2
	)
	state := map[string]int{}
	var order []Module
	var stack []string
	var visit func(n string) error
	visit = func(n string) error {
		switch state[n] {
		case done:
			return nil
		case visiting:
			i := slices.Index(stack, n)
			return fmt.Errorf("%w: %s", ErrModuleCycle, strings.Join(append(stack[i:], n), " -> "))
		}
		i, ok := t.byName[n]
		if !ok {
			return fmt.Errorf("%w %q", ErrNoModule, n)
		}
		state[n] = visiting
		stack = append(stack, n)
		for _, d := range t.modules[i].Depends {
			if err := visit(d); err != nil {
				return err
			}
		}
		stack = stack[:len(stack)-1]
		state[n] = done
		order = append(order, t.modules[i])
		return nil
	}
	if err := visit(ModuleName(name)); err != nil {
		return nil, err
	}
	return order, nil
}

// WriteDep writes modules.dep as busybox and kmod read it, one line per
// module, by path: "PATH: DEP...", the dependencies from the last to load
// to the first.
func (t *ModuleTree) WriteDep(w io.Writer) error {
	var b bytes.Buffer
	for _, m := range t.modules {
		order, err := t.LoadOrder(m.Name)
		if err != nil {
			return err
		}
		b.WriteString(m.Path + ":")
		for i := len(order) - 2; i >= 0; i-- {
			b.WriteString(" " + order[i].Path)
		}
		b.WriteByte('\n')
	}
	_, err := w.Write(b.Bytes())
	return err
}

// WriteAlias writes modules.alias: "alias PATTERN NAME" for every alias of
// every module, by module path, then in .modinfo order.
func (t *ModuleTree) WriteAlias(w io.Writer) error {
	var b bytes.Buffer
	b.WriteString("# Aliases extracted from modules themselves.\n")
	for _, m := range t.modules {
		for _, a := range m.Aliases {
			fmt.Fprintf(&b, "alias %s %s\n", a, m.Name)
		}
	}
	_, err := w.Write(b.Bytes())
	return err
}
