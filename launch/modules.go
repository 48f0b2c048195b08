package launch

import (
	"fmt"
	"path"
	"path/filepath"
	"strings"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/initramfs"
)

// The guest's stock modules: the modules disk (guest.ModulesDisk) is
// attached read-only and ModulesHook mounts it on /lib/modules/<release>
// before the guest is ready, so busybox modprobe — and the kernel's own
// request_module, which runs /sbin/modprobe — finds every module of the
// release with its dependencies and aliases. Nothing of it is in RAM until
// a module is loaded.
const (
	// ModulesHook is the start-up hook that mounts the disk; it runs before
	// the hooks of later stages (50-lucos-bugs.sh), which may modprobe.
	ModulesHook = "/etc/lucos.d/10-modules.sh"
	// bootModulesDir holds, in the initramfs, the modules the kernel needs
	// to reach the disk when it does not have them built in.
	bootModulesDir = "/lib/lucos/boot-modules"
)

// withModules returns prev (which may be nil) preceded by what mounts disk
// in the guest: the mount point, the hook and any boot modules.
func withModules(img *guest.Image, disk *guest.ModulesDisk, prev func(*initramfs.Archive) error) (func(*initramfs.Archive) error, error) {
	boot, err := disk.Tree.BootModules()
	if err != nil {
		return nil, err
	}
	return func(a *initramfs.Archive) error {
		a.AddDir(path.Join("/lib/modules", img.Release), 0o755)
		var insmod []string
		for _, m := range boot {
			p := path.Join(bootModulesDir, path.Base(m.Path))
			if err := a.AddHostFile(p, filepath.Join(img.ModulesDir, filepath.FromSlash(m.Path)), 0o644); err != nil {
				return err
			}
			insmod = append(insmod, p)
		}
		a.AddFile(ModulesHook, 0o755, modulesHook(img.Release, insmod))
		if prev != nil {
			return prev(a)
		}
		return nil
	}, nil
}

// modulesHook is the hook's script: load the boot modules in order, then
// mount the disk by its label. A failure is said on the console; the guest
// still boots, without modules.
func modulesHook(release string, insmod []string) []byte {
	var b strings.Builder
	dir := path.Join("/lib/modules", release)
	fmt.Fprintf(&b, "# The release's stock modules (package launch): the read-only modules disk on %s.\n", dir)
	for _, p := range insmod {
		fmt.Fprintf(&b, "insmod %s\n", p)
	}
	fmt.Fprintf(&b, "mount -t ext4 -o ro LABEL=%s %s || echo 'lucos: cannot mount the modules disk (LABEL=%s) on %s' > /dev/ttyS0\n",
		guest.ModulesLabel, dir, guest.ModulesLabel, dir)
	return []byte(b.String())
}
