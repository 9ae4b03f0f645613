package reader

import (
	"path"
	"reflect"
	"strings"

	"github.com/backflowhq/backflow/internal/glob"
	"testing"
)

func objs(keys ...string) []Object {
	out := make([]Object, len(keys))
	for i, k := range keys {
		out[i] = Object{Key: k, Size: 100, ETag: "e" + k}
	}
	return out
}

func keysOf(l Listing) []string {
	var out []string
	for _, o := range l.Objects {
		out = append(out, o.Key)
	}
	return out
}

func skippedOf(l Listing) map[string]string {
	out := map[string]string{}
	for _, s := range l.Skipped {
		out[s.Key] = s.Reason
	}
	return out
}

func mustFilter(t *testing.T, include, partition string) Filter {
	t.Helper()
	f, err := NewFilter(include, partition)
	if err != nil {
		t.Fatalf("NewFilter(%q, %q): %v", include, partition, err)
	}
	return f
}

func TestGlobMatch(t *testing.T) {
	cases := []struct {
		pattern, rel string
		want         bool
	}{
		// No "/": the base name, at any depth.
		{"*.parquet", "a.parquet", true},
		{"*.parquet", "dt=2025-01-01/part-0.parquet", true},
		{"*.parquet", "x/y/z/part-0.parquet", true},
		{"*.parquet", "a.parquet.crc", false},
		{"*.parquet", "a.PARQUET", false},
		{"part-?.parquet", "d/part-1.parquet", true},
		{"part-[0-4].parquet", "d/part-5.parquet", false},
		{"**", "a/b/c", true},
		// With "/": the whole relative key, "*" never crossing a "/".
		{"dt=*/*.parquet", "dt=2025-01-01/a.parquet", true},
		{"dt=*/*.parquet", "a.parquet", false},
		{"dt=*/*.parquet", "dt=1/x/a.parquet", false},
		{"*/*.parquet", "a/b.parquet", true},
		// A leading "/" anchors a single segment to the top level.
		{"/*.parquet", "a.parquet", true},
		{"/*.parquet", "d/a.parquet", false},
		// "**" is any number of segments, none included.
		{"**/*.parquet", "a.parquet", true},
		{"**/*.parquet", "a/b/c.parquet", true},
		{"dt=*/**/*.parquet", "dt=1/a.parquet", true},
		{"dt=*/**/*.parquet", "dt=1/h=2/m=3/a.parquet", true},
		{"dt=*/**/*.parquet", "a.parquet", false},
		{"a/**", "a/b/c", true},
		{"a/**", "a", true},
		{"a/**", "b/c", false},
		{"**/x/**/y.parquet", "x/y.parquet", true},
		{"**/x/**/y.parquet", "1/x/2/3/y.parquet", true},
		{"**/x/**/y.parquet", "1/x2/3/y.parquet", false},
		// "**" inside a segment is just two stars.
		{"d**/a.parquet", "dx/a.parquet", true},
		{"d**/a.parquet", "dx/y/a.parquet", false},
	}
	for _, c := range cases {
		g, err := glob.Compile(c.pattern)
		if err != nil {
			t.Fatalf("glob.Compile(%q): %v", c.pattern, err)
		}
		if got := g.Match(c.rel); got != c.want {
			t.Errorf("%q matching %q = %v, want %v", c.pattern, c.rel, got, c.want)
		}
	}
}

func TestGlobBadPatterns(t *testing.T) {
	for _, p := range []string{"[", "a/[b", "a//b", "a/", "/", `x\`} {
		if _, err := NewFilter(p, ""); err == nil {
			t.Errorf("NewFilter(%q) accepted a bad pattern", p)
		} else if !strings.Contains(err.Error(), p) {
			t.Errorf("NewFilter(%q) error %q does not name the pattern", p, err)
		}
	}
	if _, err := NewFilter("", "newest"); err == nil || !strings.Contains(err.Error(), "newest") {
		t.Errorf("bad partition mode: got %v", err)
	}
}

func TestApplyDefaultInclude(t *testing.T) {
	in := objs(
		"exports/users/README.txt",
		"exports/users/b.parquet",
		"exports/users/a.parquet",
		"exports/users/dt=2025-01-01/part-0.parquet",
		"exports/users/dt=2025-01-01/",
		"exports/users/_SUCCESS",
		"exports/users/_temporary/0/part-9.parquet",
		"exports/users/.part-1.parquet",
		"exports/users/_col=1/part-0.parquet",
		"exports/other/x.parquet",
	)
	in[4].Size = 0
	in = append(in, Object{Key: "exports/users/empty.parquet", Size: 0})
	l := Filter{}.Apply("exports/users/", in)

	want := []string{
		"exports/users/_col=1/part-0.parquet",
		"exports/users/a.parquet",
		"exports/users/b.parquet",
		"exports/users/dt=2025-01-01/part-0.parquet",
	}
	if got := keysOf(l); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
	sk := skippedOf(l)
	for key, reason := range map[string]string{
		"exports/users/README.txt":                  `not a Parquet file (include "*.parquet")`,
		"exports/users/dt=2025-01-01/":              "directory marker",
		"exports/users/empty.parquet":               "empty object (0 bytes)",
		"exports/users/_SUCCESS":                    `hidden ("_SUCCESS"`,
		"exports/users/_temporary/0/part-9.parquet": `hidden ("_temporary"`,
		"exports/users/.part-1.parquet":             `hidden (".part-1.parquet"`,
		"exports/other/x.parquet":                   "outside the prefix",
	} {
		if !strings.HasPrefix(sk[key], reason) {
			t.Errorf("skipped[%q] = %q, want prefix %q", key, sk[key], reason)
		}
	}
	if len(l.Skipped) != 7 {
		t.Errorf("skipped %d objects, want 7: %v", len(l.Skipped), l.Skipped)
	}
	for i := 1; i < len(l.Skipped); i++ {
		if l.Skipped[i-1].Key > l.Skipped[i].Key {
			t.Fatalf("skipped not sorted: %v", l.Skipped)
		}
	}
	// The objects keep what the listing said of them.
	if o := l.Objects[1]; o.ETag != "eexports/users/a.parquet" || o.Size != 100 {
		t.Errorf("object changed: %+v", o)
	}
}

func TestApplyCustomInclude(t *testing.T) {
	f := mustFilter(t, "dt=*/**/*.parquet", "")
	l := f.Apply("p/", objs("p/top.parquet", "p/dt=1/a.parquet", "p/dt=1/h=3/b.parquet", "p/x/c.parquet", "p/dt=1/notes.csv"))
	if got, want := keysOf(l), []string{"p/dt=1/a.parquet", "p/dt=1/h=3/b.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
	sk := skippedOf(l)
	if got := sk["p/top.parquet"]; got != `does not match include "dt=*/**/*.parquet"` {
		t.Errorf("reason for p/top.parquet = %q", got)
	}
	if got := sk["p/dt=1/notes.csv"]; got != `not a Parquet file (include "dt=*/**/*.parquet")` {
		t.Errorf("reason for p/dt=1/notes.csv = %q", got)
	}
}

func TestApplyHiddenNamedByPattern(t *testing.T) {
	// A pattern that names a hidden segment asks for it.
	f := mustFilter(t, "_staging/*.parquet", "")
	l := f.Apply("", objs("_staging/a.parquet", "b.parquet"))
	if got, want := keysOf(l), []string{"_staging/a.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
}

func TestApplyEmptyPrefixAndNoObjects(t *testing.T) {
	l := Filter{}.Apply("", nil)
	if len(l.Objects) != 0 || len(l.Skipped) != 0 {
		t.Fatalf("empty listing: %+v", l)
	}
	l = Filter{}.Apply("", objs("z.parquet", "a/b.parquet"))
	if got, want := keysOf(l), []string{"a/b.parquet", "z.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
}

func TestApplyPartitionLatest(t *testing.T) {
	f := mustFilter(t, "", "latest")
	in := objs(
		"s/dt=2025-01-9/a.parquet",
		"s/dt=2025-01-10/a.parquet",
		"s/dt=2025-01-10/b.parquet",
		"s/dt=2025-01-10/h=1/c.parquet",
		"s/dt=2025-01-10/_SUCCESS",
		"s/dt=2025-01-02/a.parquet",
		"s/dt=2025-02-01/README.md", // newest sub-prefix, but nothing to read in it
		"s/loose.parquet",
	)
	l := f.Apply("s/", in)
	want := []string{"s/dt=2025-01-10/a.parquet", "s/dt=2025-01-10/b.parquet", "s/dt=2025-01-10/h=1/c.parquet"}
	if got := keysOf(l); !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
	sk := skippedOf(l)
	for _, k := range []string{"s/dt=2025-01-9/a.parquet", "s/dt=2025-01-02/a.parquet"} {
		if got := sk[k]; got != "older partition (latest is dt=2025-01-10/)" {
			t.Errorf("reason for %s = %q", k, got)
		}
	}
	if got := sk["s/loose.parquet"]; !strings.HasPrefix(got, "not in a partition") {
		t.Errorf("reason for s/loose.parquet = %q", got)
	}
	if got := sk["s/dt=2025-02-01/README.md"]; !strings.HasPrefix(got, "not a Parquet file") {
		t.Errorf("reason for README = %q", got)
	}

	// Nothing but loose files: nothing to read, and each says why.
	l = f.Apply("", objs("a.parquet"))
	if len(l.Objects) != 0 || len(l.Skipped) != 1 || !strings.HasPrefix(l.Skipped[0].Reason, "not in a partition") {
		t.Fatalf("loose files with latest: %+v", l)
	}

	// Plain numbers compare as numbers.
	l = f.Apply("", objs("9/a.parquet", "10/a.parquet", "100/a.parquet", "099/a.parquet"))
	if got, want := keysOf(l), []string{"100/a.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
}

func TestCompareNatural(t *testing.T) {
	ordered := []string{
		"", "0", "00", "01", "1", "2", "9", "10", "100",
		"a", "a1", "a2", "a10", "a10b", "a11",
		"dt=2025-01-1", "dt=2025-01-9", "dt=2025-01-10", "dt=2025-2-1", "dt=2025-10-01", "dt=2026-01-01",
		"x",
	}
	for i := range ordered {
		for j := range ordered {
			got := compareNatural(ordered[i], ordered[j])
			want := 0
			if i < j {
				want = -1
			} else if i > j {
				want = 1
			}
			if got != want {
				t.Errorf("compareNatural(%q, %q) = %d, want %d", ordered[i], ordered[j], got, want)
			}
		}
	}
}

// FuzzGlob checks that matching never panics and that the glob agrees with path.Match
// where their meanings coincide.
func FuzzGlob(f *testing.F) {
	for _, s := range [][2]string{
		{"*.parquet", "a/b.parquet"}, {"dt=*/**/*.parquet", "dt=1/x/y.parquet"},
		{"**/a/**", "a"}, {"[a-", "a"}, {`\*`, "*"}, {"a/?/c", "a/b/c"},
	} {
		f.Add(s[0], s[1])
	}
	f.Fuzz(func(t *testing.T, pattern, rel string) {
		g, err := glob.Compile(pattern)
		if err != nil {
			return
		}
		got := g.Match(rel)
		hasStarStar := false
		for _, s := range g.Segments() {
			hasStarStar = hasStarStar || s == "**"
		}
		if hasStarStar {
			return
		}
		body := strings.TrimPrefix(pattern, "/")
		if g.MatchesBaseName() {
			want, _ := path.Match(body, path.Base(rel))
			if got != want {
				t.Fatalf("base %q on %q: %v, path.Match %v", pattern, rel, got, want)
			}
			return
		}
		// Segment-wise matching can only be stricter than path.Match (a class like
		// [^a] matches "/" there, never here).
		if want, _ := path.Match(body, rel); got && !want {
			t.Fatalf("%q on %q: matched, path.Match did not", pattern, rel)
		}
		// "**/" in front accepts any leading folders.
		deep, err := glob.Compile("**/" + body)
		if err != nil {
			t.Fatalf("glob.Compile(**/%s): %v", body, err)
		}
		if got && !deep.Match("x/y/"+rel) {
			t.Fatalf("%q matches %q but **/%q does not match x/y/%q", pattern, rel, body, rel)
		}
	})
}
