package segment

import (
	"encoding/json"
	"errors"
	"fmt"
	"time"
	"unicode/utf8"

	"github.com/segmentio/analytics-go/v3"

	"github.com/backflowhq/backflow/mapper"
)

// convert turns an encoded message into the analytics-go message of its type. The
// traits/properties are split into members without decoding numbers or nested values
// (see splitObject), so numbers keep their exact text (12.30, integers beyond 2^53).
// lib is shared, read-only, by every message; keys interns member names (see splitObject).
func convert(m *mapper.Message, lib *analytics.Context, keys map[string]string) (analytics.Message, error) {
	var ts time.Time
	if s := m.Timestamp(); s != "" {
		var err error
		if ts, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return nil, fmt.Errorf("timestamp %q is not RFC 3339", s)
		}
	}
	var body map[string]any
	if m.BodyEnd > m.BodyStart {
		var err error
		if body, err = splitObject(m.Body(), keys); err != nil {
			return nil, fmt.Errorf("traits/properties: %w", err)
		}
	}
	switch m.Type {
	case "identify":
		return analytics.Identify{Type: "identify", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID,
			Timestamp: ts, Context: lib, Traits: body}, nil
	case "track":
		return analytics.Track{Type: "track", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID,
			Event: m.Event, Timestamp: ts, Context: lib, Properties: body}, nil
	case "group":
		return analytics.Group{Type: "group", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID,
			GroupId: m.GroupID, Timestamp: ts, Context: lib, Traits: body}, nil
	}
	return nil, fmt.Errorf("message type %q is not identify, track or group", m.Type)
}

// messageID is the messageId of an analytics-go message, as a callback receives it.
func messageID(m analytics.Message) string {
	switch v := m.(type) {
	case analytics.Identify:
		return v.MessageId
	case analytics.Track:
		return v.MessageId
	case analytics.Group:
		return v.MessageId
	case *analytics.Identify:
		return v.MessageId
	case *analytics.Track:
		return v.MessageId
	case *analytics.Group:
		return v.MessageId
	}
	return ""
}

// splitObject splits a JSON object into the map analytics-go wants, without decoding what
// need not be: a number becomes a *json.Number holding its text, a string without
// escapes a *string, true/false/null a bool or nil, and anything else (nested objects,
// lists, strings with escapes) a *json.RawMessage. encoding/json writes the first kinds as
// cheaply as values of a ready-made map, while a RawMessage is validated and compacted on
// every encoding. Every value refers to one copy of b — analytics-go encodes the message
// later, on its own goroutine, possibly after Write returned and the caller reused its
// buffers — and pointers into one array of cells, so the map's values allocate nothing
// more. splitObject checks the structure it walks (strings, nesting, separators,
// literals, numbers); encoding/json validates nested values again when it encodes them.
//
// keys, when not nil, interns member names: the messages of one batch share their keys,
// and looking a name up allocates nothing, where making it a string does.
func splitObject(b []byte, keys map[string]string) (map[string]any, error) {
	var stack [32]member
	members := stack[:0]
	i := skipSpace(b, 0)
	if i >= len(b) || b[i] != '{' {
		return nil, errors.New("not a JSON object")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return map[string]any{}, trailing(b, i+1)
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return nil, fmt.Errorf("offset %d: expected a key", i)
		}
		end, escaped, err := scanString(b, i)
		if err != nil {
			return nil, err
		}
		var key string
		if escaped || !utf8.Valid(b[i+1:end-1]) {
			// As encoding/json reads it (invalid UTF-8 becomes U+FFFD).
			if err := json.Unmarshal(b[i:end], &key); err != nil {
				return nil, fmt.Errorf("offset %d: key: %w", i, err)
			}
		} else if k, ok := keys[string(b[i+1:end-1])]; ok {
			key = k
		} else {
			key = string(b[i+1 : end-1])
			if keys != nil && len(keys) < 1024 {
				keys[key] = key
			}
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return nil, fmt.Errorf("offset %d: expected ':'", i)
		}
		i = skipSpace(b, i+1)
		start := i
		var valueEscaped bool
		if i < len(b) && b[i] == '"' {
			i, valueEscaped, err = scanString(b, i)
			valueEscaped = valueEscaped || (err == nil && !utf8.Valid(b[start+1:i-1]))
		} else {
			i, err = skipValue(b, i)
		}
		if err != nil {
			return nil, err
		}
		members = append(members, member{key, start, i, valueEscaped})
		i = skipSpace(b, i)
		if i >= len(b) {
			return nil, errors.New("unterminated object")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
			continue
		case '}':
		default:
			return nil, fmt.Errorf("offset %d: expected ',' or '}'", i)
		}
		if err := trailing(b, i+1); err != nil {
			return nil, err
		}
		return memberMap(string(b), members), nil
	}
}

// member is one member of an object: its key, and where its value is.
type member struct {
	key        string
	start, end int
	escaped    bool // a string value with escapes or invalid UTF-8: kept as JSON text
}

// cell holds one value of a map built by memberMap; the map points into it.
type cell struct {
	str string
	num json.Number
	raw json.RawMessage
}

// memberMap builds splitObject's map; s is the object's text, members index into it.
func memberMap(s string, members []member) map[string]any {
	cells := make([]cell, len(members))
	out := make(map[string]any, len(members))
	for j, m := range members {
		v, c := s[m.start:m.end], &cells[j]
		switch {
		case v == "true":
			out[m.key] = true
		case v == "false":
			out[m.key] = false
		case v == "null":
			out[m.key] = nil
		case v[0] == '"' && !m.escaped:
			c.str = v[1 : len(v)-1]
			out[m.key] = &c.str
		case v[0] == '-' || (v[0] >= '0' && v[0] <= '9'):
			c.num = json.Number(v)
			out[m.key] = &c.num
		default:
			c.raw = json.RawMessage(v)
			out[m.key] = &c.raw
		}
	}
	return out
}

func trailing(b []byte, i int) error {
	if i = skipSpace(b, i); i != len(b) {
		return fmt.Errorf("offset %d: data after the object", i)
	}
	return nil
}

func skipSpace(b []byte, i int) int {
	for i < len(b) && (b[i] == ' ' || b[i] == '\t' || b[i] == '\n' || b[i] == '\r') {
		i++
	}
	return i
}

// scanString returns the offset just past the string starting at b[i] == '"', and
// whether it holds escapes.
func scanString(b []byte, i int) (end int, escaped bool, err error) {
	for j := i + 1; j < len(b); j++ {
		switch b[j] {
		case '"':
			return j + 1, escaped, nil
		case '\\':
			escaped = true
			j++
		}
	}
	return 0, false, fmt.Errorf("offset %d: unterminated string", i)
}

// skipValue returns the offset just past the JSON value starting at b[i].
func skipValue(b []byte, i int) (int, error) {
	if i >= len(b) {
		return 0, errors.New("missing value")
	}
	switch b[i] {
	case '"':
		end, _, err := scanString(b, i)
		return end, err
	case '{', '[':
		depth := 0
		for j := i; j < len(b); j++ {
			switch b[j] {
			case '"':
				end, _, err := scanString(b, j)
				if err != nil {
					return 0, err
				}
				j = end - 1
			case '{', '[':
				depth++
			case '}', ']':
				depth--
				if depth == 0 {
					return j + 1, nil
				}
			}
		}
		return 0, fmt.Errorf("offset %d: unterminated %c", i, b[i])
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' &&
		b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	if j == i {
		return 0, fmt.Errorf("offset %d: missing value", i)
	}
	if !validScalar(b[i:j]) {
		return 0, fmt.Errorf("offset %d: invalid value %q", i, b[i:j])
	}
	return j, nil
}

// validScalar reports whether s is a JSON literal or number (RFC 8259 grammar).
func validScalar(s []byte) bool {
	switch string(s) {
	case "true", "false", "null":
		return true
	}
	i := 0
	if s[i] == '-' {
		i++
	}
	digits := func() bool {
		start := i
		for i < len(s) && s[i] >= '0' && s[i] <= '9' {
			i++
		}
		return i > start
	}
	switch {
	case i < len(s) && s[i] == '0':
		i++
	case !digits():
		return false
	}
	if i < len(s) && s[i] == '.' {
		i++
		if !digits() {
			return false
		}
	}
	if i < len(s) && (s[i] == 'e' || s[i] == 'E') {
		i++
		if i < len(s) && (s[i] == '+' || s[i] == '-') {
			i++
		}
		if !digits() {
			return false
		}
	}
	return i == len(s)
}
