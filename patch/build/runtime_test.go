package build

import (
	"context"
	"debug/elf"
	"errors"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/lucos/lucos/patch/loader"
)

// dataPatch is a patch with a data update and callbacks; transfer is the
// prototype of its transfer function.
func dataPatch(transfer string) string {
	return `#include <linux/sched.h>
#include <lucos/patch.h>

LUCOS_PATCH("data", "a data update and callbacks");

extern int sysctl_sched_rr_timeslice;	/* static in kernel/sched/rt.c */
struct timeslice { int ms, doubled; };
static struct timeslice new_timeslice;

static void ` + transfer + `
{
	new->ms = *old;
	new->doubled = *old * 2;
}

static void timeslice_reverse(const struct timeslice *new, int *old)
{
	*old = new->ms;
}
LUCOS_DATA(sysctl_sched_rr_timeslice, new_timeslice, timeslice_transfer, timeslice_reverse);

static void on_task(struct task_struct *t)
{
	unsigned long *seen = lucos_shadow_get_or_alloc(t, 1, sizeof(*seen), GFP_ATOMIC);

	if (seen)
		(*seen)++;
}
LUCOS_THREAD_CALLBACK(on_task);
`
}

// Every patch is linked with the runtime: here one that uses it. The
// runtime's own unexported kernel symbols (ct_irq_enter_irqson...) are
// not the author's business and are not listed.
func TestBuildWithRuntime(t *testing.T) {
	requireKbuild(t)
	dir := writePatch(t, "data", map[string]string{
		"data.c": dataPatch("timeslice_transfer(const int *old, struct timeslice *new)"),
	})
	res, err := Build(context.Background(), dir, Options{Output: filepath.Join(t.TempDir(), "data.ko")})
	if err != nil {
		t.Fatal(err)
	}
	if len(res.Warnings) != 0 || len(res.Unexported) != 0 {
		t.Errorf("warnings %q, unexported %q", res.Warnings, res.Unexported)
	}
	ko, err := os.ReadFile(res.KO)
	if err != nil {
		t.Fatal(err)
	}
	m, err := loader.Parse(ko)
	if err != nil {
		t.Fatal(err)
	}
	if len(m.Data) != 1 || m.Data[0].Transfer != "timeslice_transfer" || len(m.Callbacks) != 1 || m.Callbacks[0].Kind != loader.CallbackThread {
		t.Errorf("data %+v callbacks %+v", m.Data, m.Callbacks)
	}
	undef := undefinedSymbols(t, res.KO)
	for _, want := range []string{"ct_irq_enter_irqson", "ct_irq_exit_irqson", "rcu_is_watching"} {
		if !slices.Contains(undef, want) {
			t.Errorf("the runtime does not call %s (undefined: %q)", want, undef)
		}
	}
	f, err := elf.Open(res.KO)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	syms, _ := f.Symbols()
	for _, want := range []string{"__lucos_call", "__lucos_trampoline", "__lucos_rt_exit", "lucos_shadow_get", "lucos_shadow_alloc",
		"lucos_shadow_get_or_alloc", "lucos_shadow_free", "lucos_shadow_free_all"} {
		if !slices.ContainsFunc(syms, func(s elf.Symbol) bool {
			return s.Name == want && s.Section != elf.SHN_UNDEF && elf.ST_TYPE(s.Info) == elf.STT_FUNC && elf.ST_BIND(s.Info) == elf.STB_GLOBAL
		}) {
			t.Errorf("the module does not define %s", want)
		}
	}
}

// A transfer of the wrong prototype does not compile: the static_assert of
// LUCOS_DATA says what to declare, and a note names the user's line.
func TestDataSignatureCompileError(t *testing.T) {
	requireKbuild(t)
	dir := writePatch(t, "data", map[string]string{
		"data.c": dataPatch("timeslice_transfer(int *old, struct timeslice *new)"), // const missing
	})
	_, err := Build(context.Background(), dir, Options{Output: filepath.Join(t.TempDir(), "data.ko")})
	var ce *CompileError
	if !errors.As(err, &ce) {
		t.Fatalf("got %v, want a *CompileError", err)
	}
	want := "LUCOS_DATA(sysctl_sched_rr_timeslice, new_timeslice): declare the transfer as void timeslice_transfer(const typeof(sysctl_sched_rr_timeslice) *old, typeof(new_timeslice) *new)"
	// The error is where patch.h asserts; a note names the user's line.
	i := slices.IndexFunc(ce.Diagnostics, func(d Diagnostic) bool { return d.Severity == "error" })
	if i < 0 {
		t.Fatalf("no error among %v", ce.Diagnostics)
	}
	if d := ce.Diagnostics[i]; d.File != "sdk/include/lucos/patch.h" || !strings.Contains(d.Message, want) {
		t.Errorf("first error %v, want one in sdk/include/lucos/patch.h saying %q\n%s", d, want, ce.Text)
	}
	if !slices.ContainsFunc(ce.Diagnostics, func(d Diagnostic) bool {
		return d.File == filepath.Join(dir, "data.c") && d.Line == 20 && d.Severity == "note" && strings.Contains(d.Message, "LUCOS_DATA")
	}) {
		t.Errorf("no note at data.c:20 about LUCOS_DATA:\n%s", ce.Text)
	}
}

// A source named like the module would be part of itself, with the runtime.
func TestRuntimeModuleNameClash(t *testing.T) {
	dir := writePatch(t, "x", map[string]string{"lucos_x.c": "#include <lucos/patch.h>\nLUCOS_PATCH(\"x\", \"x\");\n"})
	_, err := Build(context.Background(), dir, Options{Release: "6.1.0-999-cloud-amd64", CacheDir: t.TempDir()})
	if err == nil || !strings.Contains(err.Error(), "lucos_x.c is named like the patch module lucos_x") {
		t.Errorf("got %v", err)
	}
}
