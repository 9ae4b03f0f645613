package segment

import (
	"encoding/binary"
	"encoding/json"
	"errors"
	"fmt"
	"time"

	"github.com/segmentio/analytics-go/v3"

	"github.com/backflowhq/backflow/mapper"
)

// standIn checks an encoded message and returns the analytics-go message that stands in
// for it in analytics-go's queue: its type, messageId, identifiers, event or groupId and
// timestamp, but neither its traits/properties nor its context. analytics-go validates,
// queues, batches and acknowledges the stand-in as it would the whole message, and
// encodes it cheaply (a few strings and a time); the transport then sends the message as
// the mapper encoded it — already the Segment spec's JSON, context included — in the
// stand-in's place (see transport.RoundTrip). Encoding every message by reflection, and
// its context through a map, was most of what a Segment delivery cost.
//
// size is the number of bytes the message has on the wire: its JSON, plus the timestamp
// analytics-go would have added when it has none (stamped is true then).
func standIn(m *mapper.Message) (msg analytics.Message, size int, stamped bool, err error) {
	var ts time.Time
	if s := m.Timestamp(); s != "" {
		if ts, err = time.Parse(time.RFC3339Nano, s); err != nil {
			return nil, 0, false, fmt.Errorf("timestamp %q is not RFC 3339", s)
		}
	}
	// The mapper writes valid JSON by construction; this check, on the writer's goroutine,
	// keeps that true of whatever reaches Write, since nothing re-encodes the message now.
	if len(m.JSON) < 2 || m.JSON[0] != '{' || !validJSON(m.JSON) {
		return nil, 0, false, errors.New("not a JSON object")
	}
	if m.BodyEnd > m.BodyStart && m.JSON[m.BodyStart] != '{' {
		return nil, 0, false, errors.New("traits/properties: not a JSON object")
	}
	size = len(m.JSON)
	if ts.IsZero() {
		stamped = true
		size += stampBytes
	}
	switch m.Type {
	case "identify":
		msg = analytics.Identify{Type: "identify", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID, Timestamp: ts}
	case "track":
		msg = analytics.Track{Type: "track", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID, Event: m.Event, Timestamp: ts}
	case "group":
		msg = analytics.Group{Type: "group", MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID, GroupId: m.GroupID, Timestamp: ts}
	default:
		return nil, 0, false, fmt.Errorf("message type %q is not identify, track or group", m.Type)
	}
	if err := msg.Validate(); err != nil {
		return nil, 0, false, err
	}
	return msg, size, stamped, nil
}

// stampLayout is the timestamp added to a message that has none, as analytics-go added
// it (the time the message was enqueued, in UTC, to the microsecond).
const stampLayout = "2006-01-02T15:04:05.000000Z"

// stampBytes is what appendStamped adds to a message.
const stampBytes = len(`,"timestamp":""`) + len(stampLayout)

// appendStamped appends msg with a timestamp member added before its closing brace.
func appendStamped(dst, msg []byte, at time.Time) []byte {
	dst = append(dst, msg[:len(msg)-1]...)
	dst = append(dst, `,"timestamp":"`...)
	dst = at.UTC().AppendFormat(dst, stampLayout)
	return append(dst, `"}`...)
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

// eachMember calls fn for every member of the JSON object starting at b[i] with its key
// (unescaped) and the offsets of its value, and returns the offset just past the object.
// It checks the structure it walks; values are skipped, not validated.
func eachMember(b []byte, i int, fn func(key []byte, start, end int) error) (int, error) {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '{' {
		return 0, errors.New("not a JSON object")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == '}' {
		return i + 1, nil
	}
	for {
		if i >= len(b) || b[i] != '"' {
			return 0, fmt.Errorf("offset %d: expected a key", i)
		}
		end, escaped, err := scanString(b, i)
		if err != nil {
			return 0, err
		}
		key := b[i+1 : end-1]
		if escaped {
			var s string
			if err := json.Unmarshal(b[i:end], &s); err != nil {
				return 0, fmt.Errorf("offset %d: key: %w", i, err)
			}
			key = []byte(s)
		}
		i = skipSpace(b, end)
		if i >= len(b) || b[i] != ':' {
			return 0, fmt.Errorf("offset %d: expected ':'", i)
		}
		start := skipSpace(b, i+1)
		if i, err = skipValue(b, start); err != nil {
			return 0, err
		}
		if err := fn(key, start, i); err != nil {
			return 0, err
		}
		i = skipSpace(b, i)
		if i >= len(b) {
			return 0, errors.New("unterminated object")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case '}':
			return i + 1, nil
		default:
			return 0, fmt.Errorf("offset %d: expected ',' or '}'", i)
		}
	}
}

// eachElement calls fn for the offsets of every element of the JSON array starting at b[i].
func eachElement(b []byte, i int, fn func(start, end int) error) error {
	i = skipSpace(b, i)
	if i >= len(b) || b[i] != '[' {
		return errors.New("not a JSON array")
	}
	i = skipSpace(b, i+1)
	if i < len(b) && b[i] == ']' {
		return nil
	}
	for {
		start := i
		end, err := skipValue(b, start)
		if err != nil {
			return err
		}
		if err := fn(start, end); err != nil {
			return err
		}
		i = skipSpace(b, end)
		if i >= len(b) {
			return errors.New("unterminated array")
		}
		switch b[i] {
		case ',':
			i = skipSpace(b, i+1)
		case ']':
			return nil
		default:
			return fmt.Errorf("offset %d: expected ',' or ']'", i)
		}
	}
}

// stringValue returns the text of the JSON string b (quotes included), unescaped.
func stringValue(b []byte) ([]byte, error) {
	if len(b) < 2 || b[0] != '"' {
		return nil, errors.New("not a string")
	}
	for _, c := range b[1 : len(b)-1] {
		if c == '\\' {
			var s string
			if err := json.Unmarshal(b, &s); err != nil {
				return nil, err
			}
			return []byte(s), nil
		}
	}
	return b[1 : len(b)-1], nil
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

// validJSON reports whether b is one valid JSON value (RFC 8259), as json.Valid does, at a
// fraction of its cost on the flat objects the mapper writes.
func validJSON(b []byte) bool {
	end, ok := validValue(b, skipSpace(b, 0), 0)
	return ok && skipSpace(b, end) == len(b)
}

// validValue validates the value at b[i] and returns the offset just past it.
func validValue(b []byte, i, depth int) (int, bool) {
	if i >= len(b) || depth > 10000 {
		return 0, false
	}
	switch b[i] {
	case '"':
		return validString(b, i)
	case '{':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == '}' {
			return i + 1, true
		}
		for {
			if i >= len(b) || b[i] != '"' {
				return 0, false
			}
			var ok bool
			if i, ok = validString(b, i); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) || b[i] != ':' {
				return 0, false
			}
			if i, ok = validValue(b, skipSpace(b, i+1), depth+1); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
			case '}':
				return i + 1, true
			default:
				return 0, false
			}
		}
	case '[':
		i = skipSpace(b, i+1)
		if i < len(b) && b[i] == ']' {
			return i + 1, true
		}
		for {
			var ok bool
			if i, ok = validValue(b, i, depth+1); !ok {
				return 0, false
			}
			if i = skipSpace(b, i); i >= len(b) {
				return 0, false
			}
			switch b[i] {
			case ',':
				i = skipSpace(b, i+1)
			case ']':
				return i + 1, true
			default:
				return 0, false
			}
		}
	}
	j := i
	for j < len(b) && b[j] != ',' && b[j] != '}' && b[j] != ']' && b[j] != ' ' &&
		b[j] != '\t' && b[j] != '\n' && b[j] != '\r' {
		j++
	}
	return j, j > i && validScalar(b[i:j])
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// plain8 reports whether none of the 8 bytes of x is a control character, a quote or a
// backslash (bytes of 0x80 and above are plain).
func plain8(x uint64) bool {
	zero := func(v uint64) bool { return (v-ones)&^v&highs != 0 }
	return (x-ones*0x20)&^x&highs == 0 && !zero(x^(ones*'"')) && !zero(x^(ones*'\\'))
}

// validString validates the string starting at b[i] == '"' and returns the offset just
// past it: no control character, only JSON's escapes. (Like encoding/json, it lets
// invalid UTF-8 through; the mapper writes none.)
func validString(b []byte, i int) (int, bool) {
	for j := i + 1; j < len(b); j++ {
		for j+8 <= len(b) && plain8(binary.LittleEndian.Uint64(b[j:])) {
			j += 8
		}
		if j >= len(b) {
			break
		}
		c := b[j]
		switch {
		case c == '"':
			return j + 1, true
		case c < 0x20:
			return 0, false
		case c == '\\':
			j++
			if j >= len(b) {
				return 0, false
			}
			switch b[j] {
			case '"', '\\', '/', 'b', 'f', 'n', 'r', 't':
			case 'u':
				if j+4 >= len(b) {
					return 0, false
				}
				for _, h := range b[j+1 : j+5] {
					if !('0' <= h && h <= '9' || 'a' <= h && h <= 'f' || 'A' <= h && h <= 'F') {
						return 0, false
					}
				}
				j += 4
			default:
				return 0, false
			}
		}
	}
	return 0, false
}
