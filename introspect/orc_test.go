package introspect

import (
	"encoding/binary"
	"errors"
	"testing"
)

// 6.1's struct orc_entry: sp_reg:4, bp_reg:4, type:2, end:1 after the two
// offsets.
var format61 = &orcFormat{spReg: bitfield{32, 4}, bpReg: bitfield{36, 4}, typ: bitfield{40, 2}, end: bitfield{42, 1}, hasEnd: true}

func entry61(sp, bp int16, spReg, bpReg, typ, end uint8) []byte {
	b := make([]byte, 6)
	binary.LittleEndian.PutUint16(b, uint16(sp))
	binary.LittleEndian.PutUint16(b[2:], uint16(bp))
	b[4] = spReg | bpReg<<4
	b[5] = typ | end<<2
	return b
}

func TestORCDecode(t *testing.T) {
	for _, tc := range []struct {
		raw  []byte
		want orcEntry
	}{
		{entry61(8, 0, orcRegSP, orcRegUndefined, 0, 0), orcEntry{spOffset: 8, spReg: orcRegSP, typ: orcCall}},
		{entry61(-16, -24, orcRegBP, orcRegPrevSP, 0, 0), orcEntry{spOffset: -16, bpOffset: -24, spReg: orcRegBP, bpReg: orcRegPrevSP, typ: orcCall}},
		{entry61(0, 0, orcRegSP, orcRegUndefined, 1, 0), orcEntry{spReg: orcRegSP, typ: orcRegs}},
		{entry61(0, 0, orcRegSPIndirect, orcRegUndefined, 2, 0), orcEntry{spReg: orcRegSPIndirect, typ: orcRegsPartial}},
		{entry61(0, 0, orcRegUndefined, orcRegUndefined, 0, 1), orcEntry{typ: orcEnd}},
		{entry61(0, 0, orcRegUndefined, orcRegUndefined, 0, 0), orcEntry{typ: orcUndefined}},
	} {
		if got := format61.decode(tc.raw); got != tc.want {
			t.Errorf("% x: %+v, want %+v", tc.raw, got, tc.want)
		}
	}
	// 6.3 and later: type:3 with its own values, no end bit.
	f63 := &orcFormat{spReg: bitfield{32, 4}, bpReg: bitfield{36, 4}, typ: bitfield{40, 3}}
	raw := entry61(8, 0, orcRegSP, orcRegUndefined, 2, 0) // ORC_TYPE_CALL is 2 there
	if got := f63.decode(raw); got.typ != orcCall {
		t.Errorf("6.3 CALL decodes as %v", got.typ)
	}
}

// A switched-out task: __schedule's frame, one call frame, then the user
// pt_regs of its system call, all from a synthetic stack and ORC table.
func TestUnwindSynthetic(t *testing.T) {
	const (
		text  = 0xffffffff81000000
		stack = 0xffffc90000010000
		sched = text + 0x100 // __schedule's return address
		sys   = text + 0x200 // the syscall function's return address
		entry = text + 0x300 // entry code, with a pt_regs frame
	)
	// .orc_unwind_ip entries are relative to their own address.
	ips := []uint64{text, text + 0x180, text + 0x280, text + 0x400}
	ents := [][]byte{
		entry61(16, 0, orcRegSP, orcRegUndefined, 0, 0), // __schedule: one push, then the return address
		entry61(8, 0, orcRegSP, orcRegUndefined, 0, 0),  // the syscall function: just the return address
		entry61(0, 0, orcRegSP, orcRegUndefined, 1, 0),  // entry code: pt_regs at SP
		entry61(0, 0, orcRegUndefined, orcRegUndefined, 0, 1),
	}
	const tabAddr = 0xffffffff82000000
	var ipRaw, orcRaw []byte
	for i, ip := range ips {
		ipRaw = binary.LittleEndian.AppendUint32(ipRaw, uint32(int32(int64(ip-(tabAddr+uint64(4*i))))))
		orcRaw = append(orcRaw, ents[i]...)
	}
	tab, err := parseORC(format61, tabAddr, ipRaw, orcRaw, text, text+0x1000)
	if err != nil {
		t.Fatal(err)
	}
	if tab.ips[3] != text+0x400 {
		t.Fatalf("ip 3 decodes to %#x", tab.ips[3])
	}
	regs := ptRegs{size: 168, bp: 32, r10: 56, r13: 16, di: 112, dx: 96, ip: 128, cs: 136, sp: 152}
	// Stack, from low to high: [saved reg][ret sched→sys][ret sys→entry][pt_regs].
	data := make([]byte, 8*3+168)
	binary.LittleEndian.PutUint64(data[8:], sys)
	binary.LittleEndian.PutUint64(data[16:], entry)
	binary.LittleEndian.PutUint64(data[24+128:], 0x401000) // user RIP
	binary.LittleEndian.PutUint64(data[24+136:], 0x33)     // user CS
	binary.LittleEndian.PutUint64(data[24+152:], 0x7ffe0000)
	u := &unwinder{o: &orcState{vmlinux: tab, regs: regs}, copies: []stackCopy{{base: stack, data: data}}}
	u.ip, u.sp = sched, stack
	tr := u.run(Frame{IP: sched})
	if tr.Err != nil {
		t.Fatal(tr.Err)
	}
	var got []uint64
	for _, f := range tr.Frames {
		got = append(got, f.IP)
	}
	if len(got) != 3 || got[0] != sched || got[1] != sys || got[2] != entry {
		t.Errorf("frames %#x, want __schedule, the syscall, the entry", got)
	}
	if tr.Frames[1].Slot != stack+8 || !tr.Frames[1].In(Range{text + 0x180, text + 0x280}) {
		t.Errorf("frame 1 %+v", tr.Frames[1])
	}

	// The same stack cut short: the unwind says it is incomplete.
	u = &unwinder{o: &orcState{vmlinux: tab, regs: regs}, copies: []stackCopy{{base: stack, data: data[:16]}}}
	u.ip, u.sp = sched, stack
	if tr := u.run(Frame{IP: sched}); !errors.Is(tr.Err, ErrUnwind) {
		t.Errorf("cut stack: %v", tr.Err)
	}
}

// The unwinder reads what the guest wrote: any stack and any ORC table
// must end in a trace or an error, never a panic or a loop.
func FuzzUnwind(f *testing.F) {
	f.Add([]byte{0, 0, 0, 0, 8, 0, 0, 0, 5, 0}, make([]byte, 64), uint16(0))
	f.Add([]byte{0, 0, 0, 0, 0, 0, 0, 0, 0x59, 1}, make([]byte, 256), uint16(8))
	f.Fuzz(func(t *testing.T, orc, stack []byte, ipOff uint16) {
		const text, tabAddr, base = 0xffffffff81000000, 0xffffffff82000000, 0xffffc90000010000
		// orc: records of a 4-byte ip offset from text and a 6-byte entry.
		var ipRaw, orcRaw []byte
		for i := 0; i+10 <= len(orc) && i < 10*64; i += 10 {
			ip := text + uint64(binary.LittleEndian.Uint32(orc[i:]))&0xfff
			ipRaw = binary.LittleEndian.AppendUint32(ipRaw, uint32(int32(int64(ip-(tabAddr+uint64(len(ipRaw)))))))
			orcRaw = append(orcRaw, orc[i+4:i+10]...)
		}
		tab, err := parseORC(format61, tabAddr, ipRaw, orcRaw, text, text+0x1000)
		if err != nil {
			return // unsorted: the kernel's tables are sorted, lucos refuses others
		}
		regs := ptRegs{size: 168, bp: 32, r10: 56, r13: 16, di: 112, dx: 96, ip: 128, cs: 136, sp: 152}
		u := &unwinder{o: &orcState{vmlinux: tab, regs: regs}, copies: []stackCopy{{base: base, data: stack}}}
		u.ip, u.sp = text+uint64(ipOff&0xfff), base
		tr := u.run(Frame{IP: u.ip})
		if len(tr.Frames) > maxFrames {
			t.Fatalf("%d frames", len(tr.Frames))
		}
	})
}
