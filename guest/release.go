package guest

import (
	"fmt"
	"regexp"
	"slices"
	"strconv"
	"strings"
)

// Flavours of the Debian bookworm amd64 kernel that lucos boots.
const (
	FlavourCloud   = "cloud"   // linux-image-cloud-amd64: small, lz4, boots fastest
	FlavourGeneric = "generic" // linux-image-amd64: the full kernel, xz
)

// flavourSuffix is the tail Debian gives a release of each flavour.
var flavourSuffix = map[string]string{
	FlavourCloud:   "cloud-amd64",
	FlavourGeneric: "amd64",
}

// normFlavour maps the empty flavour to the default and rejects unknown ones.
func normFlavour(f string) (string, error) {
	switch f {
	case "":
		return FlavourCloud, nil
	case FlavourCloud, FlavourGeneric:
		return f, nil
	}
	return "", fmt.Errorf("unknown kernel flavour %q (want %q or %q)", f, FlavourCloud, FlavourGeneric)
}

// metaPackage is the package that depends on the current kernel of a flavour.
func metaPackage(flavour string) string {
	return "linux-image-" + flavourSuffix[flavour]
}

// DefaultSeries is bookworm's own kernel series, the one metaPackage names.
const DefaultSeries = "6.1"

var seriesRE = regexp.MustCompile(`^[0-9]+\.[0-9]+$`)

// IsSeries reports whether name is a kernel series ("6.12") rather than a
// release: Options.Release accepts either.
func IsSeries(name string) bool { return seriesRE.MatchString(name) }

// line is what "the current kernel" means: a flavour and a series. Debian
// names the current 6.1 kernel by linux-image-cloud-amd64 and each other
// series by its own meta package, linux-image-6.12-cloud-amd64.
type line struct{ flavour, series string }

func (l line) meta() string {
	if l.series == DefaultSeries {
		return metaPackage(l.flavour)
	}
	return "linux-image-" + l.series + "-" + flavourSuffix[l.flavour]
}

// key names the line in the cache's memo files: "cloud", "cloud-6.12".
func (l line) key() string {
	if l.series == DefaultSeries {
		return l.flavour
	}
	return l.flavour + "-" + l.series
}

// has reports whether r is a release of the line.
func (l line) has(r release) bool {
	return r.Flavour == l.flavour && fmt.Sprintf("%d.%d", r.Version[0], r.Version[1]) == l.series
}

func (l line) String() string { return l.series + " " + l.flavour }

// release is a parsed kernel release name. Debian names bookworm's own 6.1
// kernels "6.1.0-56-cloud-amd64" (upstream 6.1.0, Debian ABI 56) and the
// 6.12 kernels it ships for bookworm from the security suite
// "6.12.107+deb12-cloud-amd64" (upstream 6.12.107, for Debian 12).
type release struct {
	Name    string // the whole name
	Version [3]int // 6, 1, 0 or 6, 12, 107
	ABI     int    // 56; 0 for the +debN form, whose version is the upstream one
	Deb     int    // 12 for the +debN form; 0 otherwise
	Flavour string // FlavourCloud or FlavourGeneric
}

var (
	releaseRE    = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)-([0-9]+)-([a-z0-9-]+)$`)
	releaseDebRE = regexp.MustCompile(`^([0-9]+)\.([0-9]+)\.([0-9]+)\+deb([0-9]+)-([a-z0-9-]+)$`)
)

// parseRelease splits a kernel release name. Only the flavours lucos boots
// are accepted: "6.1.0-56-rt-amd64" is a valid Debian release but an error here.
func parseRelease(name string) (release, error) {
	r := release{Name: name}
	m := releaseRE.FindStringSubmatch(name)
	if m != nil {
		r.ABI, _ = strconv.Atoi(m[4])
	} else if m = releaseDebRE.FindStringSubmatch(name); m != nil {
		r.Deb, _ = strconv.Atoi(m[4])
	} else {
		return release{}, fmt.Errorf("kernel release %q is not of the form 6.1.0-56-cloud-amd64 or 6.12.107+deb12-cloud-amd64", name)
	}
	for i := range 3 {
		r.Version[i], _ = strconv.Atoi(m[1+i])
	}
	for f, suffix := range flavourSuffix {
		if m[5] == suffix {
			r.Flavour = f
		}
	}
	if r.Flavour == "" {
		return release{}, fmt.Errorf("kernel release %q: flavour %q is not supported (want -%s or -%s)",
			name, m[5], flavourSuffix[FlavourCloud], flavourSuffix[FlavourGeneric])
	}
	return r, nil
}

// abiName is the release without its flavour: "6.1.0-56" or
// "6.12.107+deb12", the name part of the flavour-independent headers
// package linux-headers-6.1.0-56-common.
func (r release) abiName() string {
	if r.Deb != 0 {
		return fmt.Sprintf("%d.%d.%d+deb%d", r.Version[0], r.Version[1], r.Version[2], r.Deb)
	}
	return fmt.Sprintf("%d.%d.%d-%d", r.Version[0], r.Version[1], r.Version[2], r.ABI)
}

// kbuildPackage is the name Debian gives the kbuild tools of this kernel:
// linux-kbuild-6.1 for the series, linux-kbuild-6.12.107+deb12 for one
// +debN release.
func (r release) kbuildPackage() string {
	if r.Deb != 0 {
		return "linux-kbuild-" + r.abiName()
	}
	return fmt.Sprintf("linux-kbuild-%d.%d", r.Version[0], r.Version[1])
}

// compare orders releases by version then ABI; flavour does not count.
func (r release) compare(o release) int {
	if c := slices.Compare(r.Version[:], o.Version[:]); c != 0 {
		return c
	}
	if r.ABI != o.ABI {
		return r.ABI - o.ABI
	}
	return r.Deb - o.Deb
}

// imagePackage, headersPackage name the per-release packages.
func imagePackage(rel string) string   { return "linux-image-" + rel }
func headersPackage(rel string) string { return "linux-headers-" + rel }

// releaseFromImagePackage turns "linux-image-6.1.0-56-cloud-amd64" into its
// release, rejecting the -dbg and -unsigned variants and anything else.
func releaseFromImagePackage(pkg string) (release, bool) {
	name, ok := strings.CutPrefix(pkg, "linux-image-")
	if !ok {
		return release{}, false
	}
	r, err := parseRelease(name)
	return r, err == nil
}

// sortReleaseNames sorts valid release names oldest first.
func sortReleaseNames(names []string) {
	slices.SortFunc(names, func(a, b string) int {
		ra, _ := parseRelease(a)
		rb, _ := parseRelease(b)
		if c := ra.compare(rb); c != 0 {
			return c
		}
		return strings.Compare(a, b)
	})
}
