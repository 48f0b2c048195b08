package sdk

import (
	"regexp"
	"strings"
	"testing"
)

// The runtime defines every runtime function the header declares, with
// the header's name, and includes the header (so the compiler checks the
// prototypes against each other).
func TestRuntimeMatchesHeader(t *testing.T) {
	header, runtime := string(PatchHeader), string(Runtime)
	if !strings.Contains(runtime, "#include <lucos/patch.h>") {
		t.Error("lucos_rt.c does not include <lucos/patch.h>")
	}
	for _, fn := range []string{"__lucos_call", "__lucos_trampoline", "__lucos_rt_exit", "__lucos_kick", "lucos_shadow_get",
		"lucos_shadow_alloc", "lucos_shadow_get_or_alloc", "lucos_shadow_free", "lucos_shadow_free_all"} {
		decl := regexp.MustCompile(`(?m)^[a-z_][\w\s*]*[\s*]` + fn + `\(`)
		if !decl.MatchString(header) {
			t.Errorf("patch.h does not declare %s", fn)
		}
		if !decl.MatchString(runtime) {
			t.Errorf("lucos_rt.c does not define %s", fn)
		}
	}
}
