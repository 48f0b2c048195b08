package kimage

import (
	"encoding/binary"
	"fmt"
	"math"
	"slices"
	"strings"
)

// The kernel's kallsyms tables (scripts/kallsyms.c, kernel/kallsyms.c) are
// plain data in .rodata with no symbol pointing at them, so they are found
// by their structure. The locating rule, anchored on the most distinctive
// table first (all tables start 8-aligned, the ALGN of 64-bit kernels):
//
//  1. kallsyms_token_index is 256 uint16: 0 first, then strictly increasing
//     by at least 2. kallsyms_token_table is 256 NUL-terminated, non-empty,
//     printable strings ending (with < 8 bytes of zero padding) where the
//     index starts, at the offsets the index gives.
//  2. kallsyms_markers (uint32, or uint64 in older kernels) ends either just
//     before the token table or, when kallsyms_seqs_of_names (3 bytes per
//     symbol, present from 6.2 and in Debian's 6.1) lies between them, just
//     before that. Read backwards, the markers strictly decrease (by at least
//     512: 256 entries of at least 2 bytes) down to the 0 of marker[0].
//  3. kallsyms_num_syms is the uint32 8 bytes before kallsyms_names; the
//     names start is searched among 8-aligned addresses such that
//     ceil(num_syms/256) is the number of markers, the length-prefixed
//     entries (1 byte, or 2 when the first has bit 7 set) number exactly
//     num_syms, entry 256·k starts at marker[k], and the stream ends at the
//     markers (modulo padding). With seqs_of_names, it must fill the gap to
//     the token table exactly (3·num_syms plus padding) and be a permutation
//     of 0..num_syms-1.
//  4. kallsyms_offsets (int32 per symbol) and kallsyms_relative_base (one
//     pointer) are either just before num_syms (≤ 6.3: offsets, base,
//     num_syms) or just after the token index (≥ 6.4); kallsyms_addresses
//     (uint64 per symbol, no base) likewise. A candidate is accepted when the
//     decoded addresses are non-decreasing (scripts/kallsyms sorts by address)
//     and, base-relative, the lowest relative address is the base itself.
//     Offsets ≥ 0 next to negative ones mean CONFIG_KALLSYMS_ABSOLUTE_PERCPU:
//     they are absolute per-CPU offsets, the others base-1-offset.
//  5. Names expand through the token table; the first character of an
//     expanded entry is the type letter.
//
// Every candidate that fails a check is dropped, so stray data that passes
// the cheap filter of rule 1 costs time, not correctness.

// KallsymsTables says where the kallsyms tables of an image are (link-time
// addresses) and how they encode addresses.
type KallsymsTables struct {
	NumSyms      int
	Offsets      uint64 // kallsyms_offsets, or kallsyms_addresses when !BaseRelative
	RelativeBase uint64 // address of kallsyms_relative_base (0 when !BaseRelative)
	Base         uint64 // its value, the lowest relative address (usually _text)
	Names        uint64 // kallsyms_names
	NamesLen     int
	Markers      uint64 // kallsyms_markers
	MarkerSize   int    // 4 (6.x) or 8 bytes per marker
	SeqsOfNames  uint64 // kallsyms_seqs_of_names (0 when absent)
	TokenTable   uint64 // kallsyms_token_table
	TokenIndex   uint64 // kallsyms_token_index

	BaseRelative   bool // CONFIG_KALLSYMS_BASE_RELATIVE: int32 offsets from Base
	AbsolutePercpu bool // CONFIG_KALLSYMS_ABSOLUTE_PERCPU: offsets ≥ 0 are absolute (per-CPU) values
}

func (t *KallsymsTables) String() string {
	enc := "absolute addresses"
	if t.BaseRelative {
		enc = fmt.Sprintf("offsets from %#x", t.Base)
		if t.AbsolutePercpu {
			enc += ", absolute per-CPU"
		}
	}
	seqs := "none"
	if t.SeqsOfNames != 0 {
		seqs = fmt.Sprintf("%#x", t.SeqsOfNames)
	}
	return fmt.Sprintf("kallsyms: %d symbols; offsets %#x (%s), names %#x (%d bytes), markers %#x (%d-byte), seqs_of_names %s, token_table %#x, token_index %#x",
		t.NumSyms, t.Offsets, enc, t.Names, t.NamesLen, t.Markers, t.MarkerSize, seqs, t.TokenTable, t.TokenIndex)
}

const (
	kallsymsAlign = 8       // ALGN on 64-bit kernels
	maxNameEntry  = 512 + 2 // KSYM_NAME_LEN and a 2-byte length
	maxTokenLen   = 256
)

// RawSymbol is one symbol as a source lists it, before sizes and positions
// are derived.
type RawSymbol struct {
	Name string
	Addr uint64
	Type byte
}

// memory is a byte range of the image at a link-time address.
type memory struct {
	data []byte
	base uint64
}

func (m memory) aligned(off int) bool { return (m.base+uint64(off))%kallsymsAlign == 0 }

func (m memory) u16(off int) uint16 { return binary.LittleEndian.Uint16(m.data[off:]) }
func (m memory) u32(off int) uint32 { return binary.LittleEndian.Uint32(m.data[off:]) }
func (m memory) u64(off int) uint64 { return binary.LittleEndian.Uint64(m.data[off:]) }

func (m memory) in(off, n int) bool {
	return off >= 0 && n >= 0 && off <= len(m.data) && n <= len(m.data)-off
}

// alignUp rounds off up so that base+off is 8-aligned.
func (m memory) alignUp(off int) int {
	for !m.aligned(off) {
		off++
	}
	return off
}

// ParseKallsyms finds and decodes the kallsyms tables in data, a range of the
// kernel image that starts at link-time address base (typically the vmlinux's
// .rodata). The symbols are in kallsyms order (by address).
func ParseKallsyms(data []byte, base uint64) ([]RawSymbol, *KallsymsTables, error) {
	m := memory{data, base}
	var firstErr error
	for x := m.alignUp(0); m.in(x, 512); x += kallsymsAlign {
		if !tokenIndexCandidate(m, x) {
			continue
		}
		syms, t, err := parseAt(m, x)
		if err == nil {
			return syms, t, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	if firstErr != nil {
		return nil, nil, fmt.Errorf("%w: %w", ErrNoKallsyms, firstErr)
	}
	return nil, nil, fmt.Errorf("%w: no token table in %d bytes at %#x", ErrNoKallsyms, len(data), base)
}

// tokenIndexCandidate is the cheap filter of rule 1.
func tokenIndexCandidate(m memory, x int) bool {
	if m.u16(x) != 0 {
		return false
	}
	prev := 0
	for i := 1; i < 256; i++ {
		v := int(m.u16(x + 2*i)) // int: prev+2 must not wrap
		if v < prev+2 {
			return false
		}
		prev = v
	}
	return true
}

// parseAt tries the token index at offset x and everything found from it.
func parseAt(m memory, x int) ([]RawSymbol, *KallsymsTables, error) {
	fe := func(off int, format string, args ...any) error {
		return formatErr("kallsyms", int64(off), format, args...)
	}
	var idx [256]int
	for i := range idx {
		idx[i] = int(m.u16(x + 2*i))
	}
	// Rule 1: the token table ends at x: the last token's NUL and < 8
	// bytes of padding, so 1 to 8 zero bytes.
	end := x
	for end > 0 && x-end < kallsymsAlign && m.data[end-1] == 0 {
		end--
	}
	if end == x || end == 0 || m.data[end-1] == 0 {
		return nil, nil, fe(x, "token index not preceded by a token string")
	}
	// end-1 is the last byte of the last token; its NUL is at end.
	lastStart := end - 1
	for lastStart > 0 && end-lastStart < maxTokenLen && m.data[lastStart-1] != 0 {
		lastStart--
	}
	tt := lastStart - idx[255]
	if tt < 0 || !m.aligned(tt) {
		return nil, nil, fe(x, "token table start %d not aligned", tt)
	}
	var tokens [256]string
	for i := range tokens {
		s := tt + idx[i]
		e := end
		if i < 255 {
			e = tt + idx[i+1] - 1
		}
		if e <= s || m.data[e] != 0 {
			return nil, nil, fe(s, "token %d is not NUL-terminated at its index", i)
		}
		for _, b := range m.data[s:e] {
			if b < 0x20 || b > 0x7e {
				return nil, nil, fe(s, "token %d has a non-printable byte %#x", i, b)
			}
		}
		tokens[i] = string(m.data[s:e])
	}
	t := &KallsymsTables{TokenTable: m.base + uint64(tt), TokenIndex: m.base + uint64(x)}

	// Rules 2 and 3: markers, num_syms and names (and seqs_of_names).
	if err := findNames(m, t, tt); err != nil {
		return nil, nil, err
	}
	names, num := int(t.Names-m.base), t.NumSyms

	// Rule 4: addresses.
	addrs, err := findAddresses(m, t, names, x)
	if err != nil {
		return nil, nil, err
	}

	// Rule 5: expand the names.
	syms := make([]RawSymbol, num)
	var sb strings.Builder
	off := names
	for i := range syms {
		l, hdr := entryLen(m, off)
		sb.Reset()
		for _, b := range m.data[off+hdr : off+hdr+l] {
			sb.WriteString(tokens[b])
		}
		s := sb.String()
		if len(s) < 2 || !isTypeLetter(s[0]) {
			return nil, nil, fe(off, "symbol %d expands to %q: no type letter and name", i, s)
		}
		syms[i] = RawSymbol{Name: s[1:], Type: s[0], Addr: addrs[i]}
		off += hdr + l
	}
	t.NamesLen = off - names
	return syms, t, nil
}

func isTypeLetter(b byte) bool { return b >= 'a' && b <= 'z' || b >= 'A' && b <= 'Z' || b == '?' }

// findNames applies rules 2 and 3: it tries the markers ending right at the
// token table (tt), then ending at each 8-aligned address below it, where
// kallsyms_seqs_of_names fills the gap.
func findNames(m memory, t *KallsymsTables, tt int) error {
	// seqs_of_names holds 3 bytes per symbol, at most 2^24 symbols.
	lowest := max(0, tt-3<<24-kallsymsAlign)
	for e := tt; e >= lowest; e -= kallsymsAlign { // tt is aligned
		for _, size := range []int{4, 8} {
			markers, ms := findMarkers(m, e, size)
			if markers == nil {
				continue
			}
			var nums []int // candidate symbol counts; nil: any
			if e != tt {
				// The gap holds 3 bytes per symbol; the count must also
				// need exactly this many markers.
				for pad := 0; pad < kallsymsAlign; pad++ {
					if n := tt - e - pad; n > 0 && n%3 == 0 && (n/3+255)/256 == len(markers) {
						nums = append(nums, n/3)
					}
				}
				if nums == nil {
					continue
				}
			}
			names, num := namesBefore(m, ms, markers, nums)
			if num == 0 {
				continue
			}
			if e != tt && !isPermutation(m.data[e:e+3*num]) {
				continue
			}
			t.Markers, t.MarkerSize = m.base+uint64(ms), size
			t.Names, t.NumSyms = m.base+uint64(names), num
			if e != tt {
				t.SeqsOfNames = m.base + uint64(e)
			}
			return nil
		}
	}
	return formatErr("kallsyms", int64(tt), "no kallsyms_markers/kallsyms_names before the token table")
}

// namesBefore applies rule 3 to the markers at ms: it returns the offset of
// kallsyms_names and the symbol count, or 0, 0. When nums is not nil the
// count must be one of them.
func namesBefore(m memory, ms int, markers []uint64, nums []int) (int, int) {
	if markers[len(markers)-1] >= uint64(ms) {
		return 0, 0
	}
	// The last marker's entry starts at names+last and the at most 256
	// entries after it end at the markers.
	hi := ms - int(markers[len(markers)-1]) - 1
	lo := max(hi-256*maxNameEntry, 8)
	for hi >= lo && !m.aligned(hi) {
		hi--
	}
	for n := hi; n >= lo; n -= kallsymsAlign {
		if !m.in(n-8, 8) {
			continue
		}
		cnt := int(m.u32(n - 8))
		if cnt == 0 || (cnt+255)/256 != len(markers) || m.u32(n-4) != 0 {
			continue
		}
		if nums != nil && !slices.Contains(nums, cnt) {
			continue
		}
		if e, ok := walkNames(m, n, cnt, markers); ok && e <= ms && m.alignUp(e) == ms {
			return n, cnt
		}
	}
	return 0, 0
}

// isPermutation reports whether seqs, big-endian 24-bit values, are a
// permutation of 0..len/3-1, as kallsyms_seqs_of_names is.
func isPermutation(seqs []byte) bool {
	n := len(seqs) / 3
	seen := make([]bool, n)
	for i := 0; i < n; i++ {
		v := int(seqs[3*i])<<16 | int(seqs[3*i+1])<<8 | int(seqs[3*i+2])
		if v >= n || seen[v] {
			return false
		}
		seen[v] = true
	}
	return true
}

// findMarkers reads markers of size bytes backwards from the token table at
// tt. It returns them and the offset of the first.
func findMarkers(m memory, tt, size int) ([]uint64, int) {
	get := func(off int) uint64 {
		if size == 4 {
			return uint64(m.u32(off))
		}
		return m.u64(off)
	}
	pads := []int{0}
	if size == 4 {
		pads = append(pads, 4)
	}
	for _, pad := range pads {
		var rev []uint64
		off := tt - pad - size
		if pad > 0 && (!m.in(off+size, pad) || m.u32(off+size) != 0) {
			continue
		}
		for ; m.in(off, size); off -= size {
			v := get(off)
			if len(rev) > 0 && (v >= rev[len(rev)-1] || rev[len(rev)-1]-v < 2*256) {
				break
			}
			rev = append(rev, v)
			if v == 0 {
				break
			}
		}
		if len(rev) == 0 || rev[len(rev)-1] != 0 || !m.aligned(off) || (pad == 0 && len(rev) == 1) {
			continue
		}
		markers := make([]uint64, len(rev))
		for i, v := range rev {
			markers[len(rev)-1-i] = v
		}
		return markers, off
	}
	return nil, 0
}

// entryLen decodes the length prefix of the names entry at off: one byte, or
// two when bit 7 of the first is set (6.1+ "big" symbols). It returns the
// entry's length and the prefix's; 0, 0 when out of range.
func entryLen(m memory, off int) (int, int) {
	if !m.in(off, 1) {
		return 0, 0
	}
	l := int(m.data[off])
	if l&0x80 == 0 {
		return l, 1
	}
	if !m.in(off+1, 1) {
		return 0, 0
	}
	return l&0x7f | int(m.data[off+1])<<7, 2
}

// walkNames checks cnt entries from off against the markers and returns the
// end of the stream.
func walkNames(m memory, off, cnt int, markers []uint64) (int, bool) {
	start := off
	for i := 0; i < cnt; i++ {
		if i%256 == 0 && uint64(off-start) != markers[i/256] {
			return 0, false
		}
		l, hdr := entryLen(m, off)
		if l == 0 || !m.in(off+hdr, l) {
			return 0, false
		}
		off += hdr + l
	}
	return off, true
}

// findAddresses tries the address-table layouts of rule 4.
func findAddresses(m memory, t *KallsymsTables, names, tokenIndex int) ([]uint64, error) {
	num := t.NumSyms
	tail := m.alignUp(tokenIndex + 512) // ≥ 6.4: after the token index
	type layout struct {
		offsets, base int
		relative      bool
	}
	round := func(n int) int { return (n + kallsymsAlign - 1) / kallsymsAlign * kallsymsAlign }
	layouts := []layout{
		{names - 16 - round(4*num), names - 16, true}, // ≤ 6.3
		{tail, tail + round(4*num), true},             // ≥ 6.4
		{names - 8 - 8*num, -1, false},                // ≤ 6.3, absolute
		{tail, -1, false},                             // ≥ 6.4, absolute
	}
	var firstErr error
	for _, l := range layouts {
		var addrs []uint64
		var err error
		if l.relative {
			addrs, err = relativeAddresses(m, t, l.offsets, l.base)
		} else {
			addrs, err = absoluteAddresses(m, num, l.offsets)
		}
		if err == nil {
			t.Offsets = m.base + uint64(l.offsets)
			t.BaseRelative = l.relative
			if l.relative {
				t.RelativeBase = m.base + uint64(l.base)
			}
			return addrs, nil
		}
		if firstErr == nil {
			firstErr = err
		}
	}
	return nil, firstErr
}

func relativeAddresses(m memory, t *KallsymsTables, offsets, baseOff int) ([]uint64, error) {
	num := t.NumSyms
	if !m.in(offsets, 4*num) || !m.in(baseOff, 8) {
		return nil, formatErr("kallsyms", int64(offsets), "kallsyms_offsets out of range")
	}
	base := m.u64(baseOff)
	absPercpu := false
	for i := 0; i < num; i++ {
		if int32(m.u32(offsets+4*i)) < 0 {
			absPercpu = true
			break
		}
	}
	addrs := make([]uint64, num)
	lowestRel := uint64(math.MaxUint64)
	for i := range addrs {
		o := int32(m.u32(offsets + 4*i))
		var a uint64
		switch {
		case !absPercpu:
			a = base + uint64(uint32(o))
			lowestRel = min(lowestRel, a)
		case o >= 0:
			a = uint64(o)
		default:
			a = base - 1 - uint64(int64(o))
			lowestRel = min(lowestRel, a)
		}
		if i > 0 && a < addrs[i-1] {
			return nil, formatErr("kallsyms", int64(offsets+4*i), "offset %d decodes to %#x, below the previous symbol's %#x", i, a, addrs[i-1])
		}
		addrs[i] = a
	}
	if lowestRel != base {
		return nil, formatErr("kallsyms", int64(baseOff), "relative base %#x is not the lowest relative address %#x", base, lowestRel)
	}
	t.Base, t.AbsolutePercpu = base, absPercpu
	return addrs, nil
}

func absoluteAddresses(m memory, num, off int) ([]uint64, error) {
	if !m.in(off, 8*num) || !m.aligned(off) {
		return nil, formatErr("kallsyms", int64(off), "kallsyms_addresses out of range")
	}
	addrs := make([]uint64, num)
	for i := range addrs {
		addrs[i] = m.u64(off + 8*i)
		if i > 0 && addrs[i] < addrs[i-1] {
			return nil, formatErr("kallsyms", int64(off+8*i), "address %d (%#x) below the previous", i, addrs[i])
		}
	}
	return addrs, nil
}
