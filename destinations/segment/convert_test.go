package segment

import (
	"bytes"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// TestStandInKeepsTheIdentifiers: the stand-in analytics-go queues carries the message's
// type, messageId, identifiers and timestamp, and no body or context.
func TestStandInKeepsTheIdentifiers(t *testing.T) {
	for _, m := range destinationstest.Messages("conv", 6) {
		am, size, stamped, err := standIn(&m)
		if err != nil {
			t.Fatal(err)
		}
		if messageID(am) != m.ID || size != len(m.JSON) || stamped {
			t.Errorf("standIn(%s) = %q, %d bytes, stamped %v", m.ID, messageID(am), size, stamped)
		}
		b, err := json.Marshal(am)
		if err != nil {
			t.Fatal(err)
		}
		var got map[string]any
		if err := json.Unmarshal(b, &got); err != nil {
			t.Fatal(err)
		}
		if got["type"] != m.Type || got["userId"] != m.UserID || got["traits"] != nil || got["properties"] != nil || got["context"] != nil {
			t.Errorf("stand-in %s", b)
		}
		ts, _ := time.Parse(time.RFC3339Nano, m.Timestamp())
		if have, _ := time.Parse(time.RFC3339Nano, got["timestamp"].(string)); !have.Equal(ts) {
			t.Errorf("stand-in timestamp %v, want %v", got["timestamp"], m.Timestamp())
		}
	}
}

func TestStampedMessage(t *testing.T) {
	m := destinationstest.NewMessage("identify", "no-ts", "u1", `{"a":1}`, "")
	_, size, stamped, err := standIn(&m)
	if err != nil || !stamped {
		t.Fatalf("standIn = %v, stamped %v", err, stamped)
	}
	at := time.Date(2025, 4, 14, 11, 23, 45, 123456789, time.FixedZone("x", 3600))
	b := appendStamped(nil, m.JSON, at)
	if len(b) != size {
		t.Errorf("%d bytes, standIn said %d", len(b), size)
	}
	var got struct{ Timestamp string }
	if err := json.Unmarshal(b, &got); err != nil || got.Timestamp != "2025-04-14T10:23:45.123456Z" {
		t.Errorf("%s: timestamp %q (%v)", b, got.Timestamp, err)
	}
	destinationstest.CheckSame(t, m, b)
}

func TestEachMember(t *testing.T) {
	in := []byte(` {"messageId":"x\"y","batch":[{"type":"t","messageId":"a"}, {"messageId":"b\u0041"}],"k\u0041":{"z":[1,"]"]},"n":-1.5e-7} `)
	var keys []string
	var batch []string
	_, err := eachMember(in, 0, func(key []byte, start, end int) error {
		keys = append(keys, string(key)+"="+string(in[start:end]))
		if string(key) == "batch" {
			return eachElement(in, start, func(s, e int) error {
				_, err := eachMember(in[:e], s, func(key []byte, start, end int) error {
					if string(key) == "messageId" {
						v, err := stringValue(in[start:end])
						batch = append(batch, string(v))
						return err
					}
					return nil
				})
				return err
			})
		}
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	if strings.Join(keys, " ") != `messageId="x\"y" batch=[{"type":"t","messageId":"a"}, {"messageId":"b\u0041"}] kA={"z":[1,"]"]} n=-1.5e-7` {
		t.Errorf("members %q", keys)
	}
	if strings.Join(batch, " ") != "a bA" {
		t.Errorf("ids %q", batch)
	}
	for _, bad := range []string{``, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{"a":"x}`,
		`{"a":[1,2}`, `{a:1}`, `{"a":01}`, `{"a":1.}`, `{"a":tru}`, `{"a":-}`, `{"a":1e}`} {
		if _, err := eachMember([]byte(bad), 0, func([]byte, int, int) error { return nil }); err == nil {
			t.Errorf("eachMember(%q) succeeded", bad)
		}
	}
}

func TestInvalidJSONIsRefused(t *testing.T) {
	m := destinationstest.NewMessage("identify", "bad", "u1", `{"a":[1,}`, "")
	if _, _, _, err := standIn(&m); err == nil {
		t.Error("standIn accepted invalid JSON")
	}
	m = destinationstest.NewMessage("identify", "bad", "u1", `"x"`, "")
	if _, _, _, err := standIn(&m); err == nil {
		t.Error("standIn accepted traits that are not an object")
	}
	m = destinationstest.NewMessage("identify", "ok", "u1", `{}`, "")
	m.JSON = bytes.Clone(m.JSON)
	if _, _, _, err := standIn(&m); err != nil {
		t.Error(err)
	}
}

// BenchmarkStandIn measures what Write spends on a message before analytics-go takes it,
// and what analytics-go then spends encoding the stand-in.
func BenchmarkStandIn(b *testing.B) {
	msgs := destinationstest.Messages("bench", 64)
	b.ReportAllocs()
	for i := range b.N {
		m := &msgs[i%len(msgs)]
		am, _, _, err := standIn(m)
		if err != nil {
			b.Fatal(err)
		}
		if _, err := json.Marshal(am); err != nil {
			b.Fatal(err)
		}
	}
}

func TestValidJSON(t *testing.T) {
	for _, s := range []string{`{}`, ` { } `, `{"a":1}`, `{"a":"x\"y","b\\n":[1,{"c":"]"}],"d":{"e":null},"f":true,"g":-1.5e-7}`,
		`[]`, `[1, 2 ,3]`, `"\u00e9\/"`, `0`, `-0.5E+3`, `{"é":"ü"}`, `null`,
		``, `[]x`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{"a":"x}`, `[1,]`, `[,1]`,
		`{"a":[1,2}`, `{"a":1}x`, `{a:1}`, `{"a":01}`, `{"a":1.}`, `{"a":tru}`, `{"a":-}`, `{"a":1e}`,
		"\"a\tb\"", `"\x"`, `"\u12"`, `"\u12g4"`, `{"a":1}}`, `1 2`} {
		if got, want := validJSON([]byte(s)), json.Valid([]byte(s)); got != want {
			t.Errorf("validJSON(%q) = %v, json.Valid says %v", s, got, want)
		}
	}
}

// FuzzValidJSON: validJSON agrees with json.Valid on every input.
func FuzzValidJSON(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":"x\"y","b":[1,{"c":"]"}],"d":{"e":null}}`, `{"a":1e5,"b":-0.5}`, `{"\ud83d\ude00":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		if got, want := validJSON(b), json.Valid(b); got != want {
			t.Fatalf("validJSON(%q) = %v, json.Valid says %v", b, got, want)
		}
	})
}
