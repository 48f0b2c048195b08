package kimage_test

import (
	"context"
	"strings"
	"testing"

	"github.com/lucos/lucos/guest"
	"github.com/lucos/lucos/internal/testvm"
	"github.com/lucos/lucos/kimage"
)

// BenchmarkLoad measures Load of the real guest kernel without a cache
// (decompress, locate and decode kallsyms, parse BTF) and with a warm one;
// the generic flavour (xz) too when it is cached.
func BenchmarkLoad(b *testing.B) {
	kernels := map[string]string{"cloud": testvm.Image(b).Kernel}
	rel := strings.Replace(testvm.Image(b).Release, "-cloud-", "-", 1)
	if g, err := guest.Open("", rel); err == nil {
		kernels["generic"] = g.Kernel
	}
	for flavour, path := range kernels {
		b.Run(flavour+"/cold", func(b *testing.B) {
			for i := 0; i < b.N; i++ {
				if _, err := kimage.Load(context.Background(), path, ""); err != nil {
					b.Fatal(err)
				}
			}
		})
		b.Run(flavour+"/cached", func(b *testing.B) {
			dir := b.TempDir()
			if _, err := kimage.Load(context.Background(), path, dir); err != nil {
				b.Fatal(err)
			}
			b.ResetTimer()
			for i := 0; i < b.N; i++ {
				if _, err := kimage.Load(context.Background(), path, dir); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}

// BenchmarkSymbolsFind is one symbol lookup by name on the real kernel.
func BenchmarkSymbolsFind(b *testing.B) {
	img, err := kimage.Load(context.Background(), testvm.Image(b).Kernel, b.TempDir())
	if err != nil {
		b.Fatal(err)
	}
	b.ResetTimer()
	for i := 0; i < b.N; i++ {
		if _, err := img.Symbols.Find("cmdline_proc_show", 0); err != nil {
			b.Fatal(err)
		}
	}
}
