package bzimage_test

import (
	"strings"
	"testing"

	"github.com/lucos/lucos/bzimage"
	"github.com/lucos/lucos/internal/testvm"
)

// TestParseDebianKernel reads the stock kernel: its release is the one the
// Debian package names.
func TestParseDebianKernel(t *testing.T) {
	img := testvm.Image(t)
	h, err := bzimage.ParseFile(img.Kernel)
	if err != nil {
		t.Fatal(err)
	}
	if h.Release() != img.Release || h.PayloadLength == 0 || !strings.Contains(h.KernelVersion, "debian") {
		t.Errorf("header %+v, want release %s", h, img.Release)
	}
}
