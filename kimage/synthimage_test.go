package kimage_test

import (
	"bytes"
	"encoding/binary"
	"testing"

	"github.com/cilium/ebpf/btf"
)

// synthBTFTypes mirrors the shapes FieldOffset must handle in the kernel's
// task_struct (an anonymous union, nested structs, arrays, pointers, a
// bitfield), with made-up offsets.
func synthBTFTypes() []btf.Type {
	u32 := &btf.Int{Name: "unsigned int", Size: 4}
	u64 := &btf.Int{Name: "long unsigned int", Size: 8}
	char := &btf.Int{Name: "char", Size: 1, Encoding: btf.Signed}
	listHead := &btf.Struct{Name: "list_head", Size: 16}
	listHead.Members = []btf.Member{
		{Name: "next", Type: &btf.Pointer{Target: listHead}, Offset: 0},
		{Name: "prev", Type: &btf.Pointer{Target: listHead}, Offset: 64},
	}
	thread := &btf.Struct{Name: "thread_struct", Size: 24, Members: []btf.Member{
		{Name: "es", Type: &btf.Int{Name: "short unsigned int", Size: 2}, Offset: 0},
		{Name: "sp", Type: u64, Offset: 64},
		{Name: "fsbase", Type: u64, Offset: 128},
	}}
	mm := &btf.Struct{Name: "mm_struct", Size: 8, Members: []btf.Member{{Name: "pgd", Type: u64}}}
	task := &btf.Struct{Name: "task_struct", Size: 136, Members: []btf.Member{
		{Name: "", Type: &btf.Union{Size: 4, Members: []btf.Member{
			{Name: "__state", Type: &btf.Volatile{Type: u32}},
			{Name: "", Type: &btf.Struct{Size: 4, Members: []btf.Member{{Name: "state_lo", Type: u32}}}},
		}}, Offset: 0},
		{Name: "stack", Type: &btf.Pointer{Target: &btf.Void{}}, Offset: 64},
		{Name: "in_execve", Type: u32, Offset: 128, BitfieldSize: 1},
		{Name: "in_iowait", Type: u32, Offset: 129, BitfieldSize: 1},
		{Name: "tasks", Type: listHead, Offset: 192},
		{Name: "comm", Type: &btf.Array{Index: u32, Type: char, Nelems: 16}, Offset: 320},
		{Name: "mm", Type: &btf.Pointer{Target: mm}, Offset: 448},
		{Name: "thread", Type: &btf.Typedef{Name: "thread_t", Type: thread}, Offset: 512},
		{Name: "stacks", Type: &btf.Array{Index: u32, Type: thread, Nelems: 2}, Offset: 704},
	}}
	// A typedef sharing the struct's name, as `typedef struct x x;` makes.
	dup := &btf.Typedef{Name: "list_head", Type: listHead}
	return []btf.Type{task, dup, &btf.Fwd{Name: "mm_struct"}}
}

func synthBTF(t testing.TB) []byte {
	t.Helper()
	b, err := btf.NewBuilder(synthBTFTypes(), nil)
	if err != nil {
		t.Fatal(err)
	}
	raw, err := b.Marshal(nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	return raw
}

// synthSection is one section of a synthetic vmlinux.
type synthSection struct {
	name  string
	typ   uint32 // SHT_PROGBITS = 1, SHT_NOBITS = 8
	flags uint64 // SHF_WRITE 1, SHF_ALLOC 2, SHF_EXECINSTR 4
	addr  uint64
	data  []byte
	size  uint64 // for NOBITS
	link  uint32
}

// synthSym is a .symtab entry; shndx 1 is the first of synthELF's sections.
type synthSym struct {
	name        string
	value, size uint64
	info        byte // bind<<4 | type
	shndx       uint16
}

// synthELF writes a minimal ELF64 little-endian x86-64 executable with the
// given sections and a section-name table, and with syms a .symtab: enough
// for debug/elf.
func synthELF(secs []synthSection, syms ...synthSym) []byte {
	le := binary.LittleEndian
	if len(syms) > 0 {
		var strtab bytes.Buffer
		strtab.WriteByte(0)
		symtab := make([]byte, 24) // the null symbol
		for _, s := range syms {
			var e [24]byte
			le.PutUint32(e[0:], uint32(strtab.Len()))
			strtab.WriteString(s.name)
			strtab.WriteByte(0)
			e[4] = s.info
			le.PutUint16(e[6:], s.shndx)
			le.PutUint64(e[8:], s.value)
			le.PutUint64(e[16:], s.size)
			symtab = append(symtab, e[:]...)
		}
		secs = append(secs,
			synthSection{name: ".symtab", typ: 2, data: symtab, link: uint32(len(secs) + 2)},
			synthSection{name: ".strtab", typ: 3, data: strtab.Bytes()})
	}
	var shstr bytes.Buffer
	shstr.WriteByte(0)
	names := make([]uint32, len(secs)+1)
	for i, s := range secs {
		names[i] = uint32(shstr.Len())
		shstr.WriteString(s.name)
		shstr.WriteByte(0)
	}
	names[len(secs)] = uint32(shstr.Len())
	shstr.WriteString(".shstrtab\x00")
	secs = append(secs, synthSection{name: ".shstrtab", typ: 3, data: shstr.Bytes()})

	var body bytes.Buffer
	body.Write(make([]byte, 64))
	offs := make([]uint64, len(secs))
	for i, s := range secs {
		for body.Len()%16 != 0 {
			body.WriteByte(0)
		}
		offs[i] = uint64(body.Len())
		if s.typ != 8 {
			body.Write(s.data)
		}
	}
	for body.Len()%8 != 0 {
		body.WriteByte(0)
	}
	shoff := uint64(body.Len())
	body.Write(make([]byte, 64)) // the null section
	for i, s := range secs {
		size := uint64(len(s.data))
		if s.typ == 8 {
			size = s.size
		}
		var sh [64]byte
		le.PutUint32(sh[0:], names[i])
		le.PutUint32(sh[4:], s.typ)
		le.PutUint64(sh[8:], s.flags)
		le.PutUint64(sh[16:], s.addr)
		le.PutUint64(sh[24:], offs[i])
		le.PutUint64(sh[32:], size)
		le.PutUint32(sh[40:], s.link)
		le.PutUint64(sh[48:], 1) // addralign
		if s.typ == 2 {
			le.PutUint32(sh[44:], 1) // first global symbol
			le.PutUint64(sh[56:], 24)
		}
		body.Write(sh[:])
	}
	out := body.Bytes()
	copy(out, "\x7fELF\x02\x01\x01")
	le.PutUint16(out[16:], 2)  // ET_EXEC
	le.PutUint16(out[18:], 62) // EM_X86_64
	le.PutUint32(out[20:], 1)
	le.PutUint64(out[40:], shoff)
	le.PutUint16(out[52:], 64) // ehsize
	le.PutUint16(out[58:], 64) // shentsize
	le.PutUint16(out[60:], uint16(len(secs)+1))
	le.PutUint16(out[62:], uint16(len(secs))) // shstrndx
	return out
}

const synthBanner = "Linux version 6.1.0-99-synthetic (lucos@test) (gcc) #1 SMP\n"

// synthVmlinux is a small kernel whose symbols are synthSymbols: code in
// .text, the kallsyms tables and linux_banner in .rodata, per-CPU data at
// address 0, and BTF.
func synthVmlinux(t testing.TB) []byte {
	t.Helper()
	const rodata = 0xffffffff82000000
	syms := synthSymbols()
	// linux_banner is the first thing in .rodata; the tables follow it.
	banner := make([]byte, 0x100)
	copy(banner, synthBanner)
	tables := synthKallsyms(t, syms, synthLayouts[1], rodata+uint64(len(banner)))
	return synthELF([]synthSection{
		{name: ".text", typ: 1, flags: 6, addr: 0xffffffff81000000, data: make([]byte, 0x5000)},
		{name: ".rodata", typ: 1, flags: 2, addr: rodata, data: append(banner, tables...)},
		{name: ".data", typ: 1, flags: 3, addr: 0xffffffff82a00000, data: make([]byte, 0x1000)},
		{name: ".data..percpu", typ: 1, flags: 3, addr: 0, data: make([]byte, 0x34000)},
		{name: ".BTF", typ: 1, flags: 2, addr: 0xffffffff82800000, data: synthBTF(t)},
		{name: ".bss", typ: 8, flags: 3, addr: 0xffffffff83000000, size: 0x100000},
	})
}

// synthBzImage wraps a compressed payload (with the kernel's size trailer
// already appended) in a boot-protocol 2.15 header.
func synthBzImage(payload []byte, version string) []byte {
	le := binary.LittleEndian
	const setupSects = 1
	img := make([]byte, (setupSects+1)*512)
	img[0x1f1] = setupSects
	le.PutUint16(img[0x1fe:], 0xaa55)
	copy(img[0x202:], "HdrS")
	le.PutUint16(img[0x206:], 0x020f)
	copy(img[0x300:], version+"\x00")
	le.PutUint16(img[0x20e:], 0x300-0x200)
	img[0x211] = 1                   // LOADED_HIGH
	le.PutUint32(img[0x248:], 0x200) // payload_offset, from the protected-mode code
	le.PutUint32(img[0x24c:], uint32(len(payload)))
	img = append(img, make([]byte, 0x200)...) // stand-in for the decompressor
	return append(img, payload...)
}

// withSizeTrailer appends the uncompressed size, as the kernel's build does.
func withSizeTrailer(compressed []byte, size int) []byte {
	return binary.LittleEndian.AppendUint32(bytes.Clone(compressed), uint32(size))
}
