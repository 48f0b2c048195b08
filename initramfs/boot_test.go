package initramfs

import (
	"bufio"
	"bytes"
	"context"
	"encoding/base64"
	"fmt"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/lucos/lucos/guest"
)

// bootedGuest is a QEMU running the real Debian kernel on Base's initramfs,
// with the control channel (ttyS1) connected.
type bootedGuest struct {
	image   *guest.Image
	console string        // file receiving ttyS0
	conn    net.Conn      // ttyS1
	lines   chan string   // lines read from ttyS1
	ready   time.Duration // QEMU start to LUCOS-READY
}

// bootBase boots Base(busybox of the cached guest) under TCG, the way the
// brief and DESIGN.md run the default guest, and waits for LUCOS-READY.
func bootBase(t *testing.T) *bootedGuest {
	t.Helper()
	if testing.Short() {
		t.Skip("boots the guest under QEMU (not with -short)")
	}
	requireTools(t, "qemu-system-x86_64", "apt-get", "dpkg-deb")
	ctx, cancel := context.WithTimeout(context.Background(), 10*time.Minute)
	defer cancel()
	im, err := guest.Fetch(ctx, guest.Options{})
	if err != nil {
		t.Fatal(err)
	}
	a, err := Base(im.Busybox)
	if err != nil {
		t.Fatal(err)
	}
	dir := t.TempDir()
	initrd := filepath.Join(dir, "initrd.cpio")
	if err := a.WriteFile(initrd); err != nil {
		t.Fatal(err)
	}
	g := &bootedGuest{image: im, console: filepath.Join(dir, "console.log"), lines: make(chan string, 64)}
	sock := filepath.Join(dir, "ctl.sock")

	var qemuOut bytes.Buffer
	cmd := exec.Command("qemu-system-x86_64",
		"-M", "pc", "-accel", "tcg", "-m", "1G", "-smp", "2",
		"-nodefaults", "-no-user-config", "-display", "none",
		"-kernel", im.Kernel, "-initrd", initrd,
		"-append", "console=ttyS0 panic=-1",
		"-serial", "file:"+g.console,
		"-serial", "unix:"+sock+",server=on,wait=off",
		"-no-reboot")
	cmd.Stdout, cmd.Stderr = &qemuOut, &qemuOut
	start := time.Now()
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	exited := make(chan error, 1)
	go func() { exited <- cmd.Wait() }()
	t.Cleanup(func() {
		cmd.Process.Kill()
		<-exited
		if t.Failed() {
			console, _ := os.ReadFile(g.console)
			t.Logf("QEMU output:\n%s\nguest console:\n%s", qemuOut.String(), console)
		}
	})

	// Connect at once: a server socket with wait=off drops what the guest
	// writes while no client is connected.
	for {
		g.conn, err = net.Dial("unix", sock)
		if err == nil {
			break
		}
		select {
		case err := <-exited:
			t.Fatalf("QEMU exited: %v", err)
		case <-time.After(5 * time.Millisecond):
		}
		if time.Since(start) > 30*time.Second {
			t.Fatalf("no control socket after 30 s: %v", err)
		}
	}
	t.Cleanup(func() { g.conn.Close() })
	go func() {
		sc := bufio.NewScanner(g.conn)
		for sc.Scan() {
			g.lines <- strings.TrimRight(sc.Text(), "\r")
		}
		close(g.lines)
	}()

	line := g.next(t, 60*time.Second)
	g.ready = time.Since(start)
	if want := "LUCOS-READY " + im.Release; line != want {
		t.Fatalf("first control line %q, want %q", line, want)
	}
	t.Logf("boot to LUCOS-READY: %v", g.ready.Round(time.Millisecond))
	return g
}

// next returns the next control line, failing t after timeout.
func (g *bootedGuest) next(t *testing.T, timeout time.Duration) string {
	t.Helper()
	select {
	case line, ok := <-g.lines:
		if !ok {
			t.Fatal("control channel closed")
		}
		return line
	case <-time.After(timeout):
		t.Fatalf("no control line within %v", timeout)
	}
	return ""
}

// exec sends script as request id.
func (g *bootedGuest) exec(t *testing.T, id int, script string) {
	t.Helper()
	req := fmt.Sprintf("X %d %s\n", id, base64.StdEncoding.EncodeToString([]byte(script)))
	if _, err := g.conn.Write([]byte(req)); err != nil {
		t.Fatal(err)
	}
}

// TestBoot boots the real kernel on Base's initramfs once and talks to
// sbin/lucos-ctl over ttyS1.
func TestBoot(t *testing.T) {
	g := bootBase(t)

	// The first request goes out right after LUCOS-READY: the guest must
	// already be listening.
	t.Run("exec", func(t *testing.T) {
		g.exec(t, 1, "echo hi; exit 3")
		for _, want := range []string{"O 1 aGkK", "E 1 3"} {
			if got := g.next(t, 30*time.Second); got != want {
				t.Errorf("got %q, want %q", got, want)
			}
		}
	})

	t.Run("console", func(t *testing.T) {
		console, err := os.ReadFile(g.console)
		if err != nil {
			t.Fatal(err)
		}
		if !bytes.Contains(console, []byte("lucos: guest ready ("+g.image.Release+", 2 vCPUs)")) {
			t.Errorf("console lacks the ready line:\n%s", console)
		}
		if bytes.Contains(console, []byte("Warning: unable to open an initial console")) {
			t.Error("the kernel found no /dev/console")
		}
		// What user space printed: busybox's complaints.
		_, user, _ := bytes.Cut(console, []byte("Run /init as init process"))
		for _, bad := range []string{"not found", "can't", "failed", "invalid", "Kernel panic"} {
			if bytes.Contains(user, []byte(bad)) {
				t.Errorf("console says %q:\n%s", bad, user)
			}
		}
	})

	// Requests run concurrently; each reply arrives whole, never mixed
	// with another's lines.
	t.Run("concurrent", func(t *testing.T) {
		const n = 8
		want := map[string]string{}
		for i := range n {
			id := 10 + i
			g.exec(t, id, fmt.Sprintf(`i=0; while [ $i -lt 150 ]; do echo "line $i of request %d"; i=$((i+1)); done; echo oops >&2; exit %d`, id, id))
			var b strings.Builder
			for j := range 150 {
				fmt.Fprintf(&b, "line %d of request %d\n", j, id)
			}
			want[fmt.Sprint(id)] = b.String()
		}
		out, errs, done := map[string]string{}, map[string]string{}, map[string]bool{}
		current := ""
		for len(done) < n {
			line := g.next(t, 60*time.Second)
			f := strings.Fields(line)
			if len(f) != 3 {
				t.Fatalf("malformed reply line %q", line)
			}
			verb, id, arg := f[0], f[1], f[2]
			if current != "" && id != current {
				t.Fatalf("reply %s interleaved into reply %s: %q", id, current, line)
			}
			current = id
			switch verb {
			case "O", "R":
				b, err := base64.StdEncoding.DecodeString(arg)
				if err != nil {
					t.Fatalf("%q: %v", line, err)
				}
				if verb == "O" {
					out[id] += string(b)
				} else {
					errs[id] += string(b)
				}
			case "E":
				if arg != id {
					t.Errorf("request %s exited %s", id, arg)
				}
				done[id] = true
				current = ""
			default:
				t.Fatalf("unknown reply %q", line)
			}
		}
		for id, w := range want {
			if out[id] != w || errs[id] != "oops\n" {
				t.Errorf("request %s: stdout %d bytes (want %d), stderr %q", id, len(out[id]), len(w), errs[id])
			}
		}
	})
}
