// Package glob is the one parser of include patterns: configuration validation and the
// reader both call it, so that a pattern the config accepts is one the reader uses.
package glob

import (
	"fmt"
	"path"
	"strings"
)

// Glob is a compiled include pattern, matched on a key below the source's prefix:
//
//   - a pattern without "/" matches the base name at any depth ("*.parquet" keeps
//     "dt=2025-01-01/part-0.parquet");
//   - a pattern with "/" matches the whole relative key, segment by segment ("*" never
//     crosses a "/"); a leading "/" anchors a one-segment pattern to the top level;
//   - a "**" segment matches any number of segments, none included.
//
// Segments are matched with path.Match, so "?", "[a-z]" and "\" escapes work as there.
type Glob struct {
	pattern string
	base    bool     // no "/": match the base name
	segs    []string // the pattern split on "/"
}

// Compile parses pattern. Errors quote it.
func Compile(pattern string) (Glob, error) {
	if pattern == "" {
		return Glob{}, fmt.Errorf("%q is not a valid glob pattern: it is empty", pattern)
	}
	anchored := strings.HasPrefix(pattern, "/")
	body := strings.TrimPrefix(pattern, "/")
	g := Glob{pattern: pattern, base: !anchored && !strings.Contains(body, "/")}
	if body == "" {
		return Glob{}, fmt.Errorf("%q is not a valid glob pattern: it is empty", pattern)
	}
	g.segs = strings.Split(body, "/")
	for _, s := range g.segs {
		if s == "" {
			return Glob{}, fmt.Errorf("%q is not a valid glob pattern: empty path segment (two slashes in a row)", pattern)
		}
		if s == "**" {
			continue
		}
		// path.Match checks the whole pattern's syntax even when the name does not match.
		if _, err := path.Match(s, ""); err != nil {
			return Glob{}, fmt.Errorf("%q is not a valid glob pattern: %w", pattern, err)
		}
	}
	return g, nil
}

// String is the pattern as written.
func (g Glob) String() string { return g.pattern }

// Match reports whether rel, a slash-separated key below the prefix, matches.
func (g Glob) Match(rel string) bool {
	if g.base {
		if g.segs[0] == "**" {
			return true
		}
		ok, _ := path.Match(g.segs[0], path.Base(rel))
		return ok
	}
	names := strings.Split(rel, "/")
	// ok[j] after processing pattern segment i: segs[i:] matches names[j:]. Dynamic
	// programming keeps patterns with many "**" linear in the key's depth.
	np, nn := len(g.segs), len(names)
	next := make([]bool, nn+1)
	next[nn] = true
	cur := make([]bool, nn+1)
	for i := np - 1; i >= 0; i-- {
		seg := g.segs[i]
		for j := nn; j >= 0; j-- {
			if seg == "**" {
				cur[j] = next[j] || (j < nn && cur[j+1])
				continue
			}
			if j == nn {
				cur[j] = false
				continue
			}
			if !next[j+1] {
				cur[j] = false
				continue
			}
			ok, _ := path.Match(seg, names[j])
			cur[j] = ok
		}
		next, cur = cur, next
	}
	return next[0]
}

// Segments are the pattern's "/"-separated segments.
func (g Glob) Segments() []string { return g.segs }

// MatchesBaseName reports whether the pattern, having no "/", matches base names.
func (g Glob) MatchesBaseName() bool { return g.base }
