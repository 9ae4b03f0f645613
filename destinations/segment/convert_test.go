package segment

import (
	"bytes"
	"encoding/json"
	"reflect"
	"testing"

	"github.com/segmentio/analytics-go/v3"

	"github.com/backflowhq/backflow/destinations/destinationstest"
)

func TestSplitObject(t *testing.T) {
	for _, in := range []string{
		`{}`, ` { } `, `{"a":1}`, `{"a":"x\"y","b\\n":[1,{"c":"]"}],"d":{"e":null},"f":true,"g":-1.5e-7}`,
		`{"dup":1,"dup":2}`, `{"é":"ü","\u00e9x":0}`,
	} {
		got, err := splitObject([]byte(in), nil)
		if err != nil {
			t.Errorf("splitObject(%s): %v", in, err)
			continue
		}
		var want map[string]json.RawMessage
		if err := json.Unmarshal([]byte(in), &want); err != nil {
			t.Fatal(err)
		}
		compare(t, in, got, want)
	}
	for _, bad := range []string{``, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":1 "b":2}`, `{"a":"x}`,
		`{"a":[1,2}`, `{"a":1}x`, `{a:1}`, `{"a":01}`, `{"a":1.}`, `{"a":tru}`, `{"a":-}`, `{"a":1e}`} {
		if _, err := splitObject([]byte(bad), nil); err == nil {
			t.Errorf("splitObject(%q) succeeded", bad)
		}
	}
}

func compare(t *testing.T, in string, got map[string]any, want map[string]json.RawMessage) {
	t.Helper()
	if len(got) != len(want) {
		t.Fatalf("splitObject(%s): %d members, want %d", in, len(got), len(want))
	}
	for k, w := range want {
		g, ok := got[k]
		if !ok {
			t.Fatalf("splitObject(%s): no member %q", in, k)
		}
		gb, err := json.Marshal(g)
		if err != nil {
			t.Fatalf("splitObject(%s): member %q does not encode: %v", in, k, err)
		}
		// Compare the compact forms with HTML characters escaped on both sides:
		// json.Marshal writes & < > as \u0026 \u003c \u003e, the same JSON strings.
		var gc, wc, ge, we bytes.Buffer
		json.Compact(&gc, gb)
		json.Compact(&wc, w)
		json.HTMLEscape(&ge, gc.Bytes())
		json.HTMLEscape(&we, wc.Bytes())
		if ge.String() != we.String() {
			t.Fatalf("splitObject(%s): member %q = %s, want %s", in, k, gc.String(), wc.String())
		}
	}
}

// FuzzSplitObject: on any input splitObject does not panic, and on any valid JSON object
// it finds the members encoding/json finds, with the same values.
func FuzzSplitObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":"x\"y","b":[1,{"c":"]"}],"d":{"e":null}}`, `{"a":1e5,"b":-0.5}`, `{"\ud83d\ude00":"x"}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, b []byte) {
		got, err := splitObject(b, map[string]string{})
		var want map[string]json.RawMessage
		if json.Unmarshal(b, &want) != nil || want == nil {
			return // not an object: splitObject may refuse it or not
		}
		if err != nil {
			t.Fatalf("splitObject(%q) refused a valid object: %v", b, err)
		}
		compare(t, string(b), got, want)
	})
}

func TestConvertKeepsTheMessage(t *testing.T) {
	lib := &analytics.Context{Library: analytics.LibraryInfo{Name: "backflow", Version: "t"}}
	for _, m := range destinationstest.Messages("conv", 6) {
		am, err := convert(&m, lib, map[string]string{})
		if err != nil {
			t.Fatal(err)
		}
		if messageID(am) != m.ID {
			t.Errorf("messageID = %q, want %q", messageID(am), m.ID)
		}
		b, err := json.Marshal(am)
		if err != nil {
			t.Fatal(err)
		}
		destinationstest.CheckSame(t, m, b)
		// The body is a copy: changing the message's buffer afterwards changes nothing.
		m.JSON[m.BodyStart+2] = 'X'
		b2, _ := json.Marshal(am)
		if !bytes.Equal(b, b2) {
			t.Error("the converted message aliases the caller's buffer")
		}
	}
}

// BenchmarkConvert measures what turning an encoded message into an analytics-go message
// costs, encoding included (analytics-go encodes each message once): splitObject keeps
// the values as JSON text; decoding into map[string]any is what a naive adapter would do.
func BenchmarkConvert(b *testing.B) {
	msgs := destinationstest.Messages("bench", 64)
	lib := &analytics.Context{Library: analytics.LibraryInfo{Name: "backflow", Version: "bench"}}
	b.Run("split+encode", func(b *testing.B) {
		b.ReportAllocs()
		keys := map[string]string{}
		for i := range b.N {
			m := &msgs[i%len(msgs)]
			am, err := convert(m, lib, keys)
			if err != nil {
				b.Fatal(err)
			}
			if _, err := json.Marshal(am); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("decode+encode", func(b *testing.B) {
		b.ReportAllocs()
		for i := range b.N {
			m := &msgs[i%len(msgs)]
			var props analytics.Properties
			d := json.NewDecoder(bytes.NewReader(m.Body()))
			d.UseNumber() // float64 would turn 12.30 into 12.3 and round 2^53+1
			if err := d.Decode(&props); err != nil {
				b.Fatal(err)
			}
			if _, err := json.Marshal(analytics.Track{MessageId: m.ID, UserId: m.UserID, Event: "e", Context: lib, Properties: props}); err != nil {
				b.Fatal(err)
			}
		}
	})
	b.Run("encode-ready-made", func(b *testing.B) {
		var props analytics.Properties
		json.Unmarshal(msgs[1].Body(), &props)
		t := analytics.Track{MessageId: "x", UserId: "u", Event: "e", Context: lib, Properties: props}
		b.ReportAllocs()
		for range b.N {
			if _, err := json.Marshal(t); err != nil {
				b.Fatal(err)
			}
		}
	})
	_ = reflect.TypeOf
}
