// Package destinationstest holds what every destination's tests share: the behavioural
// suite each adapter must pass (RunSuite, as restic's backend test suite), a
// Segment-compatible HTTP server with deterministic fault injection (SegmentServer),
// receivers for files and writers, and a generator of messages shaped as the mapper
// shapes them.
package destinationstest

import (
	"bytes"
	"encoding/json"
	"fmt"
	"math/big"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/mapper"
)

// NewMessage builds a message as the mapper encodes it: typ is identify, track or group;
// body is the traits (identify, group) or properties (track) object as JSON text; ts is
// an RFC 3339 timestamp or "" for none. A track message's event is "Order Completed" and
// a group message's groupId is "g-"+userID.
func NewMessage(typ, id, userID, body, ts string) mapper.Message {
	m := mapper.Message{Type: typ, UserID: userID, ID: id, Key: typ + ":" + userID}
	b := make([]byte, 0, len(body)+256)
	b = append(b, `{"type":`...)
	b = strconv.AppendQuote(b, typ)
	b = append(b, `,"userId":`...)
	b = strconv.AppendQuote(b, userID)
	bodyKey := "traits"
	switch typ {
	case "track":
		m.Event = "Order Completed"
		b = append(b, `,"event":`...)
		b = strconv.AppendQuote(b, m.Event)
		bodyKey = "properties"
	case "group":
		m.GroupID = "g-" + userID
		b = append(b, `,"groupId":`...)
		b = strconv.AppendQuote(b, m.GroupID)
	}
	b = append(b, `,"`+bodyKey+`":`...)
	m.BodyStart = len(b)
	b = append(b, body...)
	m.BodyEnd = len(b)
	if ts != "" {
		b = append(b, `,"timestamp":"`...)
		m.TimestampStart = len(b)
		b = append(b, ts...)
		m.TimestampEnd = len(b)
		b = append(b, '"')
	}
	b = append(b, `,"messageId":`...)
	b = strconv.AppendQuote(b, id)
	b = append(b, `,"context":{"library":{"name":"backflow","version":"test"}}}`...)
	m.JSON = b
	return m
}

// Messages returns n distinct messages whose ids start with prefix: identify, track and
// group in turn, with bodies that exercise the JSON a destination must carry unchanged
// (decimals with trailing zeros, integers beyond 2^53, nested objects, lists, nulls,
// escapes and non-ASCII text), and timestamps with and without a fraction.
func Messages(prefix string, n int) []mapper.Message {
	return LargeMessages(prefix, n, 0)
}

// LargeMessages is Messages with every body padded to about pad bytes (0: no padding).
func LargeMessages(prefix string, n, pad int) []mapper.Message {
	types := []string{"identify", "track", "group"}
	msgs := make([]mapper.Message, n)
	for i := range msgs {
		user := fmt.Sprintf("u-%s-%d", prefix, i)
		body := fmt.Sprintf(`{"email":"user%d@example.com","plan":"pro","amount":12.30,"big":9007199254740993,`+
			`"ratio":-1.5e-7,"active":%t,"address":{"city":"Oslo \u00d8st","zip":"0150"},"tags":["a","b\"q\\"],`+
			`"note":"line\nbreak \u2028 é","missing":null,"n":%d`, i, i%2 == 0, i)
		if pad > 0 {
			body += `,"padding":"` + strings.Repeat("x", max(pad-len(body)-14, 0)) + `"`
		}
		body += "}"
		ts := fmt.Sprintf("2024-01-%02dT10:%02d:%02dZ", 1+i%28, i%60, (i/60)%60)
		if i%2 == 1 {
			ts = fmt.Sprintf("2024-01-%02dT10:00:00.%03dZ", 1+i%28, 1+i%999)
			ts = strings.TrimRight(strings.TrimSuffix(ts, "Z"), "0") + "Z"
		}
		msgs[i] = NewMessage(types[i%3], fmt.Sprintf("%s-%06d", prefix, i), user, body, ts)
	}
	return msgs
}

// Received is one message as a receiver got it.
type Received struct {
	ID     string // its messageId
	UserID string
	JSON   []byte // the message as received (re-encoded by the client library for Segment)
}

// CheckSame fails t unless got carries sent: the same type, identifiers, event, messageId,
// the same timestamp instant, and the same traits or properties, compared as JSON values
// with numbers compared by their text (so 12.30 must stay 12.30). Other fields (context,
// sentAt) may differ: Segment's client adds its own.
func CheckSame(t testing.TB, sent mapper.Message, got []byte) {
	t.Helper()
	want := decode(t, sent.JSON)
	have := decode(t, got)
	for _, k := range []string{"type", "userId", "anonymousId", "groupId", "event", "messageId"} {
		if !reflect.DeepEqual(want[k], have[k]) {
			t.Errorf("message %s: %s = %v, want %v", sent.ID, k, have[k], want[k])
		}
	}
	key := "traits"
	if sent.Type == "track" {
		key = "properties"
	}
	if !reflect.DeepEqual(want[key], have[key]) {
		t.Errorf("message %s: %s differ:\n got %v\nwant %v", sent.ID, key, have[key], want[key])
	}
	if ts := sent.Timestamp(); ts != "" {
		wt, _ := time.Parse(time.RFC3339Nano, ts)
		s, _ := have["timestamp"].(string)
		ht, err := time.Parse(time.RFC3339Nano, s)
		if err != nil || !ht.Equal(wt) {
			t.Errorf("message %s: timestamp %q, want %q", sent.ID, s, ts)
		}
	}
}

// CheckSameValues is CheckSame with numbers compared by value (1.5e-7 equals
// 0.00000015, 12.30 equals 12.3), for receivers that store numbers as values.
func CheckSameValues(t testing.TB, sent mapper.Message, got []byte) {
	t.Helper()
	CheckSame(t, sent, canonicalNumbers(t, got, sent.JSON))
}

// canonicalNumbers returns got with every number that equals the number at the same
// place in want written as it is in want, so that CheckSame's comparison by text
// becomes one by value; numbers that differ in value are left as they are.
func canonicalNumbers(t testing.TB, got, want []byte) []byte {
	t.Helper()
	g, w := decode(t, got), decode(t, want)
	b, err := json.Marshal(sameNumbers(g, w))
	if err != nil {
		t.Fatalf("encoding %v: %v", g, err)
	}
	return b
}

func sameNumbers(got, want any) any {
	switch g := got.(type) {
	case json.Number:
		w, ok := want.(json.Number)
		if !ok {
			return g
		}
		gr, ok1 := new(big.Rat).SetString(g.String())
		wr, ok2 := new(big.Rat).SetString(w.String())
		if ok1 && ok2 && gr.Cmp(wr) == 0 {
			return w
		}
		return g
	case map[string]any:
		w, _ := want.(map[string]any)
		out := make(map[string]any, len(g))
		for k, v := range g {
			out[k] = sameNumbers(v, w[k])
		}
		return out
	case []any:
		w, _ := want.([]any)
		out := make([]any, len(g))
		for i, v := range g {
			var wv any
			if i < len(w) {
				wv = w[i]
			}
			out[i] = sameNumbers(v, wv)
		}
		return out
	}
	return got
}

func decode(t testing.TB, b []byte) map[string]any {
	t.Helper()
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var m map[string]any
	if err := d.Decode(&m); err != nil {
		t.Fatalf("decoding message %q: %v", b, err)
	}
	return m
}

// idAndUser reads a message's messageId and userId.
func idAndUser(raw []byte) (id, user string, err error) {
	var v struct {
		ID   string `json:"messageId"`
		User string `json:"userId"`
	}
	err = json.Unmarshal(raw, &v)
	return v.ID, v.User, err
}
