package initramfs

import (
	"bytes"

	"fmt"
	"io"
	"io/fs"
	"maps"
	"os"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"testing"
	"testing/fstest"

	"github.com/cavaliergopher/cpio"
)

// newcEntry is one entry of a newc archive as this test's own decoder reads
// it: every header field, so that the device numbers (which the cpio
// package's reader drops) are checked too.
type newcEntry struct {
	Name                 string
	Ino, Mode, UID, GID  uint64
	Nlink, Mtime         uint64
	DevMajor, DevMinor   uint64
	RdevMajor, RdevMinor uint64
	Check                uint64
	Data                 []byte
}

// decodeNewc decodes a whole newc archive, trailer excluded, and checks the
// 4-byte alignment the kernel requires.
func decodeNewc(b []byte) ([]newcEntry, error) {
	var out []newcEntry
	off := 0
	for {
		if off%4 != 0 {
			return nil, fmt.Errorf("entry at %d is not 4-byte aligned", off)
		}
		if len(b)-off < 110 || string(b[off:off+6]) != "070701" {
			return nil, fmt.Errorf("no newc header at %d", off)
		}
		var f [13]uint64
		for i := range f {
			v, err := strconv.ParseUint(string(b[off+6+8*i:off+14+8*i]), 16, 32)
			if err != nil {
				return nil, fmt.Errorf("header at %d field %d: %w", off, i, err)
			}
			f[i] = v
		}
		size, nameSize := int(f[6]), int(f[11])
		nameEnd := off + 110 + nameSize
		if nameSize < 1 || nameEnd > len(b) || b[nameEnd-1] != 0 {
			return nil, fmt.Errorf("bad name at %d", off)
		}
		name := string(b[off+110 : nameEnd-1])
		dataOff := (nameEnd + 3) &^ 3
		if dataOff+size > len(b) {
			return nil, fmt.Errorf("%s: data past the end", name)
		}
		if name == "TRAILER!!!" {
			return out, nil
		}
		out = append(out, newcEntry{
			Name: name, Ino: f[0], Mode: f[1], UID: f[2], GID: f[3], Nlink: f[4], Mtime: f[5],
			DevMajor: f[7], DevMinor: f[8], RdevMajor: f[9], RdevMinor: f[10], Check: f[12],
			Data: b[dataOff : dataOff+size],
		})
		off = (dataOff + size + 3) &^ 3
	}
}

func sample() *Archive {
	a := New()
	a.AddFile("/bin/hello", 0o755, []byte("#!/bin/sh\necho hello\n"))
	a.AddFile("etc/motd", 0o644, []byte("odd length!"))
	a.AddFile("/usr/lib/deep/inside/file", 0o600, nil) // implicit parents
	a.AddFile("sbin/su", 0o755|fs.ModeSetuid, []byte{0x7f, 'E', 'L', 'F'})
	a.AddDir("/tmp", 0o777|fs.ModeSticky)
	a.AddDir("root/", 0o700)
	a.AddSymlink("/init", "bin/busybox")
	a.AddSymlink("bin/sh", "/bin/busybox")
	a.AddCharDevice("/dev/console", 0o600, 5, 1)
	a.AddCharDevice("dev/null", 0o666, 1, 3)
	return a
}

func TestRoundTrip(t *testing.T) {
	var buf bytes.Buffer
	n, err := sample().WriteTo(&buf)
	if err != nil {
		t.Fatal(err)
	}
	if n != int64(buf.Len()) {
		t.Errorf("WriteTo returned %d, wrote %d", n, buf.Len())
	}

	type want struct {
		mode   cpio.FileMode
		data   string
		link   string
		rdev   [2]uint64
		nlinks uint64
	}
	wants := map[string]want{
		"bin":                      {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"bin/hello":                {mode: cpio.TypeReg | 0o755, data: "#!/bin/sh\necho hello\n", nlinks: 1},
		"bin/sh":                   {mode: cpio.TypeSymlink | 0o777, link: "/bin/busybox", nlinks: 1},
		"dev":                      {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"dev/console":              {mode: cpio.TypeChar | 0o600, rdev: [2]uint64{5, 1}, nlinks: 1},
		"dev/null":                 {mode: cpio.TypeChar | 0o666, rdev: [2]uint64{1, 3}, nlinks: 1},
		"etc":                      {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"etc/motd":                 {mode: cpio.TypeReg | 0o644, data: "odd length!", nlinks: 1},
		"init":                     {mode: cpio.TypeSymlink | 0o777, link: "bin/busybox", nlinks: 1},
		"root":                     {mode: cpio.TypeDir | 0o700, nlinks: 2},
		"sbin":                     {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"sbin/su":                  {mode: cpio.TypeReg | cpio.ModeSetuid | 0o755, data: "\x7fELF", nlinks: 1},
		"tmp":                      {mode: cpio.TypeDir | cpio.ModeSticky | 0o777, nlinks: 2},
		"usr":                      {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"usr/lib":                  {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"usr/lib/deep":             {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"usr/lib/deep/inside":      {mode: cpio.TypeDir | 0o755, nlinks: 2},
		"usr/lib/deep/inside/file": {mode: cpio.TypeReg | 0o600, data: "", nlinks: 1},
	}

	// The cpio package's reader: names, modes, contents, link targets.
	r := cpio.NewReader(bytes.NewReader(buf.Bytes()))
	var names []string
	for {
		hdr, err := r.Next()
		if err == io.EOF {
			break
		}
		if err != nil {
			t.Fatal(err)
		}
		names = append(names, hdr.Name)
		w, ok := wants[hdr.Name]
		if !ok {
			t.Errorf("unexpected entry %q", hdr.Name)
			continue
		}
		if hdr.Mode != w.mode {
			t.Errorf("%s: mode %o, want %o", hdr.Name, hdr.Mode, w.mode)
		}
		if hdr.Linkname != w.link {
			t.Errorf("%s: link %q, want %q", hdr.Name, hdr.Linkname, w.link)
		}
		data, err := io.ReadAll(r)
		if err != nil {
			t.Fatal(err)
		}
		if string(data) != w.data {
			t.Errorf("%s: data %q, want %q", hdr.Name, data, w.data)
		}
		if hdr.Uid != 0 || hdr.Guid != 0 || hdr.ModTime.Unix() != 0 {
			t.Errorf("%s: owner %d:%d mtime %v, want root and 0", hdr.Name, hdr.Uid, hdr.Guid, hdr.ModTime)
		}
	}
	if len(names) != len(wants) || !slices.IsSorted(names) {
		t.Errorf("entries %q: want the %d paths in sorted order", names, len(wants))
	}

	// Our own decoder: device numbers, link counts, inodes, alignment.
	entries, err := decodeNewc(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	inodes := map[uint64]bool{}
	for _, e := range entries {
		w := wants[e.Name]
		if got := [2]uint64{e.RdevMajor, e.RdevMinor}; got != w.rdev {
			t.Errorf("%s: rdev %v, want %v", e.Name, got, w.rdev)
		}
		if e.Nlink != w.nlinks {
			t.Errorf("%s: nlink %d, want %d", e.Name, e.Nlink, w.nlinks)
		}
		if e.Mode != uint64(w.mode) {
			t.Errorf("%s: raw mode %o, want %o", e.Name, e.Mode, w.mode)
		}
		if e.Ino == 0 || inodes[e.Ino] {
			t.Errorf("%s: inode %d is zero or not unique", e.Name, e.Ino)
		}
		inodes[e.Ino] = true
	}
	if len(entries) != len(wants) {
		t.Errorf("decoded %d entries, want %d", len(entries), len(wants))
	}
	if buf.Len()%4 != 0 {
		t.Errorf("archive length %d is not a multiple of 4", buf.Len())
	}
}

// The bytes depend only on what was added, not on the order of the calls.
func TestReproducible(t *testing.T) {
	var a, b bytes.Buffer
	if _, err := sample().WriteTo(&a); err != nil {
		t.Fatal(err)
	}
	rev := New()
	rev.AddCharDevice("dev/null", 0o666, 1, 3)
	rev.AddCharDevice("/dev/console", 0o600, 5, 1)
	rev.AddSymlink("bin/sh", "/bin/busybox")
	rev.AddSymlink("/init", "bin/busybox")
	rev.AddDir("root/", 0o700)
	rev.AddDir("/tmp", 0o777|fs.ModeSticky)
	rev.AddFile("sbin/su", 0o755|fs.ModeSetuid, []byte{0x7f, 'E', 'L', 'F'})
	rev.AddFile("/usr/lib/deep/inside/file", 0o600, nil)
	rev.AddFile("etc/motd", 0o644, []byte("odd length!"))
	rev.AddFile("bin/hello", 0o755, []byte("#!/bin/sh\necho hello\n"))
	if _, err := rev.WriteTo(&b); err != nil {
		t.Fatal(err)
	}
	if !bytes.Equal(a.Bytes(), b.Bytes()) {
		t.Error("same entries added in another order give other bytes")
	}
}

func TestReplaceEntry(t *testing.T) {
	a := New()
	a.AddFile("etc/x", 0o644, []byte("old"))
	a.AddFile("/etc//./x", 0o600, []byte("new"))
	entries := mustDecode(t, a)
	if len(entries) != 2 || entries[1].Name != "etc/x" || string(entries[1].Data) != "new" || entries[1].Mode&0o777 != 0o600 {
		t.Errorf("got %+v", entries)
	}
}

func TestWriteErrors(t *testing.T) {
	a := New()
	a.AddFile("bin", 0o644, nil)
	a.AddFile("bin/sh", 0o755, nil)
	if _, err := a.WriteTo(io.Discard); err == nil || !strings.Contains(err.Error(), "bin is not a directory") {
		t.Errorf("file as a parent: %v", err)
	}

	a = New()
	a.AddDir("/", 0o755)
	if _, err := a.WriteTo(io.Discard); err == nil {
		t.Error("the root directory was accepted as an entry")
	}

	a = New()
	a.AddSymlink("x", "")
	if _, err := a.WriteTo(io.Discard); err == nil {
		t.Error("an empty symlink target was accepted")
	}

	if err := New().AddHostFile("x", filepath.Join(t.TempDir(), "missing"), 0o644); err == nil {
		t.Error("a missing host file was accepted")
	}
}

func TestEmpty(t *testing.T) {
	var buf bytes.Buffer
	if _, err := New().WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	if e, err := decodeNewc(buf.Bytes()); err != nil || len(e) != 0 {
		t.Errorf("empty archive: %v, %v", e, err)
	}
}

func TestAddTree(t *testing.T) {
	fsys := fstest.MapFS{
		"etc/init.d/rcS": {Data: []byte("#!/bin/sh\n"), Mode: 0o555},
		"etc/inittab":    {Data: []byte("::sysinit:/etc/init.d/rcS\n"), Mode: 0o444},
		"empty":          {Mode: fs.ModeDir | 0o555},
		"lib/link":       {Data: []byte("../etc/inittab"), Mode: fs.ModeSymlink | 0o777},
	}
	a := New()
	if err := a.AddTree("/opt/t", fsys); err != nil {
		t.Fatal(err)
	}
	got := map[string]string{}
	for _, e := range mustDecode(t, a) {
		got[e.Name] = fmt.Sprintf("%o %s", e.Mode, e.Data)
	}
	want := map[string]string{
		"opt":                  "40755 ",
		"opt/t":                "40755 ",
		"opt/t/empty":          "40755 ",
		"opt/t/etc":            "40755 ",
		"opt/t/etc/init.d":     "40755 ",
		"opt/t/etc/init.d/rcS": "100755 #!/bin/sh\n",
		"opt/t/etc/inittab":    "100644 ::sysinit:/etc/init.d/rcS\n",
		"opt/t/lib":            "40755 ",
		"opt/t/lib/link":       "120777 ../etc/inittab",
	}
	if !maps.Equal(got, want) {
		t.Errorf("got %q\nwant %q", got, want)
	}
}

func TestWriteFile(t *testing.T) {
	p := filepath.Join(t.TempDir(), "initrd")
	if err := sample().WriteFile(p); err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(p)
	if err != nil {
		t.Fatal(err)
	}
	var want bytes.Buffer
	sample().WriteTo(&want)
	if !bytes.Equal(b, want.Bytes()) {
		t.Error("WriteFile wrote other bytes than WriteTo")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(p), ".initrd.*")); len(left) != 0 {
		t.Errorf("temporary files left: %q", left)
	}
	bad := New()
	bad.AddDir("/", 0)
	if err := bad.WriteFile(p); err == nil {
		t.Error("WriteFile of a bad archive succeeded")
	}
	if b2, _ := os.ReadFile(p); !bytes.Equal(b2, b) {
		t.Error("a failed WriteFile changed the file")
	}
}

func mustDecode(t *testing.T, a *Archive) []newcEntry {
	t.Helper()
	var buf bytes.Buffer
	if _, err := a.WriteTo(&buf); err != nil {
		t.Fatal(err)
	}
	e, err := decodeNewc(buf.Bytes())
	if err != nil {
		t.Fatal(err)
	}
	return e
}
