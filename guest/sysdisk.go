package guest

import (
	"context"
	"crypto/sha256"
	"encoding/binary"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
)

// A system disk is a whole Debian 12 system on a disk image, built from
// Debian packages and nothing of lucos: systemd, the stock linux-image
// package installed as apt installs it (with its initramfs), GRUB in the
// MBR, root logged in automatically on the serial console. It is what the
// VMs lucos attaches to look like: booted by a plain QEMU command line or
// libvirt, with no boot parameter of lucos's.

// SystemDiskOptions choose a system disk.
type SystemDiskOptions struct {
	Options        // the kernel: flavour and release, as for Fetch
	Size    uint64 // bytes; 0 = DefaultSystemDiskSize
}

// DefaultSystemDiskSize is the virtual size of a system disk (qcow2 grows
// to what is used, about 700 MiB).
const DefaultSystemDiskSize = 3 << 30

// SystemDisk is a cached system disk.
type SystemDisk struct {
	Release string `json:"release"` // the kernel it boots
	Path    string `json:"path"`    // qcow2
	Size    uint64 `json:"size"`    // virtual size, bytes
	// Label is the root filesystem's label (the kernel command line's
	// root=LABEL=...).
	Label string `json:"label"`
}

// systemDiskLabel labels the root filesystem.
const systemDiskLabel = "lucos-root"

// systemDiskRecipe versions how a system disk is made: a change to it
// makes new disks instead of reusing old ones.
const systemDiskRecipe = "v1"

// systemDiskPackages are installed beside the kernel (minbase gives apt,
// dpkg and the essential set).
var systemDiskPackages = []string{
	"systemd-sysv", "udev", "kmod", "procps", "iproute2", "util-linux",
	"grub-pc-bin", "qemu-guest-agent",
}

// debianSources are the archive suites the disk's packages come from:
// bookworm, its updates and its security suite (where 6.12 lives).
var debianSources = []string{
	"deb http://deb.debian.org/debian bookworm main",
	"deb http://deb.debian.org/debian bookworm-updates main",
	"deb http://deb.debian.org/debian-security bookworm-security main",
}

// ErrNoDiskTool means a tool the system disk needs is not installed.
var ErrNoDiskTool = errors.New("a tool needed to build the system disk is missing")

// BuildSystemDisk returns the system disk of the kernel o names, building it
// first if the cache lacks it (a few minutes: mmdebstrap downloads and
// installs about 200 packages). It needs root (mmdebstrap's root mode and
// ownership of every file), mmdebstrap, mkfs.ext4 and qemu-img.
func BuildSystemDisk(ctx context.Context, o SystemDiskOptions) (*SystemDisk, error) {
	if o.Size == 0 {
		o.Size = DefaultSystemDiskSize
	}
	if o.Size < 1<<30 || o.Size%(1<<20) != 0 {
		return nil, fmt.Errorf("system disk size %d: want a whole number of MiB, at least 1 GiB", o.Size)
	}
	img, err := Fetch(ctx, o.Options)
	if err != nil {
		return nil, err
	}
	cacheDir := o.CacheDir
	if cacheDir == "" {
		cacheDir = DefaultCacheDir()
	}
	d := &SystemDisk{Release: img.Release, Size: o.Size, Label: systemDiskLabel}
	key := sha256.Sum256(fmt.Appendf(nil, "%s %s %d %s %s", systemDiskRecipe, img.Release, o.Size, strings.Join(systemDiskPackages, ","), strings.Join(debianSources, ",")))
	d.Path = filepath.Join(cacheDir, "disks", img.Release+"-"+hex.EncodeToString(key[:6])+".qcow2")
	if _, err := os.Stat(d.Path); err == nil {
		return d, nil
	}
	for _, tool := range []string{"mmdebstrap", "mkfs.ext4", "qemu-img"} {
		if _, err := exec.LookPath(tool); err != nil {
			return nil, fmt.Errorf("%w: %s (apt-get install mmdebstrap e2fsprogs qemu-utils)", ErrNoDiskTool, tool)
		}
	}
	if os.Geteuid() != 0 {
		return nil, fmt.Errorf("building a system disk needs root: mmdebstrap installs the packages with their owners and device nodes")
	}
	if err := os.MkdirAll(filepath.Dir(d.Path), 0o755); err != nil {
		return nil, err
	}
	work, err := os.MkdirTemp(filepath.Dir(d.Path), ".build-")
	if err != nil {
		return nil, err
	}
	defer os.RemoveAll(work)
	p := &progress{w: o.Progress}
	root := filepath.Join(work, "root")
	p.Printf("guest: installing Debian 12 with %s into a root directory (mmdebstrap)", "linux-image-"+img.Release)
	if err := debootstrap(ctx, p, work, root, img.Release); err != nil {
		return nil, err
	}
	raw := filepath.Join(work, "disk.raw")
	p.Printf("guest: making the disk: ext4 root, MBR, GRUB")
	if err := assembleDisk(ctx, root, raw, o.Size); err != nil {
		return nil, err
	}
	tmp := filepath.Join(work, "disk.qcow2")
	if out, err := exec.CommandContext(ctx, "qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw, tmp).CombinedOutput(); err != nil {
		return nil, fmt.Errorf("qemu-img convert: %w: %s", err, lastLines(string(out), 4))
	}
	if err := os.Rename(tmp, d.Path); err != nil {
		return nil, err
	}
	p.Printf("guest: system disk %s", d.Path)
	return d, nil
}

// debootstrap installs the system into root with mmdebstrap and sets it
// up for a serial console: fstab by label, root logged in on ttyS0 without
// a password, GRUB's files and configuration. Everything is done inside
// the root directory; the host's own system is not touched.
func debootstrap(ctx context.Context, p *progress, work, root, release string) error {
	hook := filepath.Join(work, "customize.sh")
	if err := os.WriteFile(hook, []byte(customizeScript(release)), 0o755); err != nil {
		return err
	}
	args := []string{
		"--mode=root", "--variant=minbase", "--format=directory",
		"--include=" + strings.Join(append([]string{"linux-image-" + release}, systemDiskPackages...), ","),
		"--customize-hook=sh " + hook + ` "$1"`,
		"bookworm", root,
	}
	args = append(args, debianSources...)
	cmd := exec.CommandContext(ctx, "mmdebstrap", args...)
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C", "DEBIAN_FRONTEND=noninteractive")
	lines := p.lines()
	defer lines.flush()
	var tail strings.Builder
	cmd.Stdout = lines
	cmd.Stderr = io.MultiWriter(lines, &tail)
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			return ctx.Err()
		}
		return fmt.Errorf("mmdebstrap: %w: %s", err, lastLines(tail.String(), 8))
	}
	return nil
}

// customizeScript is mmdebstrap's customize hook ($1 is the root
// directory). GRUB's core image is made inside the root with the target's
// own grub-mkimage; assembleDisk places it.
func customizeScript(release string) string {
	return `set -eu
r="$1"
echo lucos-guest > "$r/etc/hostname"
printf '127.0.0.1 localhost\n127.0.1.1 lucos-guest\n' > "$r/etc/hosts"
echo 'LABEL=` + systemDiskLabel + ` / ext4 defaults,errors=remount-ro 0 1' > "$r/etc/fstab"
sed -i 's/^root:[^:]*:/root::/' "$r/etc/shadow"
mkdir -p "$r/etc/systemd/system/serial-getty@ttyS0.service.d"
cat > "$r/etc/systemd/system/serial-getty@ttyS0.service.d/autologin.conf" <<'EOF'
[Service]
ExecStart=
ExecStart=-/sbin/agetty --autologin root --keep-baud 115200,57600,38400,9600 - $TERM
EOF
mkdir -p "$r/boot/grub/i386-pc"
cp "$r"/usr/lib/grub/i386-pc/*.mod "$r"/usr/lib/grub/i386-pc/*.lst "$r/boot/grub/i386-pc/"
cp "$r/usr/lib/grub/i386-pc/boot.img" "$r/boot/grub/i386-pc/boot.img"
chroot "$r" grub-mkimage -O i386-pc -o /boot/grub/i386-pc/core.img -p '(hd0,msdos1)/boot/grub' \
	biosdisk part_msdos ext2 normal linux serial terminal echo test
cat > "$r/boot/grub/grub.cfg" <<'EOF'
serial --unit=0 --speed=115200
terminal_input serial console
terminal_output serial console
set timeout=0
menuentry "Debian GNU/Linux, ` + release + `" {
	linux /boot/vmlinuz-` + release + ` root=LABEL=` + systemDiskLabel + ` ro console=tty0 console=ttyS0,115200
	initrd /boot/initrd.img-` + release + `
}
EOF
test -s "$r/boot/initrd.img-` + release + `"
rm -f "$r"/var/cache/apt/archives/*.deb
`
}

// Disk layout: an MBR, GRUB's core image in the gap after it, and one
// ext4 partition from 1 MiB to the end.
const (
	sector         = 512
	partitionStart = 1 << 20
	mbrBootCode    = 440 // bytes of boot code before the disk signature
)

// assembleDisk writes the raw disk: mkfs.ext4 populates the filesystem
// from root straight into the partition (-d, -E offset), so no loop
// device or mount is needed, and the MBR and GRUB's core image are written
// here. The MBR is 64 bytes of table and a signature: a library for it
// would outweigh it.
func assembleDisk(ctx context.Context, root, raw string, size uint64) error {
	boot, err := os.ReadFile(filepath.Join(root, "boot/grub/i386-pc/boot.img"))
	if err != nil {
		return fmt.Errorf("GRUB boot image: %w", err)
	}
	core, err := os.ReadFile(filepath.Join(root, "boot/grub/i386-pc/core.img"))
	if err != nil {
		return fmt.Errorf("GRUB core image: %w", err)
	}
	if len(boot) != sector {
		return fmt.Errorf("GRUB boot image is %d bytes, want %d", len(boot), sector)
	}
	if sector+len(core) > partitionStart {
		return fmt.Errorf("GRUB core image (%d bytes) does not fit before the partition at %d", len(core), partitionStart)
	}
	f, err := os.OpenFile(raw, os.O_RDWR|os.O_CREATE|os.O_TRUNC, 0o644)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Truncate(int64(size)); err != nil {
		return err
	}
	blocks := (size - partitionStart) / 4096
	out, err := exec.CommandContext(ctx, "mkfs.ext4", "-q", "-F", "-b", "4096", "-L", systemDiskLabel, "-d", root,
		"-E", fmt.Sprintf("offset=%d", partitionStart), raw, fmt.Sprint(blocks)).CombinedOutput()
	if err != nil {
		return fmt.Errorf("mkfs.ext4: %w: %s", err, lastLines(string(out), 4))
	}
	if _, err := f.WriteAt(mbr(boot, size), 0); err != nil {
		return err
	}
	if _, err := f.WriteAt(core, sector); err != nil {
		return err
	}
	return f.Sync()
}

// mbr is the first sector: GRUB's boot code (which loads the core image
// from sector 1, its default), and one active Linux partition from
// partitionStart to the end of a disk of size bytes.
func mbr(boot []byte, size uint64) []byte {
	s := make([]byte, sector)
	copy(s, boot[:mbrBootCode])
	binary.LittleEndian.PutUint32(s[440:], 0x6c75636f) // disk signature "ocul"
	e := s[446:462]
	e[0] = 0x80                            // active
	copy(e[1:4], []byte{0xfe, 0xff, 0xff}) // CHS: beyond CHS, use LBA
	e[4] = 0x83                            // Linux
	copy(e[5:8], []byte{0xfe, 0xff, 0xff})
	binary.LittleEndian.PutUint32(e[8:], partitionStart/sector)
	binary.LittleEndian.PutUint32(e[12:], uint32((size-partitionStart)/sector))
	s[510], s[511] = 0x55, 0xaa
	return s
}
