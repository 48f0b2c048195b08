package kimage_test

import (
	"bytes"
	"encoding/binary"
	"errors"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/lucos/lucos/kimage"
)

// synthLayout selects which kernel's kallsyms layout synthKallsyms writes.
type synthLayout struct {
	name     string
	seqs     bool // kallsyms_seqs_of_names between markers and token table (6.2–6.3, Debian 6.1)
	tail     bool // ≥ 6.4: num_syms, names, markers, tokens, then offsets and base
	absolute bool // kallsyms_addresses (no CONFIG_KALLSYMS_BASE_RELATIVE)
	percpu   bool // CONFIG_KALLSYMS_ABSOLUTE_PERCPU: addresses below 1<<32 are per-CPU
	marker8  bool // 8-byte markers (kernels before 6.x)
	fullPad  bool // token table length ≡ 1 mod 8: its last NUL and 7 bytes of padding
}

var synthLayouts = []synthLayout{
	{name: "6.1", percpu: true},
	{name: "debian-6.1", percpu: true, seqs: true},
	{name: "6.4", percpu: true, tail: true},
	{name: "relative-no-percpu"},
	{name: "absolute", absolute: true},
	{name: "absolute-6.4", absolute: true, tail: true},
	{name: "old-markers", percpu: true, marker8: true},
	{name: "token-table-fully-padded", percpu: true, seqs: true, fullPad: true},
}

// synthTokens builds a token table for names as scripts/kallsyms does in
// spirit: each character used stands for itself, the other codes for
// frequent pairs.
func synthTokens(strs []string) [256]string {
	var tokens [256]string
	used := map[byte]bool{}
	pairs := map[string]int{}
	for _, s := range strs {
		for i := 0; i < len(s); i++ {
			used[s[i]] = true
			if i+1 < len(s) {
				pairs[s[i:i+2]]++
			}
		}
	}
	var byFreq []string
	for p := range pairs {
		byFreq = append(byFreq, p)
	}
	sort.Slice(byFreq, func(i, j int) bool {
		if pairs[byFreq[i]] != pairs[byFreq[j]] {
			return pairs[byFreq[i]] > pairs[byFreq[j]]
		}
		return byFreq[i] < byFreq[j]
	})
	for c := range tokens {
		switch {
		case used[byte(c)]:
			tokens[c] = string(rune(c))
		case len(byFreq) > 0:
			tokens[c], byFreq = byFreq[0], byFreq[1:]
		default:
			tokens[c] = "~~" // unused
		}
	}
	return tokens
}

func synthEncode(s string, tokens [256]string) []byte {
	var out []byte
	for len(s) > 0 {
		best := -1
		for c, tok := range tokens {
			if strings.HasPrefix(s, tok) && (best < 0 || len(tok) > len(tokens[best])) {
				best = c
			}
		}
		out = append(out, byte(best))
		s = s[len(tokens[best]):]
	}
	return out
}

// synthKallsyms lays out kallsyms tables for syms (sorted by address) at
// link-time address base (8-aligned), as scripts/kallsyms.c would.
func synthKallsyms(t testing.TB, syms []kimage.RawSymbol, l synthLayout, base uint64) []byte {
	t.Helper()
	le := binary.LittleEndian
	full := make([]string, len(syms))
	for i, s := range syms {
		full[i] = string(s.Type) + s.Name
	}
	tokens := synthTokens(full)
	if l.fullPad {
		// Code 0xff is no character of a name: lengthen its token.
		n := 0
		for _, tok := range tokens {
			n += len(tok) + 1
		}
		for n%8 != 1 {
			tokens[255] += "q"
			n++
		}
	}
	var b bytes.Buffer
	pad := func() {
		for (base+uint64(b.Len()))%8 != 0 {
			b.WriteByte(0)
		}
	}
	isPercpu := func(a uint64) bool { return l.percpu && a < 1<<32 }
	relBase := ^uint64(0)
	for _, s := range syms {
		if !isPercpu(s.Addr) {
			relBase = min(relBase, s.Addr)
		}
	}
	addresses := func() {
		if l.absolute {
			for _, s := range syms {
				b.Write(le.AppendUint64(nil, s.Addr))
			}
			pad()
			return
		}
		for _, s := range syms {
			var o int64
			switch {
			case isPercpu(s.Addr):
				o = int64(s.Addr)
			case l.percpu:
				o = int64(relBase - s.Addr - 1)
			default:
				o = int64(uint32(s.Addr - relBase))
			}
			b.Write(le.AppendUint32(nil, uint32(o)))
		}
		pad()
		b.Write(le.AppendUint64(nil, relBase))
		pad()
	}
	if !l.tail {
		addresses()
	}
	b.Write(le.AppendUint32(nil, uint32(len(syms))))
	pad()
	start := b.Len()
	var markers []uint64
	for i, s := range full {
		if i%256 == 0 {
			markers = append(markers, uint64(b.Len()-start))
		}
		e := synthEncode(s, tokens)
		if len(e) > 0x7f {
			b.Write([]byte{byte(len(e)&0x7f | 0x80), byte(len(e) >> 7)})
		} else {
			b.WriteByte(byte(len(e)))
		}
		b.Write(e)
	}
	pad()
	for _, m := range markers {
		if l.marker8 {
			b.Write(le.AppendUint64(nil, m))
		} else {
			b.Write(le.AppendUint32(nil, uint32(m)))
		}
	}
	pad()
	if l.seqs {
		seqs := make([]int, len(syms))
		for i := range seqs {
			seqs[i] = i
		}
		slices.SortStableFunc(seqs, func(x, y int) int { return strings.Compare(syms[x].Name, syms[y].Name) })
		for _, s := range seqs {
			b.Write([]byte{byte(s >> 16), byte(s >> 8), byte(s)})
		}
		pad()
	}
	var index []uint16
	tt := b.Len()
	for _, tok := range tokens {
		index = append(index, uint16(b.Len()-tt))
		b.WriteString(tok)
		b.WriteByte(0)
	}
	pad()
	for _, v := range index {
		b.Write(le.AppendUint16(nil, v))
	}
	pad()
	if l.tail {
		addresses()
	}
	return b.Bytes()
}

// synthSymbols is a small kernel: per-CPU symbols, text with aliases and
// same-named statics, data, and one name longer than 127 tokens.
func synthSymbols() []kimage.RawSymbol {
	syms := []kimage.RawSymbol{
		{"__per_cpu_start", 0, 'A'},
		{"fixed_percpu_data", 0, 'A'},
		{"cpu_tss_rw", 0x6000, 'A'},
		{"__per_cpu_end", 0x34000, 'A'},
		{"startup_64", 0xffffffff81000000, 'T'},
		{"_stext", 0xffffffff81000000, 'T'},
		{"_text", 0xffffffff81000000, 'T'},
		{"verify_cpu", 0xffffffff81000160, 't'},
		{"show_val", 0xffffffff81001000, 't'},
		{"cmdline_proc_show", 0xffffffff81002000, 't'},
		{"show_val", 0xffffffff81003000, 't'},
		{strings.Repeat("long_symbol_name_", 20), 0xffffffff81004000, 'T'},
		{"_etext", 0xffffffff81005000, 'T'},
		{"linux_banner", 0xffffffff82000000, 'D'},
		{"init_task", 0xffffffff82a00000, 'D'},
		{"show_val", 0xffffffff82a00100, 'd'},
	}
	// Enough symbols for several markers.
	for i := 0; i < 700; i++ {
		syms = append(syms, kimage.RawSymbol{Name: "filler_" + strings.Repeat("x", i%7) + string(rune('a'+i%26)) + "_" + string(rune('a'+i/26%26)),
			Addr: 0xffffffff83000000 + uint64(i)*0x40, Type: "dDbB"[i%4]})
	}
	return syms
}

func TestParseKallsymsLayouts(t *testing.T) {
	want := synthSymbols()
	for _, l := range synthLayouts {
		t.Run(l.name, func(t *testing.T) {
			const base = 0xffffffff82100000
			if l.absolute || !l.percpu {
				// Without absolute per-CPU symbols every address is relative or absolute alike.
				want = slices.DeleteFunc(slices.Clone(want), func(s kimage.RawSymbol) bool { return s.Type == 'A' })
			} else {
				want = synthSymbols()
			}
			blob := synthKallsyms(t, want, l, base)
			noise := bytes.Repeat([]byte{0, 0, 0, 0, 1, 0, 0, 0}, 100)
			got, tab, err := kimage.ParseKallsyms(slices.Concat(noise, blob, noise), base-uint64(len(noise)))
			if err != nil {
				t.Fatal(err)
			}
			if !slices.Equal(got, want) {
				t.Fatalf("decoded %d symbols, want %d:\n got %v\nwant %v", len(got), len(want), got[:min(8, len(got))], want[:8])
			}
			if tab.BaseRelative == l.absolute || tab.AbsolutePercpu != (l.percpu && !l.absolute) ||
				(tab.SeqsOfNames != 0) != l.seqs || tab.MarkerSize != map[bool]int{false: 4, true: 8}[l.marker8] {
				t.Errorf("tables %v do not match layout %+v", tab, l)
			}
		})
	}
}

// TestParseKallsymsDamaged checks that each table's consistency check
// rejects damage rather than decoding garbage.
func TestParseKallsymsDamaged(t *testing.T) {
	syms := synthSymbols()
	const base = 0xffffffff82100000
	blob := synthKallsyms(t, syms, synthLayouts[1], base)
	_, tab, err := kimage.ParseKallsyms(blob, base)
	if err != nil {
		t.Fatal(err)
	}
	at := func(a uint64) int { return int(a - base) }
	cases := []struct {
		name string
		off  int
		val  byte
	}{
		{"token index not increasing", at(tab.TokenIndex) + 2*100, 0xff},
		{"token not printable", at(tab.TokenTable) + 1, 0x60},
		{"marker off by one", at(tab.Markers) + 4, 0x01},
		{"num_syms", at(tab.Names) - 8, 0x33},
		{"name length", at(tab.Names), 0x7f},
		{"seqs not a permutation", int(tab.SeqsOfNames-base) + 2, 0x02},
		{"offsets out of order", at(tab.Offsets) + 4*10 + 3, 0x80},
		{"first relative offset not -1", at(tab.Offsets) + 4*4, 0x02},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			bad := slices.Clone(blob)
			bad[c.off] ^= c.val
			got, _, err := kimage.ParseKallsyms(bad, base)
			if err == nil {
				if slices.Equal(got, syms) {
					t.Skip("damage did not change the decode")
				}
				t.Fatalf("damaged tables decoded without error to %d symbols", len(got))
			}
			if !errors.Is(err, kimage.ErrNoKallsyms) {
				t.Errorf("error %v does not wrap ErrNoKallsyms", err)
			}
			t.Log(err)
		})
	}
	if _, _, err := kimage.ParseKallsyms(blob[:len(blob)/2], base); !errors.Is(err, kimage.ErrNoKallsyms) {
		t.Errorf("half the tables: %v", err)
	}
	if _, _, err := kimage.ParseKallsyms(nil, 0); !errors.Is(err, kimage.ErrNoKallsyms) {
		t.Errorf("no data: %v", err)
	}
}
