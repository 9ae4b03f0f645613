package glob

import (
	"strings"
	"testing"
)

func TestCompile(t *testing.T) {
	for pattern, want := range map[string]string{
		"":                "empty",
		"/":               "empty",
		"data//x.parquet": "empty path segment",
		"[a-":             "syntax error",
	} {
		if _, err := Compile(pattern); err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("Compile(%q) = %v, want an error with %q", pattern, err, want)
		}
	}
	for _, c := range []struct {
		pattern, rel string
		want         bool
	}{
		{"*.parquet", "dt=1/a.parquet", true},
		{"/*.parquet", "dt=1/a.parquet", false},
		{"dt=*/*.parquet", "dt=1/a.parquet", true},
		{"**/*.parquet", "a/b/c.parquet", true},
		{"a/**/c", "a/c", true},
	} {
		g, err := Compile(c.pattern)
		if err != nil {
			t.Fatal(err)
		}
		if got := g.Match(c.rel); got != c.want {
			t.Errorf("%q on %q = %v, want %v", c.pattern, c.rel, got, c.want)
		}
	}
}
