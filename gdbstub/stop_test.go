package gdbstub

import (
	"reflect"
	"strings"
	"testing"
)

func TestParseStopReply(t *testing.T) {
	for _, tc := range []struct {
		in   string
		want StopEvent
		err  string
	}{
		{in: "T02thread:01;", want: StopEvent{Signal: 2, Thread: 1}},
		{in: "T05thread:02;", want: StopEvent{Signal: 5, Thread: 2}},
		{in: "T05thread:p01.02;", want: StopEvent{Signal: 5, Thread: 2}},
		// QEMU 7.2's watchpoint reply: thread first, then the address.
		{in: "T05thread:02;watch:ffffffff82a4c0e0;", want: StopEvent{Signal: 5, Thread: 2, Reason: "watch", Addr: 0xffffffff82a4c0e0}},
		{in: "T05thread:01;rwatch:1000;", want: StopEvent{Signal: 5, Thread: 1, Reason: "rwatch", Addr: 0x1000}},
		{in: "T05thread:01;awatch:1000;", want: StopEvent{Signal: 5, Thread: 1, Reason: "awatch", Addr: 0x1000}},
		{in: "T05swbreak:;thread:03;", want: StopEvent{Signal: 5, Thread: 3, Reason: "swbreak"}},
		{in: "T0506:0000000000000000;07:00f0;thread:01;core:0;", want: StopEvent{Signal: 5, Thread: 1}},
		{in: "T05thread:01", want: StopEvent{Signal: 5, Thread: 1}},
		{in: "S05", want: StopEvent{Signal: 5}},
		{in: "W00", want: StopEvent{Exited: true}},
		{in: "W01;process:1", want: StopEvent{Exited: true, ExitStatus: 1}},
		{in: "X09", want: StopEvent{Exited: true, Signal: 9}},
		{in: "OK", err: "not a stop reply"},
		{in: "T0", err: "not a stop reply"},
		{in: "Tzz", err: "not a stop reply"},
		{in: "S05x", err: "trailing"},
		{in: "T05thread;", err: "no ':'"},
		{in: "T05thread:zz;", err: "bad thread id"},
		{in: "T05thread:p01;", err: "bad thread id"},
		{in: "T05thread:01;watch:;", err: "bad watch address"},
		{in: "T05watch:11112222333344445;", err: "bad watch address"},
	} {
		ev, err := parseStopReply([]byte(tc.in))
		if tc.err != "" {
			if err == nil || !strings.Contains(err.Error(), tc.err) {
				t.Errorf("parseStopReply(%q) error %v, want %q", tc.in, err, tc.err)
			}
			continue
		}
		if err != nil {
			t.Errorf("parseStopReply(%q): %v", tc.in, err)
			continue
		}
		tc.want.Raw = tc.in
		if !reflect.DeepEqual(ev, tc.want) {
			t.Errorf("parseStopReply(%q) = %+v, want %+v", tc.in, ev, tc.want)
		}
	}
}

func TestIsConsole(t *testing.T) {
	for in, want := range map[string]bool{"O48690a": true, "OK": false, "O": false, "O4": false, "O4g": false, "E14": false} {
		if got := isConsole([]byte(in)); got != want {
			t.Errorf("isConsole(%q) = %v", in, got)
		}
	}
}

func FuzzParseStopReply(f *testing.F) {
	for _, s := range []string{"T02thread:01;", "T05thread:p01.02;watch:ffffffff82a4c0e0;", "S05", "W00", "X09", "T05swbreak:;", "T05thread:"} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, p []byte) {
		ev, err := parseStopReply(p)
		if err == nil && ev.Raw != string(p) {
			t.Fatalf("Raw %q for %q", ev.Raw, p)
		}
		if err == nil && !isStopReply(p) {
			t.Fatalf("parsed %q that isStopReply rejects", p)
		}
		_ = ev.String()
	})
}
