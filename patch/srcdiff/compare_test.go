package srcdiff

import (
	"errors"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/internal/testreq"
)

// Objects compiled by the host's gcc with the kernel's code model and
// per-function sections: what the comparison sees in a kernel object,
// without a kernel tree.
func compile(t *testing.T, name, src string) *object {
	t.Helper()
	testreq.Tools(t, "gcc")
	dir := filepath.Join(t.TempDir(), name)
	if err := os.Mkdir(dir, 0o755); err != nil {
		t.Fatal(err)
	}
	c := filepath.Join(dir, "t.c") // as the diff names it
	if err := os.WriteFile(c, []byte(src), 0o644); err != nil {
		t.Fatal(err)
	}
	obj := filepath.Join(dir, name+".o")
	cmd := exec.Command("gcc", "-O2", "-g", "-c", "-ffunction-sections", "-fdata-sections", "-mcmodel=kernel",
		"-fno-pic", "-mno-red-zone", "-fno-asynchronous-unwind-tables", "-fno-stack-protector",
		"-pg", "-mfentry", "-mrecord-mcount", "-o", obj, c)
	if out, err := cmd.CombinedOutput(); err != nil {
		t.Fatalf("gcc: %v\n%s", err, out)
	}
	o, err := readObject(obj)
	if err != nil {
		t.Fatal(err)
	}
	return o
}

// analyzeSources compiles before and after and analyzes them as a diff of
// file t.c would.
func analyzeSources(t *testing.T, before, after string) (*analysis, error) {
	t.Helper()
	o1, o2 := compile(t, "before", before), compile(t, "after", after)
	lc := compareLines("t.c", []byte(before), []byte(after))
	a, err := analyze(&unit{Path: "t.c"}, newComparison(o1, o2, nil, []*lineChange{lc}), nil)
	if a != nil {
		explain(a)
	}
	return a, err
}

func changes(a *analysis) []string {
	var out []string
	for _, ch := range a.changes {
		out = append(out, ch.String())
	}
	slices.Sort(out)
	return out
}

const common = `
extern void report(const char *msg, int line);
extern int level;
`

func TestCompareFunctionBodies(t *testing.T) {
	before := common + `
int same(int x) { return x * 3 + level; }
int fixed(int x) { if (x > 10) report("big", 0); return x + 1; }
`
	after := common + `
int same(int x) { return x * 3 + level; }
int fixed(int x) { if (x > 10 || x < 0) report("big", 0); return x + 1; }
`
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(a), []string{"changed: fixed"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
}

// A function whose only difference is a __LINE__ the diff moved is the
// same; without the diff's line map it is not.
func TestCompareLineNumbersOnly(t *testing.T) {
	before := common + `
int warn(int x) { if (x) report("w", __LINE__); return x; }
int fixed(int x) { return x + 1; }
`
	after := common + `
int fixed(int x)
{
	/* a fix that moves the lines below */
	return x + 2;
}
int warn(int x) { if (x) report("w", __LINE__); return x; }
`
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(a), []string{"changed: fixed"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q (warn differs only in a moved __LINE__)", got, want)
	}
	o1, o2 := compile(t, "before", before), compile(t, "after", after)
	c := newComparison(o1, o2, nil, nil)
	if c.sameFunction(o1.lookup("warn"), o2.lookup("warn")) {
		t.Error("without the line map, a changed immediate must count as a change")
	}
}

// A changed static inline changes the functions it is inlined into, and
// they say why.
func TestCompareInlinedStatic(t *testing.T) {
	before := common + `
static inline int clamp(int x) { return x > 100 ? 100 : x; }
int user_a(int x) { return clamp(x) + level; }
int user_b(int x) { return clamp(x * 2); }
int other(int x) { return x - level; }
`
	after := strings.Replace(before, "x > 100 ? 100 : x", "x > 100 ? 100 : x < 0 ? 0 : x", 1)
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"changed: user_a (inlined clamp changed)", "changed: user_b (inlined clamp changed)"}
	if got := changes(a); !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
}

func TestCompareStrings(t *testing.T) {
	before := common + `int say(int x) { report("hello", x); return 0; }
int keep(int x) { report("same", x); return 1; }`
	after := common + `int say(int x) { report("hello, world", x); return 0; }
int keep(int x) { report("same", x); return 1; }`
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(a), []string{"changed: say"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
}

// gcc numbers function-local statics; a diff that adds one before another
// renumbers it, which is no change.
func TestCompareRenumberedLocals(t *testing.T) {
	before := common + `
int counter(void) { static int n; return ++n; }
`
	after := common + `
int fresh(void) { static int n; return n += 2; }
int counter(void) { static int n; return ++n; }
`
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	got := changes(a)
	if len(got) != 2 || got[1] != "new: fresh" || !strings.HasPrefix(got[0], "data: n.") || !strings.HasSuffix(got[0], "(new function-local static, carried by the patch)") {
		t.Errorf("changes = %q, want fresh and its new static only (counter only had its static renumbered)", got)
	}
}

// New data that only the patch's code uses is carried, initialised as
// compiled (kpatch's data-new); new data that boot-time code sets up cannot
// be, and is refused naming it.
func TestCompareNewData(t *testing.T) {
	before := common + `int get(void) { return level; }`
	a, err := analyzeSources(t, before, common+`static int foo = 5; int get(void) { return level + foo++; }`)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(a), []string{"changed: get", "data: foo (new data, carried by the patch)"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
	_, err = analyzeSources(t, before, common+`int hits;
__attribute__((section(".init.text"))) int setup(void) { hits = 1; return 0; }
int get(void) { return level + hits; }`)
	if !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "new data hits") || !strings.Contains(err.Error(), "boot-time code") {
		t.Fatalf("new data set up by boot-time code: err = %v, want a refusal naming hits", err)
	}
}

func TestCompareChangedWritableDataRefused(t *testing.T) {
	before := common + `int limit = 10; int get(void) { return limit; }`
	after := common + `int limit = 20; int get(void) { return limit; }`
	_, err := analyzeSources(t, before, after)
	var re *RefusedError
	if !errors.As(err, &re) || !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "changed data limit") {
		t.Fatalf("changed initializer of a writable global: err = %v, want a refusal naming limit", err)
	}
}

func TestCompareChangedConstantCarried(t *testing.T) {
	before := common + `static const int table[4] = {1, 2, 3, 4};
int pick(int i) { return table[i & 3]; }
int other(int i) { return i; }`
	after := strings.Replace(before, "{1, 2, 3, 4}", "{1, 2, 3, 5}", 1)
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	got := changes(a)
	if !slices.Contains(got, "changed: pick (uses changed constant table)") {
		t.Errorf("changes = %q: pick uses the changed table", got)
	}
	if slices.Contains(got, "changed: other") {
		t.Errorf("changes = %q: other does not use it", got)
	}
}

// A changed constant that unchanged data points to (an ops table, a
// netlink policy in a registered structure) is refused: the kernel reaches
// its old copy through that data, whatever the patch carries.
func TestCompareConstantHeldByDataRefused(t *testing.T) {
	before := common + `static const int policy[4] = {1, 2, 3, 4};
struct family { const int *policy; int n; };
struct family fam = { policy, 4 };
int pick(int i) { return policy[i & 3]; }`
	after := strings.Replace(before, "{1, 2, 3, 4}", "{1, 2, 3, 5}", 1)
	_, err := analyzeSources(t, before, after)
	var re *RefusedError
	if !errors.As(err, &re) || !strings.Contains(err.Error(), "changed constant policy is referenced by fam") {
		t.Fatalf("analyze: %v; want a refusal naming policy and fam", err)
	}
}

// __stringify(__LINE__) in a string (fortify's messages) moved by the diff
// is no change either.
func TestCompareLineNumbersInStrings(t *testing.T) {
	before := common + `#define S2(x) #x
#define S(x) S2(x)
int warn(int x) { if (x) report("failed at line " S(__LINE__) " of t.c", 0); return x; }
`
	after := common + `#define S2(x) #x
#define S(x) S2(x)

int warn(int x) { if (x) report("failed at line " S(__LINE__) " of t.c", 0); return x; }
`
	a, err := analyzeSources(t, before, after)
	if err == nil && len(a.changes) != 0 {
		t.Errorf("changes = %q: only a line number in a string moved", changes(a))
	} else if err != nil {
		t.Fatal(err)
	}
}

// A changed function's local static keeps its identity (the kernel's) even
// when the function's relocations no longer pair up with the original's.
func TestCompareLocalOfChangedFunction(t *testing.T) {
	before := common + `int tick(int x) { static int calls; calls++; return x + calls; }`
	after := common + `int tick(int x) { static int calls; if (x < 0) report("neg", x); calls++; return x + calls + level; }`
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	if got, want := changes(a), []string{"changed: tick"}; !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q (calls is the kernel's, not new)", got, want)
	}
}

// A changed function without an ftrace entry cannot be redirected: its
// callers are replaced, calling the patch's copy of it.
func TestCompareNotraceCallee(t *testing.T) {
	before := common + `
static __attribute__((noinline, no_instrument_function)) int helper(int x) { return x * 7 + level; }
int caller_a(int x) { return helper(x) + 1; }
int caller_b(int x) { return helper(x + 2); }
int other(int x) { return x; }
`
	after := strings.Replace(before, "x * 7 + level", "x * 7 - level", 1)
	a, err := analyzeSources(t, before, after)
	if err != nil {
		t.Fatal(err)
	}
	want := []string{
		"changed: caller_a (calls helper, which has no ftrace entry)",
		"changed: caller_b (calls helper, which has no ftrace entry)",
		"new: helper (changed, but has no ftrace entry to redirect (notrace or inline): carried for its callers)",
	}
	if got := changes(a); !slices.Equal(got, want) {
		t.Errorf("changes = %q, want %q", got, want)
	}
	// Global, it may have callers elsewhere: refused.
	g := strings.ReplaceAll(before, "static __attribute__", "__attribute__")
	if _, err := analyzeSources(t, g, strings.Replace(g, "x * 7 + level", "x * 7 - level", 1)); !errors.Is(err, ErrRefused) || !strings.Contains(err.Error(), "helper changed, has no ftrace entry") {
		t.Errorf("a global notrace function: err = %v, want a refusal naming it", err)
	}
}
