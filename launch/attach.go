package launch

import (
	"context"
	"fmt"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/patch"
	"github.com/lucos/lucos/vmm"
)

// AttachKernel reads the kernel image m booted (its symbols and types,
// cached in guest.KImageCache) and attaches introspection to the running guest:
// the chain image → introspection that everything which looks into a guest
// goes through.
func AttachKernel(ctx context.Context, m *vmm.Machine, cacheDir string) (*introspect.Kernel, error) {
	img, err := kimage.Load(ctx, m.KernelPath(), guest.KImageCache(cacheDir))
	if err != nil {
		return nil, fmt.Errorf("read kernel image: %w", err)
	}
	return introspect.Attach(ctx, m, img)
}

// Attach is AttachKernel followed by a patch engine on that kernel: the
// chain image → introspection → engine that everything which patches a
// guest goes through. Closing the engine leaves m running.
func Attach(ctx context.Context, m *vmm.Machine, cacheDir string) (*introspect.Kernel, *patch.Engine, error) {
	k, err := AttachKernel(ctx, m, cacheDir)
	if err != nil {
		return nil, nil, err
	}
	e, err := patch.New(m, k, nil)
	if err != nil {
		return nil, nil, err
	}
	return k, e, nil
}
