package config_test

import (
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
)

// env returns a lookupEnv over a fixed map.
func env(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) {
		v, ok := vars[k]
		return v, ok
	}
}

// baseTree is a minimal valid configuration as a JSON-like tree; tests change it with
// set before loading it.
func baseTree() map[string]any {
	return map[string]any{
		"syncs": []any{
			map[string]any{
				"name":   "users",
				"source": map[string]any{"url": "s3://acme/users/"},
				"mapping": map[string]any{
					"type":    "identify",
					"user_id": "customer_id",
				},
				"destinations": []any{map[string]any{"type": "stdout"}},
			},
		},
	}
}

// removed is a value for set that removes the key.
type removed struct{}

// set assigns v at path ("syncs[0].mapping.type") in tree, creating mappings on the way;
// an index one past the end of a list appends. v == removed{} removes the key.
func set(t testing.TB, tree map[string]any, path string, v any) {
	t.Helper()
	var cur any = tree
	parts := splitPath(path)
	for i, part := range parts {
		last := i == len(parts)-1
		switch c := cur.(type) {
		case map[string]any:
			if last {
				if _, del := v.(removed); del {
					delete(c, part)
				} else {
					c[part] = v
				}
				return
			}
			next, ok := c[part]
			if !ok {
				if _, isIndex := index(parts[i+1]); isIndex {
					next = []any{}
				} else {
					next = map[string]any{}
				}
				c[part] = next
			}
			if l, ok := next.([]any); ok {
				n, _ := index(parts[i+1])
				if n == len(l) {
					l = append(l, map[string]any{})
					c[part] = l
				}
			}
			cur = c[part]
		case []any:
			n, ok := index(part)
			if !ok || n >= len(c) {
				t.Fatalf("set %s: bad index %s", path, part)
			}
			if last {
				c[n] = v
				return
			}
			cur = c[n]
		default:
			t.Fatalf("set %s: %s is not a container", path, part)
		}
	}
}

func splitPath(path string) []string {
	var out []string
	for _, seg := range strings.Split(path, ".") {
		name, rest, _ := strings.Cut(seg, "[")
		if name != "" {
			out = append(out, name)
		}
		for rest != "" {
			idx, after, _ := strings.Cut(rest, "]")
			out = append(out, "["+idx+"]")
			rest = strings.TrimPrefix(after, "[")
		}
	}
	return out
}

func index(part string) (int, bool) {
	if !strings.HasPrefix(part, "[") {
		return 0, false
	}
	n, err := strconv.Atoi(strings.Trim(part, "[]"))
	return n, err == nil
}

// loadTree loads tree as JSON with dir as the config directory.
func loadTree(t testing.TB, tree map[string]any, dir string, vars map[string]string) (*config.Config, error) {
	t.Helper()
	data, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	return config.LoadBytes(data, "json", dir, env(vars), all.Registry())
}

// asConfigError fails the test unless err is a *config.Error.
func asConfigError(t testing.TB, err error) *config.Error {
	t.Helper()
	var ce *config.Error
	if !errors.As(err, &ce) {
		t.Fatalf("error %v (%T) is not a *config.Error", err, err)
	}
	return ce
}

// problems lists the problems of err as "path: msg" lines, for failure messages.
func problems(err error) string {
	var ce *config.Error
	if !errors.As(err, &ce) {
		return fmt.Sprint(err)
	}
	var b strings.Builder
	for _, fe := range ce.Errors {
		fmt.Fprintf(&b, "\n  %s: %s", fe.Path, fe.Msg)
	}
	return b.String()
}

func itoa(i int) string { return strconv.Itoa(i) }

// writeJSON writes tree as a JSON config file.
func writeJSON(t testing.TB, path string, tree map[string]any) {
	t.Helper()
	data, err := json.Marshal(tree)
	if err != nil {
		t.Fatal(err)
	}
	writeFile(t, path, string(data))
}

// writeFile writes a file, creating its directory.
func writeFile(t testing.TB, path, content string) {
	t.Helper()
	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(path, []byte(content), 0o644); err != nil {
		t.Fatal(err)
	}
}
