package patch

import (
	"errors"
	"fmt"
	"strings"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
)

// target resolves a patch's symbols for the loader: the kernel's first,
// then those of the modules loaded in the guest (read live, since modules
// come and go), so a patch can replace a module's function or watch its
// data. A name the kernel defines is never looked up in modules.
//
// The module shells of live patches (shell.go) are in the guest's module
// list too, but their symbols are another patch's code: they are no
// target, and only their names count (a new shell's must differ).
type target struct {
	*introspect.Kernel
	mods  []introspect.Module // the guest's modules, the patches' shells left out
	names []string            // the names of every module, shells included
	// chain: the functions a committed patch redirects, with its jump: a
	// new patch may chain over it (patch stacking).
	chain map[uint64][5]byte
}

// ChainsOver reports whether entry is the jump of the committed patch
// that redirects the function at addr (loader.Chainer).
func (t *target) ChainsOver(addr uint64, entry [5]byte) bool {
	j, ok := t.chain[addr]
	return ok && j == entry
}

// newTarget reads the guest's module list.
func (e *Engine) newTarget() (*target, error) {
	mods, err := e.k.Modules()
	if err != nil {
		return nil, fmt.Errorf("read the guest's modules: %w", err)
	}
	t := &target{Kernel: e.k, chain: map[uint64][5]byte{}}
	for addr, id := range e.liveFuncs() {
		q := e.byID(id)
		if f, ok := q.topFunc(addr); ok && q.State() == StateCommitted {
			var j [5]byte
			copy(j[:], mustJmp(addr, f.New))
			t.chain[addr] = j
		}
	}
	for _, m := range mods {
		t.names = append(t.names, m.Name)
		if !e.win.holds(m.Base) {
			t.mods = append(t.mods, m)
		}
	}
	return t, nil
}

// ModuleNames names every module loaded in the guest (the loader picks a
// shell name none has).
func (t *target) ModuleNames() []string { return t.names }

// Symbol returns a symbol by name and sympos (0: must be unique) with its
// runtime address. Among modules, sympos counts definitions in module-list
// order. A qualified name, "module:name", is looked up in that module only,
// sympos counting in its symbol table (patches built from diffs of a
// module's source name its symbols so).
func (t *target) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	if mod, sym, ok := strings.Cut(name, ":"); ok && mod != "" && sym != "" {
		for _, m := range t.mods {
			if m.Name == mod {
				s, err := m.Symbol(sym, pos)
				if err == nil {
					s.Name = name // what patch list shows: tls:tls_rx_one_record
				}
				return s, s.Addr, err
			}
		}
		return kimage.Symbol{}, 0, fmt.Errorf("symbol %s: %w: module %s is not loaded in the guest (load it first, e.g. modprobe %s)", name, kimage.ErrNotFound, mod, mod)
	}
	s, addr, err := t.Kernel.Symbol(name, pos)
	if !errors.Is(err, kimage.ErrNotFound) || len(t.mods) == 0 {
		return s, addr, err
	}
	if _, kerr := t.Kernel.Image.Symbols.Find(name, 0); !errors.Is(kerr, kimage.ErrNotFound) {
		return s, addr, err // the kernel has the name, just not that sympos
	}
	var all []kimage.Symbol
	for _, m := range t.mods {
		for _, ms := range m.Symbols {
			if ms.Name == name {
				all = append(all, ms)
			}
		}
	}
	switch {
	case len(all) == 0:
		return kimage.Symbol{}, 0, err
	case pos == 0 && len(all) > 1:
		return kimage.Symbol{}, 0, &kimage.AmbiguousError{Name: name, Candidates: all}
	case pos == 0:
		return all[0], all[0].Addr, nil
	case pos < 0 || pos > len(all):
		return kimage.Symbol{}, 0, fmt.Errorf("symbol %q sympos %d: %w (modules define it %d times)", name, pos, kimage.ErrNotFound, len(all))
	}
	return all[pos-1], all[pos-1].Addr, nil
}

// ModuleData reports whether [addr, addr+size) lies inside one loaded
// module's data (the loader has checked that the symbol there is writable data).
func (t *target) ModuleData(addr, size uint64) bool {
	for _, m := range t.mods {
		if addr >= m.Data.Start && addr+size >= addr && addr+size <= m.Data.End {
			return true
		}
	}
	return false
}
