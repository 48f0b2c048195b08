package srcdiff

import (
	"bufio"
	"bytes"
	"context"
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"

	"github.com/pmezard/go-difflib/difflib"
)

// A source diff is applied by GNU patch (offsets and fuzz as a user expects
// them from `patch -p1`); lucos only reads which files a diff names, and
// learns what changed line by line from the files before and after.

// diffFile is one file a unified diff touches.
type diffFile struct {
	Path    string // relative to the tree root (-p1)
	New     bool   // created by the diff (--- /dev/null)
	Deleted bool   // removed by the diff (+++ /dev/null)
}

// diffFiles lists the files a unified diff touches, in order, with -p1
// paths. Header lines (`# ...`, `diff --git`, `index`) are skipped.
func diffFiles(diff []byte) ([]diffFile, error) {
	var files []diffFile
	var old string
	sc := bufio.NewScanner(bytes.NewReader(diff))
	sc.Buffer(nil, 1<<20)
	n := 0
	for sc.Scan() {
		n++
		line := sc.Text()
		switch {
		case strings.HasPrefix(line, "--- "):
			old = diffPath(line[4:])
		case strings.HasPrefix(line, "+++ "):
			newPath := diffPath(line[4:])
			f := diffFile{Path: newPath, New: old == "/dev/null", Deleted: newPath == "/dev/null"}
			if f.Deleted {
				f.Path = old
			}
			if f.Path == "" || f.Path == "/dev/null" {
				return nil, fmt.Errorf("line %d: cannot tell the file of %q", n, line)
			}
			if filepath.IsAbs(f.Path) || slices.Contains(strings.Split(f.Path, "/"), "..") {
				return nil, fmt.Errorf("line %d: file %q lies outside the kernel tree", n, f.Path)
			}
			files = append(files, f)
		}
	}
	if err := sc.Err(); err != nil {
		return nil, err
	}
	if len(files) == 0 {
		return nil, fmt.Errorf("no file in it: not a unified diff (--- a/FILE, +++ b/FILE, @@ hunks)")
	}
	return files, nil
}

// diffPath strips the timestamp and the first path component (a/, b/) of a
// ---/+++ line's file name.
func diffPath(s string) string {
	s, _, _ = strings.Cut(s, "\t")
	s = strings.TrimSpace(s)
	if s == "/dev/null" {
		return s
	}
	if _, rest, ok := strings.Cut(s, "/"); ok {
		return rest
	}
	return s
}

// applyDiff applies diff (its file name is name, for messages) with GNU
// patch -p1 inside dir, which must hold copies of the files it touches.
// A hunk that does not apply is an error showing the hunk.
func applyDiff(ctx context.Context, dir, name string, diff []byte) error {
	rej := filepath.Join(dir, ".lucos-rejects")
	os.Remove(rej)
	cmd := exec.CommandContext(ctx, "patch", "-p1", "--forward", "--batch", "--no-backup-if-mismatch",
		"-d", dir, "--reject-file="+rej)
	cmd.Stdin = bytes.NewReader(diff)
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	var out bytes.Buffer
	cmd.Stdout, cmd.Stderr = &out, &out
	err := cmd.Run()
	if err == nil {
		return nil
	}
	if ctx.Err() != nil {
		return ctx.Err()
	}
	if _, lerr := exec.LookPath("patch"); lerr != nil {
		return fmt.Errorf("%s: GNU patch is not on PATH (apt-get install patch)", name)
	}
	msg := strings.TrimSpace(out.String())
	if b, rerr := os.ReadFile(rej); rerr == nil && len(b) > 0 {
		msg += "\nrejected:\n" + strings.TrimRight(string(b), "\n")
	}
	return fmt.Errorf("%s does not apply to the kernel source: %w\n%s", name, ErrDoesNotApply, msg)
}

// lineChange is what a diff did to one file, line by line, computed from
// its contents before and after.
type lineChange struct {
	Path string
	// changed are the lines of the new file that are new or changed, and
	// the positions in the new file where lines were deleted.
	changed []int
	// blocks of equal lines: old line o+i is new line n+i for i < size (1-based).
	blocks []difflib.Match
}

// compareLines diffs two versions of a file.
func compareLines(path string, before, after []byte) *lineChange {
	a := difflib.SplitLines(string(before))
	b := difflib.SplitLines(string(after))
	m := difflib.NewMatcher(a, b)
	lc := &lineChange{Path: path, blocks: m.GetMatchingBlocks()}
	for _, op := range m.GetOpCodes() {
		switch op.Tag {
		case 'r', 'i':
			for l := op.J1; l < op.J2; l++ {
				lc.changed = append(lc.changed, l+1)
			}
		case 'd':
			lc.changed = append(lc.changed, op.J1+1)
		}
	}
	return lc
}

// newLine maps line old of the old file to its line in the new one; ok is
// false for a deleted or changed line.
func (lc *lineChange) newLine(old int) (int, bool) {
	i := old - 1
	for _, b := range lc.blocks {
		if i >= b.A && i < b.A+b.Size {
			return b.B + (i - b.A) + 1, true
		}
	}
	return 0, false
}

// touches reports whether any changed line of the new file lies in
// [from, to].
func (lc *lineChange) touches(from, to int) bool {
	for _, l := range lc.changed {
		if l >= from && l <= to {
			return true
		}
	}
	return false
}
