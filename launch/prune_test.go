package launch

import (
	"fmt"
	"os"
	"path/filepath"
	"testing"
	"time"
)

func TestPruneInitramfsKeepsTheMostRecentlyUsed(t *testing.T) {
	dir := t.TempDir()
	t0 := time.Now().Add(-time.Hour)
	name := func(i int) string { return filepath.Join(dir, fmt.Sprintf("initramfs-%02d.cpio", i)) }
	for i := range keepInitramfs + 4 {
		if err := os.WriteFile(name(i), nil, 0o600); err != nil {
			t.Fatal(err)
		}
		// File i was last used at minute i, except that file 0, the
		// oldest by name, was just used again.
		at := t0.Add(time.Duration(i) * time.Minute)
		if i == 0 {
			at = time.Now()
		}
		os.Chtimes(name(i), at, at)
	}
	other := filepath.Join(dir, "modules-1.ext4")
	os.WriteFile(other, nil, 0o600)

	pruneInitramfs(dir)
	for i := range keepInitramfs + 4 {
		_, err := os.Stat(name(i))
		if gone := i >= 1 && i <= 4; gone != os.IsNotExist(err) {
			t.Errorf("file %d: stat %v, want gone=%v", i, err, gone)
		}
	}
	if _, err := os.Stat(other); err != nil {
		t.Errorf("pruning removed another file of the cache: %v", err)
	}
}
