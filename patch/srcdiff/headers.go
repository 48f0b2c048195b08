package srcdiff

import (
	"bytes"
	"io/fs"
	"os"
	"path/filepath"
	"regexp"
	"slices"
	"strings"
)

// A changed header changes the objects of the .c files that use what
// changed: a static inline function, a macro. Compiling every includer of
// a popular header would take long (310 files include linux/if_vlan.h), so
// lucos compiles the users of the changed definitions and of the header's
// definitions that use them: the closure within the header, then the .c
// files that mention a name of it. A header local to a directory (not
// under include/) is included by few files: all of its includers there
// are compiled.

// definition is a function or macro defined in a header, with its lines.
type definition struct {
	name       string
	start, end int // 1-based, inclusive
	body       string
}

var (
	funcDef  = regexp.MustCompile(`^(?:static\s+)?(?:inline\s+|__always_inline\s+)[^;{(]*?\b([A-Za-z_]\w*)\s*\(`)
	macroDef = regexp.MustCompile(`^#\s*define\s+([A-Za-z_]\w*)`)
	word     = regexp.MustCompile(`[A-Za-z_]\w*`)
)

// definitions finds the static inline functions and macros of a header.
func definitions(src []byte) []definition {
	lines := strings.Split(string(src), "\n")
	var defs []definition
	for i := 0; i < len(lines); i++ {
		line := lines[i]
		if m := macroDef.FindStringSubmatch(line); m != nil {
			j := i
			for j < len(lines)-1 && strings.HasSuffix(strings.TrimRight(lines[j], " \t"), "\\") {
				j++
			}
			defs = append(defs, definition{name: m[1], start: i + 1, end: j + 1, body: strings.Join(lines[i:j+1], "\n")})
			i = j
			continue
		}
		m := funcDef.FindStringSubmatch(line)
		if m == nil {
			continue
		}
		// The body: from the first '{' to its matching '}'.
		depth, opened, j := 0, false, i
		for ; j < len(lines); j++ {
			for _, c := range lines[j] {
				switch c {
				case '{':
					depth++
					opened = true
				case '}':
					depth--
				}
			}
			if opened && depth <= 0 || !opened && strings.Contains(lines[j], ";") {
				break
			}
		}
		if !opened || j == len(lines) {
			continue // a prototype
		}
		defs = append(defs, definition{name: m[1], start: i + 1, end: j + 1, body: strings.Join(lines[i:j+1], "\n")})
		i = j
	}
	return defs
}

// changedNames is the closure of a header's changed definitions: those
// holding a changed line, and those whose body mentions one.
func changedNames(after []byte, lc *lineChange) []string {
	defs := definitions(after)
	in := map[string]bool{}
	for _, d := range defs {
		if lc.touches(d.start, d.end) {
			in[d.name] = true
		}
	}
	for grew := true; grew; {
		grew = false
		for _, d := range defs {
			if in[d.name] {
				continue
			}
			for _, w := range word.FindAllString(d.body[len(d.name):], -1) {
				if in[w] {
					in[d.name], grew = true, true
					break
				}
			}
		}
	}
	var names []string
	for n := range in {
		names = append(names, n)
	}
	slices.Sort(names)
	return names
}

// headerUsers lists the .c files of the tree that a changed header affects.
func headerUsers(root, header string, after []byte, lc *lineChange) ([]string, error) {
	dir := filepath.Dir(header)
	if !strings.HasPrefix(header, "include/") && !strings.Contains(header, "/include/") {
		// A local header: its includers in its directory.
		entries, err := os.ReadDir(filepath.Join(root, dir))
		if err != nil {
			return nil, err
		}
		inc := []byte(`"` + filepath.Base(header) + `"`)
		var out []string
		for _, e := range entries {
			if !strings.HasSuffix(e.Name(), ".c") {
				continue
			}
			b, err := os.ReadFile(filepath.Join(root, dir, e.Name()))
			if err == nil && bytes.Contains(b, inc) {
				out = append(out, filepath.Join(dir, e.Name()))
			}
		}
		return out, nil
	}
	names := changedNames(after, lc)
	if len(names) == 0 {
		return nil, nil
	}
	re := regexp.MustCompile(`\b(` + strings.Join(names, "|") + `)\b`)
	var out []string
	err := filepath.WalkDir(root, func(p string, d fs.DirEntry, err error) error {
		if err != nil {
			return nil
		}
		if d.IsDir() {
			switch d.Name() {
			case "Documentation", "tools", "samples", "scripts", "usr", ".git":
				return filepath.SkipDir
			}
			if rel, _ := filepath.Rel(root, p); strings.HasPrefix(rel, "arch/") && rel != "arch" && !strings.HasPrefix(rel, "arch/x86") {
				return filepath.SkipDir
			}
			return nil
		}
		if !strings.HasSuffix(p, ".c") {
			return nil
		}
		b, err := os.ReadFile(p)
		if err == nil && re.Match(b) {
			rel, _ := filepath.Rel(root, p)
			out = append(out, rel)
		}
		return nil
	})
	return out, err
}
