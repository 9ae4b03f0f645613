package postgres

import (
	"encoding/json"
	"errors"
	"fmt"
)

// kind is a value's JSON type, which picks the type of a column created for it.
type kind uint8

const (
	kindNull kind = iota
	kindString
	kindNumber
	kindBool
	kindJSON // an object (jsonb layout: the whole body) or an array
)

func (k kind) String() string {
	switch k {
	case kindString:
		return "string"
	case kindNumber:
		return "number"
	case kindBool:
		return "boolean"
	case kindJSON:
		return "object or array"
	}
	return "null"
}

// pgType is the column type created for a value of kind k. Numbers are numeric, not
// double precision: numeric keeps every digit the message carries (12.30 stays 12.30,
// integers beyond 2^53 stay exact), as backflow does everywhere else.
func (k kind) pgType() string {
	switch k {
	case kindNumber:
		return "numeric"
	case kindBool:
		return "boolean"
	case kindJSON:
		return "jsonb"
	}
	return "text"
}

// field is one leaf of a message's traits or properties: its column and its value as
// text for COPY (a string unescaped, a number or boolean as written, an array as JSON).
type field struct {
	col  string
	kind kind
	text []byte
}

// flatten appends to out one field per leaf of the JSON object body: nested objects'
// keys are joined with dots (address.city); arrays and empty objects are kept as JSON.
// body is the mapper's output, valid JSON, but flatten checks what it reads so that
// anything else gives an error, never a panic or a wrong column.
//
// names, when not nil, interns column names across calls (a batch's messages share their
// keys): a name seen before costs no allocation.
func flatten(body []byte, out []field, names map[string]string) ([]field, error) {
	p := parser{b: body, names: names}
	p.ws()
	out, err := p.object("", true, out)
	if err != nil {
		return out, err
	}
	p.ws()
	if p.i != len(p.b) {
		return out, fmt.Errorf("unexpected %q after the object at byte %d", p.b[p.i], p.i)
	}
	return out, nil
}

type parser struct {
	b       []byte
	i       int
	names   map[string]string
	scratch []byte
}

// name returns prefix.k (k alone at the top), interned in p.names.
func (p *parser) name(prefix string, top bool, k []byte) string {
	p.scratch = p.scratch[:0]
	if !top {
		p.scratch = append(append(p.scratch, prefix...), '.')
	}
	p.scratch = append(p.scratch, k...)
	if p.names == nil {
		return string(p.scratch)
	}
	if n, ok := p.names[string(p.scratch)]; ok { // no allocation for the lookup
		return n
	}
	n := string(p.scratch)
	p.names[n] = n
	return n
}

var errEnd = errors.New("unexpected end of JSON")

func (p *parser) ws() {
	for p.i < len(p.b) {
		switch p.b[p.i] {
		case ' ', '\t', '\n', '\r':
			p.i++
		default:
			return
		}
	}
}

// object reads an object at p.i whose keys are below prefix (top: the body itself, whose
// keys have no prefix; a nested object's prefix may be "", a key that is empty).
func (p *parser) object(prefix string, top bool, out []field) ([]field, error) {
	if p.i >= len(p.b) || p.b[p.i] != '{' {
		return out, fmt.Errorf("expected an object at byte %d", p.i)
	}
	start := p.i
	p.i++
	p.ws()
	if p.i < len(p.b) && p.b[p.i] == '}' {
		p.i++
		if !top {
			// An empty nested object has no leaf: keep it whole, or it would vanish.
			out = append(out, field{col: prefix, kind: kindJSON, text: p.b[start:p.i]})
		}
		return out, nil
	}
	for {
		p.ws()
		k, err := p.str()
		if err != nil {
			return out, err
		}
		key := p.name(prefix, top, k)
		p.ws()
		if p.i >= len(p.b) || p.b[p.i] != ':' {
			return out, fmt.Errorf("expected ':' at byte %d", p.i)
		}
		p.i++
		p.ws()
		if p.i >= len(p.b) {
			return out, errEnd
		}
		switch c := p.b[p.i]; {
		case c == '{':
			if out, err = p.object(key, false, out); err != nil {
				return out, err
			}
		case c == '[':
			s := p.i
			if err := p.skip(); err != nil {
				return out, err
			}
			out = append(out, field{col: key, kind: kindJSON, text: p.b[s:p.i]})
		case c == '"':
			s, err := p.str()
			if err != nil {
				return out, err
			}
			out = append(out, field{col: key, kind: kindString, text: s})
		case c == 't' || c == 'f' || c == 'n':
			lit := map[byte]string{'t': "true", 'f': "false", 'n': "null"}[c]
			if len(p.b)-p.i < len(lit) || string(p.b[p.i:p.i+len(lit)]) != lit {
				return out, fmt.Errorf("invalid literal at byte %d", p.i)
			}
			p.i += len(lit)
			if c == 'n' {
				out = append(out, field{col: key, kind: kindNull})
			} else {
				out = append(out, field{col: key, kind: kindBool, text: []byte(lit)})
			}
		default:
			s := p.i
			if err := p.number(); err != nil {
				return out, err
			}
			out = append(out, field{col: key, kind: kindNumber, text: p.b[s:p.i]})
		}
		p.ws()
		if p.i >= len(p.b) {
			return out, errEnd
		}
		switch p.b[p.i] {
		case ',':
			p.i++
		case '}':
			p.i++
			return out, nil
		default:
			return out, fmt.Errorf("expected ',' or '}' at byte %d", p.i)
		}
	}
}

// str reads a string at p.i and returns it unescaped. Without escapes it is a slice of
// the body (no copy); with escapes, encoding/json decodes it (\u escapes, surrogates).
func (p *parser) str() ([]byte, error) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return nil, fmt.Errorf("expected a string at byte %d", p.i)
	}
	start := p.i
	escaped := false
	for j := p.i + 1; j < len(p.b); j++ {
		switch c := p.b[j]; {
		case c == '\\':
			escaped = true
			j++
		case c == '"':
			p.i = j + 1
			if !escaped {
				return p.b[start+1 : j], nil
			}
			var s string
			if err := json.Unmarshal(p.b[start:p.i], &s); err != nil {
				return nil, fmt.Errorf("string at byte %d: %w", start, err)
			}
			return []byte(s), nil
		case c < 0x20:
			return nil, fmt.Errorf("control character in a string at byte %d", j)
		}
	}
	return nil, errEnd
}

// number reads a JSON number at p.i (its text is passed on as written).
func (p *parser) number() error {
	s := p.i
	if p.i < len(p.b) && p.b[p.i] == '-' {
		p.i++
	}
	digits := func() int {
		n := 0
		for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
			p.i++
			n++
		}
		return n
	}
	lead := p.i
	if n := digits(); n == 0 || n > 1 && p.b[lead] == '0' {
		return fmt.Errorf("invalid number at byte %d", s)
	}
	if p.i < len(p.b) && p.b[p.i] == '.' {
		p.i++
		if digits() == 0 {
			return fmt.Errorf("invalid number at byte %d", s)
		}
	}
	if p.i < len(p.b) && (p.b[p.i] == 'e' || p.b[p.i] == 'E') {
		p.i++
		if p.i < len(p.b) && (p.b[p.i] == '+' || p.b[p.i] == '-') {
			p.i++
		}
		if digits() == 0 {
			return fmt.Errorf("invalid number at byte %d", s)
		}
	}
	return nil
}

// skip moves past one value (an array here), checking its nesting and its strings.
func (p *parser) skip() error {
	depth := 0
	for p.i < len(p.b) {
		switch c := p.b[p.i]; c {
		case '"':
			if _, err := p.str(); err != nil {
				return err
			}
			continue
		case '[', '{':
			depth++
		case ']', '}':
			depth--
			if depth < 0 {
				return fmt.Errorf("unbalanced %q at byte %d", c, p.i)
			}
			if depth == 0 {
				p.i++
				return nil
			}
		}
		p.i++
	}
	return errEnd
}
