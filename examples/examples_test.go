package examples

import (
	"os"
	"path/filepath"
	"slices"
	"testing"
)

// Every kind of example extracts with its sources and nothing else.
func TestExtract(t *testing.T) {
	cases := map[string][]string{
		"patches/multi":       {"cmdline.c", "multi.h", "version.c"},
		"klp/cmdline-klp":     {"Kbuild", "cmdline_klp.c"},
		"guestmod/lucos_bugs": {"Kbuild", "lucos_bugs.c", "lucos_bugs.h"},
	}
	for path, want := range cases {
		dir, err := Extract(path, t.TempDir())
		if err != nil {
			t.Fatalf("%s: %v", path, err)
		}
		if filepath.Base(dir) != filepath.Base(path) {
			t.Errorf("%s extracted into %s", path, dir)
		}
		ents, err := os.ReadDir(dir)
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, e := range ents {
			got = append(got, e.Name())
			src, _ := os.ReadFile(filepath.Join(path, e.Name()))
			if b, _ := os.ReadFile(filepath.Join(dir, e.Name())); len(b) == 0 || string(b) != string(src) {
				t.Errorf("%s/%s differs from the source tree", path, e.Name())
			}
		}
		if !slices.Equal(got, want) {
			t.Errorf("%s: extracted %q, want %q", path, got, want)
		}
	}
	if _, err := Extract("guestmod/nope", t.TempDir()); err == nil {
		t.Error("extracted a missing example")
	}
}
