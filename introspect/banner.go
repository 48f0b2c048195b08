package introspect

import (
	"bytes"
	"errors"
	"fmt"
	"sort"
	"strings"

	"github.com/lucos/lucos/vmm"
)

// ErrNoBanner: no kernel banner was found in guest RAM.
var ErrNoBanner = errors.New("no Linux kernel banner in guest RAM")

// Banner is the running kernel's linux_banner as found in guest RAM,
// before anything else about the kernel is known.
type Banner struct {
	Text    string // "Linux version 6.1.0-57-cloud-amd64 (debian-kernel@...) ... #1 SMP ... Debian 6.1.158-1 (...)"
	Release string // "6.1.0-57-cloud-amd64", what uname -r says
	GPA     uint64 // where the first copy is
	Copies  int    // how many copies of this banner RAM holds
}

// PhysMem is guest RAM as FindBanner reads it.
type PhysMem interface {
	RAM() []vmm.PhysRange
	ReadPhys(gpa uint64, buf []byte) error
}

// bannerPrefix starts linux_banner: "Linux version " UTS_RELEASE " (" ...
// UTS_VERSION "\n", a NUL-terminated string in the kernel's .rodata.
var bannerPrefix = []byte("Linux version ")

// maxBanner bounds a banner's length (the kernel's is ~200 bytes).
const maxBanner = 512

// FindBanner scans guest RAM for the kernel banner, to tell which kernel
// a guest lucos did not boot is running. Only NUL-terminated copies that
// end in a newline count, as linux_banner does (the log buffer's copy has
// no newline, a user-space copy no NUL). Every copy found must name one
// release; differing ones are an error that lists them, and then the
// caller must be told the release. The kernel's own copy is checked later
// against the fetched image (Attach's banner check).
func FindBanner(mem PhysMem) (*Banner, error) {
	const chunk = 4 << 20
	found := map[string]*Banner{}
	buf := make([]byte, chunk+maxBanner)
	for _, r := range mem.RAM() {
		for off := uint64(0); off < r.Size; off += chunk {
			n := min(uint64(len(buf)), r.Size-off)
			b := buf[:n]
			if err := mem.ReadPhys(r.Start+off, b); err != nil {
				return nil, fmt.Errorf("scan guest RAM for the kernel banner: %w", err)
			}
			for i := 0; ; {
				j := bytes.Index(b[i:], bannerPrefix)
				if j < 0 || uint64(i+j) >= chunk {
					break
				}
				at := i + j
				i = at + 1
				text, ok := bannerAt(b[at:])
				if !ok {
					continue
				}
				if f := found[text]; f != nil {
					f.Copies++
					continue
				}
				found[text] = &Banner{Text: text, Release: strings.Fields(text)[2], GPA: r.Start + off + uint64(at), Copies: 1}
			}
		}
	}
	var all []*Banner
	releases := map[string]bool{}
	for _, b := range found {
		all = append(all, b)
		releases[b.Release] = true
	}
	sort.Slice(all, func(i, j int) bool { return all[i].GPA < all[j].GPA })
	switch {
	case len(all) == 0:
		return nil, ErrNoBanner
	case len(releases) > 1:
		var names []string
		for _, b := range all {
			names = append(names, fmt.Sprintf("%s (at %#x)", b.Release, b.GPA))
		}
		return nil, fmt.Errorf("guest RAM holds banners of %d kernel releases: %s; say which one runs", len(releases), strings.Join(names, ", "))
	}
	// One release; of its copies (they differ only past the release, if
	// at all), the lowest-addressed is reported.
	return all[0], nil
}

// bannerAt returns the banner starting at b if it is one: printable ASCII
// up to "\n\x00", the release after the prefix, within maxBanner bytes.
func bannerAt(b []byte) (string, bool) {
	end := bytes.IndexByte(b[:min(len(b), maxBanner)], 0)
	if end < len(bannerPrefix)+2 || b[end-1] != '\n' {
		return "", false
	}
	text := b[:end-1]
	for _, c := range text {
		if c < ' ' || c > '~' {
			return "", false
		}
	}
	f := strings.Fields(string(text))
	if len(f) < 4 {
		return "", false
	}
	return string(text), true
}
