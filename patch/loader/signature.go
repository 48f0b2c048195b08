package loader

import (
	"debug/dwarf"
	"debug/elf"
	"fmt"
)

// The macros of patch.h check callback and transfer prototypes when the
// patch compiles (static_assert), except LUCOS_CALLBACK and
// LUCOS_FUNC_CALLBACK, which cannot. The module's DWARF says what was
// compiled whichever macro made the descriptor: checkSignatures reads it
// when the .ko has it. A module without .debug_info (stripped) is not
// checked: nothing else records a C prototype.

// signature is what DWARF says of a function's prototype.
type signature struct {
	params  int
	returns bool // a return value (DW_AT_type); false: void
}

// wantSignature is a prototype rule for one use of a function.
type wantSignature struct {
	params  int // exact count, or the maximum if atMost
	atMost  bool
	returns bool
	decl    string // the prototype to tell the author
}

func (w wantSignature) ok(s signature) bool {
	if s.returns != w.returns {
		return false
	}
	if w.atMost {
		return s.params <= w.params
	}
	return s.params == w.params
}

var callbackSignature = map[CallbackKind]wantSignature{
	CallbackStartup: {params: 0, returns: true, decl: "int %s(void)"},
	CallbackCleanup: {params: 0, decl: "void %s(void)"},
	CallbackFunc:    {params: 5, atMost: true, decl: "void %s(<the function's first five parameters at most>)"},
	CallbackThread:  {params: 1, decl: "void %s(struct task_struct *t)"},
	CallbackData:    {params: 1, decl: "void %s(typeof(instance) *instance)"},
}

// checkSignatures refuses a transfer, reverse transfer or callback whose
// compiled prototype does not fit its use.
func (m *Module) checkSignatures(f *elf.File) error {
	if len(m.Data) == 0 && len(m.Callbacks) == 0 || f.Section(".debug_info") == nil {
		return nil
	}
	want := map[string]bool{}
	for _, d := range m.Data {
		want[d.Transfer], want[d.Reverse] = true, true
	}
	for _, c := range m.Callbacks {
		want[c.Fn] = true
	}
	d, err := f.DWARF()
	if err != nil {
		return nil // unreadable debug info checks nothing; the build's own checks stand
	}
	sigs := signatures(d, want)
	check := func(sec, fn, what string, w wantSignature) error {
		got, ok := sigs[fn]
		if !ok || len(got) != 1 {
			return nil // not described, or two statics of that name: cannot tell
		}
		for s := range got {
			if !w.ok(s) {
				ret := "void"
				if s.returns {
					ret = "a value"
				}
				return refuse(sec, fn, nil, "%s: %s takes %d parameters and returns %s; declare it "+w.decl, what, fn, s.params, ret, fn)
			}
		}
		return nil
	}
	for _, ds := range m.Data {
		if err := check(dataSection, ds.Transfer, ds.macro()+": the transfer", wantSignature{params: 2, decl: "void %s(const OLD *old, NEW *new)"}); err != nil {
			return err
		}
		if err := check(dataSection, ds.Reverse, ds.macro()+": the reverse transfer", wantSignature{params: 2, decl: "void %s(const NEW *new, OLD *old)"}); err != nil {
			return err
		}
	}
	for _, cs := range m.Callbacks {
		if err := check(callbacksSection, cs.Fn, fmt.Sprintf("%s callback", cs.Kind), callbackSignature[cs.Kind]); err != nil {
			return err
		}
	}
	return nil
}

// signatures reads the prototypes of the named functions: every
// distinct one found (a static name may be defined in several files).
func signatures(d *dwarf.Data, names map[string]bool) map[string]map[signature]bool {
	out := map[string]map[signature]bool{}
	r := d.Reader()
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			return out
		}
		name, _ := e.Val(dwarf.AttrName).(string)
		if e.Tag != dwarf.TagSubprogram || !names[name] || e.Val(dwarf.AttrDeclaration) == true {
			continue // compile units and other DIEs are descended into
		}
		s := signature{returns: e.Val(dwarf.AttrType) != nil}
		if e.Children {
			for depth := 1; depth > 0; {
				c, err := r.Next()
				if err != nil || c == nil {
					return out
				}
				switch {
				case c.Tag == 0:
					depth--
				case depth == 1 && c.Tag == dwarf.TagFormalParameter:
					s.params++
				}
				if c.Tag != 0 && c.Children {
					depth++
				}
			}
		}
		if out[name] == nil {
			out[name] = map[signature]bool{}
		}
		out[name][s] = true
	}
}
