package config

import (
	"cmp"
	"slices"
	"strconv"
	"strings"
)

// FieldError is one problem of a configuration, at the key path Path
// (`syncs[0].mapping.columns`); Path is empty for a problem of the whole file, such as
// a syntax error. Msg never holds a secret value.
type FieldError struct {
	Path string
	Msg  string
	// Err is the underlying cause when there is one (a read or parse error), so that
	// errors.Is(err, fs.ErrNotExist) works through *Error.
	Err error
}

// Error renders "<path>: <msg>", or the message alone when Path is empty.
func (e FieldError) Error() string {
	if e.Path == "" {
		return e.Msg
	}
	return e.Path + ": " + e.Msg
}

// Unwrap returns the underlying cause, if any.
func (e FieldError) Unwrap() error { return e.Err }

// Error is every problem found in one configuration, reported together so that a user
// fixes them in one go. Every error returned by Load and LoadBytes is an *Error; the
// command line maps it to exit code 2.
type Error struct {
	// File is the configuration file as it was named (empty for LoadBytes).
	File   string
	Errors []FieldError
}

// Error renders one line per problem: "<file>: <path>: <msg>".
func (e *Error) Error() string {
	var b strings.Builder
	for i, fe := range e.Errors {
		if i > 0 {
			b.WriteByte('\n')
		}
		if e.File != "" {
			b.WriteString(e.File)
			b.WriteString(": ")
		}
		b.WriteString(fe.Error())
	}
	return b.String()
}

// Unwrap exposes every FieldError to errors.Is and errors.As.
func (e *Error) Unwrap() []error {
	errs := make([]error, len(e.Errors))
	for i, fe := range e.Errors {
		errs[i] = fe
	}
	return errs
}

// Has reports whether a problem is recorded at path with a message containing msg;
// tests and tools use it to look for one problem among many.
func (e *Error) Has(path, msg string) bool {
	for _, fe := range e.Errors {
		if fe.Path == path && strings.Contains(fe.Msg, msg) {
			return true
		}
	}
	return false
}

// problems collects FieldErrors across the phases of a load. Once a path has a
// problem from decoding (a bad value, an unset variable), validation stays quiet about
// it and everything below it: the zero value left behind would only cause a second,
// misleading message.
type problems struct {
	list []FieldError
	bad  map[string]bool
}

func (p *problems) add(path, msg string) {
	p.list = append(p.list, FieldError{Path: path, Msg: msg})
}

// addBad records a decoding problem and silences validation at and below path.
func (p *problems) addBad(path, msg string) {
	p.add(path, msg)
	if p.bad == nil {
		p.bad = map[string]bool{}
	}
	p.bad[path] = true
}

// markBad silences validation at and below path without a message of its own: the
// problem was reported at another path.
func (p *problems) markBad(path string) {
	if p.bad == nil {
		p.bad = map[string]bool{}
	}
	p.bad[path] = true
}

// check records a validation problem unless decoding already reported path or an
// ancestor of it.
func (p *problems) check(path, msg string) {
	if !p.isBad(path) {
		p.add(path, msg)
	}
}

// isBad reports whether decoding already reported path or an ancestor of it.
func (p *problems) isBad(path string) bool {
	for q := path; q != ""; q = parentPath(q) {
		if p.bad[q] {
			return true
		}
	}
	return false
}

// parentPath returns the path one level up: "a.b[2]" → "a.b", "a.b" → "a".
func parentPath(path string) string {
	i := strings.LastIndexAny(path, ".[")
	if i < 0 {
		return ""
	}
	return path[:i]
}

// sorted orders problems by path so that everything about syncs[1] comes after
// syncs[0] (indexes compare as numbers), keeping discovery order for equal paths.
func (p *problems) sorted() []FieldError {
	out := slices.Clone(p.list)
	slices.SortStableFunc(out, func(a, b FieldError) int { return comparePaths(a.Path, b.Path) })
	return out
}

// comparePaths compares key paths, numbers inside brackets by value.
func comparePaths(a, b string) int {
	for a != "" && b != "" {
		na, ra, oka := leadingIndex(a)
		nb, rb, okb := leadingIndex(b)
		if oka && okb {
			if c := cmp.Compare(na, nb); c != 0 {
				return c
			}
			a, b = ra, rb
			continue
		}
		if a[0] != b[0] {
			return cmp.Compare(a[0], b[0])
		}
		a, b = a[1:], b[1:]
	}
	return cmp.Compare(len(a), len(b))
}

// leadingIndex parses "[12]rest" into 12 and "rest".
func leadingIndex(s string) (int, string, bool) {
	if !strings.HasPrefix(s, "[") {
		return 0, s, false
	}
	end := strings.IndexByte(s, ']')
	if end < 0 {
		return 0, s, false
	}
	n, err := strconv.Atoi(s[1:end])
	if err != nil {
		return 0, s, false
	}
	return n, s[end+1:], true
}

// joinPath appends a key to a path.
func joinPath(path, key string) string {
	if path == "" {
		return key
	}
	return path + "." + key
}

// indexPath appends a list index to a path.
func indexPath(path string, i int) string {
	return path + "[" + strconv.Itoa(i) + "]"
}
