package patch

import (
	"bytes"
	"errors"
	"testing"
)

// The cumulative apply's bookkeeping, without a guest: what a patch that
// replaces f over two live patches (one redirecting f and g, one chained
// over f) expects at its entries and restores on rollback, and which
// redirects the switch pause puts back to the original.
func TestReplacing(t *testing.T) {
	const (
		f, g        = 0xffffffff81000000, 0xffffffff81001000
		aNew, bNew  = 0xffffffffa0001000, 0xffffffffa0201000
		cNew, aNewG = 0xffffffffa0401000, 0xffffffffa0002000
	)
	jmp := func(from, to uint64) []byte { return mustJmp(from, to) }
	a := &Patch{id: "1", state: StateCommitted, funcs: []Func{
		{Name: "f", OldAddr: f, New: aNew, Orig: ftraceNOP},
		{Name: "g", OldAddr: g, New: aNewG, Orig: ftraceNOP},
	}}
	b := &Patch{id: "2", state: StateCommitted, funcs: []Func{
		{Name: "f", OldAddr: f, New: bNew, Orig: jmp(f, aNew), Below: "1", BelowNew: aNew},
	}}
	gone := &Patch{id: "3", state: StateRolledBack, funcs: []Func{{Name: "h", OldAddr: 0xffffffff81002000, Orig: ftraceNOP}}}
	e := &Engine{patches: []*Patch{a, b, gone}}

	funcs := []Func{{Name: "f", OldAddr: f, New: cNew, Orig: jmp(f, bNew), Below: "2", BelowNew: bNew}}
	replaced, restore, err := e.replacing(funcs)
	if err != nil {
		t.Fatal(err)
	}
	if len(replaced) != 2 || replaced[0] != a || replaced[1] != b {
		t.Errorf("replaced %v, want patches 1 and 2", replaced)
	}
	if !bytes.Equal(funcs[0].Expect, jmp(f, bNew)) || !bytes.Equal(funcs[0].Orig, ftraceNOP) {
		t.Errorf("f expects % x (want the upper patch's jump), rolls back to % x (want the NOP)", funcs[0].Expect, funcs[0].Orig)
	}
	if len(restore) != 1 || restore[0].OldAddr != g || restore[0].New != aNewG || !bytes.Equal(restore[0].Orig, ftraceNOP) {
		t.Errorf("restore %+v, want g back from patch 1's jump to the NOP", restore)
	}

	// Refusals: a patch still transitioning, a patch with data updates.
	b.state = StateTransitioning
	if _, _, err := e.replacing(nil); !errors.Is(err, ErrBadState) {
		t.Errorf("over a transitioning patch: %v", err)
	}
	b.state = StateCommitted
	a.data = []*dataItem{{}}
	if _, _, err := e.replacing(nil); !errors.Is(err, ErrBadState) {
		t.Errorf("over a patch with data updates: %v", err)
	}
}
