package srcdiff

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"strconv"
	"strings"

	"github.com/google/shlex"

	"github.com/lucos/lucos/guest"
)

// sectionFlags make every function and data object a section of its own,
// so that objects can be compared (and code extracted) symbol by symbol,
// as kpatch-build does. They change no code generation decision.
const sectionFlags = "-ffunction-sections -fdata-sections"

// unit is one C file of the kernel compiled the way kbuild compiles it.
type unit struct {
	Path   string // relative to the tree: "kernel/time/namespace.c"
	Obj    string // the object kbuild built from the original source
	Module string // KBUILD_MODNAME when the file is part of a module ("nfsd"), else ""
	// cmds are kbuild's commands for the object, as argv: the compiler
	// first, then the post-processing of the object (objtool).
	cmds [][]string
}

// compileOriginals has kbuild build the objects of paths in the prepared
// tree (under its lock), with the kernel's flags plus sectionFlags, and
// reads back the exact commands it ran.
// The second result is kbuild's output, which says why a file is missing
// from the first.
func compileOriginals(ctx context.Context, src *guest.SourceTree, paths []string, p progress) (map[string]*unit, string, error) {
	unlock, err := src.Lock(ctx)
	if err != nil {
		return nil, "", fmt.Errorf("lock the kernel source: %w", err)
	}
	defer unlock()
	args := append([]string{"-C", src.Dir, "-j" + strconv.Itoa(runtime.NumCPU())}, src.MakeArgs()...)
	args = append(args, "KCFLAGS="+sectionFlags)
	for _, path := range paths {
		args = append(args, strings.TrimSuffix(path, ".c")+".o")
	}
	if len(paths) > 3 {
		p.Printf("patch build: compiling the original %d files (kbuild)", len(paths))
	} else {
		p.Printf("patch build: compiling the original %s (kbuild)", strings.Join(paths, ", "))
	}
	// -k: a file a changed header drags in may not build alone in this
	// configuration; it is skipped, the others are built.
	cmd := exec.CommandContext(ctx, "make", append([]string{"-k"}, args...)...)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	runErr := cmd.Run()
	if ctx.Err() != nil {
		return nil, "", ctx.Err()
	}
	units := map[string]*unit{}
	for _, path := range paths {
		u, err := readUnit(src.Dir, path)
		if err != nil {
			if runErr != nil {
				continue // not built: the caller decides whether that matters
			}
			return nil, "", err
		}
		if _, err := os.Stat(u.Obj); err != nil {
			continue
		}
		units[path] = u
	}
	if runErr != nil && len(units) == 0 {
		return nil, "", fmt.Errorf("%w: kbuild cannot build the original objects: %v\n%s", ErrCompile, runErr, lastLines(out.String(), 20))
	}
	return units, out.String(), nil
}

// readUnit reads the .cmd file kbuild wrote for path's object.
func readUnit(root, path string) (*unit, error) {
	obj := strings.TrimSuffix(path, ".c") + ".o"
	cmdFile := filepath.Join(root, filepath.Dir(obj), "."+filepath.Base(obj)+".cmd")
	f, err := os.Open(cmdFile)
	if err != nil {
		return nil, fmt.Errorf("kbuild's record of %s: %w", obj, err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	// Linux 6.5 renamed the record savedcmd_ (6.1: cmd_).
	prefix := "cmd_" + obj + " := "
	for sc.Scan() {
		line, ok := strings.CutPrefix(sc.Text(), prefix)
		if !ok {
			line, ok = strings.CutPrefix(sc.Text(), "saved"+prefix)
		}
		if !ok {
			continue
		}
		words, err := shlex.Split(line)
		if err != nil {
			return nil, fmt.Errorf("%s: %w", cmdFile, err)
		}
		u := &unit{Path: path, Obj: filepath.Join(root, obj)}
		var cur []string
		for _, w := range append(words, ";") {
			if w != ";" {
				cur = append(cur, w)
				continue
			}
			if len(cur) > 0 {
				u.cmds = append(u.cmds, cur)
			}
			cur = nil
		}
		if len(u.cmds) == 0 || !hasWord(u.cmds[0], "-c") {
			return nil, fmt.Errorf("%s: %s is not a C compile", cmdFile, prefix)
		}
		module := false
		for _, w := range u.cmds[0] {
			module = module || w == "-DMODULE"
			if v, ok := strings.CutPrefix(w, "-DKBUILD_MODNAME="); ok && module {
				u.Module = strings.Trim(v, `"`)
			}
		}
		if module && u.Module == "" {
			for _, w := range u.cmds[0] {
				if v, ok := strings.CutPrefix(w, "-DKBUILD_MODNAME="); ok {
					u.Module = strings.Trim(v, `"`)
				}
			}
		}
		return u, nil
	}
	return nil, fmt.Errorf("%s has no %q line", cmdFile, strings.TrimSpace(prefix))
}

// compilePatched runs u's commands again on the patched copy of its source
// in work/src, writing the object into work/obj. Patched headers in
// work/src shadow the tree's: the source's own directory is searched first
// (the patched copy's), every -I directory that has a patched copy gets
// that copy in front of it, and the tree's directory of the file is added
// for quoted includes the copy does not have. __FILE__ reads as in the
// original build.
func compilePatched(ctx context.Context, root, work string, u *unit) (string, error) {
	srcDir := filepath.Join(work, "src")
	obj := filepath.Join(work, "obj", strings.TrimSuffix(u.Path, ".c")+".o")
	if err := os.MkdirAll(filepath.Dir(obj), 0o755); err != nil {
		return "", err
	}
	origObj := strings.TrimSuffix(u.Path, ".c") + ".o"
	depFlag := "-Wp,-MMD," + filepath.Join(filepath.Dir(origObj), "."+filepath.Base(origObj)+".d")
	for i, argv := range u.cmds {
		var out []string
		for j := 0; j < len(argv); j++ {
			w := argv[j]
			switch {
			case w == depFlag:
				w = "-Wp,-MMD," + obj + ".d"
			case w == origObj:
				w = obj
			case w == u.Path:
				w = filepath.Join(srcDir, u.Path)
			case i == 0 && w == "-c":
				// Relative to the tree, as kbuild names files: __FILE__ of a
				// header found there reads as in the original build. The
				// SDK's header comes last, for diffs that use lucos's
				// shadow variables (#include <lucos/patch.h>).
				out = append(out, "-iquote", "./"+filepath.Dir(u.Path), "-fmacro-prefix-map="+srcDir+"/=",
					"-idirafter", filepath.Join(work, "sdk", "include"))
			case i == 0 && strings.HasPrefix(w, "-I"):
				dir := strings.TrimPrefix(w, "-I")
				if dir == "" && j+1 < len(argv) {
					j++
					dir = argv[j]
					w = "-I" + dir
				}
				if st, err := os.Stat(filepath.Join(srcDir, dir)); err == nil && st.IsDir() {
					out = append(out, "-I"+filepath.Join(srcDir, dir))
				}
			}
			out = append(out, w)
		}
		cmd := exec.CommandContext(ctx, out[0], out[1:]...)
		cmd.Dir = root
		cmd.Env = append(os.Environ(), "LC_ALL=C")
		var buf bytes.Buffer
		cmd.Stdout, cmd.Stderr = &buf, &buf
		if err := cmd.Run(); err != nil {
			if ctx.Err() != nil {
				return "", ctx.Err()
			}
			msg := strings.ReplaceAll(buf.String(), srcDir+"/", "")
			return "", fmt.Errorf("%w: the patched %s: %s: %v\n%s", ErrCompile, u.Path, filepath.Base(out[0]), err, lastLines(msg, 25))
		}
	}
	return obj, nil
}

func hasWord(argv []string, w string) bool {
	for _, a := range argv {
		if a == w {
			return true
		}
	}
	return false
}

// lastLines returns the last n lines of s.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimRight(s, "\n"), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}
