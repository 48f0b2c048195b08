package kimage

// SetMaxVmlinux bounds decompressed output for the fuzzers and returns a
// function that restores the bound.
func SetMaxVmlinux(n int64) (restore func()) {
	old := maxVmlinux
	maxVmlinux = n
	return func() { maxVmlinux = old }
}

// DecodeCache exposes the cache decoder to its fuzzer.
func DecodeCache(data []byte, digest string) (*Image, error) { return decodeCache(data, digest) }
