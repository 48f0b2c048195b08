package vmm

import (
	"encoding/base64"
	"strings"
	"testing"
)

func TestRequestLines(t *testing.T) {
	script := strings.Repeat("echo hello; ", 1000)
	lines := strings.Split(strings.TrimSuffix(string(requestLines(7, script)), "\n"), "\n")
	var b64 strings.Builder
	for i, l := range lines {
		if len(l) >= 4095 {
			t.Fatalf("line %d is %d bytes: longer than a canonical tty line", i, len(l))
		}
		verb := "P"
		if i == len(lines)-1 {
			verb = "X"
		}
		f := strings.Fields(l)
		if len(f) != 3 || f[0] != verb || f[1] != "7" {
			t.Fatalf("line %d: %.40q", i, l)
		}
		b64.WriteString(f[2])
	}
	got, err := base64.StdEncoding.DecodeString(b64.String())
	if err != nil || string(got) != script {
		t.Fatalf("reassembled script differs (%v)", err)
	}
	if n := len(lines); n < 2 {
		t.Fatalf("a %d-byte script went out in %d line(s)", len(script), n)
	}
}
