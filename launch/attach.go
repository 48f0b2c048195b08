package launch

import (
	"context"
	"fmt"

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
