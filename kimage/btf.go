package kimage

import (
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/cilium/ebpf/btf"
)

// FieldOffset returns the byte offset of the member at path in the struct
// or union named structName ("task_struct", or "struct task_struct" to
// exclude a typedef of that name). path is dotted ("thread.sp"), goes
// through anonymous members transparently ("__state" in a struct that keeps
// it in an unnamed union), and may index arrays ("comm[3]"). It never
// crosses a pointer, and refuses bitfields, which have no byte offset.
func FieldOffset(spec *btf.Spec, structName, path string) (off uint64, err error) {
	defer recoverBTF(&err)
	if spec == nil {
		return 0, ErrNoBTF
	}
	comps, err := parsePath(path)
	if err != nil {
		return 0, fmt.Errorf("field %s.%s: %w", structName, path, err)
	}
	cands, err := typesNamed(spec, structName, func(t btf.Type) bool {
		switch t.(type) {
		case *btf.Struct, *btf.Union:
			return true
		}
		return false
	})
	if err != nil {
		return 0, err
	}
	var first uint64
	for i, c := range cands {
		o, err := walkPath(c, comps)
		if err != nil {
			return 0, fmt.Errorf("field %s.%s: %w", structName, path, err)
		}
		if i == 0 {
			first = o
		} else if o != first {
			return 0, fmt.Errorf("field %s.%s: %w: %d definitions of %s disagree (offsets %d and %d)",
				structName, path, ErrAmbiguous, len(cands), structName, first, o)
		}
	}
	return first, nil
}

// Sizeof returns the size in bytes of the type named name ("task_struct",
// "struct list_head", "u64"). Several types of one name must agree.
func Sizeof(spec *btf.Spec, name string) (size uint64, err error) {
	defer recoverBTF(&err)
	if spec == nil {
		return 0, ErrNoBTF
	}
	cands, err := typesNamed(spec, name, func(t btf.Type) bool {
		switch t.(type) {
		case *btf.Fwd, *btf.Func, *btf.FuncProto, *btf.Var, *btf.Datasec, *btf.TypeTag:
			return false
		}
		return true
	})
	if err != nil {
		return 0, err
	}
	var first int
	for i, c := range cands {
		n, err := btf.Sizeof(c)
		if err != nil {
			return 0, fmt.Errorf("sizeof %s: %w", name, err)
		}
		if i == 0 {
			first = n
		} else if n != first {
			return 0, fmt.Errorf("sizeof %s: %w: %d types of that name have sizes %d and %d; say \"struct %s\" or \"union %s\"",
				name, ErrAmbiguous, len(cands), first, n, name, name)
		}
	}
	return uint64(first), nil
}

// typesNamed returns the types called name that keep passes. A "struct " or
// "union " prefix restricts the kind.
func typesNamed(spec *btf.Spec, name string, keep func(btf.Type) bool) ([]btf.Type, error) {
	kind := ""
	for _, k := range []string{"struct ", "union ", "enum "} {
		if rest, ok := strings.CutPrefix(name, k); ok {
			kind, name = strings.TrimSpace(k), rest
		}
	}
	if name == "" {
		return nil, fmt.Errorf("type %q: %w", name, ErrNotFound)
	}
	all, err := spec.AnyTypesByName(name)
	if err != nil && !errors.Is(err, btf.ErrNotFound) {
		return nil, fmt.Errorf("type %s: %w", name, err)
	}
	var out []btf.Type
	for _, t := range all {
		if !keep(t) {
			continue
		}
		switch t.(type) {
		case *btf.Struct:
			if kind != "" && kind != "struct" {
				continue
			}
		case *btf.Union:
			if kind != "" && kind != "union" {
				continue
			}
		case *btf.Enum:
			if kind != "" && kind != "enum" {
				continue
			}
		default:
			if kind != "" {
				continue
			}
		}
		out = append(out, t)
	}
	if len(out) == 0 {
		what := "type"
		if kind != "" {
			what = kind
		}
		return nil, fmt.Errorf("%s %s: %w in BTF", what, name, ErrNotFound)
	}
	return out, nil
}

// pathComp is one step of a field path: a member name and array indices.
type pathComp struct {
	name    string
	indices []uint64
}

func parsePath(path string) ([]pathComp, error) {
	if path == "" {
		return nil, errors.New("empty field path")
	}
	var comps []pathComp
	for _, part := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(part, "[")
		if name == "" {
			return nil, fmt.Errorf("empty member name in %q", path)
		}
		c := pathComp{name: name}
		if rest != "" || strings.Contains(part, "[") {
			rest = "[" + rest
			for rest != "" {
				if rest[0] != '[' {
					return nil, fmt.Errorf("bad index in %q", part)
				}
				idx, tail, ok := strings.Cut(rest[1:], "]")
				if !ok {
					return nil, fmt.Errorf("unclosed index in %q", part)
				}
				n, err := strconv.ParseUint(idx, 0, 32)
				if err != nil {
					return nil, fmt.Errorf("bad index %q in %q", idx, part)
				}
				c.indices = append(c.indices, n)
				rest = tail
			}
		}
		comps = append(comps, c)
	}
	return comps, nil
}

// walkPath follows comps from the composite typ and sums the byte offsets.
func walkPath(typ btf.Type, comps []pathComp) (uint64, error) {
	var off uint64
	where := typeLabel(typ)
	for _, c := range comps {
		members, err := membersOf(typ, where)
		if err != nil {
			return 0, err
		}
		bits, m, ok := findMember(members, c.name, 0)
		if !ok {
			return 0, fmt.Errorf("%s has no member %q: %w", where, c.name, ErrNotFound)
		}
		if m.BitfieldSize != 0 || bits%8 != 0 {
			return 0, fmt.Errorf("%s.%s is a bitfield (bit %d, %d bits wide): it has no byte offset", where, c.name, bits, m.BitfieldSize)
		}
		off += uint64(bits / 8)
		where += "." + c.name
		typ = m.Type
		for _, idx := range c.indices {
			arr, ok := btf.As[*btf.Array](typ)
			if !ok {
				return 0, fmt.Errorf("%s is not an array (%s)", where, typ)
			}
			if idx >= uint64(arr.Nelems) {
				return 0, fmt.Errorf("%s[%d]: index out of range (%d elements)", where, idx, arr.Nelems)
			}
			n, err := btf.Sizeof(arr.Type)
			if err != nil {
				return 0, fmt.Errorf("%s: element size: %w", where, err)
			}
			off += idx * uint64(n)
			where += "[" + strconv.FormatUint(idx, 10) + "]"
			typ = arr.Type
		}
	}
	return off, nil
}

// membersOf returns the members of the struct or union behind typ.
func membersOf(typ btf.Type, where string) ([]btf.Member, error) {
	switch t := btf.UnderlyingType(typ).(type) {
	case *btf.Struct:
		return t.Members, nil
	case *btf.Union:
		return t.Members, nil
	case *btf.Pointer:
		return nil, fmt.Errorf("%s is a pointer: field paths do not dereference", where)
	default:
		return nil, fmt.Errorf("%s is not a struct or union (%s)", where, typ)
	}
}

// findMember looks for name among members and, breadth-first by
// declaration, inside anonymous struct and union members. It returns the
// member's bit offset from the start of members' owner.
func findMember(members []btf.Member, name string, depth int) (btf.Bits, btf.Member, bool) {
	for _, m := range members {
		if m.Name == name {
			return m.Offset, m, true
		}
	}
	if depth > 32 {
		return 0, btf.Member{}, false
	}
	for _, m := range members {
		if m.Name != "" {
			continue
		}
		var inner []btf.Member
		switch t := btf.UnderlyingType(m.Type).(type) {
		case *btf.Struct:
			inner = t.Members
		case *btf.Union:
			inner = t.Members
		default:
			continue
		}
		if off, im, ok := findMember(inner, name, depth+1); ok {
			return m.Offset + off, im, true
		}
	}
	return 0, btf.Member{}, false
}

func typeLabel(t btf.Type) string {
	switch t.(type) {
	case *btf.Struct:
		return "struct " + t.TypeName()
	case *btf.Union:
		return "union " + t.TypeName()
	}
	return t.TypeName()
}

// recoverBTF turns a panic inside the BTF library on malformed data into an
// error: bad input never crashes lucos.
func recoverBTF(err *error) {
	if r := recover(); r != nil {
		*err = fmt.Errorf("BTF: malformed type data: %v", r)
	}
}
