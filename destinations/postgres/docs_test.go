package postgres

import (
	"os"
	"reflect"
	"strings"
	"testing"
)

// TestDocumented: every key of Options has its row in the postgres section of
// docs/destinations.md.
func TestDocumented(t *testing.T) {
	b, err := os.ReadFile("../../docs/destinations.md")
	if err != nil {
		t.Fatal(err)
	}
	_, section, ok := strings.Cut(string(b), "\n## postgres\n")
	if !ok {
		t.Fatal("docs/destinations.md has no ## postgres section")
	}
	section, _, _ = strings.Cut(section, "\n## ")
	typ := reflect.TypeOf(Options{})
	for i := range typ.NumField() {
		key, _, _ := strings.Cut(typ.Field(i).Tag.Get("mapstructure"), ",")
		if !strings.Contains(section, "\n| `"+key+"` |") {
			t.Errorf("option %s has no row | `%s` | default | meaning | in the postgres section of docs/destinations.md", key, key)
		}
	}
}
