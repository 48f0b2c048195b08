package guest

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/url"
	"os"
	"os/exec"
	"path"
	"strings"
	"sync"
)

// aptExtraArgs are added to every apt-get and apt-cache command line. Tests
// set it to steer apt (an unreachable proxy, say); it is empty otherwise.
var aptExtraArgs []string

// CommandError is a failed external command (apt-get, apt-cache, dpkg-deb)
// with what it printed on stderr.
type CommandError struct {
	Args   []string // the command line
	Stderr string   // its stderr, trimmed to the last lines
	Err    error    // from os/exec: usually an *exec.ExitError
}

func (e *CommandError) Error() string {
	msg := fmt.Sprintf("`%s`: %v", strings.Join(e.Args, " "), e.Err)
	if e.Stderr != "" {
		msg += ": " + e.Stderr
	}
	return msg
}

func (e *CommandError) Unwrap() error { return e.Err }

// dependency is one relation line of `apt-cache depends` output.
type dependency struct {
	Kind      string   // "Depends", "Recommends", "Conflicts", ...
	Package   string   // the target; for a virtual package without the <>
	Virtual   bool     // the target was printed as <name>
	Or        bool     // this alternative is or-ed with the next line ("|Depends")
	Providers []string // packages listed under the target (for virtual ones)
}

// parseDepends reads the output of `apt-cache depends PKG...`: each package
// name at column 0, then its relations indented by two (a '|' in place of the
// second space marks an or-group), then providers indented by four.
func parseDepends(out []byte) (map[string][]dependency, error) {
	deps := make(map[string][]dependency)
	var cur string
	sc := bufio.NewScanner(bytes.NewReader(out))
	for n := 1; sc.Scan(); n++ {
		line := sc.Text()
		switch {
		case strings.TrimSpace(line) == "":
			continue
		case !strings.HasPrefix(line, " "):
			cur = strings.TrimSpace(line)
			if _, ok := deps[cur]; !ok {
				deps[cur] = nil
			}
		case strings.HasPrefix(line, "    "):
			list := deps[cur]
			if cur == "" || len(list) == 0 {
				return nil, fmt.Errorf("apt-cache depends output line %d: provider %q outside a relation", n, strings.TrimSpace(line))
			}
			list[len(list)-1].Providers = append(list[len(list)-1].Providers, strings.TrimSpace(line))
		default:
			if cur == "" {
				return nil, fmt.Errorf("apt-cache depends output line %d: relation %q before any package", n, line)
			}
			rest := line[1:]
			d := dependency{}
			if strings.HasPrefix(rest, "|") {
				d.Or = true
			}
			kind, target, ok := strings.Cut(strings.TrimLeft(rest, " |"), ": ")
			if !ok {
				return nil, fmt.Errorf("apt-cache depends output line %d: cannot parse %q", n, line)
			}
			d.Kind = kind
			if strings.HasPrefix(target, "<") && strings.HasSuffix(target, ">") {
				d.Virtual = true
				target = target[1 : len(target)-1]
			}
			d.Package = target
			deps[cur] = append(deps[cur], d)
		}
	}
	return deps, sc.Err()
}

// dependsOn returns the first package that pkg Depends on whose name
// satisfies match, or "".
func dependsOn(deps []dependency, match func(string) bool) string {
	for _, d := range deps {
		if d.Kind == "Depends" && !d.Virtual && match(d.Package) {
			return d.Package
		}
	}
	return ""
}

// networkErrorMarks are what apt prints when it cannot reach a mirror at all.
var networkErrorMarks = []string{
	"Could not connect",
	"Unable to connect",
	"Could not resolve",
	"Temporary failure resolving",
	"Connection timed out",
	"Connection failed",
	"Network is unreachable",
	"No route to host",
	"Connection refused",
}

// isNetworkError reports whether apt's stderr says the archive was unreachable.
func isNetworkError(stderr string) bool {
	for _, m := range networkErrorMarks {
		if strings.Contains(stderr, m) {
			return true
		}
	}
	return false
}

// isNotFound reports whether apt says the archive no longer has a file it
// listed (the package lists are older than the archive).
func isNotFound(stderr string) bool {
	return strings.Contains(stderr, "404") && strings.Contains(stderr, "Not Found")
}

// failedPackages picks the names of the packages apt-get download could not
// get out of its stderr: "E: Failed to fetch http://.../busybox-static_1%3a1.35_amd64.deb ..."
// and "E: Unable to locate package NAME".
func failedPackages(stderr string) []string {
	var names []string
	for line := range strings.Lines(stderr) {
		line = strings.TrimSpace(line)
		if rest, ok := strings.CutPrefix(line, "E: Unable to locate package "); ok {
			names = append(names, strings.TrimSpace(rest))
			continue
		}
		rest, ok := strings.CutPrefix(line, "E: Failed to fetch ")
		if !ok {
			continue
		}
		u, _, _ := strings.Cut(rest, " ")
		base := path.Base(u)
		if unesc, err := url.PathUnescape(base); err == nil {
			base = unesc
		}
		if name, _, ok := strings.Cut(base, "_"); ok && strings.HasSuffix(base, ".deb") {
			names = append(names, name)
		}
	}
	return names
}

// lastLines keeps the tail of a command's stderr for an error message.
func lastLines(s string, n int) string {
	lines := strings.Split(strings.TrimSpace(s), "\n")
	if len(lines) > n {
		lines = lines[len(lines)-n:]
	}
	return strings.Join(lines, "\n")
}

// progress serialises human progress lines from several goroutines (a
// command's stdout and stderr are copied concurrently). A nil writer drops
// everything.
type progress struct {
	mu sync.Mutex
	w  io.Writer
}

func (p *progress) Write(b []byte) (int, error) {
	if p.w == nil {
		return len(b), nil
	}
	p.mu.Lock()
	defer p.mu.Unlock()
	p.w.Write(b) // progress is best effort: a broken terminal must not fail a fetch
	return len(b), nil
}

func (p *progress) Printf(format string, args ...any) {
	fmt.Fprintf(p, format+"\n", args...)
}

// lines returns a writer that passes whole lines to p, so that a command's
// stdout and stderr never interleave within a line.
func (p *progress) lines() *lineWriter { return &lineWriter{p: p} }

type lineWriter struct {
	p   *progress
	buf []byte
}

func (l *lineWriter) Write(b []byte) (int, error) {
	l.buf = append(l.buf, b...)
	for {
		i := bytes.IndexByte(l.buf, '\n')
		if i < 0 {
			return len(b), nil
		}
		l.p.Write(l.buf[:i+1])
		l.buf = l.buf[i+1:]
	}
}

// flush passes on an unfinished last line.
func (l *lineWriter) flush() {
	if len(l.buf) > 0 {
		l.p.Write(append(l.buf, '\n'))
		l.buf = nil
	}
}

// apt runs Debian's package tools for one Fetch.
type apt struct {
	progress *progress
	updated  bool // apt-get update ran during this Fetch
}

// command runs name with args in dir, streaming its output to progress when
// stream is set, and returns its stdout and stderr. A failure is a
// *CommandError.
func (a *apt) command(ctx context.Context, dir string, stream bool, name string, args ...string) ([]byte, string, error) {
	bin, err := exec.LookPath(name)
	if err != nil {
		if name == "apt-get" || name == "apt-cache" {
			return nil, "", fmt.Errorf("%w (%v)", ErrNoApt, err)
		}
		return nil, "", fmt.Errorf("%s not found (install Debian's dpkg): %w", name, err)
	}
	if name != "dpkg-deb" {
		args = append(append([]string{}, aptExtraArgs...), args...)
	}
	cmd := exec.CommandContext(ctx, bin, args...)
	cmd.Dir = dir
	// Messages in English so that they can be classified; never a prompt.
	cmd.Env = append(os.Environ(), "LC_ALL=C", "LANG=C", "LANGUAGE=", "DEBIAN_FRONTEND=noninteractive")
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	if stream {
		outLines, errLines := a.progress.lines(), a.progress.lines()
		defer outLines.flush()
		defer errLines.flush()
		cmd.Stdout = io.MultiWriter(&stdout, outLines)
		cmd.Stderr = io.MultiWriter(&stderr, errLines)
	}
	if err := cmd.Run(); err != nil {
		if ctx.Err() != nil {
			err = ctx.Err()
		}
		return stdout.Bytes(), stderr.String(), &CommandError{Args: append([]string{name}, args...), Stderr: lastLines(stderr.String(), 8), Err: err}
	}
	return stdout.Bytes(), stderr.String(), nil
}

// depends runs `apt-cache depends pkg` and returns pkg's relations, or an
// error wrapping errNotInLists when the local package lists do not know pkg.
func (a *apt) depends(ctx context.Context, pkg string) ([]dependency, error) {
	out, _, err := a.command(ctx, "", false, "apt-cache", "depends", pkg)
	var ce *CommandError
	if errors.As(err, &ce) && strings.Contains(ce.Stderr, "No packages found") {
		return nil, fmt.Errorf("%w: %s", errNotInLists, pkg)
	}
	if err != nil {
		return nil, err
	}
	deps, err := parseDepends(out)
	if err != nil {
		return nil, err
	}
	list, ok := deps[pkg]
	if !ok {
		return nil, fmt.Errorf("%w: %s", errNotInLists, pkg)
	}
	return list, nil
}

// errNotInLists: apt-cache does not know a package (old or empty lists, or
// a release Debian no longer carries).
var errNotInLists = errors.New("package not in the apt package lists")

// update runs `apt-get update`, once per Fetch. apt-get update exits 0 even
// when it reached no mirror at all, so its messages are checked too.
func (a *apt) update(ctx context.Context) error {
	if a.updated {
		return nil
	}
	a.updated = true
	a.progress.Printf("guest: refreshing the apt package lists (apt-get update)")
	_, stderr, err := a.command(ctx, "", true, "apt-get", "update")
	if isNetworkError(stderr) {
		if err == nil {
			err = fmt.Errorf("`apt-get update`: %s", lastLines(stderr, 4))
		}
		return fmt.Errorf("%w: %w", ErrArchiveUnreachable, err)
	}
	return err
}

// download runs `apt-get download pkgs...` in dir, streaming apt's progress.
func (a *apt) download(ctx context.Context, dir string, pkgs []string) error {
	// As root apt drops to the _apt user to download, which cannot write
	// into a root-owned cache; the cache is ours, so download as root.
	args := append([]string{"-o", "APT::Sandbox::User=root", "download"}, pkgs...)
	_, _, err := a.command(ctx, dir, true, "apt-get", args...)
	if err == nil {
		return nil
	}
	var ce *CommandError
	if !errors.As(err, &ce) {
		return err
	}
	failed := failedPackages(ce.Stderr)
	if len(failed) == 0 {
		failed = pkgs
	}
	what := strings.Join(failed, ", ")
	switch {
	case isNetworkError(ce.Stderr):
		return fmt.Errorf("download %s: %w: %w", what, ErrArchiveUnreachable, err)
	case strings.Contains(ce.Stderr, "Unable to locate package"):
		return fmt.Errorf("download %s: %w: %w", what, errNotInLists, err)
	case isNotFound(ce.Stderr):
		return fmt.Errorf("download %s: %w: %w", what, errStaleLists, err)
	}
	return fmt.Errorf("download %s: %w", what, err)
}

// errStaleLists: the archive no longer has a file the local lists name.
var errStaleLists = errors.New("the apt package lists are older than the archive")

// unpack runs `dpkg-deb -x deb dir`.
func (a *apt) unpack(ctx context.Context, deb, dir string) error {
	if _, _, err := a.command(ctx, "", false, "dpkg-deb", "-x", deb, dir); err != nil {
		return fmt.Errorf("unpack %s: %w", path.Base(deb), err)
	}
	return nil
}
