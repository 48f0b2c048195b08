package introspect

import (
	"encoding/binary"
	"errors"
	"fmt"
	"sort"
	"sync"

	"github.com/cilium/ebpf/btf"
	"github.com/lucos/lucos/kimage"
)

// The kernel's ORC unwind tables, read from the running guest (the ones it
// unwinds with): vmlinux's __start_orc_unwind_ip..__stop_orc_unwind_ip and
// __start_orc_unwind, sorted at build time (scripts/sorttable), and each
// module's mod->arch.orc_unwind_ip / orc_unwind / num_orcs, sorted when the
// module loaded — lucos patches among them, through their module shell.
// An .orc_unwind_ip entry is an int32 relative to its own address; the
// entry for an address is the last one at or below it (__orc_find in
// arch/x86/kernel/unwind_orc.c).
//
// Written here rather than taken from a library: no Go library reads ORC.

// ORC registers (arch/x86/include/asm/orc_types.h, unchanged since 4.14).
const (
	orcRegUndefined   = 0
	orcRegPrevSP      = 1
	orcRegDX          = 2
	orcRegDI          = 3
	orcRegBP          = 4
	orcRegSP          = 5
	orcRegR10         = 6
	orcRegR13         = 7
	orcRegBPIndirect  = 8
	orcRegSPIndirect  = 9
	orcEntrySize      = 6
	maxORCEntries     = 1 << 22 // bounds a table read from the guest
	maxModuleORCBytes = 64 << 20
)

// orcType is what an ORC entry says the frame is, in lucos' own numbering:
// the kernel's values changed in 6.3 (orcFormat maps them).
type orcType uint8

const (
	orcUndefined   orcType = iota // no unwind information (6.3+: an error)
	orcEnd                        // the end of the stack (6.3+ type; 6.1: sp_reg undefined with end set)
	orcCall                       // a call frame: the return address is just below the previous SP
	orcRegs                       // a full pt_regs at the previous SP
	orcRegsPartial                // an iret frame (pt_regs from ip on) at the previous SP
)

// orcEntry is one decoded struct orc_entry.
type orcEntry struct {
	spOffset, bpOffset int16
	spReg, bpReg       uint8
	typ                orcType
}

// orcFormat is struct orc_entry's bitfields as this kernel lays them out,
// from BTF: 6.1 has type:2 and end:1 (CALL 0, REGS 1, REGS_PARTIAL 2), 6.3
// and later type:3 and signal:1 (UNDEFINED 0, END_OF_STACK 1, CALL 2,
// REGS 3, REGS_PARTIAL 4).
type orcFormat struct {
	spReg, bpReg, typ, end bitfield
	hasEnd                 bool
}

type bitfield struct{ off, size uint32 }

func (f bitfield) get(v uint64) uint64 { return v >> f.off & (1<<f.size - 1) }

func newORCFormat(spec *btf.Spec) (*orcFormat, error) {
	if spec == nil {
		return nil, kimage.ErrNoBTF
	}
	var s *btf.Struct
	if err := spec.TypeByName("orc_entry", &s); err != nil {
		return nil, fmt.Errorf("struct orc_entry: %w", err)
	}
	if s.Size != orcEntrySize {
		return nil, fmt.Errorf("struct orc_entry is %d bytes, not %d", s.Size, orcEntrySize)
	}
	f := &orcFormat{}
	found := map[string]bool{}
	for _, m := range s.Members {
		b := bitfield{uint32(m.Offset), uint32(m.BitfieldSize)}
		switch m.Name {
		case "sp_offset", "bp_offset":
			if m.BitfieldSize != 0 || m.Offset != map[string]btf.Bits{"sp_offset": 0, "bp_offset": 16}[m.Name] {
				return nil, fmt.Errorf("struct orc_entry.%s is not the int16 lucos reads", m.Name)
			}
		case "sp_reg":
			f.spReg = b
		case "bp_reg":
			f.bpReg = b
		case "type":
			f.typ = b
		case "end":
			f.end, f.hasEnd = b, true
		}
		found[m.Name] = true
	}
	for _, name := range []string{"sp_offset", "bp_offset", "sp_reg", "bp_reg", "type"} {
		if !found[name] {
			return nil, fmt.Errorf("struct orc_entry has no %s", name)
		}
	}
	for _, b := range []bitfield{f.spReg, f.bpReg, f.typ} {
		if b.size == 0 || b.off+b.size > 48 {
			return nil, errors.New("struct orc_entry: a register or type field is not a bitfield in its 6 bytes")
		}
	}
	return f, nil
}

func (f *orcFormat) decode(b []byte) orcEntry {
	var raw [8]byte
	copy(raw[:], b[:orcEntrySize])
	v := binary.LittleEndian.Uint64(raw[:])
	e := orcEntry{
		spOffset: int16(binary.LittleEndian.Uint16(b)),
		bpOffset: int16(binary.LittleEndian.Uint16(b[2:])),
		spReg:    uint8(f.spReg.get(v)),
		bpReg:    uint8(f.bpReg.get(v)),
	}
	t := f.typ.get(v)
	if f.hasEnd {
		// 6.1: UNWIND_HINT_TYPE_CALL 0, REGS 1, REGS_PARTIAL 2; the end of
		// the stack is sp_reg undefined with end set, and sp_reg undefined
		// without it is an error.
		switch {
		case e.spReg == orcRegUndefined && f.end.get(v) != 0:
			e.typ = orcEnd
		case e.spReg == orcRegUndefined:
			e.typ = orcUndefined
		case t <= 2:
			e.typ = orcCall + orcType(t)
		default:
			e.typ = orcUndefined
		}
		return e
	}
	if t <= 4 {
		e.typ = orcType(t) // ORC_TYPE_UNDEFINED 0 .. ORC_TYPE_REGS_PARTIAL 4
	}
	return e
}

// orcTable is one sorted ORC table: ips[i] is where ents[i] starts to apply.
type orcTable struct {
	lo, hi uint64 // the text it covers
	ips    []uint64
	ents   []orcEntry
}

// find returns the entry for ip: the last one at or below it.
func (t *orcTable) find(ip uint64) (orcEntry, bool) {
	i := sort.Search(len(t.ips), func(i int) bool { return t.ips[i] > ip })
	if i == 0 {
		return orcEntry{}, false
	}
	return t.ents[i-1], true
}

// parseORC decodes n entries of an .orc_unwind_ip table at ipAddr and the
// .orc_unwind table beside it.
func parseORC(f *orcFormat, ipAddr uint64, ipRaw, orcRaw []byte, lo, hi uint64) (*orcTable, error) {
	n := len(ipRaw) / 4
	if len(orcRaw) != n*orcEntrySize {
		return nil, fmt.Errorf("ORC tables disagree: %d addresses, %d bytes of entries", n, len(orcRaw))
	}
	t := &orcTable{lo: lo, hi: hi, ips: make([]uint64, n), ents: make([]orcEntry, n)}
	for i := range n {
		rel := int32(binary.LittleEndian.Uint32(ipRaw[4*i:]))
		t.ips[i] = ipAddr + uint64(4*i) + uint64(int64(rel))
		t.ents[i] = f.decode(orcRaw[orcEntrySize*i:])
	}
	if !sort.SliceIsSorted(t.ips, func(i, j int) bool { return t.ips[i] < t.ips[j] }) {
		return nil, errors.New("ORC table is not sorted")
	}
	return t, nil
}

// orcState is what the kernel knows about ORC and what lucos has read of
// it: vmlinux's table once, each module's when first seen.
type orcState struct {
	once    sync.Once
	err     error // vmlinux's table could not be read: no exact unwinding at all
	format  *orcFormat
	vmlinux *orcTable
	regs    ptRegs
	frame   inactiveFrame

	initLo, initHi uint64 // vmlinux's init text, which its table covers too

	retFromFork uint64
	hidden      map[uint64]string // trampolines that hide the real return address

	modLayout *moduleORCLayout
	mu        sync.Mutex
	modules   map[moduleORCKey]*orcTable
}

// ptRegs is where struct pt_regs keeps the registers the unwinder reads.
type ptRegs struct {
	size                             uint64
	bp, r10, r13, di, dx, ip, cs, sp uint64
}

// inactiveFrame is struct inactive_task_frame, what __switch_to_asm leaves
// at a switched-out task's thread.sp.
type inactiveFrame struct{ size, bp, retAddr uint64 }

// moduleORCLayout is where struct module keeps a module's ORC tables.
type moduleORCLayout struct {
	l                      *moduleLayout
	numOrcs, ipTab, orcTab uint64
}

type moduleORCKey struct{ mod, ipTab, num uint64 }

// PrepareUnwind reads the kernel's ORC tables now (a few MB, once) rather
// than in the first Snapshot; an error means stacks will be scanned
// conservatively.
func (k *Kernel) PrepareUnwind() error { return k.initORC().err }

// initORC reads vmlinux's ORC table from the guest, once.
func (k *Kernel) initORC() *orcState {
	o := &k.orc
	o.once.Do(func() { o.err = k.loadORC(o) })
	return o
}

func (k *Kernel) loadORC(o *orcState) error {
	var err error
	if o.format, err = newORCFormat(k.Image.BTF); err != nil {
		return err
	}
	off := func(typ, path string) uint64 {
		v, e := k.FieldOffset(typ, path)
		if e != nil && err == nil {
			err = e
		}
		return v
	}
	size := func(typ string) uint64 {
		v, e := k.Sizeof(typ)
		if e != nil && err == nil {
			err = e
		}
		return v
	}
	o.regs = ptRegs{size: size("struct pt_regs"),
		bp: off("struct pt_regs", "bp"), r10: off("struct pt_regs", "r10"), r13: off("struct pt_regs", "r13"),
		di: off("struct pt_regs", "di"), dx: off("struct pt_regs", "dx"), ip: off("struct pt_regs", "ip"),
		cs: off("struct pt_regs", "cs"), sp: off("struct pt_regs", "sp")}
	o.frame = inactiveFrame{size: size("struct inactive_task_frame"),
		bp: off("struct inactive_task_frame", "bp"), retAddr: off("struct inactive_task_frame", "ret_addr")}
	if err != nil {
		return err
	}
	addr := func(names ...string) uint64 {
		for _, n := range names {
			if a, e := k.Addr(n, 0); e == nil {
				return a
			}
		}
		if err == nil {
			err = fmt.Errorf("no symbol %s", names[0])
		}
		return 0
	}
	ipStart, ipStop, orcStart := addr("__start_orc_unwind_ip"), addr("__stop_orc_unwind_ip"), addr("__start_orc_unwind")
	o.retFromFork = addr("ret_from_fork_asm", "ret_from_fork")
	textLo, textHi := addr("_stext"), addr("_etext")
	o.initLo, o.initHi = addr("_sinittext"), addr("_einittext")
	if err != nil {
		return err
	}
	o.hidden = map[uint64]string{}
	for _, h := range []struct{ sym, what string }{
		{"return_to_handler", "the function-graph tracer"},
		{"arch_rethook_trampoline", "a kretprobe"},
		{"__kretprobe_trampoline", "a kretprobe"},
	} {
		if a, e := k.Addr(h.sym, 0); e == nil {
			o.hidden[a] = h.what
		}
	}
	if ipStop < ipStart || (ipStop-ipStart)%4 != 0 || (ipStop-ipStart)/4 > maxORCEntries {
		return fmt.Errorf("vmlinux ORC table %#x..%#x is implausible", ipStart, ipStop)
	}
	n := (ipStop - ipStart) / 4
	ipRaw, orcRaw := make([]byte, 4*n), make([]byte, orcEntrySize*n)
	if err := k.ReadVirt(ipStart, ipRaw); err != nil {
		return fmt.Errorf("read vmlinux .orc_unwind_ip: %w", err)
	}
	if err := k.ReadVirt(orcStart, orcRaw); err != nil {
		return fmt.Errorf("read vmlinux .orc_unwind: %w", err)
	}
	if o.vmlinux, err = parseORC(o.format, ipStart, ipRaw, orcRaw, textLo, textHi); err != nil {
		return fmt.Errorf("vmlinux: %w", err)
	}
	if l, e := k.moduleLayout(); e == nil {
		ml := &moduleORCLayout{l: l}
		var e1, e2, e3 error
		ml.numOrcs, e1 = k.FieldOffset("struct module", "arch.num_orcs")
		ml.ipTab, e2 = k.FieldOffset("struct module", "arch.orc_unwind_ip")
		ml.orcTab, e3 = k.FieldOffset("struct module", "arch.orc_unwind")
		if e1 == nil && e2 == nil && e3 == nil {
			o.modLayout = ml
			o.modules = map[moduleORCKey]*orcTable{}
		}
	}
	return nil
}

// moduleORC reads the ORC tables of every loaded module that has them,
// reusing those already read; call it with the VM paused.
func (k *Kernel) moduleORC(o *orcState) ([]*orcTable, error) {
	ml := o.modLayout
	if ml == nil {
		return nil, nil
	}
	head, err := k.Addr("modules", 0)
	if err != nil {
		return nil, err
	}
	o.mu.Lock()
	defer o.mu.Unlock()
	var tabs []*orcTable
	seen := map[moduleORCKey]bool{}
	err = k.walkList(head, ml.l.list, func(mod uint64) error {
		end := max(ml.l.state+4, ml.l.base+8, ml.l.size+ml.l.sizeWidth, ml.numOrcs+4, ml.ipTab+8, ml.orcTab+8)
		b := make([]byte, end)
		if err := k.ReadVirt(mod, b); err != nil {
			return fmt.Errorf("read struct module at %#x: %w", mod, err)
		}
		if uint64(binary.LittleEndian.Uint32(b[ml.l.state:])) == ml.l.unformed {
			return nil
		}
		key := moduleORCKey{mod: mod, ipTab: binary.LittleEndian.Uint64(b[ml.ipTab:]),
			num: uint64(binary.LittleEndian.Uint32(b[ml.numOrcs:]))}
		if key.ipTab == 0 || key.num == 0 {
			return nil
		}
		seen[key] = true
		if t := o.modules[key]; t != nil {
			tabs = append(tabs, t)
			return nil
		}
		if key.num*(4+orcEntrySize) > maxModuleORCBytes {
			return fmt.Errorf("module at %#x: %d ORC entries is implausible", mod, key.num)
		}
		ipRaw, orcRaw := make([]byte, 4*key.num), make([]byte, orcEntrySize*key.num)
		if err := k.ReadVirt(key.ipTab, ipRaw); err != nil {
			return fmt.Errorf("module at %#x: read orc_unwind_ip: %w", mod, err)
		}
		if err := k.ReadVirt(binary.LittleEndian.Uint64(b[ml.orcTab:]), orcRaw); err != nil {
			return fmt.Errorf("module at %#x: read orc_unwind: %w", mod, err)
		}
		base := binary.LittleEndian.Uint64(b[ml.l.base:])
		t, err := parseORC(o.format, key.ipTab, ipRaw, orcRaw, base, base+leUint(b[ml.l.size:], ml.l.sizeWidth))
		if err != nil {
			return fmt.Errorf("module at %#x: %w", mod, err)
		}
		o.modules[key] = t
		tabs = append(tabs, t)
		return nil
	})
	for key := range o.modules {
		if !seen[key] {
			delete(o.modules, key) // unloaded
		}
	}
	return tabs, err
}
