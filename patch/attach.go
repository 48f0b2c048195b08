package patch

import (
	"context"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/launch"
	"github.com/lucos/lucos/vmm"
)

// Attach is launch.AttachKernel followed by an engine on that kernel: the
// chain image → introspection → engine that everything which patches a
// guest goes through (API, demo, benchmarks). It lives here rather than in
// launch so that launch, which the guest tests boot through, does not
// depend on the engine. Closing the engine leaves m running.
func Attach(ctx context.Context, m *vmm.Machine, cacheDir string) (*introspect.Kernel, *Engine, error) {
	k, err := launch.AttachKernel(ctx, m, cacheDir)
	if err != nil {
		return nil, nil, err
	}
	e, err := New(m, k, nil)
	if err != nil {
		return nil, nil, err
	}
	return k, e, nil
}
