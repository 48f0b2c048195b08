package loader

import (
	"fmt"
	"os"
	"strings"
	"testing"
)

// TestSectionTableDocumented: the package doc's table is the policy.
func TestSectionTableDocumented(t *testing.T) {
	b, err := os.ReadFile("doc.go")
	if err != nil {
		t.Fatal(err)
	}
	var rows []string
	for line := range strings.Lines(string(b)) {
		if strings.HasPrefix(line, "//\t") && !strings.HasPrefix(line, "//\tsection ") && !strings.Contains(line, "──") {
			rows = append(rows, strings.TrimSpace(strings.TrimPrefix(line, "//\t")))
		}
	}
	var want []string
	for _, r := range sectionRules {
		want = append(want, strings.TrimSpace(fmt.Sprintf("%-27s %-8s %s", r.name, r.treat, r.reason)))
	}
	if strings.Join(rows, "\n") != strings.Join(want, "\n") {
		t.Errorf("doc.go's section table differs from sectionRules; regenerate it:\n%s", strings.Join(want, "\n"))
	}
}
