package vmm

import (
	"strings"
	"testing"
)

func TestDecodeQMPReturn(t *testing.T) {
	var s string
	if err := decodeQMPReturn([]byte(`{"return": "IDT= 1\r\n", "id": 3}`), &s); err != nil || s != "IDT= 1\r\n" {
		t.Errorf("string return: %q, %v", s, err)
	}
	for _, bad := range []string{``, `{`, `{"event": "STOP"}`, `{"return": 5}`, `[1]`} {
		if err := decodeQMPReturn([]byte(bad), &s); err == nil {
			t.Errorf("%q decoded", bad)
		}
	}
}

// Whatever QEMU (or something posing as it on the socket) replies, decoding
// returns a value or an error, never a panic.
func FuzzDecodeQMPReturn(f *testing.F) {
	for _, s := range []string{`{"return": "x"}`, `{"return": {}}`, `{"return": [{"name": "pc.ram"}]}`, `{"error": {"class": "GenericError"}}`, `{"return": null}`, `"`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, raw []byte) {
		var s string
		if err := decodeQMPReturn(raw, &s); err == nil && !strings.Contains(string(raw), "return") {
			t.Errorf("%q decoded to %q without a return member", raw, s)
		}
		var m map[string]any
		decodeQMPReturn(raw, &m)
		var l []struct{ Name string }
		decodeQMPReturn(raw, &l)
	})
}
