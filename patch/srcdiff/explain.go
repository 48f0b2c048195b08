package srcdiff

import (
	"debug/dwarf"
	"slices"
	"strings"
)

// explain gives each changed function the reason it changed, from the
// patched object's DWARF: a function whose own lines the diff touched is
// simply "changed"; one whose code changed because it inlines a function
// (or static inline) whose lines were touched says which. Without DWARF
// there are no reasons, only the changes.
func explain(a *analysis) {
	d, err := a.patched.elf.DWARF()
	if err != nil {
		return
	}
	type decl struct {
		name, file string
		line       int
	}
	// Pass 1: every subprogram that names itself, with where it is
	// declared (abstract instances of inlined functions included).
	decls := map[dwarf.Offset]decl{}
	r := d.Reader()
	var files []*dwarf.LineFile
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		switch e.Tag {
		case dwarf.TagCompileUnit:
			if lr, err := d.LineReader(e); err == nil && lr != nil {
				files = lr.Files()
			}
		case dwarf.TagSubprogram:
			name, _ := e.Val(dwarf.AttrName).(string)
			if name == "" {
				continue
			}
			dc := decl{name: name}
			if isDecl, _ := e.Val(dwarf.AttrDeclaration).(bool); !isDecl {
				fileIdx, _ := e.Val(dwarf.AttrDeclFile).(int64)
				line, _ := e.Val(dwarf.AttrDeclLine).(int64)
				if fileIdx > 0 && int(fileIdx) < len(files) && files[fileIdx] != nil {
					dc.file = files[fileIdx].Name
				}
				dc.line = int(line)
			}
			decls[e.Offset] = dc
		}
	}
	nameOf := func(e *dwarf.Entry) string {
		if name, ok := e.Val(dwarf.AttrName).(string); ok {
			return name
		}
		for _, attr := range []dwarf.Attr{dwarf.AttrAbstractOrigin, dwarf.AttrSpecification} {
			if o, ok := e.Val(attr).(dwarf.Offset); ok {
				return decls[o].name
			}
		}
		return ""
	}
	// Pass 2: what each concrete function inlines.
	inlines := map[string][]string{}
	r = d.Reader()
	var stack []string // by depth: the concrete subprogram opened there, or ""
	depth := 0
	for {
		e, err := r.Next()
		if err != nil || e == nil {
			break
		}
		if e.Tag == 0 {
			depth--
			continue
		}
		stack = stack[:min(depth, len(stack))]
		for len(stack) < depth {
			stack = append(stack, "")
		}
		opened := ""
		switch e.Tag {
		case dwarf.TagSubprogram:
			if e.Val(dwarf.AttrLowpc) != nil || e.Val(dwarf.AttrRanges) != nil {
				opened = nameOf(e)
			}
		case dwarf.TagInlinedSubroutine:
			for i := len(stack) - 1; i >= 0; i-- {
				if stack[i] != "" {
					inlines[stack[i]] = append(inlines[stack[i]], nameOf(e))
					break
				}
			}
		}
		if e.Children {
			stack = append(stack, opened)
			depth++
		}
	}
	// Which declared functions hold a changed line: a function spans from
	// its declaration to the next one in the same file.
	byFile := map[string][]decl{}
	for _, dc := range decls {
		if dc.line > 0 {
			byFile[dc.file] = append(byFile[dc.file], dc)
		}
	}
	touched := map[string]bool{}
	for file, list := range byFile {
		slices.SortFunc(list, func(a, b decl) int { return a.line - b.line })
		for _, lc := range a.lines {
			if file == "" || !strings.HasSuffix(file, lc.Path) {
				continue
			}
			for i, dc := range list {
				end := 1 << 30
				if i+1 < len(list) {
					end = list[i+1].line - 1
				}
				if lc.touches(dc.line, end) {
					touched[dc.name] = true
				}
			}
		}
	}
	for _, ch := range a.changes {
		if ch.Kind != "changed" || ch.Reason != "" {
			continue
		}
		base := baseName(ch.Name)
		if touched[base] {
			continue
		}
		var via []string
		for _, n := range inlines[base] {
			if touched[n] && !slices.Contains(via, n) {
				via = append(via, n)
			}
		}
		switch {
		case len(via) > 0:
			ch.Reason = "inlined " + strings.Join(via, ", ") + " changed"
		default:
			ch.Reason = "its code differs, though none of its own lines changed"
		}
	}
}

// baseName strips gcc's clone suffixes: fib_sync_up.part.0 → fib_sync_up.
func baseName(name string) string {
	if i := strings.IndexByte(name, '.'); i > 0 {
		return name[:i]
	}
	return name
}
