package gdbstub

import (
	"bytes"
	"encoding/binary"
	"encoding/xml"
	"errors"
	"fmt"
	"io"
	"slices"
	"strconv"
)

// Register is one register of the target description.
type Register struct {
	Name    string
	Num     int    // number in 'p'/'P' packets
	Offset  int    // byte offset in the 'g' packet; -1 if 'g' does not carry it
	Size    int    // bytes
	Type    string // "int64", "code_ptr", "i387_ext", "vec128", ...
	Group   string // "float", "vector", ... or ""
	Feature string // "org.gnu.gdb.i386.core", ...
}

// Layout is the register file of the target, read from its target
// description: which registers exist, their numbers, and where each one
// sits in the 'g' packet. It is immutable once built.
type Layout struct {
	arch   string
	regs   []Register // by Num
	byName map[string]int
	size   int // bytes of the 'g' packet
}

// Arch is the target's <architecture>, "i386:x86-64" on x86_64.
func (l *Layout) Arch() string { return l.arch }

// Size is the length in bytes of a 'g' reply: 608 on QEMU 7.2 x86_64.
func (l *Layout) Size() int { return l.size }

// Registers lists the registers in register-number order.
func (l *Layout) Registers() []Register { return slices.Clone(l.regs) }

// Lookup finds a register by its name in the target description.
func (l *Layout) Lookup(name string) (Register, bool) {
	i, ok := l.byName[name]
	if !ok {
		return Register{}, false
	}
	return l.regs[i], true
}

func (l *Layout) lookup(name string) (Register, error) {
	i, ok := l.byName[name]
	if !ok {
		return Register{}, fmt.Errorf("no register %q in the %s target description", name, l.arch)
	}
	return l.regs[i], nil
}

// ReadLayout builds a Layout from a target description. fetch returns an
// annex ("target.xml" first, then each file it includes with <xi:include>);
// a Client fetches them with qXfer:features:read, tests from testdata/.
func ReadLayout(fetch func(annex string) ([]byte, error)) (*Layout, error) {
	p := layoutParser{fetch: fetch, l: &Layout{byName: map[string]int{}}}
	if err := p.parse("target.xml", 0); err != nil {
		return nil, err
	}
	return p.finish()
}

type layoutParser struct {
	fetch   func(string) ([]byte, error)
	l       *Layout
	nextNum int
	feature string
}

// maxIncludeDepth stops include cycles.
const maxIncludeDepth = 8

func (p *layoutParser) parse(annex string, depth int) error {
	if depth > maxIncludeDepth {
		return fmt.Errorf("target description %s: includes nested deeper than %d", annex, maxIncludeDepth)
	}
	doc, err := p.fetch(annex)
	if err != nil {
		return fmt.Errorf("read target description %s: %w", annex, err)
	}
	// encoding/xml skips comments, which matters: QEMU 7.2 comments out
	// cs_base..es_base, and they are not in its 'g' packet.
	d := xml.NewDecoder(bytes.NewReader(doc))
	var inArch bool
	for {
		tok, err := d.Token()
		if errors.Is(err, io.EOF) {
			return nil
		}
		if err != nil {
			return fmt.Errorf("parse target description %s: %w", annex, err)
		}
		switch t := tok.(type) {
		case xml.StartElement:
			switch t.Name.Local {
			case "architecture":
				inArch = true
			case "feature":
				p.feature = attr(t, "name")
			case "include":
				href := attr(t, "href")
				if href == "" {
					return fmt.Errorf("target description %s: <include> without href", annex)
				}
				if err := p.parse(href, depth+1); err != nil {
					return err
				}
			case "reg":
				if err := p.reg(annex, t); err != nil {
					return err
				}
			}
		case xml.EndElement:
			if t.Name.Local == "architecture" {
				inArch = false
			}
		case xml.CharData:
			if inArch {
				p.l.arch += string(bytes.TrimSpace(t))
			}
		}
	}
}

func (p *layoutParser) reg(annex string, t xml.StartElement) error {
	name := attr(t, "name")
	if name == "" {
		return fmt.Errorf("target description %s: <reg> without a name", annex)
	}
	bits, err := strconv.Atoi(attr(t, "bitsize"))
	if err != nil || bits <= 0 || bits%8 != 0 || bits > 4096 {
		return fmt.Errorf("target description %s: register %s: bitsize %q is not a positive multiple of 8", annex, name, attr(t, "bitsize"))
	}
	num := p.nextNum
	if s := attr(t, "regnum"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil || n < 0 || n > 1<<16 {
			return fmt.Errorf("target description %s: register %s: bad regnum %q", annex, name, s)
		}
		num = n
	}
	if _, dup := p.l.byName[name]; dup {
		return fmt.Errorf("target description %s: register %s defined twice", annex, name)
	}
	p.nextNum = num + 1
	p.l.byName[name] = len(p.l.regs)
	p.l.regs = append(p.l.regs, Register{
		Name: name, Num: num, Offset: -1, Size: bits / 8,
		Type: attr(t, "type"), Group: attr(t, "group"), Feature: p.feature,
	})
	return nil
}

// finish orders the registers by number and lays out the 'g' packet: every
// register in number order, back to back.
func (p *layoutParser) finish() (*Layout, error) {
	l := p.l
	if len(l.regs) == 0 {
		return nil, errors.New("target description has no registers")
	}
	slices.SortStableFunc(l.regs, func(a, b Register) int { return a.Num - b.Num })
	off := 0
	for i := range l.regs {
		r := &l.regs[i]
		if i > 0 && l.regs[i-1].Num == r.Num {
			return nil, fmt.Errorf("target description: registers %s and %s share number %d", l.regs[i-1].Name, r.Name, r.Num)
		}
		r.Offset = off
		off += r.Size
		l.byName[r.Name] = i
	}
	l.size = off
	return l, nil
}

// fitG adapts the layout to the length of a real 'g' reply: registers that
// do not fit are left to 'p'/'P'. Stubs may describe more registers than
// 'g' carries.
func (l *Layout) fitG(n int) {
	if n >= l.size {
		return
	}
	for i := range l.regs {
		if r := &l.regs[i]; r.Offset+r.Size > n {
			r.Offset = -1
		}
	}
	l.size = n
}

func attr(t xml.StartElement, name string) string {
	for _, a := range t.Attr {
		if a.Name.Local == name {
			return a.Value
		}
	}
	return ""
}

// Registers is one vCPU's register file as the 'g' packet carries it.
type Registers struct {
	layout *Layout
	raw    []byte
}

// NewRegisters wraps a raw 'g' image (little-endian, Layout order).
func (l *Layout) NewRegisters(raw []byte) (*Registers, error) {
	if len(raw) != l.size {
		return nil, fmt.Errorf("register image is %d bytes, the %s layout has %d", len(raw), l.arch, l.size)
	}
	return &Registers{layout: l, raw: raw}, nil
}

// Layout is the layout the registers follow.
func (r *Registers) Layout() *Layout { return r.layout }

// Bytes is the raw image, as 'G' sends it. It aliases r.
func (r *Registers) Bytes() []byte { return r.raw }

// Clone returns an independent copy, for saving a vCPU's state.
func (r *Registers) Clone() *Registers {
	return &Registers{layout: r.layout, raw: slices.Clone(r.raw)}
}

// Raw is the bytes of one register (any size), aliasing r.
func (r *Registers) Raw(name string) ([]byte, error) {
	reg, err := r.field(name)
	if err != nil {
		return nil, err
	}
	return r.raw[reg.Offset : reg.Offset+reg.Size], nil
}

// Get reads a register of at most 8 bytes.
func (r *Registers) Get(name string) (uint64, error) {
	reg, err := r.field(name)
	if err != nil {
		return 0, err
	}
	return getLE(r.raw[reg.Offset:reg.Offset+reg.Size], name)
}

// Set writes a register of at most 8 bytes. v must fit the register.
func (r *Registers) Set(name string, v uint64) error {
	reg, err := r.field(name)
	if err != nil {
		return err
	}
	return putLE(r.raw[reg.Offset:reg.Offset+reg.Size], name, v)
}

func (r *Registers) field(name string) (Register, error) {
	reg, err := r.layout.lookup(name)
	if err != nil {
		return Register{}, err
	}
	if reg.Offset < 0 {
		return Register{}, fmt.Errorf("register %s is not in the 'g' packet; read it with ReadRegister", name)
	}
	return reg, nil
}

func getLE(b []byte, name string) (uint64, error) {
	switch len(b) {
	case 1:
		return uint64(b[0]), nil
	case 2:
		return uint64(binary.LittleEndian.Uint16(b)), nil
	case 4:
		return uint64(binary.LittleEndian.Uint32(b)), nil
	case 8:
		return binary.LittleEndian.Uint64(b), nil
	}
	return 0, fmt.Errorf("register %s is %d bytes, not an integer; use Raw", name, len(b))
}

func putLE(b []byte, name string, v uint64) error {
	if len(b) < 8 && v>>(8*len(b)) != 0 {
		return fmt.Errorf("value %#x does not fit the %d-byte register %s", v, len(b), name)
	}
	switch len(b) {
	case 1:
		b[0] = byte(v)
	case 2:
		binary.LittleEndian.PutUint16(b, uint16(v))
	case 4:
		binary.LittleEndian.PutUint32(b, uint32(v))
	case 8:
		binary.LittleEndian.PutUint64(b, v)
	default:
		return fmt.Errorf("register %s is %d bytes, not an integer; use Raw", name, len(b))
	}
	return nil
}

// ReadRegisters reads all registers of vCPU tid ("Hg", then 'g').
func (c *Client) ReadRegisters(tid int) (*Registers, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return nil, fmt.Errorf("read registers of vCPU %d: %w", tid, err)
	}
	if err := c.selectThread(tid); err != nil {
		return nil, fmt.Errorf("read registers of vCPU %d: %w", tid, err)
	}
	c.cmd = append(c.cmd[:0], 'g')
	p, err := c.command()
	if err != nil {
		return nil, fmt.Errorf("read registers of vCPU %d: %w", tid, err)
	}
	raw := make([]byte, c.layout.size)
	if !decodeHex(raw, p) {
		return nil, c.fail(&ProtocolError{Msg: fmt.Sprintf("'g' reply of %d characters for a %d-byte layout", len(p), c.layout.size)})
	}
	return &Registers{layout: c.layout, raw: raw}, nil
}

// WriteRegisters writes all registers of vCPU tid ("Hg", then 'G'). On x86
// 'G' also writes CR0, CR3, CR4, EFER, CR8 and the FPU state: after a guest
// call that may have slept, write back only the registers that need it.
func (c *Client) WriteRegisters(tid int, r *Registers) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	if err := c.settle(); err != nil {
		return fmt.Errorf("write registers of vCPU %d: %w", tid, err)
	}
	if len(r.raw) != c.layout.size {
		return fmt.Errorf("write registers of vCPU %d: image is %d bytes, the layout has %d", tid, len(r.raw), c.layout.size)
	}
	if err := c.selectThread(tid); err != nil {
		return fmt.Errorf("write registers of vCPU %d: %w", tid, err)
	}
	c.cmd = append(c.cmd[:0], 'G')
	c.cmd = appendHex(c.cmd, r.raw)
	if err := c.commandOK(); err != nil {
		return fmt.Errorf("write registers of vCPU %d: %w", tid, err)
	}
	return nil
}

// ReadRegister reads one register (of at most 8 bytes) of vCPU tid ("Hg" if
// another vCPU is selected, then 'p'). Cheaper than ReadRegisters inside a
// pause.
func (c *Client) ReadRegister(tid int, name string) (uint64, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	reg, err := c.intRegister(tid, name)
	if err != nil {
		return 0, fmt.Errorf("read %s of vCPU %d: %w", name, tid, err)
	}
	c.cmd = append(c.cmd[:0], 'p')
	c.cmd = strconv.AppendUint(c.cmd, uint64(reg.Num), 16)
	p, err := c.command()
	if err != nil {
		return 0, fmt.Errorf("read %s of vCPU %d: %w", name, tid, err)
	}
	var b [8]byte
	if !decodeHex(b[:reg.Size], p) {
		return 0, fmt.Errorf("read %s of vCPU %d: reply %q is not %d bytes of hex", name, tid, truncate(p), reg.Size)
	}
	return getLE(b[:reg.Size], name)
}

// WriteRegister writes one register (of at most 8 bytes) of vCPU tid ('P').
func (c *Client) WriteRegister(tid int, name string, v uint64) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	reg, err := c.intRegister(tid, name)
	if err != nil {
		return fmt.Errorf("write %s of vCPU %d: %w", name, tid, err)
	}
	var b [8]byte
	if err := putLE(b[:reg.Size], name, v); err != nil {
		return fmt.Errorf("write %s of vCPU %d: %w", name, tid, err)
	}
	c.cmd = append(c.cmd[:0], 'P')
	c.cmd = strconv.AppendUint(c.cmd, uint64(reg.Num), 16)
	c.cmd = append(c.cmd, '=')
	c.cmd = appendHex(c.cmd, b[:reg.Size])
	if err := c.commandOK(); err != nil {
		return fmt.Errorf("write %s of vCPU %d: %w", name, tid, err)
	}
	return nil
}

// intRegister looks up an integer register and selects tid. Precondition:
// mu held.
func (c *Client) intRegister(tid int, name string) (Register, error) {
	if err := c.settle(); err != nil {
		return Register{}, err
	}
	reg, err := c.layout.lookup(name)
	if err != nil {
		return Register{}, err
	}
	switch reg.Size {
	case 1, 2, 4, 8:
	default:
		return Register{}, fmt.Errorf("register %s is %d bytes, not an integer", name, reg.Size)
	}
	return reg, c.selectThread(tid)
}
