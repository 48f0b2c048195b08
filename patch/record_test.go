package patch

import (
	"errors"
	"reflect"
	"testing"

	"github.com/lucos/lucos/introspect"
	"github.com/lucos/lucos/patch/loader"
)

// TestRecordRoundTrip: what a patch's record keeps comes back intact, and
// a damaged record is no record.
func TestRecordRoundTrip(t *testing.T) {
	p := &Patch{id: "3", name: "cmdline-string", buildID: "ba3c", release: "6.1.0-57-cloud-amd64",
		slot:  &slot{index: 2, va: 0xffffffffc3400000},
		funcs: []Func{{Name: "cmdline_proc_show", OldAddr: 0xffffffff8f34a350, New: 0xffffffffc3401000, Orig: []byte{0x0f, 0x1f, 0x44, 0, 0}, Expect: []byte{0x0f, 0x1f, 0x44, 0, 0}, Below: "2", BelowNew: 0xffffffffc3201000, BelowSize: 64}},
		text:  []introspect.Range{{Start: 0xffffffffc3401000, End: 0xffffffffc3402000}},
		rt:    loader.Runtime{Call: 1, Trampoline: 2, Exit: 3, Done: 4, Kick: 5, Returned: 6},
		shell: &loader.Shell{Name: "lucos_cmdline_string", Start: 7, Base: 8, Size: 9},
		hooks: []hook{{name: "f", count: 10}}, replaces: true,
	}
	b, err := encodeRecord(p)
	if err != nil {
		t.Fatal(err)
	}
	r, err := decodeRecord(b)
	if err != nil {
		t.Fatal(err)
	}
	if r.ID != "3" || r.Name != p.name || r.Release != p.release || r.SlotVA != p.slot.va || !r.Replace ||
		!reflect.DeepEqual(r.Text, p.text) || r.Runtime != p.rt || !reflect.DeepEqual(r.Shell, p.shell) ||
		len(r.Hooks) != 1 || r.Hooks[0] != (recordHook{"f", 10}) || len(r.Funcs) != 1 {
		t.Fatalf("record %+v", r)
	}
	f := r.Funcs[0]
	if f.OldAddr != p.funcs[0].OldAddr || f.New != p.funcs[0].New || string(f.Orig) != string(p.funcs[0].Orig) ||
		string(f.Expect) != string(p.funcs[0].Expect) || f.Below != "2" || f.BelowNew != p.funcs[0].BelowNew || f.BelowSize != 64 {
		t.Fatalf("func %+v", f)
	}
	for name, damage := range map[string]func([]byte){
		"magic":    func(b []byte) { b[0] = 'X' },
		"version":  func(b []byte) { b[8] = 9 },
		"length":   func(b []byte) { b[14] = 0xff },
		"checksum": func(b []byte) { b[len(b)-2] ^= 1 },
	} {
		bad := append([]byte(nil), b...)
		damage(bad)
		if _, err := decodeRecord(bad); !errors.Is(err, errNoRecord) {
			t.Errorf("%s damaged: err = %v", name, err)
		}
	}
	if _, err := decodeRecord(b[:len(b)-1]); !errors.Is(err, errNoRecord) {
		t.Errorf("cut short: err = %v", err)
	}
}

// FuzzDecodeRecord: a record read from guest memory, whatever it holds,
// decodes or is refused; it never panics.
func FuzzDecodeRecord(f *testing.F) {
	p := &Patch{id: "1", name: "x", slot: &slot{va: 0xffffffffc3400000}, funcs: []Func{{Name: "f", Orig: []byte{1, 2, 3, 4, 5}}}}
	b, err := encodeRecord(p)
	if err != nil {
		f.Fatal(err)
	}
	f.Add(b)
	f.Add([]byte(recordMagic))
	f.Fuzz(func(t *testing.T, b []byte) {
		if r, err := decodeRecord(b); err == nil && r == nil {
			t.Fatal("nil record without an error")
		}
	})
}
