package introspect

import (
	"bytes"
	"context"
	"encoding/binary"
	"errors"
	"fmt"
	"strconv"
	"strings"

	"github.com/lucos/lucos/gdbstub"
	"github.com/lucos/lucos/kimage"
	"github.com/lucos/lucos/vmm"
)

// ErrWrongKernel means the running guest is not the kernel image lucos
// parsed: no symbol can be trusted.
var ErrWrongKernel = errors.New("the running kernel is not the parsed image")

// Kernel is a running guest kernel seen through its image: symbols with the
// KASLR slide applied, types, page tables and per-CPU areas.
type Kernel struct {
	Image  *kimage.Image
	Slide  uint64 // runtime address = link-time address + Slide
	Walker *Walker
	// PerCPU holds __per_cpu_offset[cpu] for each possible CPU.
	PerCPU []uint64

	m    *vmm.Machine
	offs *offsets
	orc  orcState // ORC tables, read on first use (orc.go)
}

// Attach finds the running kernel's KASLR slide and checks that it is img,
// with the VM briefly paused.
func Attach(ctx context.Context, m *vmm.Machine, img *kimage.Image) (*Kernel, error) {
	offs, err := resolveOffsets(img)
	if err != nil {
		return nil, err
	}
	k := &Kernel{Image: img, m: m, offs: offs}
	_, err = m.WithPaused(ctx, func(g *gdbstub.Client) error {
		cr3, err := g.ReadRegister(g.Threads()[0], "cr3")
		if err != nil {
			return fmt.Errorf("read cr3: %w", err)
		}
		k.Walker = &Walker{Mem: m, Root: KernelPGD(cr3)}
		idtr, err := idtBase(m)
		if err != nil {
			return err
		}
		if k.Slide, err = k.slideFromIDT(idtr); err != nil {
			return err
		}
		if err := k.checkBanner(); err != nil {
			return err
		}
		return k.readPerCPUOffsets()
	})
	if err != nil {
		return nil, fmt.Errorf("attach to the guest kernel: %w", err)
	}
	return k, nil
}

// idtBase reads the IDTR base of the monitor's current vCPU from QEMU.
// (QEMU's gdbstub register set has no IDTR.)
func idtBase(m *vmm.Machine) (uint64, error) {
	out, err := m.HumanMonitor("info registers")
	if err != nil {
		return 0, err
	}
	return parseIDTBase(out)
}

// parseIDTBase finds the IDTR base in QEMU's "info registers" output
// ("IDT=     fffffe0000000000 00000fff").
func parseIDTBase(out string) (uint64, error) {
	for _, line := range strings.Split(out, "\n") {
		if f := strings.Fields(line); len(f) >= 2 && f[0] == "IDT=" {
			v, err := strconv.ParseUint(f[1], 16, 64)
			if err != nil {
				return 0, fmt.Errorf("IDT= line in QEMU's register dump: %w", err)
			}
			return v, nil
		}
	}
	return 0, fmt.Errorf("no IDT= line in QEMU's register dump")
}

// idtVectors are exception vectors whose handlers name themselves; the
// slide must agree for all of them.
var idtVectors = []struct {
	vector  int
	handler string
}{
	{0, "asm_exc_divide_error"},
	{3, "asm_exc_int3"},
	{6, "asm_exc_invalid_op"},
	{13, "asm_exc_general_protection"},
	{14, "asm_exc_page_fault"},
}

// slideFromIDT computes the KASLR slide from the handler addresses in the
// IDT. The IDTR base is the CPU entry area's read-only copy, not idt_table,
// but the gates are the same.
func (k *Kernel) slideFromIDT(idt uint64) (uint64, error) {
	var slide uint64
	for i, v := range idtVectors {
		var gate [16]byte
		if err := k.Walker.ReadVirt(idt+16*uint64(v.vector), gate[:]); err != nil {
			return 0, fmt.Errorf("read IDT vector %d: %w", v.vector, err)
		}
		handler := uint64(binary.LittleEndian.Uint16(gate[0:])) |
			uint64(binary.LittleEndian.Uint16(gate[6:]))<<16 |
			uint64(binary.LittleEndian.Uint32(gate[8:]))<<32
		sym, err := k.Image.Symbols.Find(v.handler, 0)
		if err != nil {
			return 0, fmt.Errorf("KASLR slide: %w", err)
		}
		s := handler - sym.Addr
		if i > 0 && s != slide {
			return 0, fmt.Errorf("%w: IDT vector %d handler %#x gives slide %#x, vector %d gave %#x",
				ErrWrongKernel, v.vector, handler, s, idtVectors[0].vector, slide)
		}
		slide = s
	}
	if slide%(2<<20) != 0 {
		return 0, fmt.Errorf("%w: KASLR slide %#x is not 2 MiB aligned", ErrWrongKernel, slide)
	}
	return slide, nil
}

// checkBanner compares linux_banner in guest memory with the image's.
func (k *Kernel) checkBanner() error {
	want := k.Image.Banner()
	got := make([]byte, len(want))
	if err := k.Walker.ReadVirt(k.Image.BannerAddr+k.Slide, got); err != nil {
		return fmt.Errorf("read linux_banner: %w", err)
	}
	if !bytes.Equal(got, want) {
		return fmt.Errorf("%w: guest banner %q, image %q", ErrWrongKernel, bytes.TrimSpace(got), bytes.TrimSpace(want))
	}
	return nil
}

func (k *Kernel) readPerCPUOffsets() error {
	n, err := k.read32(k.must("nr_cpu_ids"))
	if err != nil {
		return err
	}
	if n == 0 || n > 8192 {
		return fmt.Errorf("nr_cpu_ids = %d", n)
	}
	buf := make([]byte, 8*n)
	if err := k.Walker.ReadVirt(k.must("__per_cpu_offset"), buf); err != nil {
		return fmt.Errorf("read __per_cpu_offset: %w", err)
	}
	k.PerCPU = make([]uint64, n)
	for i := range k.PerCPU {
		k.PerCPU[i] = binary.LittleEndian.Uint64(buf[8*i:])
	}
	return nil
}

// Addr returns the runtime address of a unique symbol (sympos 0) or of the
// given sympos.
func (k *Kernel) Addr(name string, pos int) (uint64, error) {
	s, err := k.Image.Symbols.Find(name, pos)
	if err != nil {
		return 0, err
	}
	if s.Type == 'A' {
		return s.Addr, nil // per-CPU offsets and absolute values do not move
	}
	return s.Addr + k.Slide, nil
}

// must is Addr for symbols resolveOffsets has already checked exist.
func (k *Kernel) must(name string) uint64 {
	a, err := k.Addr(name, 0)
	if err != nil {
		panic(fmt.Sprintf("introspect: symbol %s vanished: %v", name, err))
	}
	return a
}

// Symbolize names a runtime address: "cmdline_proc_show+0x1c".
func (k *Kernel) Symbolize(addr uint64) (kimage.Symbol, uint64, bool) {
	return k.Image.Symbols.At(addr - k.Slide)
}

// FormatAddr renders addr as symbol+offset, or hex when no symbol holds it.
func (k *Kernel) FormatAddr(addr uint64) string {
	if s, off, ok := k.Symbolize(addr); ok {
		if off == 0 {
			return s.Name
		}
		return fmt.Sprintf("%s+%#x", s.Name, off)
	}
	return fmt.Sprintf("%#x", addr)
}

// IsText reports whether addr is in the kernel image's text.
func (k *Kernel) IsText(addr uint64) bool {
	s, _, ok := k.Symbolize(addr)
	return ok && s.Text()
}

func (k *Kernel) read64(va uint64) (uint64, error) {
	var b [8]byte
	err := k.Walker.ReadVirt(va, b[:])
	return binary.LittleEndian.Uint64(b[:]), err
}

func (k *Kernel) read32(va uint64) (uint32, error) {
	var b [4]byte
	err := k.Walker.ReadVirt(va, b[:])
	return binary.LittleEndian.Uint32(b[:]), err
}

// perCPUAddr is the address of per-CPU variable name on cpu.
func (k *Kernel) perCPUAddr(name string, cpu int) uint64 {
	off, ok := k.offs.perCPU[name]
	if !ok {
		panic("introspect: per-CPU variable " + name + " is not in perCPUVars")
	}
	return k.PerCPU[cpu] + off
}

// Symbol returns a symbol by name and sympos (0: must be unique) with its
// runtime address.
func (k *Kernel) Symbol(name string, pos int) (kimage.Symbol, uint64, error) {
	s, err := k.Image.Symbols.Find(name, pos)
	if err != nil {
		return s, 0, err
	}
	if s.Type == 'A' {
		return s, s.Addr, nil
	}
	return s, s.Addr + k.Slide, nil
}

// ReadVirt reads guest kernel memory at a virtual address.
func (k *Kernel) ReadVirt(va uint64, buf []byte) error { return k.Walker.ReadVirt(va, buf) }

// Release is the kernel release of the image (and so of the guest).
func (k *Kernel) Release() string { return k.Image.Release }

// FieldOffset and Sizeof read the kernel's BTF.
func (k *Kernel) FieldOffset(typ, path string) (uint64, error) { return k.Image.FieldOffset(typ, path) }
func (k *Kernel) Sizeof(typ string) (uint64, error)            { return k.Image.Sizeof(typ) }
