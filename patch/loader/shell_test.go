package loader

import (
	"bytes"
	"debug/elf"
	"encoding/binary"
	"slices"
	"strings"
	"testing"
)

// putRel32 writes at b[off:] the self-relative field (at addr+off) pointing at target.
func putRel32(t *testing.T, b []byte, addr, off, target uint64) {
	t.Helper()
	if !setRel32(b[off:off+4], addr+off, target) {
		t.Fatalf("target %#x out of reach of %#x", target, addr+off)
	}
}

// An exception table comes out sorted by instruction; every entry keeps
// its instruction, fixup and data (absolute) wherever it lands, and the
// dropped entry is gone with its bytes.
func TestSortExTable(t *testing.T) {
	const addr = 0xffffffffa0201000
	const text = 0xffffffffa0200000
	type ent struct{ insn, fixup, data uint64 }
	in := []ent{{text + 0x90, text + 0x200, 0x11}, {text + 0x10, text + 0x210, 0x22}, {text + 0x400, text + 0x220, 0x33},
		{text + 0x50, text + 0x230, 0x44}, {text + 0x20, text + 0x240, 0x55}}
	b := make([]byte, 12*len(in))
	for i, e := range in {
		putRel32(t, b, addr, uint64(12*i), e.insn)
		putRel32(t, b, addr, uint64(12*i+4), e.fixup)
		binary.LittleEndian.PutUint32(b[12*i+8:], uint32(e.data))
	}
	n, err := sortExTable(b, addr, 12, 0, 4, func(i int) bool { return i != 2 })
	if err != nil || n != 4 {
		t.Fatalf("sortExTable: %d, %v", n, err)
	}
	want := []ent{in[1], in[4], in[3], in[0]}
	for i, w := range want {
		got := ent{rel32Dest(addr+uint64(12*i), b[12*i:]), rel32Dest(addr+uint64(12*i+4), b[12*i+4:]),
			uint64(binary.LittleEndian.Uint32(b[12*i+8:]))}
		if got != w {
			t.Errorf("entry %d: %#x, want %#x", i, got, w)
		}
	}
	if !bytes.Equal(b[48:], make([]byte, 12)) {
		t.Errorf("the tail after the kept entries is % x, want zeros", b[48:])
	}
}

// orc makes a 6-byte ORC entry: sp_reg and end as given, the offsets tell
// the entries apart.
func orc(spOffset int16, spReg byte, end bool) []byte {
	e := make([]byte, orcEntrySize)
	binary.LittleEndian.PutUint16(e, uint16(spOffset))
	e[orcRegByte] = spReg
	if end {
		e[orcEndByte] = orcEndBit
	}
	return e
}

// The ORC tables are sorted pairwise by address; at one address a
// section terminator (sp_reg undefined, not end) goes first, so that the
// kernel's lookup (the last entry not after an address) takes the real one.
func TestSortORC(t *testing.T) {
	const ipAddr = 0xffffffffa0203000
	const text = 0xffffffffa0200000
	type pair struct {
		ip  uint64
		orc []byte
	}
	in := []pair{
		{text + 0x30, orc(8, 5, false)},
		{text + 0x100, orc(16, 5, false)}, // a real entry ...
		{text + 0x100, orc(0, 0, false)},  // ... and a terminator at the same address
		{text + 0x00, orc(8, 5, false)},
		{text + 0x80, orc(0, 0, true)}, // undefined but end: not a terminator
		{text + 0x200, orc(24, 5, false)},
		{text + 0x10, orc(32, 5, false)},
	}
	ip := make([]byte, 4*len(in))
	u := make([]byte, orcEntrySize*len(in))
	for i, p := range in {
		putRel32(t, ip, ipAddr, uint64(4*i), p.ip)
		copy(u[orcEntrySize*i:], p.orc)
	}
	n, err := sortORC(ip, ipAddr, u, func(i int) bool { return i != 5 })
	if err != nil || n != 6 {
		t.Fatalf("sortORC: %d, %v", n, err)
	}
	want := []pair{in[3], in[6], in[0], in[4], in[2], in[1]}
	for i, w := range want {
		gotIP := rel32Dest(ipAddr+uint64(4*i), ip[4*i:])
		if gotOrc := u[orcEntrySize*i : orcEntrySize*(i+1)]; gotIP != w.ip || !bytes.Equal(gotOrc, w.orc) {
			t.Errorf("entry %d: %#x % x, want %#x % x", i, gotIP, gotOrc, w.ip, w.orc)
		}
	}
	if !bytes.Equal(ip[4*n:], make([]byte, 4)) || !bytes.Equal(u[orcEntrySize*n:], make([]byte, orcEntrySize)) {
		t.Errorf("tails not zeroed: % x / % x", ip[4*n:], u[orcEntrySize*n:])
	}
	if _, err := sortORC(ip[:8], ipAddr, u, func(int) bool { return true }); err == nil {
		t.Error("tables of different lengths accepted")
	}
}

// A bug table loses the dropped entries, and the others keep their site
// and file, and the absolute line and flags.
func TestCompactTable(t *testing.T) {
	const addr = 0xffffffffa0204000
	tb := relTable{addr: addr, size: 12, rel: []uint64{0, 4}}
	b := make([]byte, 36)
	for i := uint64(0); i < 3; i++ {
		putRel32(t, b, addr, 12*i, 0xffffffffa0200000+0x10*i)
		putRel32(t, b, addr, 12*i+4, 0xffffffffa0202000+i)
		binary.LittleEndian.PutUint16(b[12*i+8:], uint16(100+i))
		binary.LittleEndian.PutUint16(b[12*i+10:], uint16(i))
	}
	n, err := compactTable(b, tb, func(i int) bool { return i != 0 })
	if err != nil || n != 2 {
		t.Fatalf("compactTable: %d, %v", n, err)
	}
	for i := uint64(0); i < 2; i++ {
		site, file := rel32Dest(addr+12*i, b[12*i:]), rel32Dest(addr+12*i+4, b[12*i+4:])
		line, flags := binary.LittleEndian.Uint16(b[12*i+8:]), binary.LittleEndian.Uint16(b[12*i+10:])
		if site != 0xffffffffa0200000+0x10*(i+1) || file != 0xffffffffa0202000+i+1 || line != uint16(101+i) || flags != uint16(i+1) {
			t.Errorf("entry %d: site %#x file %#x line %d flags %d", i, site, file, line, flags)
		}
	}
}

// The kallsyms tables are what struct mod_kallsyms points to: Elf64_Sym
// entries after a null one, names at their st_name, one letter each.
func TestKallsymsTables(t *testing.T) {
	const addr = 0xffffffffa0205008
	syms := []kallsym{
		{name: "new_fn", value: 0xffffffffa0201000, size: 0x40, info: byte(elf.STB_LOCAL)<<4 | byte(elf.STT_FUNC), shndx: 3, typ: 't'},
		{name: "__lucos_call_done", value: 0xffffffffa0206000, size: 8, info: byte(elf.STB_GLOBAL)<<4 | byte(elf.STT_OBJECT), shndx: 9, typ: 'b'},
		{name: "x", value: 0xffffffffa0204000, size: 4, info: byte(elf.STB_LOCAL)<<4 | byte(elf.STT_OBJECT), shndx: 5, typ: 'r'},
	}
	block, symtab, typetab, strtab := kallsymsTables(syms, addr)
	if uint64(len(block)) != kallsymsSize(syms) || symtab != addr || typetab != addr+24*4 || strtab != typetab+4 {
		t.Fatalf("block of %d bytes (want %d), tables at %#x %#x %#x", len(block), kallsymsSize(syms), symtab, typetab, strtab)
	}
	if !bytes.Equal(block[:24], make([]byte, 24)) {
		t.Errorf("symbol 0 is % x, want the null symbol", block[:24])
	}
	names := block[strtab-addr:]
	if names[0] != 0 || string(block[typetab-addr:strtab-addr]) != "Utbr" {
		t.Errorf("strtab starts %q, typetab %q", names[:1], block[typetab-addr:strtab-addr])
	}
	for i, s := range syms {
		e := block[24*(i+1):]
		nameOff := binary.LittleEndian.Uint32(e)
		end := bytes.IndexByte(names[nameOff:], 0)
		if got := string(names[nameOff : int(nameOff)+end]); got != s.name {
			t.Errorf("symbol %d: name %q, want %q", i+1, got, s.name)
		}
		if e[4] != s.info || binary.LittleEndian.Uint16(e[6:]) != s.shndx ||
			binary.LittleEndian.Uint64(e[8:]) != s.value || binary.LittleEndian.Uint64(e[16:]) != s.size {
			t.Errorf("symbol %d: % x", i+1, e[:24])
		}
	}
	if got := names[len(names)-1]; got != 0 || len(names) != 1+len("new_fn")+1+len("__lucos_call_done")+1+len("x")+1 {
		t.Errorf("strtab %q", names)
	}
}

// The letters are the kernel's (elf_type), in lower case: nothing of a
// patch is exported.
func TestKallsymsType(t *testing.T) {
	text := &section{flags: elf.SHF_ALLOC | elf.SHF_EXECINSTR, typ: elf.SHT_PROGBITS}
	ro := &section{flags: elf.SHF_ALLOC, typ: elf.SHT_PROGBITS}
	data := &section{flags: elf.SHF_ALLOC | elf.SHF_WRITE, typ: elf.SHT_PROGBITS}
	bss := &section{flags: elf.SHF_ALLOC | elf.SHF_WRITE, typ: elf.SHT_NOBITS}
	for _, c := range []struct {
		sym  symbol
		sec  *section
		want byte
	}{
		{symbol{bind: elf.STB_LOCAL, typ: elf.STT_FUNC}, text, 't'},
		{symbol{bind: elf.STB_GLOBAL, typ: elf.STT_FUNC}, text, 't'},
		{symbol{bind: elf.STB_LOCAL, typ: elf.STT_OBJECT}, ro, 'r'},
		{symbol{bind: elf.STB_GLOBAL, typ: elf.STT_OBJECT}, data, 'd'},
		{symbol{bind: elf.STB_LOCAL, typ: elf.STT_OBJECT}, bss, 'b'},
		{symbol{bind: elf.STB_WEAK, typ: elf.STT_OBJECT}, data, 'v'},
		{symbol{bind: elf.STB_WEAK, typ: elf.STT_FUNC}, text, 'w'},
	} {
		if got := kallsymsType(c.sym, c.sec); got != c.want {
			t.Errorf("%v %v in %v: %c, want %c", c.sym.bind, c.sym.typ, c.sec.flags, got, c.want)
		}
	}
}

func TestShellName(t *testing.T) {
	long := "lucos_" + strings.Repeat("a", 49) // 55: MODULE_NAME_LEN - 1
	for _, c := range []struct {
		mod, patch string
		taken      []string
		want       string
	}{
		{"lucos_user_fault", "user-fault", nil, "lucos_user_fault"},
		{"", "user-fault.v2", nil, "lucos_user_fault_v2"},
		{"lucos_bugs", "bugs", []string{"lucos_bugs", "ext4"}, "lucos_bugs_2"},
		{"lucos_x", "x", []string{"lucos_x", "lucos_x_2"}, "lucos_x_3"},
		{long, "a", []string{long}, long[:53] + "_2"},
	} {
		if got := shellName(c.mod, c.patch, c.taken); got != c.want || len(got) > moduleNameLen-1 {
			t.Errorf("shellName(%q, %q, %q) = %q, want %q", c.mod, c.patch, c.taken, got, c.want)
		}
	}
}

// namedTarget is a Target whose guest has loaded modules of these names.
type namedTarget struct {
	Target
	names []string
}

func (t namedTarget) ModuleNames() []string { return t.names }

// TestLinkShell links a patch with the runtime: the shell's descriptor
// says where the sorted tables are, each table describes the linked code,
// exit code is in none of them, WARN stays a ud2, and the name is unique.
func TestLinkShell(t *testing.T) {
	m, k, base := offline(t, "rt_shell")
	if m.shell == nil || m.ModName != "rt_shell" {
		t.Fatalf("shell %+v, module name %q", m.shell, m.ModName)
	}
	im, err := m.Link(namedTarget{k, []string{"rt_shell", "ext4"}}, base, slot)
	if err != nil {
		t.Fatal(err)
	}
	sh := im.Shell
	if sh == nil {
		t.Fatal("no shell")
	}
	t.Logf("shell %+v", *sh)
	if sh.Name != "rt_shell_2" || sh.Base != base || sh.Size != im.Size || sh.TextSize == 0 || sh.TextSize%PageSize != 0 ||
		sh.ROSize <= sh.TextSize || sh.ROSize > sh.Size || sh.ExTable != 1 || sh.Bugs != 2 || sh.ORC == 0 || sh.Symbols == 0 {
		t.Errorf("shell %+v", *sh)
	}
	if len(im.Warnings) != 0 {
		t.Errorf("WARN sites silenced with a shell: %+v", im.Warnings)
	}
	for _, s := range im.Sections {
		if s.Addr < sh.Base || s.Addr+s.Size > sh.Base+sh.Size {
			t.Errorf("section %s outside the module's range", s.Name)
		}
		if (s.Perm == RX) != (s.Addr < sh.Base+sh.TextSize) || (s.Perm == RO) != (s.Addr >= sh.Base+sh.TextSize && s.Addr < sh.Base+sh.ROSize) {
			t.Errorf("section %s (%v) at %#x, text ends %#x, read-only data %#x", s.Name, s.Perm, s.Addr, sh.Base+sh.TextSize, sh.Base+sh.ROSize)
		}
	}
	// The descriptor, as the runtime reads it.
	desc, _ := im.Symbol(rtShell)
	d, ok := im.Read(desc.Addr, shellDescSize)
	if !ok {
		t.Fatal("descriptor outside the image")
	}
	f := func(i int) uint64 { return binary.LittleEndian.Uint64(d[8*i:]) }
	if f(0) != sh.Base || f(1) != sh.Size || f(2) != sh.TextSize || f(3) != sh.ROSize || f(5) != 1 || f(8) != uint64(sh.ORC) ||
		f(12) != uint64(sh.Symbols+1) || f(14) != 2 || f(15) != 0 || string(d[shellNameOff:shellNameOff+len(sh.Name)+1]) != sh.Name+"\x00" {
		t.Errorf("descriptor % x", d)
	}
	section := func(name string) Section {
		i := slices.IndexFunc(im.Sections, func(s Section) bool { return s.Name == name })
		if i < 0 {
			t.Fatalf("no section %s", name)
		}
		return im.Sections[i]
	}
	if ex, orcIP, orcU, bugs := section("__ex_table"), section(".orc_unwind_ip"), section(".orc_unwind"), section("__bug_table"); f(4) != ex.Addr ||
		f(6) != orcIP.Addr || f(7) != orcU.Addr || f(13) != bugs.Addr || bugs.Perm != RW || ex.Perm != RO || orcIP.Perm != RO {
		t.Errorf("descriptor's tables %#x %#x %#x %#x; sections %+v %+v %+v %+v", f(4), f(6), f(7), f(13), ex, orcIP, orcU, bugs)
	}
	// The exception entry is rt_shell_read's load, its fixup in the same function.
	read, _ := im.Symbol("rt_shell_read")
	e, _ := im.Read(f(4), 12)
	insn, fixup := rel32Dest(f(4), e), rel32Dest(f(4)+4, e[4:])
	if insn < read.Addr || insn >= read.Addr+read.Size || fixup < read.Addr || fixup >= read.Addr+read.Size {
		t.Errorf("exception entry %#x → %#x, rt_shell_read is %#x+%#x", insn, fixup, read.Addr, read.Size)
	}
	code, _ := im.Read(insn, 3)
	t.Logf("faulting instruction at %#x: % x", insn, code)
	// ORC addresses are sorted and all in the code (or at a section's end).
	ips, _ := im.Read(f(6), 4*sh.ORC)
	prev := uint64(0)
	for i := 0; i < sh.ORC; i++ {
		a := rel32Dest(f(6)+uint64(4*i), ips[4*i:])
		if a < prev || a < sh.Base || a > sh.Base+sh.TextSize {
			t.Errorf("ORC entry %d at %#x (previous %#x, text %#x+%#x)", i, a, prev, sh.Base, sh.TextSize)
		}
		prev = a
	}
	// Bug sites: the WARN_ON_ONCE and the BUG_ON of new_cmdline_proc_show, ud2 each.
	fn, _ := im.Symbol("new_cmdline_proc_show")
	bt, _ := im.Read(f(13), 24)
	for i := uint64(0); i < 2; i++ {
		site := rel32Dest(f(13)+12*i, bt[12*i:])
		if b, _ := im.Read(site, 2); !bytes.Equal(b, ud2) || site < fn.Addr || site >= fn.Addr+fn.Size {
			t.Errorf("bug site %d at %#x holds % x (new_cmdline_proc_show %#x+%#x)", i, site, b, fn.Addr, fn.Size)
		}
	}
	// kallsyms names the patch's functions at their addresses, exit code not.
	ks := section(kallsymsBlobName)
	if ks.Perm != RO || f(9) != ks.Addr {
		t.Errorf("kallsyms %+v, descriptor symtab %#x", ks, f(9))
	}
	syms := readShellKallsyms(t, im, f(9), f(10), f(11), int(f(12)))
	for _, want := range []string{"new_cmdline_proc_show", "rt_shell_read", "__lucos_call"} {
		s, _ := im.Symbol(want)
		if got, ok := syms[want]; !ok || got.addr != s.Addr || got.typ != 't' {
			t.Errorf("kallsyms %s: %+v, want %#x t", want, got, s.Addr)
		}
	}
	if _, ok := syms["rt_shell_exit"]; ok {
		t.Error("kallsyms lists exit code")
	}
	if got := syms["__lucos_shell"]; got.typ != 'b' {
		t.Errorf("__lucos_shell is %c, want b", got.typ)
	}
}

type shellSym struct {
	addr uint64
	typ  byte
}

// readShellKallsyms reads the shell's kallsyms tables out of the image, as
// the kernel's module_get_kallsym does.
func readShellKallsyms(t *testing.T, im *Image, symtab, strtab, typetab uint64, n int) map[string]shellSym {
	t.Helper()
	st, ok1 := im.Read(symtab, 24*n)
	ty, ok2 := im.Read(typetab, n)
	if !ok1 || !ok2 {
		t.Fatal("kallsyms tables outside the image")
	}
	out := map[string]shellSym{}
	for i := 1; i < n; i++ {
		e := st[24*i:]
		var name []byte
		for a := strtab + uint64(binary.LittleEndian.Uint32(e)); ; a++ {
			c, ok := im.Read(a, 1)
			if !ok || c[0] == 0 {
				break
			}
			name = append(name, c[0])
		}
		if binary.LittleEndian.Uint16(e[6:]) == uint16(elf.SHN_UNDEF) {
			t.Errorf("symbol %s is SHN_UNDEF", name)
		}
		out[string(name)] = shellSym{binary.LittleEndian.Uint64(e[8:]), ty[i]}
	}
	return out
}

// A guest whose struct mod_tree_root differs from the runtime's is refused.
func TestRefuseShellLayout(t *testing.T) {
	m, k, base := offline(t, "rt_shell")
	m.shell.layout.addrMin = 16
	_, err := m.Link(k, base, slot)
	refusal(t, err, rtShellLayout, "mod_tree", "mod_tree_root", "addr_min at 16", "BTF")
}
