// Package initramfs builds the guest's initramfs in Go: a newc cpio archive
// that the kernel unpacks into its rootfs before it runs /init. Base makes
// the standard lucos guest (busybox, its init and the control channel);
// later stages add test modules and workloads to it. The archive's bytes
// depend only on what was added, never on the host or the clock, so the
// same inputs give the same initrd.
package initramfs

import (
	"fmt"
	"io"
	"io/fs"
	"os"
	"path"
	"path/filepath"
	"slices"
	"strings"

	"github.com/cavaliergopher/cpio"
)

// kind is the type of an archive entry.
type kind int

const (
	kindFile kind = iota
	kindDir
	kindSymlink
	kindCharDev
)

// entry is one file of the archive.
type entry struct {
	kind         kind
	perm         fs.FileMode // permission, setuid, setgid and sticky bits
	data         []byte      // file contents
	target       string      // symlink target
	major, minor uint32      // device number of a device node
}

// Archive is an initramfs being assembled. Paths are guest paths, absolute
// or relative to the root; adding a path again replaces the earlier entry.
// The Add methods record the first invalid input and WriteTo reports it.
type Archive struct {
	entries map[string]*entry
	err     error
}

// New returns an empty archive.
func New() *Archive {
	return &Archive{entries: make(map[string]*entry)}
}

// cleanPath turns a guest path into the archive's form: relative to the
// root, no "." or ".." or doubled slashes. The root itself is refused: the
// kernel's rootfs already has it.
func cleanPath(p string) (string, error) {
	c := strings.TrimPrefix(path.Clean("/"+p), "/")
	if c == "" {
		return "", fmt.Errorf("initramfs: path %q names the root directory", p)
	}
	return c, nil
}

func (a *Archive) add(p string, e *entry) {
	c, err := cleanPath(p)
	if err != nil {
		if a.err == nil {
			a.err = err
		}
		return
	}
	a.entries[c] = e
}

// AddFile adds a regular file with contents data. Only the permission,
// setuid, setgid and sticky bits of mode count.
func (a *Archive) AddFile(path string, mode fs.FileMode, data []byte) {
	a.add(path, &entry{kind: kindFile, perm: mode & permBits, data: data})
}

// AddHostFile adds the host file hostPath as guestPath, read now.
func (a *Archive) AddHostFile(guestPath, hostPath string, mode fs.FileMode) error {
	data, err := os.ReadFile(hostPath)
	if err != nil {
		return fmt.Errorf("initramfs: add %s: %w", guestPath, err)
	}
	a.AddFile(guestPath, mode, data)
	return nil
}

// AddDir adds a directory. Parents of every entry are added implicitly with
// mode 0755; AddDir is needed only for other modes or empty directories.
func (a *Archive) AddDir(path string, mode fs.FileMode) {
	a.add(path, &entry{kind: kindDir, perm: mode & permBits})
}

// AddSymlink adds a symbolic link to target, which is stored as it is.
func (a *Archive) AddSymlink(path, target string) {
	if target == "" && a.err == nil {
		a.err = fmt.Errorf("initramfs: symlink %s has an empty target", path)
		return
	}
	a.add(path, &entry{kind: kindSymlink, perm: 0o777, target: target})
}

// AddCharDevice adds a character device node, such as /dev/console (5, 1).
// The kernel needs that one to give init its stdin, stdout and stderr
// before anything mounts devtmpfs.
func (a *Archive) AddCharDevice(path string, mode fs.FileMode, major, minor uint32) {
	a.add(path, &entry{kind: kindCharDev, perm: mode & permBits, major: major, minor: minor})
}

// AddTree adds the files of fsys (an embed.FS, os.DirFS, ...) under
// guestDir. Only whether a file is executable is kept of its mode: files
// become 0755 or 0644 and directories 0755, as an embed.FS knows no modes
// and the guest's files all belong to root. Symlinks are kept when fsys can
// read them (fs.ReadLinkFS).
func (a *Archive) AddTree(guestDir string, fsys fs.FS) error {
	return a.addTree(guestDir, fsys, func(_ string, fi fs.FileInfo) fs.FileMode {
		if fi.Mode().Perm()&0o111 != 0 {
			return 0o755
		}
		return 0o644
	})
}

// addTree is AddTree with the file modes chosen by fileMode(name in fsys, info).
func (a *Archive) addTree(guestDir string, fsys fs.FS, fileMode func(string, fs.FileInfo) fs.FileMode) error {
	return fs.WalkDir(fsys, ".", func(name string, d fs.DirEntry, err error) error {
		if err != nil {
			return fmt.Errorf("initramfs: add tree %s: %w", guestDir, err)
		}
		guest := path.Join(guestDir, name)
		switch {
		case d.IsDir():
			if c, _ := cleanPath(guest); c != "" {
				a.AddDir(guest, 0o755)
			}
		case d.Type()&fs.ModeSymlink != 0:
			target, err := fs.ReadLink(fsys, name)
			if err != nil {
				return fmt.Errorf("initramfs: add tree %s: %w", guestDir, err)
			}
			a.AddSymlink(guest, target)
		case d.Type().IsRegular():
			fi, err := d.Info()
			if err != nil {
				return fmt.Errorf("initramfs: add tree %s: %w", guestDir, err)
			}
			data, err := fs.ReadFile(fsys, name)
			if err != nil {
				return fmt.Errorf("initramfs: add tree %s: %w", guestDir, err)
			}
			a.AddFile(guest, fileMode(name, fi), data)
		default:
			return fmt.Errorf("initramfs: add tree %s: %s is a %v, not a file, directory or symlink", guestDir, name, d.Type())
		}
		return nil
	})
}

// permBits are the bits of an fs.FileMode that an entry keeps.
const permBits = fs.ModePerm | fs.ModeSetuid | fs.ModeSetgid | fs.ModeSticky

// cpioMode turns an entry's type and permission bits into a cpio mode.
func (e *entry) cpioMode() cpio.FileMode {
	m := cpio.FileMode(e.perm.Perm())
	if e.perm&fs.ModeSetuid != 0 {
		m |= cpio.ModeSetuid
	}
	if e.perm&fs.ModeSetgid != 0 {
		m |= cpio.ModeSetgid
	}
	if e.perm&fs.ModeSticky != 0 {
		m |= cpio.ModeSticky
	}
	switch e.kind {
	case kindDir:
		m |= cpio.TypeDir
	case kindSymlink:
		m |= cpio.TypeSymlink
	case kindCharDev:
		m |= cpio.TypeChar
	default:
		m |= cpio.TypeReg
	}
	return m
}

// withParents returns the archive's paths with every missing parent
// directory added (mode 0755), sorted: a parent sorts before its children.
func (a *Archive) withParents() (map[string]*entry, []string, error) {
	all := make(map[string]*entry, len(a.entries))
	for p, e := range a.entries {
		all[p] = e
	}
	for p := range a.entries {
		for dir := path.Dir(p); dir != "."; dir = path.Dir(dir) {
			e, ok := all[dir]
			if !ok {
				all[dir] = &entry{kind: kindDir, perm: 0o755}
				continue
			}
			if e.kind != kindDir {
				return nil, nil, fmt.Errorf("initramfs: %s is not a directory, but %s is inside it", dir, p)
			}
		}
	}
	names := make([]string, 0, len(all))
	for p := range all {
		names = append(names, p)
	}
	slices.Sort(names)
	return all, names, nil
}

// WriteTo writes the archive in the newc format: entries in path order,
// parents before children, owner root, every mtime 0, inodes numbered in
// order, then the trailer. The same archive always gives the same bytes.
func (a *Archive) WriteTo(w io.Writer) (int64, error) {
	if a.err != nil {
		return 0, a.err
	}
	all, names, err := a.withParents()
	if err != nil {
		return 0, err
	}
	cw := &countingWriter{w: w}
	cpw := cpio.NewWriter(cw)
	for i, name := range names {
		e := all[name]
		hdr := &cpio.Header{
			Name:  name,
			Mode:  e.cpioMode(),
			Links: 1,
			Inode: int64(i + 1),
		}
		var body []byte
		switch e.kind {
		case kindDir:
			hdr.Links = 2
		case kindFile:
			body = e.data
		case kindSymlink:
			body = []byte(e.target)
		case kindCharDev:
			// cavaliergopher/cpio v1.0.1 writes rdevmajor and rdevminor
			// as zero, which would make every device node (0, 0): device
			// nodes get a header of our own.
			if err := cpw.Flush(); err != nil {
				return cw.n, fmt.Errorf("initramfs: write %s: %w", name, err)
			}
			if _, err := cw.Write(newcDeviceHeader(hdr, e.major, e.minor)); err != nil {
				return cw.n, fmt.Errorf("initramfs: write %s: %w", name, err)
			}
			continue
		}
		hdr.Size = int64(len(body))
		if err := cpw.WriteHeader(hdr); err != nil {
			return cw.n, fmt.Errorf("initramfs: write %s: %w", name, err)
		}
		if _, err := cpw.Write(body); err != nil {
			return cw.n, fmt.Errorf("initramfs: write %s: %w", name, err)
		}
	}
	if err := cpw.Close(); err != nil {
		return cw.n, fmt.Errorf("initramfs: write trailer: %w", err)
	}
	return cw.n, nil
}

// newcDeviceHeader encodes the newc header of a device node with no data:
// "070701", then thirteen 8-digit hex fields (ino, mode, uid, gid, nlink,
// mtime, filesize, devmajor, devminor, rdevmajor, rdevminor, namesize,
// check), the NUL-terminated name, padded to 4 bytes.
func newcDeviceHeader(hdr *cpio.Header, major, minor uint32) []byte {
	var b strings.Builder
	b.WriteString("070701")
	for _, v := range []uint64{
		uint64(hdr.Inode), uint64(hdr.Mode), 0, 0, uint64(hdr.Links),
		0, 0, 0, 0, uint64(major), uint64(minor),
		uint64(len(hdr.Name) + 1), 0,
	} {
		fmt.Fprintf(&b, "%08X", v)
	}
	b.WriteString(hdr.Name)
	b.WriteByte(0)
	for b.Len()%4 != 0 {
		b.WriteByte(0)
	}
	return []byte(b.String())
}

// countingWriter counts what it passes on, for WriteTo's result.
type countingWriter struct {
	w io.Writer
	n int64
}

func (c *countingWriter) Write(p []byte) (int, error) {
	n, err := c.w.Write(p)
	c.n += int64(n)
	return n, err
}

// WriteFile writes the archive to the file path, replacing it whole: the
// archive goes to a temporary file next to it that is then renamed.
func (a *Archive) WriteFile(path string) (err error) {
	f, err := os.CreateTemp(filepath.Dir(path), "."+filepath.Base(path)+".*")
	if err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	defer func() {
		if err != nil {
			f.Close()
			os.Remove(f.Name())
		}
	}()
	if _, err := a.WriteTo(f); err != nil {
		return err
	}
	if err := f.Chmod(0o644); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := f.Close(); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	if err := os.Rename(f.Name(), path); err != nil {
		return fmt.Errorf("initramfs: %w", err)
	}
	return nil
}
