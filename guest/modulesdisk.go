package guest

import (
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// The modules disk: the release's whole modules directory as a read-only
// ext4 image, which the guest mounts on /lib/modules/<release>. Chosen by
// measurement over modules in the initramfs, which the kernel unpacks into
// RAM (512 MiB guest, 2 vCPUs, TCG, 6.1.0-57-cloud-amd64; free memory at
// the guest's readiness, time to readiness against the same guest without
// modules, medians of interleaved boots):
//
//	                                initramfs  less free RAM  to ready
//	whole tree in the initramfs        94 MB       94 MB      +0.6-1.3 s
//	whole tree, each .ko gzipped       27 MB       28 MB      +0-0.6 s, and 4.5 s to compress
//	only nfsd's and tls's closure       6 MB        4 MB      ~0, and no other module
//	this disk (NVMe, ext4)              2 MB       1.6 MB     +0.12 s (NVMe probe, mount)
//
// The cloud kernel has NVMe and ext4 built in (virtio-blk is a module), so
// no module has to be in the initramfs to reach the disk; a kernel that has
// them as modules gets them there (BootModules). A module's file is read
// from the disk only when modprobe loads it. The image (90 MB on the host,
// sparse) is built once per release, in 0.6 s; indexing the tree to name it
// takes 65 ms per boot.
const (
	// ModulesLabel is the disk's ext4 volume label (the guest mounts
	// LABEL=lucos-modules) and the serial number of its NVMe controller.
	ModulesLabel = "lucos-modules"

	// modulesDiskFormat names how the image is made; it is hashed into the
	// file name with the contents, so a change gives a new image.
	modulesDiskFormat = "ext4 4k, no journal, no metadata_csum, label lucos-modules, v1"
	modulesDiskPrefix = "modules-"
	modulesDiskSuffix = ".ext4"
)

// ErrNoMke2fs: the host lacks e2fsprogs' mke2fs, which builds the disk.
var ErrNoMke2fs = errors.New("mke2fs not found: lucos builds the guest's modules disk with it (Debian package e2fsprogs)")

// packageIndexFiles are the files of the image package's modules
// directory that go on the disk next to kernel/ and the files lucos writes.
var packageIndexFiles = []string{"modules.builtin", "modules.builtin.modinfo", "modules.order"}

// ModulesDisk is a release's modules directory as a disk image.
type ModulesDisk struct {
	Path string      // the ext4 image, in the release's cache directory
	Tree *ModuleTree // the modules on it
}

// ModulesDisk returns the disk of im's modules: every .ko of the image
// package under kernel/, modules.dep and modules.alias written by
// ModuleTree, and the package's modules.builtin and modules.order. It is
// built into im.Dir the first time with `mke2fs -d`, named by a hash of
// what it holds (modules-<hash>.ext4), so concurrent VMs and later runs
// share one file and never see a half-written one. Building a new one
// removes the images of earlier formats.
func (im *Image) ModulesDisk(ctx context.Context) (*ModulesDisk, error) {
	tree, err := ScanModules(im.ModulesDir)
	if err != nil {
		return nil, err
	}
	var dep, alias bytes.Buffer
	if err := tree.WriteDep(&dep); err != nil {
		return nil, err
	}
	if err := tree.WriteAlias(&alias); err != nil {
		return nil, err
	}
	generated := map[string][]byte{"modules.dep": dep.Bytes(), "modules.alias": alias.Bytes()}

	// The package's files never change once the release is cached: their
	// names and sizes stand for them in the hash.
	h := sha256.New()
	fmt.Fprintf(h, "%s\n", modulesDiskFormat)
	var files []string
	for _, m := range tree.Modules() {
		files = append(files, filepath.FromSlash(m.Path))
	}
	for _, f := range packageIndexFiles {
		if _, err := os.Stat(filepath.Join(im.ModulesDir, f)); err == nil {
			files = append(files, f)
		}
	}
	var blocks int64
	for _, f := range files {
		fi, err := os.Stat(filepath.Join(im.ModulesDir, f))
		if err != nil {
			return nil, fmt.Errorf("modules disk: %w", err)
		}
		fmt.Fprintf(h, "%s %d\n", filepath.ToSlash(f), fi.Size())
		blocks += (fi.Size() + 4095) / 4096
	}
	for _, name := range []string{"modules.alias", "modules.dep"} {
		fmt.Fprintf(h, "%s %d\n", name, len(generated[name]))
		h.Write(generated[name])
		blocks += int64(len(generated[name])+4095) / 4096
	}
	name := modulesDiskPrefix + hex.EncodeToString(h.Sum(nil))[:16] + modulesDiskSuffix
	disk := &ModulesDisk{Path: filepath.Join(im.Dir, name), Tree: tree}
	if _, err := os.Stat(disk.Path); err == nil {
		return disk, nil
	}

	mke2fs, err := Mke2fs()
	if err != nil {
		return nil, err
	}
	stage, err := os.MkdirTemp(im.Dir, ".modules-stage-")
	if err != nil {
		return nil, fmt.Errorf("modules disk: %w", err)
	}
	defer os.RemoveAll(stage)
	for _, f := range files {
		if err := linkOrCopy(filepath.Join(im.ModulesDir, f), filepath.Join(stage, f)); err != nil {
			return nil, fmt.Errorf("modules disk: %w", err)
		}
	}
	for name, data := range generated {
		if err := os.WriteFile(filepath.Join(stage, name), data, 0o644); err != nil {
			return nil, fmt.Errorf("modules disk: %w", err)
		}
	}

	tmp := filepath.Join(im.Dir, "."+name+".tmp")
	os.Remove(tmp) // left by a build that was killed
	defer os.Remove(tmp)
	// Room for the files, a block per directory, 10% and 8 MiB for the
	// file system's own tables; the image is sparse. An inode per file and
	// directory, and ext4's reserved ones.
	dirs := map[string]bool{}
	for _, f := range files {
		for d := filepath.Dir(f); d != "."; d = filepath.Dir(d) {
			dirs[d] = true
		}
	}
	blocks += int64(len(dirs)) + blocks/10 + 2048
	inodes := len(files) + len(generated) + len(dirs) + 64
	cmd := exec.CommandContext(ctx, mke2fs, "-q", "-F", "-t", "ext4", "-b", "4096",
		"-O", "^has_journal,^metadata_csum,^resize_inode", "-m", "0", "-N", fmt.Sprint(inodes),
		"-L", ModulesLabel, "-E", "root_owner=0:0", "-d", stage, tmp, fmt.Sprint(blocks))
	cmd.Env = append(os.Environ(), "LC_ALL=C")
	if out, err := cmd.CombinedOutput(); err != nil {
		return nil, fmt.Errorf("modules disk: %s: %w: %s", strings.Join(cmd.Args, " "), err, bytes.TrimSpace(out))
	}
	if err := os.Chmod(tmp, 0o644); err != nil {
		return nil, fmt.Errorf("modules disk: %w", err)
	}
	if err := os.Rename(tmp, disk.Path); err != nil {
		return nil, fmt.Errorf("modules disk: %w", err)
	}
	removeOtherModulesDisks(im.Dir, name)
	return disk, nil
}

// BootModules returns, in load order, the modules the guest must load
// from its initramfs to mount the modules disk: NVMe and ext4, where the
// kernel has them as modules rather than built in (none in the cloud
// flavour).
func (t *ModuleTree) BootModules() ([]Module, error) {
	var out []Module
	seen := map[string]bool{}
	for _, name := range []string{"nvme", "ext4"} {
		if _, ok := t.Module(name); !ok {
			continue // built in
		}
		order, err := t.LoadOrder(name)
		if err != nil {
			return nil, err
		}
		for _, m := range order {
			if !seen[m.Name] {
				seen[m.Name] = true
				out = append(out, m)
			}
		}
	}
	return out, nil
}

// Mke2fs returns the path of the host's mke2fs: on PATH, or in /usr/sbin
// or /sbin, which a user's PATH may lack.
func Mke2fs() (string, error) {
	if p, err := exec.LookPath("mke2fs"); err == nil {
		return p, nil
	}
	for _, p := range []string{"/usr/sbin/mke2fs", "/sbin/mke2fs"} {
		if fi, err := os.Stat(p); err == nil && fi.Mode().IsRegular() && fi.Mode().Perm()&0o111 != 0 {
			return p, nil
		}
	}
	return "", ErrNoMke2fs
}

// linkOrCopy makes dst (and its parent directories) the file src: a hard
// link (the stage is next to the cache), or a copy where links fail.
func linkOrCopy(src, dst string) error {
	if err := os.MkdirAll(filepath.Dir(dst), 0o755); err != nil {
		return err
	}
	if err := os.Link(src, dst); err == nil {
		return nil
	}
	in, err := os.Open(src)
	if err != nil {
		return err
	}
	defer in.Close()
	out, err := os.OpenFile(dst, os.O_WRONLY|os.O_CREATE|os.O_EXCL, 0o644)
	if err != nil {
		return err
	}
	if _, err := io.Copy(out, in); err != nil {
		out.Close()
		return err
	}
	return out.Close()
}

// removeOtherModulesDisks deletes the modules disks in dir other than keep:
// images of an earlier format, ~100 MB each. A VM still using one keeps
// its open file.
func removeOtherModulesDisks(dir, keep string) {
	old, _ := filepath.Glob(filepath.Join(dir, modulesDiskPrefix+"*"+modulesDiskSuffix))
	for _, p := range old {
		if filepath.Base(p) != keep {
			os.Remove(p)
		}
	}
}
