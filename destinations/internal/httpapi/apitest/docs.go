package apitest

import (
	"os"
	"path/filepath"
	"runtime"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
)

// CheckDocumented fails t unless docs/destinations.md has a "## typ" section before
// "## Writing a destination" whose key table (| `key` | default | meaning |) lists every
// key of o.
func CheckDocumented(t *testing.T, typ string, o config.Options) {
	t.Helper()
	_, file, _, _ := runtime.Caller(0)
	root := filepath.Join(filepath.Dir(file), "..", "..", "..", "..")
	b, err := os.ReadFile(filepath.Join(root, "docs", "destinations.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "\n## "+typ+"\n")
	writing := strings.Index(doc, "\n## Writing a destination")
	if start < 0 || writing < 0 || start > writing {
		t.Fatalf("docs/destinations.md has no section \"## %s\" before \"## Writing a destination\"", typ)
	}
	section := doc[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	if !strings.Contains(section, "| key | default | meaning |") {
		t.Errorf("the %s section has no key table", typ)
	}
	for _, k := range config.OptionKeys(o) {
		if !strings.Contains(section, "| `"+k+"` |") {
			t.Errorf("the %s section's key table does not list `%s`", typ, k)
		}
	}
}
