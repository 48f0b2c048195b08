package loader

import (
	"encoding/binary"
	"fmt"
	"testing"

	"github.com/lucos/lucos/kimage"
)

// fakeKernel is a Target backed by the real kernel image's symbols and
// BTF (slide 0) and a small fake memory: every text symbol starts with the
// ftrace NOP, as in the running kernel, unless mem says otherwise.
type fakeKernel struct {
	img     *kimage.Image
	release string
	mem     map[uint64][]byte // explicit contents, by start address
	reads   []uint64          // addresses read, for tests that check what was read
}

func newFakeKernel(t testing.TB, img *kimage.Image) *fakeKernel {
	t.Helper()
	k := &fakeKernel{img: img, release: img.Release, mem: map[uint64][]byte{}}
	// x86_return_thunk points at the default thunk (no RETHUNK mitigation).
	k.put64(k.addr(t, "x86_return_thunk"), k.addr(t, "__x86_return_thunk"))
	// The guest CPU: X86_FEATURE_ALWAYS and CX16, no AVX2.
	k.setFeatures(t, map[int]bool{featureAlways: true, featureCX16: true})
	return k
}

// Feature bits of Linux 6.1 (arch/x86/include/asm/cpufeatures.h).
const (
	featureCX16   = 4*32 + 13
	featureAlways = 3*32 + 21
	featureAVX2   = 9*32 + 5
)

func (k *fakeKernel) addr(t testing.TB, name string) uint64 {
	t.Helper()
	_, a, err := k.Symbol(name, 0)
	if err != nil {
		t.Fatal(err)
	}
	return a
}

func (k *fakeKernel) put64(addr, v uint64) {
	k.mem[addr] = binary.LittleEndian.AppendUint64(nil, v)
}

func (k *fakeKernel) put32(addr uint64, v uint32) {
	k.mem[addr] = binary.LittleEndian.AppendUint32(nil, v)
}

// setFeatures makes boot_cpu_data.x86_capability hold exactly bits.
func (k *fakeKernel) setFeatures(t testing.TB, bits map[int]bool) {
	t.Helper()
	off, err := k.img.FieldOffset("cpuinfo_x86", "x86_capability")
	if err != nil {
		t.Fatal(err)
	}
	base := k.addr(t, "boot_cpu_data") + off
	words := make([]byte, 4*24)
	for b, on := range bits {
		if on {
			words[4*(b/32)+b/8%4] |= 1 << (b % 8)
		}
	}
	k.mem[base] = words
}

func (k *fakeKernel) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	s, err := k.img.Symbols.Find(name, pos)
	return s, s.Addr, err
}

func (k *fakeKernel) ReadVirt(va uint64, buf []byte) error {
	k.reads = append(k.reads, va)
	for start, b := range k.mem {
		if va >= start && va-start < uint64(len(b)) && uint64(len(buf)) <= uint64(len(b))-(va-start) {
			copy(buf, b[va-start:])
			return nil
		}
	}
	if s, off, ok := k.img.Symbols.At(va); ok && off == 0 && s.Text() && len(buf) <= 5 {
		copy(buf, ftraceNOP[:])
		return nil
	}
	// Static keys and other data default to zero, as in .bss.
	if s, _, ok := k.img.Symbols.At(va); ok && !s.Text() {
		clear(buf)
		return nil
	}
	return fmt.Errorf("fake kernel: no memory at %#x", va)
}

func (k *fakeKernel) Release() string { return k.release }
func (k *fakeKernel) FieldOffset(typ, path string) (uint64, error) {
	return k.img.FieldOffset(typ, path)
}
func (k *fakeKernel) Sizeof(typ string) (uint64, error) { return k.img.Sizeof(typ) }

// emptyKernel is a Target without an image, for fuzzing Link: every name
// resolves near the slot and memory reads as the ftrace NOP.
type emptyKernel struct{ release string }

func (k emptyKernel) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	// Every name resolves, near the slot, so linking gets as far as it can.
	return kimage.Symbol{Name: name, Addr: 0xffffffff81000000, Type: 'T', Size: 64, Pos: 1}, 0xffffffff81000000, nil
}

func (k emptyKernel) ReadVirt(va uint64, buf []byte) error {
	if len(buf) == 8 { // a pointer (x86_return_thunk)
		binary.LittleEndian.PutUint64(buf, 0xffffffff81000000)
		return nil
	}
	for i := range buf {
		buf[i] = ftraceNOP[i%5]
	}
	return nil
}

func (k emptyKernel) Release() string { return k.release }

// emptyBTF is enough of Linux 6.1's BTF for the fix-ups to run.
var emptyBTF = map[string]uint64{
	"alt_instr.instr_offset": 0, "alt_instr.repl_offset": 4, "alt_instr.cpuid": 8,
	"alt_instr.instrlen": 10, "alt_instr.replacementlen": 11,
	"jump_entry.code": 0, "jump_entry.target": 4, "jump_entry.key": 8,
	"static_key.enabled":      0,
	"bug_entry.bug_addr_disp": 0, "bug_entry.file_disp": 4, "bug_entry.line": 8, "bug_entry.flags": 10,
	"cpuinfo_x86.x86_capability": 0x40,
}

var emptySizes = map[string]uint64{"alt_instr": 12, "jump_entry": 16, "static_key": 16, "bug_entry": 12}

func (k emptyKernel) FieldOffset(typ, path string) (uint64, error) {
	if o, ok := emptyBTF[typ+"."+path]; ok {
		return o, nil
	}
	var i int
	if _, err := fmt.Sscanf(path, "x86_capability[%d]", &i); err == nil && typ == "cpuinfo_x86" && i >= 0 && i < 24 {
		return 0x40 + 4*uint64(i), nil
	}
	return 0, fmt.Errorf("no BTF for %s.%s: %w", typ, path, kimage.ErrNotFound)
}

func (k emptyKernel) Sizeof(typ string) (uint64, error) {
	if n, ok := emptySizes[typ]; ok {
		return n, nil
	}
	return 0, fmt.Errorf("no BTF for %s: %w", typ, kimage.ErrNotFound)
}
