package srcdiff

import (
	"bufio"
	"bytes"
	"os"
	"path/filepath"
	"regexp"
	"strings"
)

// Whether a source file is built in the guest's configuration, from the
// kbuild Makefiles of its directories: "obj-$(CONFIG_USB) += core/",
// "usbcore-y := usb.o", "obj-$(CONFIG_USB) += usbcore.o". Compiling a
// file the configuration leaves out fails (its CONFIG_ values are
// missing) or builds code the guest does not have; saying which option
// leaves it out is the useful answer. The reading is conservative: a file
// is said to be left out only when every Makefile line that builds it,
// or one of its directories, depends on an option the configuration does
// not set.

// kconfig is a kernel configuration: option → value ("y", "m", a string).
type kconfig map[string]string

func readKconfig(path string) (kconfig, error) {
	b, err := os.ReadFile(path)
	if err != nil {
		return nil, err
	}
	c := kconfig{}
	for line := range strings.Lines(string(b)) {
		if k, v, ok := strings.Cut(strings.TrimSpace(line), "="); ok && strings.HasPrefix(k, "CONFIG_") {
			c[k] = v
		}
	}
	return c, nil
}

var kbuildAssign = regexp.MustCompile(`^([A-Za-z0-9_]+)-(\$\((CONFIG_[A-Za-z0-9_]+)\)|y|m|objs)\s*[:+]?=(.*)$`)

// makefileLines reads dir's Kbuild (or Makefile), continuation lines joined.
func makefileLines(root, dir string) []string {
	var b []byte
	for _, name := range []string{"Kbuild", "Makefile"} {
		if x, err := os.ReadFile(filepath.Join(root, dir, name)); err == nil {
			b = append(b, x...)
			b = append(b, '\n')
		}
	}
	var lines []string
	var cur strings.Builder
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		l := sc.Text()
		if i := strings.IndexByte(l, '#'); i >= 0 {
			l = l[:i]
		}
		if s, ok := strings.CutSuffix(strings.TrimRight(l, " \t"), "\\"); ok {
			cur.WriteString(s + " ")
			continue
		}
		cur.WriteString(l)
		lines = append(lines, strings.TrimSpace(cur.String()))
		cur.Reset()
	}
	return lines
}

// leftOut returns the option that leaves path out of the configuration
// ("CONFIG_USB_SUPPORT"), or "" when it is built or lucos cannot tell.
func leftOut(root string, cfg kconfig, path string) string {
	return targetLeftOut(root, cfg, filepath.Dir(path), strings.TrimSuffix(filepath.Base(path), ".c")+".o", 0)
}

// targetLeftOut decides for target (an object "usb.o" or a directory
// "core/") of dir.
func targetLeftOut(root string, cfg kconfig, dir, target string, depth int) string {
	if dir == "." || dir == "" || depth > 8 {
		return ""
	}
	word := regexp.MustCompile(`(^|[\s/])` + regexp.QuoteMeta(target) + `(\s|$)`)
	mentioned, off := false, ""
	for _, l := range makefileLines(root, dir) {
		m := kbuildAssign.FindStringSubmatch(l)
		if m == nil || !word.MatchString(" "+m[4]+" ") {
			continue
		}
		mentioned = true
		gate := m[3]
		if gate != "" && cfg[gate] != "y" && cfg[gate] != "m" {
			off = gate // this line does not build it
			continue
		}
		if m[1] == "obj" {
			// Built here; its directory must be too.
			return targetLeftOut(root, cfg, filepath.Dir(dir), filepath.Base(dir)+"/", depth+1)
		}
		// A part of a composite object: that object must be built.
		if o := targetLeftOut(root, cfg, dir, m[1]+".o", depth+1); o == "" {
			return ""
		} else {
			off = o
		}
	}
	if !mentioned {
		return "" // not said here (top-level lists, generated rules): cannot tell
	}
	return off
}
