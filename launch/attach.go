package launch

import (
	"context"
	"fmt"
	"io"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/vmm"
)

// AttachKernel reads the kernel image m booted (its symbols and types,
// cached in guest.KImageCache) and attaches introspection to the running guest:
// the chain image → introspection that everything which looks into a guest
// goes through. patch.Attach adds the engine on top.
func AttachKernel(ctx context.Context, m *vmm.Machine, cacheDir string) (*introspect.Kernel, error) {
	img, err := kimage.Load(ctx, m.KernelPath(), guest.KImageCache(cacheDir))
	if err != nil {
		return nil, fmt.Errorf("read kernel image: %w", err)
	}
	return introspect.Attach(ctx, m, img)
}

// AttachOptions say which running QEMU to attach to (AttachQEMU).
type AttachOptions struct {
	VM vmm.AttachConfig
	// Release names the guest's kernel release; empty finds it from the
	// kernel banner in guest RAM.
	Release  string
	CacheDir string    // guest cache; empty = guest.DefaultCacheDir()
	Progress io.Writer // human progress lines; nil = silent
}

// AttachQEMU attaches to a QEMU lucos did not start: vmm.Attach, the
// guest's kernel release from its banner in RAM, that release's Debian
// packages (fetched into the cache if missing), then AttachKernel, whose
// KASLR slide and banner check prove the image is the one running. On
// error the VM is left as it was, running.
func AttachQEMU(ctx context.Context, o AttachOptions) (*vmm.Machine, *introspect.Kernel, error) {
	say := func(format string, a ...any) {
		if o.Progress != nil {
			fmt.Fprintf(o.Progress, format+"\n", a...)
		}
	}
	m, err := vmm.Attach(ctx, o.VM)
	if err != nil {
		return nil, nil, err
	}
	say("attached to QEMU pid %d: %d vCPUs, %d MiB, %s", m.PID(), m.CPUs(), m.Memory()>>20, accelName(m))
	rel := o.Release
	if rel == "" {
		b, err := introspect.FindBanner(m)
		if err != nil {
			m.Close()
			return nil, nil, fmt.Errorf("which kernel runs: %w", err)
		}
		rel = b.Release
		say("kernel banner at guest-physical %#x: %s", b.GPA, b.Text)
	}
	img, err := guest.Fetch(ctx, guest.Options{Release: rel, CacheDir: o.CacheDir, Progress: o.Progress})
	if err != nil {
		m.Close()
		return nil, nil, fmt.Errorf("kernel %s: %w", rel, err)
	}
	m.SetKernel(img.Kernel, img.Release)
	k, err := AttachKernel(ctx, m, o.CacheDir)
	if err != nil {
		m.Close()
		return nil, nil, err
	}
	say("kernel %s, KASLR slide %#x", k.Release(), k.Slide)
	return m, k, nil
}

func accelName(m *vmm.Machine) string {
	a, _ := m.Accel()
	return string(a)
}
