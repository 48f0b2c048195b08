package kimage_test

import (
	"bytes"
	"context"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/kimage"
)

func TestExploreSlowSeeds(t *testing.T) {
	defer kimage.SetMaxVmlinux(4 << 20)()
	elfish := []byte("\x7fELF\x02\x01\x01" + strings.Repeat("x", 64))
	for _, img := range [][]byte{
		synthBzImage(withSizeTrailer(gzipBytes(t, elfish), len(elfish)), "6.1.0-0 (x) #1"),
		synthBzImage(withSizeTrailer(lz4Legacy(t, elfish), len(elfish)), ""),
	} {
		t0 := time.Now()
		_, _, err := kimage.ExtractVmlinux(context.Background(), bytes.NewReader(img))
		t.Log(time.Since(t0), err)
	}
}
