package s3

import (
	"errors"
	"fmt"
	"strconv"
	"unicode/utf16"
	"unicode/utf8"
)

// kind is the JSON type of one flattened value.
type kind uint8

const (
	kindNull kind = iota
	kindString
	kindInt   // a number with no fraction nor exponent that fits in an int64
	kindFloat // any other number
	kindBool
	kindJSON // an array, or an empty object: kept as JSON text
)

// value is one flattened trait or property value. raw is the unescaped string for
// kindString, and the JSON text otherwise; it is valid until the next message is walked.
type value struct {
	kind kind
	raw  []byte
}

// flattener walks a traits/properties object and reports one (name, value) pair per
// leaf: nested objects are flattened with dots ("address.city"), arrays and empty
// objects are JSON text. The messages come from the mapper, so the JSON is expected to be
// valid; the walker still refuses anything malformed with an error rather than a panic.
//
// A flattener reuses its buffers; it is not safe for concurrent use.
type flattener struct {
	name  []byte // the dotted name being built
	arena []byte // unescaped strings of the current message
	// reserved renames a top-level key that equals one of the message-field columns
	// ("type", "userId", …) to prefix + "." + key, so that both keep their column.
	prefix string
}

// errMalformed is wrapped by every error of the walker.
var errMalformed = errors.New("malformed JSON")

// walk calls fn for every leaf of the JSON object body.
func (f *flattener) walk(body []byte, prefix string, fn func(name []byte, v value) error) error {
	f.prefix = prefix
	f.name = f.name[:0]
	f.arena = f.arena[:0]
	i := skipSpace(body, 0)
	if i >= len(body) || body[i] != '{' {
		return fmt.Errorf("%w: the traits/properties are not an object", errMalformed)
	}
	end, err := f.object(body, i, 0, fn)
	if err != nil {
		return err
	}
	if skipSpace(body, end) != len(body) {
		return fmt.Errorf("%w: data after the traits/properties object", errMalformed)
	}
	return nil
}

// maxDepth bounds recursion on hostile input.
const maxDepth = 64

// object walks the object starting at body[i] == '{' and returns the offset after it.
func (f *flattener) object(body []byte, i, depth int, fn func([]byte, value) error) (int, error) {
	if depth > maxDepth {
		return 0, fmt.Errorf("%w: nested deeper than %d", errMalformed, maxDepth)
	}
	base := len(f.name)
	i = skipSpace(body, i+1)
	if i < len(body) && body[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(body) || body[i] != '"' {
			return 0, fmt.Errorf("%w: expected a key at byte %d", errMalformed, i)
		}
		key, next, err := f.str(body, i)
		if err != nil {
			return 0, err
		}
		f.name = f.name[:base]
		if depth > 0 {
			f.name = append(f.name, '.')
		} else if isFieldColumn(key) {
			f.name = append(f.name, f.prefix...)
			f.name = append(f.name, '.')
		}
		f.name = append(f.name, key...)
		i = skipSpace(body, next)
		if i >= len(body) || body[i] != ':' {
			return 0, fmt.Errorf("%w: expected ':' at byte %d", errMalformed, i)
		}
		i = skipSpace(body, i+1)
		if i >= len(body) {
			return 0, fmt.Errorf("%w: unexpected end", errMalformed)
		}
		if body[i] == '{' && !emptyObject(body, i) {
			if i, err = f.object(body, i, depth+1, fn); err != nil {
				return 0, err
			}
		} else {
			v, next, err := f.value(body, i, depth)
			if err != nil {
				return 0, err
			}
			if err := fn(f.name, v); err != nil {
				return 0, err
			}
			i = next
		}
		i = skipSpace(body, i)
		if i >= len(body) {
			return 0, fmt.Errorf("%w: unexpected end", errMalformed)
		}
		switch body[i] {
		case ',':
			i = skipSpace(body, i+1)
		case '}':
			f.name = f.name[:base]
			return i + 1, nil
		default:
			return 0, fmt.Errorf("%w: expected ',' or '}' at byte %d", errMalformed, i)
		}
	}
}

func emptyObject(body []byte, i int) bool {
	j := skipSpace(body, i+1)
	return j < len(body) && body[j] == '}'
}

// value reads the scalar, array or empty object at body[i].
func (f *flattener) value(body []byte, i, depth int) (value, int, error) {
	switch c := body[i]; {
	case c == '"':
		s, next, err := f.str(body, i)
		return value{kind: kindString, raw: s}, next, err
	case c == '[' || c == '{':
		end, err := skipComposite(body, i, depth)
		if err != nil {
			return value{}, 0, err
		}
		return value{kind: kindJSON, raw: body[i:end]}, end, nil
	case c == 't':
		return literal(body, i, "true", kindBool)
	case c == 'f':
		return literal(body, i, "false", kindBool)
	case c == 'n':
		return literal(body, i, "null", kindNull)
	case c == '-' || (c >= '0' && c <= '9'):
		return number(body, i)
	default:
		return value{}, 0, fmt.Errorf("%w: unexpected %q at byte %d", errMalformed, c, i)
	}
}

func literal(body []byte, i int, word string, k kind) (value, int, error) {
	if len(body)-i < len(word) || string(body[i:i+len(word)]) != word {
		return value{}, 0, fmt.Errorf("%w: bad literal at byte %d", errMalformed, i)
	}
	return value{kind: k, raw: body[i : i+len(word)]}, i + len(word), nil
}

// number reads a JSON number and classifies it as an int64 or a float.
func number(body []byte, i int) (value, int, error) {
	start := i
	if body[i] == '-' {
		i++
	}
	digits := i
	for i < len(body) && body[i] >= '0' && body[i] <= '9' {
		i++
	}
	if i == digits {
		return value{}, 0, fmt.Errorf("%w: bad number at byte %d", errMalformed, start)
	}
	k := kindInt
	if i < len(body) && body[i] == '.' {
		k = kindFloat
		i++
		d := i
		for i < len(body) && body[i] >= '0' && body[i] <= '9' {
			i++
		}
		if i == d {
			return value{}, 0, fmt.Errorf("%w: bad number at byte %d", errMalformed, start)
		}
	}
	if i < len(body) && (body[i] == 'e' || body[i] == 'E') {
		k = kindFloat
		i++
		if i < len(body) && (body[i] == '+' || body[i] == '-') {
			i++
		}
		d := i
		for i < len(body) && body[i] >= '0' && body[i] <= '9' {
			i++
		}
		if i == d {
			return value{}, 0, fmt.Errorf("%w: bad number at byte %d", errMalformed, start)
		}
	}
	raw := body[start:i]
	if k == kindInt {
		if _, ok := parseInt(raw); !ok {
			k = kindFloat // too large for an int64
		}
	}
	return value{kind: k, raw: raw}, i, nil
}

// parseInt parses a JSON integer literal without allocating.
func parseInt(raw []byte) (int64, bool) {
	neg := len(raw) > 0 && raw[0] == '-'
	digits := raw
	if neg {
		digits = raw[1:]
	}
	if len(digits) == 0 || len(digits) > 19 {
		return 0, false
	}
	var u uint64
	for _, c := range digits {
		if c < '0' || c > '9' {
			return 0, false
		}
		u = u*10 + uint64(c-'0')
	}
	if neg {
		if u > 1<<63 {
			return 0, false
		}
		return -int64(u), true
	}
	if u > 1<<63-1 {
		return 0, false
	}
	return int64(u), true
}

// skipComposite returns the offset after the array or object starting at body[i],
// checking only what is needed to find its end (strings and nesting).
func skipComposite(body []byte, i, depth int) (int, error) {
	level := 0
	for ; i < len(body); i++ {
		switch body[i] {
		case '[', '{':
			level++
			if depth+level > maxDepth {
				return 0, fmt.Errorf("%w: nested deeper than %d", errMalformed, maxDepth)
			}
		case ']', '}':
			level--
			if level == 0 {
				return i + 1, nil
			}
		case '"':
			j, err := stringEnd(body, i)
			if err != nil {
				return 0, err
			}
			i = j - 1
		}
	}
	return 0, fmt.Errorf("%w: unterminated array or object", errMalformed)
}

// stringEnd returns the offset after the closing quote of the string at body[i].
func stringEnd(body []byte, i int) (int, error) {
	for j := i + 1; j < len(body); j++ {
		switch body[j] {
		case '\\':
			j++
		case '"':
			return j + 1, nil
		}
	}
	return 0, fmt.Errorf("%w: unterminated string at byte %d", errMalformed, i)
}

// str returns the unescaped content of the JSON string at body[i] and the offset after
// it. Without escapes the result aliases body; otherwise it lives in f.arena.
func (f *flattener) str(body []byte, i int) ([]byte, int, error) {
	end, err := stringEnd(body, i)
	if err != nil {
		return nil, 0, err
	}
	inner := body[i+1 : end-1]
	escaped := false
	for _, c := range inner {
		if c == '\\' {
			escaped = true
			break
		}
	}
	if !escaped {
		return inner, end, nil
	}
	start := len(f.arena)
	out, err := unescape(f.arena, inner)
	if err != nil {
		return nil, 0, fmt.Errorf("%w: string at byte %d: %v", errMalformed, i, err)
	}
	f.arena = out
	return out[start:len(out):len(out)], end, nil
}

// unescape appends the unescaped form of a JSON string's content to dst.
func unescape(dst, s []byte) ([]byte, error) {
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '\\' {
			dst = append(dst, c)
			continue
		}
		i++
		if i >= len(s) {
			return nil, errors.New("a trailing backslash")
		}
		switch s[i] {
		case '"', '\\', '/':
			dst = append(dst, s[i])
		case 'b':
			dst = append(dst, '\b')
		case 'f':
			dst = append(dst, '\f')
		case 'n':
			dst = append(dst, '\n')
		case 'r':
			dst = append(dst, '\r')
		case 't':
			dst = append(dst, '\t')
		case 'u':
			r, ok := hex4(s, i+1)
			if !ok {
				return nil, errors.New("a bad \\u escape")
			}
			i += 4
			if utf16.IsSurrogate(r) {
				if r2, ok := hex4(s, i+3); ok && i+2 < len(s) && s[i+1] == '\\' && s[i+2] == 'u' {
					if dec := utf16.DecodeRune(r, r2); dec != utf8.RuneError {
						r = dec
						i += 6
					} else {
						r = utf8.RuneError
					}
				} else {
					r = utf8.RuneError
				}
			}
			dst = utf8.AppendRune(dst, r)
		default:
			return nil, fmt.Errorf("a bad escape \\%c", s[i])
		}
	}
	return dst, nil
}

func hex4(s []byte, i int) (rune, bool) {
	if i < 0 || i+4 > len(s) {
		return 0, false
	}
	v, err := strconv.ParseUint(string(s[i:i+4]), 16, 32)
	if err != nil {
		return 0, false
	}
	return rune(v), true
}

func skipSpace(b []byte, i int) int {
	for i < len(b) {
		switch b[i] {
		case ' ', '\t', '\n', '\r':
			i++
		default:
			return i
		}
	}
	return i
}
