// Package keytemplate checks and expands the object key templates of the s3 destination
// ("{stream_name}/{date}/{connection_run_id}-{part}.{extension}").
//
// A template is literal text with macros in braces. Validate runs when the config loads
// and refuses templates that could make one run overwrite another's objects, produce
// keys that tools downstream choke on, or grow past MaxLength; Expand builds the key of
// one object.
package keytemplate

import (
	"errors"
	"fmt"
	"strconv"
	"strings"
	"time"
	"unicode"
	"unicode/utf8"
)

// Default is the template used when an s3 destination sets no key.
const Default = "{stream_name}/{date}/{connection_run_id}-{part}.{extension}"

// MaxLength bounds an expanded key (without the destination URL's prefix), in bytes.
const MaxLength = 500

// ForbiddenChars may not appear in a template nor in an expanded key (nor may a space):
// they need escaping in URLs and shells and break several warehouse loaders.
const ForbiddenChars = "!@#$%^&*"

// Longest plausible expansions of the variable macros, used by Validate to bound the
// length of a key before any run happens. Sync names are at most 64 characters by
// convention (the config validates [a-z0-9_-]+); ids and run ids are at most 64.
const (
	maxStreamNameLen = 64
	maxIDLen         = 64
	maxPartLen       = 10 // a part number below 10^10
	maxUnixLen       = 11 // seconds until the year 5138
)

// Vars are the values macros expand to.
type Vars struct {
	StreamName   string    // {stream_name}: the sync's name
	StreamID     string    // {stream_id}: a stable id of the sync
	ConnectionID string    // {connection_id}: a stable id of the sync + destination
	RunID        string    // {connection_run_id}, {stream_run_id}: the run's id
	Time         time.Time // the time macros: when the run started (converted to UTC)
	Part         int       // {part}: 0, 1, … within a run
	Extension    string    // {extension}: jsonl, jsonl.gz, csv, csv.gz, parquet
}

// macro describes one macro: how it expands, whether it makes a key unique to a run,
// and the longest value it may plausibly take.
type macro struct {
	expand    func(v *Vars) string
	runUnique bool
	maxLen    int
}

var macros = map[string]macro{
	"extension":         {expand: func(v *Vars) string { return v.Extension }, maxLen: len("jsonl.gz")},
	"date_time":         {expand: func(v *Vars) string { return utc(v).Format("2006_01_02_15_04_05") }, runUnique: true, maxLen: 19},
	"timestamp":         {expand: func(v *Vars) string { return utc(v).Format("2006_01_02_15_04_05") }, runUnique: true, maxLen: 19},
	"iso_date_time":     {expand: func(v *Vars) string { return utc(v).Format("2006-01-02T15:04:05Z") }, runUnique: true, maxLen: 20},
	"date":              {expand: func(v *Vars) string { return utc(v).Format("2006_01_02") }, maxLen: 10},
	"iso_date":          {expand: func(v *Vars) string { return utc(v).Format("2006-01-02") }, maxLen: 10},
	"year":              {expand: func(v *Vars) string { return utc(v).Format("2006") }, maxLen: 4},
	"month":             {expand: func(v *Vars) string { return utc(v).Format("01") }, maxLen: 2},
	"day":               {expand: func(v *Vars) string { return utc(v).Format("02") }, maxLen: 2},
	"hour":              {expand: func(v *Vars) string { return utc(v).Format("15") }, maxLen: 2},
	"minute":            {expand: func(v *Vars) string { return utc(v).Format("04") }, maxLen: 2},
	"second":            {expand: func(v *Vars) string { return utc(v).Format("05") }, runUnique: true, maxLen: 2},
	"unix":              {expand: func(v *Vars) string { return strconv.FormatInt(v.Time.Unix(), 10) }, runUnique: true, maxLen: maxUnixLen},
	"stream_name":       {expand: func(v *Vars) string { return v.StreamName }, maxLen: maxStreamNameLen},
	"stream_id":         {expand: func(v *Vars) string { return v.StreamID }, maxLen: maxIDLen},
	"connection_id":     {expand: func(v *Vars) string { return v.ConnectionID }, maxLen: maxIDLen},
	"connection_run_id": {expand: func(v *Vars) string { return v.RunID }, runUnique: true, maxLen: maxIDLen},
	"stream_run_id":     {expand: func(v *Vars) string { return v.RunID }, runUnique: true, maxLen: maxIDLen},
	"part":              {expand: func(v *Vars) string { return strconv.Itoa(v.Part) }, maxLen: maxPartLen},
}

// Macros returns the names of every macro, in the order the documentation lists them.
func Macros() []string {
	return []string{
		"extension", "date_time", "timestamp", "iso_date_time", "date", "iso_date",
		"year", "month", "day", "hour", "minute", "second", "unix",
		"stream_name", "stream_id", "connection_id", "connection_run_id", "stream_run_id", "part",
	}
}

func utc(v *Vars) time.Time { return v.Time.UTC() }

// segment is a piece of a parsed template: literal text, or a macro name.
type segment struct {
	text    string
	isMacro bool
}

// parse splits tmpl into segments, refusing unbalanced braces, unknown macros and
// characters that may not appear in a key.
func parse(tmpl string) ([]segment, error) {
	if tmpl == "" {
		return nil, errors.New("the key template is empty")
	}
	var segs []segment
	lit := 0 // start of the pending literal
	for i := 0; i < len(tmpl); {
		r, size := utf8.DecodeRuneInString(tmpl[i:])
		switch {
		case r == utf8.RuneError && size == 1:
			return nil, fmt.Errorf("invalid UTF-8 at byte %d", i)
		case r == '{':
			end := strings.IndexAny(tmpl[i+1:], "{}")
			if end < 0 || tmpl[i+1+end] == '{' {
				return nil, fmt.Errorf("unbalanced braces: the \"{\" at byte %d is not closed", i)
			}
			name := tmpl[i+1 : i+1+end]
			if _, ok := macros[name]; !ok {
				if name == "" {
					return nil, fmt.Errorf("empty macro {} at byte %d", i)
				}
				return nil, fmt.Errorf("unknown macro {%s} (known macros: %s)", printable(name), knownList())
			}
			if lit < i {
				segs = append(segs, segment{text: tmpl[lit:i]})
			}
			segs = append(segs, segment{text: name, isMacro: true})
			i += end + 2
			lit = i
			continue
		case r == '}':
			return nil, fmt.Errorf("unbalanced braces: the \"}\" at byte %d has no opening \"{\"", i)
		default:
			if err := checkRune(r, i); err != nil {
				return nil, err
			}
		}
		i += size
	}
	if lit < len(tmpl) {
		segs = append(segs, segment{text: tmpl[lit:]})
	}
	return segs, nil
}

// checkRune refuses a character that may not appear in a key; at is its byte offset.
func checkRune(r rune, at int) error {
	switch {
	case r == ' ':
		return fmt.Errorf("a space at byte %d (keys may not contain spaces or any of %s)", at, ForbiddenChars)
	case strings.ContainsRune(ForbiddenChars, r):
		return fmt.Errorf("the character %q at byte %d (keys may not contain spaces or any of %s)", r, at, ForbiddenChars)
	case unicode.IsSpace(r) || unicode.IsControl(r):
		return fmt.Errorf("the whitespace or control character %q at byte %d", r, at)
	}
	return nil
}

// printable shortens and quotes what a user typed inside braces for an error message.
func printable(s string) string {
	if len(s) > 40 {
		s = s[:40] + "…"
	}
	return strings.ToValidUTF8(s, "?")
}

func knownList() string {
	names := Macros()
	for i, n := range names {
		names[i] = "{" + n + "}"
	}
	return strings.Join(names, " ")
}

// Validate checks a key template when the config loads: known macros only, balanced
// braces, no space or any of !@#$%^&*, an element unique to the run
// ({connection_run_id}, {stream_run_id} or a time macro with seconds), {part}, and at
// most MaxLength bytes once expanded with the longest plausible values. The error names
// the problem.
func Validate(tmpl string) error {
	segs, err := parse(tmpl)
	if err != nil {
		return err
	}
	var unique, part bool
	longest := 0
	for _, s := range segs {
		if !s.isMacro {
			longest += len(s.text)
			continue
		}
		m := macros[s.text]
		unique = unique || m.runUnique
		part = part || s.text == "part"
		longest += m.maxLen
	}
	if !unique {
		return errors.New("no element unique to the run: add {connection_run_id}, {stream_run_id} or a time macro with seconds ({date_time}, {timestamp}, {iso_date_time}, {second} or {unix}) so that no run overwrites another's objects")
	}
	if !part {
		return errors.New("no {part}: add it so that the objects of one run do not overwrite each other")
	}
	if longest > MaxLength {
		return fmt.Errorf("up to %d characters once expanded (with a %d-character sync name and %d-character ids), longer than the limit of %d",
			longest, maxStreamNameLen, maxIDLen, MaxLength)
	}
	return nil
}

// Expand returns the key tmpl names for v. It refuses an invalid template (unknown
// macro, unbalanced braces, a forbidden character) and an expansion that is longer than
// MaxLength or contains a space, a brace or one of !@#$%^&* (a value of v may bring one).
// It does not insist on {part} or a run-unique element: that is Validate's job.
func Expand(tmpl string, v Vars) (string, error) {
	segs, err := parse(tmpl)
	if err != nil {
		return "", err
	}
	var b strings.Builder
	for _, s := range segs {
		if !s.isMacro {
			b.WriteString(s.text)
			continue
		}
		val := macros[s.text].expand(&v)
		if err := checkValue(s.text, val); err != nil {
			return "", err
		}
		b.WriteString(val)
	}
	key := b.String()
	if len(key) > MaxLength {
		return "", fmt.Errorf("the expanded key is %d characters long, longer than the limit of %d", len(key), MaxLength)
	}
	return key, nil
}

// checkValue refuses a macro value that would put a forbidden character in a key.
func checkValue(name, val string) error {
	for i, r := range val {
		if r == utf8.RuneError {
			if _, size := utf8.DecodeRuneInString(val[i:]); size == 1 {
				return fmt.Errorf("{%s}: the value %q is not valid UTF-8", name, val)
			}
		}
		if r == '{' || r == '}' {
			return fmt.Errorf("{%s}: the value %q contains a brace", name, val)
		}
		if err := checkRune(r, i); err != nil {
			return fmt.Errorf("{%s}: the value %q contains %w", name, val, err)
		}
	}
	return nil
}
