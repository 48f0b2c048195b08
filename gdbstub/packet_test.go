package gdbstub

import (
	"bufio"
	"bytes"
	"errors"
	"strings"
	"testing"
)

func TestAppendPacket(t *testing.T) {
	for _, tc := range []struct{ payload, want string }{
		{"", "$#00"},
		{"g", "$g#67"},
		{"vCont;c", "$vCont;c#a8"},
		{"qSupported", "$qSupported#37"},
		// The four reserved bytes are escaped, and the checksum covers the
		// escaped form.
		{"a$b", "$a}\x04b#" + sumHex("a}\x04b")},
		{"#}*", "$}\x03}]}\x0a#" + sumHex("}\x03}]}\x0a")},
	} {
		if got := string(appendPacket(nil, []byte(tc.payload))); got != tc.want {
			t.Errorf("appendPacket(%q) = %q, want %q", tc.payload, got, tc.want)
		}
	}
}

func sumHex(s string) string {
	var sum byte
	for i := range len(s) {
		sum += s[i]
	}
	return string([]byte{hexDigits[sum>>4], hexDigits[sum&0xf]})
}

func frame(body string) string { return "$" + body + "#" + sumHex(body) }

func TestReadPacket(t *testing.T) {
	for _, tc := range []struct {
		name, stream string
		want         []string // packets in order
		err          string   // error after them
	}{
		{name: "plain", stream: frame("OK"), want: []string{"OK"}},
		{name: "acks skipped", stream: "+" + frame("OK") + "++" + frame("E14"), want: []string{"OK", "E14"}},
		{name: "empty", stream: frame(""), want: []string{""}},
		{name: "uppercase checksum", stream: "$OK#9A", want: []string{"OK"}},
		{name: "run-length", stream: frame("0* "), want: []string{"0000"}}, // ' ' = 32: 3 more
		{name: "run-length long", stream: frame("f*~a"), want: []string{"f" + strings.Repeat("f", '~'-29) + "a"}},
		{name: "escape", stream: frame("a}\x03b"), want: []string{"a#b"}},
		{name: "escaped star repeated", stream: frame("}\x0a*!"), want: []string{"*****"}},
		{name: "notification skipped", stream: "%Stop:T05#" + sumHex("Stop:T05") + frame("OK"), want: []string{"OK"}},
		{name: "bad checksum", stream: "$OK#00", err: "checksum"},
		{name: "bad checksum digits", stream: "$OK#zz", err: "bad checksum characters"},
		{name: "star first", stream: frame("*a"), err: "nothing to repeat"},
		{name: "small count", stream: frame("a*\x10"), err: "below 29"},
		{name: "dollar inside", stream: "$a$b#00", err: "'$' inside"},
		{name: "ends in escape", stream: frame("a}"), err: "ends inside"},
		{name: "nak", stream: "-", err: "rejected"},
		{name: "truncated", stream: "$OK#4", err: "EOF"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			r := packetReader{br: bufio.NewReader(strings.NewReader(tc.stream))}
			for _, want := range tc.want {
				p, err := r.next()
				if err != nil {
					t.Fatalf("next: %v", err)
				}
				if string(p) != want {
					t.Fatalf("packet %q, want %q", p, want)
				}
			}
			_, err := r.next()
			if tc.err == "" {
				tc.err = "EOF"
			}
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Fatalf("error %v, want one containing %q", err, tc.err)
			}
		})
	}
}

// A packet longer than the bufio buffer arrives in pieces; escapes and
// run-length sequences may straddle them.
func TestReadPacketAcrossBuffer(t *testing.T) {
	var body, want strings.Builder
	for i := range 300 {
		body.WriteString("ab}\x03x* ")
		want.WriteString("ab#xxxx")
		if i%7 == 0 {
			body.WriteString("0123456789")
			want.WriteString("0123456789")
		}
	}
	r := packetReader{br: bufio.NewReaderSize(strings.NewReader("+"+frame(body.String())+frame("OK")), 16)}
	p, err := r.next()
	if err != nil {
		t.Fatal(err)
	}
	if string(p) != want.String() {
		t.Fatalf("decoded %d bytes, want %d", len(p), want.Len())
	}
	if p, err = r.next(); err != nil || string(p) != "OK" {
		t.Fatalf("next packet %q, %v", p, err)
	}
}

func TestReadPacketTooLong(t *testing.T) {
	r := packetReader{br: bufio.NewReader(strings.NewReader(frame("a*~" + strings.Repeat("b*~", maxReplyLen/97+1))))}
	var pe *ProtocolError
	if _, err := r.next(); !errors.As(err, &pe) {
		t.Fatalf("error %v, want a ProtocolError", err)
	}
}

func TestNakIsErrNak(t *testing.T) {
	r := packetReader{br: bufio.NewReader(strings.NewReader("-"))}
	if _, err := r.next(); !errors.Is(err, errNak) {
		t.Fatalf("error %v, want errNak", err)
	}
}

// FuzzReadPacket feeds arbitrary streams to the decoder: it must not panic,
// and any packet it returns must survive re-encoding.
func FuzzReadPacket(f *testing.F) {
	for _, s := range []string{
		frame("OK"), "+" + frame("T05thread:01;watch:1000;"), frame("0* "), frame("a}\x03b"),
		"%Stop:T05#00", "$a*", "-", "$#00", frame("m") + frame("l"),
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		r := packetReader{br: bufio.NewReaderSize(bytes.NewReader(data), 16)}
		for range 64 {
			p, err := r.next()
			if err != nil {
				return
			}
			if len(p) > maxReplyLen {
				t.Fatalf("packet of %d bytes", len(p))
			}
			again := packetReader{br: bufio.NewReader(bytes.NewReader(appendPacket(nil, p)))}
			q, err := again.next()
			if err != nil || !bytes.Equal(p, q) {
				t.Fatalf("re-encoded %q decodes to %q, %v", p, q, err)
			}
		}
	})
}
