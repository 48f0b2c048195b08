package loader

import (
	"fmt"

	"github.com/lucos/lucos/kimage"
)

// PageSize is the granule of the slot's permissions.
const PageSize = 4096

// Perm is the guest permission of a page of patch memory.
type Perm uint8

const (
	RX Perm = iota + 1 // code: read + execute
	RO                 // read-only data, no execute
	RW                 // data, no execute
)

func (p Perm) String() string {
	switch p {
	case RX:
		return "RX"
	case RO:
		return "RO"
	case RW:
		return "RW"
	}
	return fmt.Sprintf("Perm(%d)", uint8(p))
}

// Page is one 4 KiB page of the linked patch: what to write at Addr and
// with which permission to map it.
type Page struct {
	Addr uint64
	Data []byte // PageSize bytes
	Perm Perm
}

// Range is [Start, End) of guest-virtual addresses.
type Range struct{ Start, End uint64 }

// Contains reports whether addr is in r.
func (r Range) Contains(addr uint64) bool { return addr >= r.Start && addr < r.End }

// Func is one redirect the engine will install: the 5 bytes at OldAddr
// (OldEntry, the ftrace NOP at link time) become `jmp New`.
type Func struct {
	Old kimage.Symbol // the kernel function, at its link-time address
	// OldAddr is the runtime address (KASLR applied) of the function's
	// ftrace site: its start, or 4 bytes on when it starts with endbr64
	// (IBT); OldSize counts from there to its end.
	OldAddr, OldSize uint64
	OldEntry         [5]byte // the bytes at OldAddr as read while linking; rollback restores these
	New              uint64  // runtime address of the replacement in the patch
	NewSize          uint64  // its size
	NewName          string  // the replacement's symbol in the patch
}

// Data is one LUCOS_DATA linked: the kernel variable at OldAddr and its
// new version at NewAddr in the patch, with the runtime addresses of the
// transfer functions (void transfer(const OLD *, NEW *), void
// reverse(const NEW *, OLD *)). The engine watches Spec.OldSize bytes at
// OldAddr and Spec.NewSize at NewAddr.
type Data struct {
	Spec              DataSpec
	Old               kimage.Symbol // the kernel variable, at its link-time address
	OldAddr, NewAddr  uint64
	Transfer, Reverse uint64
}

// Callback is one callback linked: Fn is its runtime address; Sym and
// SymAddr are the function (func callbacks) or variable (data callbacks)
// it is about, SymAddr 0 if none. For a function SymAddr is its ftrace
// site, as Func.OldAddr, and SymSize counts from there. A data callback on the patch's own
// variable has a Sym made from the patch's symbol (type 'd').
type Callback struct {
	Spec    CallbackSpec
	Sym     kimage.Symbol
	SymAddr uint64
	SymSize uint64
	Fn      uint64
}

// Runtime holds the runtime addresses of what lucos calls in the patch's
// runtime (sdk/runtime/lucos_rt.c): __lucos_call, __lucos_trampoline and
// __lucos_rt_exit. All are 0 for a patch built without the runtime, which
// then has no data updates and no callbacks.
type Runtime struct {
	Call       uint64 // __lucos_call: where a guest call starts
	Trampoline uint64 // __lucos_trampoline: where it returns to
	Exit       uint64 // __lucos_rt_exit: frees the patch's shadows
	Done       uint64 // __lucos_call_done: the trampoline stores the result here (lucos watches it)
	Kick       uint64 // __lucos_kick(pid, task): makes a sleeping task leave an old function; 0 if absent
	// Returned is the address after the trampoline's store to Done: a vCPU
	// at or past it, inside the trampoline, has returned from its call and
	// stored the result, whether or not the watch on Done was reported.
	Returned uint64
}

// JumpSite is one static branch in patch code, set from its key's state at
// link time. The kernel does not know the site: if the key changes later,
// the site does not follow (the engine may re-check kernel keys under pause).
type JumpSite struct {
	Addr      uint64 // the 2- or 5-byte site
	Len       int
	Target    uint64 // where the jump goes when taken
	Key       uint64 // runtime address of the struct static_key
	KernelKey bool   // the key is the kernel's (else the patch's own)
	Branch    bool   // the entry's branch bit (likely/unlikely inverted default)
	Enabled   bool   // static_key_enabled(key) when linked
	Jump      bool   // the site was set to jump (enabled XOR branch)
}

// Warning is a WARN site in patch code that lucos turned into a NOP: a
// patch without the module shell has no bug table the kernel knows, and
// the kernel would Oops on it.
type Warning struct {
	Addr uint64
	File string
	Line int
}

// Section is where one section of the patch went.
type Section struct {
	Name string
	Addr uint64
	Size uint64
	Perm Perm
}

// Symbol is a symbol the patch defines, at its runtime address.
type Symbol struct {
	Name string
	Addr uint64
	Size uint64
	Func bool
}

// Image is a patch linked for one running kernel at one address: the bytes
// to write, with permissions, and what the engine needs to redirect, scan
// and roll back. Nothing of it has been written to the guest.
type Image struct {
	Name    string // the patch's name (LUCOS_PATCH)
	BuildID string
	Release string

	Base uint64 // the slot's guest-virtual start (page aligned)
	Size uint64 // bytes used from Base: len(Pages) * PageSize

	Pages    []Page
	Sections []Section // loaded sections, in address order
	Text     []Range   // executable ranges: where patch code runs (rollback's stack scans)
	Funcs    []Func    // redirects, in .lucos.funcs order
	Symbols  []Symbol  // the patch's own function and object symbols

	Data      []Data     // data updates, in Module.Data order
	Callbacks []Callback // callbacks, in Module.Callbacks order (declaration order)
	Runtime   Runtime
	// Shell is the patch's module shell, nil for a patch without the
	// runtime: the engine registers it with the guest kernel before
	// anything can run patch code and unregisters it before the slot goes.
	Shell *Shell

	JumpSites []JumpSite
	Warnings  []Warning
	// AltApplied counts .altinstructions entries whose replacement was
	// patched in; AltKept those left as compiled.
	AltApplied, AltKept int
}

// Read copies n bytes at guest-virtual addr out of the image's pages.
func (im *Image) Read(addr uint64, n int) ([]byte, bool) {
	if n < 0 || addr < im.Base || addr-im.Base > im.Size || uint64(n) > im.Size-(addr-im.Base) {
		return nil, false
	}
	out := make([]byte, 0, n)
	for n > 0 {
		off := addr - im.Base
		p := im.Pages[off/PageSize]
		in := off % PageSize
		k := min(uint64(n), PageSize-in)
		out = append(out, p.Data[in:in+k]...)
		addr += k
		n -= int(k)
	}
	return out, true
}

// Symbol returns the patch's symbol of that name (the first, if a static
// name is defined twice).
func (im *Image) Symbol(name string) (Symbol, bool) {
	for _, s := range im.Symbols {
		if s.Name == name {
			return s, true
		}
	}
	return Symbol{}, false
}

// PermAt is the permission of the page holding addr, or 0 outside the image.
func (im *Image) PermAt(addr uint64) Perm {
	if addr < im.Base || addr-im.Base >= im.Size {
		return 0
	}
	return im.Pages[(addr-im.Base)/PageSize].Perm
}
