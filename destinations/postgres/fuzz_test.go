package postgres

import (
	"bytes"
	"encoding/json"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

func TestParseTable(t *testing.T) {
	for in, want := range map[string]TableName{
		"users":                  {"public", "users"},
		"CRM.Users":              {"crm", "users"},
		`"CRM"."My ""Table"""`:   {"CRM", `My "Table"`},
		`crm."a.b"`:              {"crm", "a.b"},
		"_x$1.t2":                {"_x$1", "t2"},
		`"sp ace".t`:             {"sp ace", "t"},
		"crm." + `"` + "é" + `"`: {"crm", "é"},
	} {
		got, err := ParseTable(in)
		if err != nil || got != want {
			t.Errorf("ParseTable(%q) = %v, %v; want %v", in, got, err, want)
		}
	}
	for _, in := range []string{"", " ", "a.b.c", "a..b", ".a", "a.", `"a`, `"".a`, "1a", "a-b", "a b", `"a"b`,
		strings.Repeat("x", 64), "$a"} {
		if got, err := ParseTable(in); err == nil {
			t.Errorf("ParseTable(%q) = %v, want an error", in, got)
		}
	}
}

// FuzzParseTable: any input gives a name or an error, never a panic; a name spelled back
// with String parses to itself.
func FuzzParseTable(f *testing.F) {
	for _, s := range []string{"users", "crm.users", `"A"."b""c"`, `a."b.c"`, "a.b.c", `"`, `""`, "é.x", strings.Repeat("y", 63)} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		n, err := ParseTable(s)
		if err != nil {
			return
		}
		for _, p := range []string{n.Schema, n.Table} {
			if p == "" || len(p) > maxIdentBytes || !utf8.ValidString(p) || strings.ContainsRune(p, 0) {
				t.Fatalf("ParseTable(%q) = %#v: a part the server cannot keep", s, n)
			}
		}
		back, err := ParseTable(n.String())
		if err != nil || back != n {
			t.Fatalf("ParseTable(%q) = %#v, spelled %q, parsed back as %#v, %v", s, n, n.String(), back, err)
		}
	})
}

// ambiguous marks a column two leaves of the reference map to.
type ambiguous struct{}

// reference flattens with encoding/json: column → value (strings decoded, numbers as
// json.Number, objects and arrays as decoded JSON).
func reference(v map[string]any, prefix string, top bool, out map[string]any) {
	for k, x := range v {
		col := k
		if !top {
			col = prefix + "." + k
		}
		if m, ok := x.(map[string]any); ok && len(m) > 0 {
			reference(m, col, false, out)
			continue
		}
		if _, dup := out[col]; dup {
			// {"a":{"b":1},"a.b":2}: two leaves, one column. flatten keeps the later one;
			// a map does not say which is later.
			out[col] = ambiguous{}
			continue
		}
		out[col] = x
	}
}

func decodeJSON(b []byte) (any, error) {
	d := json.NewDecoder(bytes.NewReader(b))
	d.UseNumber()
	var v any
	err := d.Decode(&v)
	return v, err
}

// FuzzFlatten: flatten never panics; on a valid JSON object it finds every leaf the
// encoding/json reading finds, with the same value.
func FuzzFlatten(f *testing.F) {
	for _, s := range []string{
		`{}`, `{"a":1}`, `{"a":{"b":"x","c":[1,{"d":null}]},"e":true,"f":-1.5e-7}`, `{"a\"b":"\u00e9\n","":0}`,
		`{"a":{}}`, `{"a":[]}`, ` { "a" : "b" } `, `{"a":1,}`, `{"a":01}`, `{"a":"\ud83d\ude00"}`, `{"a":{"b":1},"a.b":2}`,
	} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		fields, err := flatten(body, nil, map[string]string{})
		if !json.Valid(body) || !utf8.Valid(body) {
			return
		}
		v, derr := decodeJSON(body)
		obj, ok := v.(map[string]any)
		if derr != nil || !ok {
			if err == nil {
				t.Fatalf("flatten(%q) accepted something that is not an object", body)
			}
			return
		}
		if err != nil {
			t.Fatalf("flatten(%q): %v", body, err)
		}
		got := map[string]any{}
		for _, fl := range lastOfEachField(fields) {
			switch fl.kind {
			case kindNull:
				got[fl.col] = nil
			case kindString:
				got[fl.col] = string(fl.text)
			case kindNumber:
				got[fl.col] = json.Number(fl.text)
			case kindBool:
				got[fl.col] = string(fl.text) == "true"
			case kindJSON:
				x, err := decodeJSON(fl.text)
				if err != nil {
					t.Fatalf("flatten(%q): column %s holds %q: %v", body, fl.col, fl.text, err)
				}
				got[fl.col] = x
			}
		}
		want := map[string]any{}
		reference(obj, "", true, want)
		for col, w := range want {
			// encoding/json keeps the last of duplicate keys whole; flatten merges
			// duplicate objects leaf by leaf, so it may hold more columns, never fewer.
			if _, skip := w.(ambiguous); skip {
				continue
			}
			if g, ok := got[col]; !ok || !reflect.DeepEqual(g, w) {
				t.Fatalf("flatten(%q): column %q = %#v (present %v), want %#v", body, col, g, ok, w)
			}
		}
	})
}

// TestFlattenLaterWins: two leaves landing on one column keep the later one.
func TestFlattenLaterWins(t *testing.T) {
	for body, want := range map[string]string{`{"a":{"b":1},"a.b":2}`: "2", `{"a.b":2,"a":{"b":1}}`: "1"} {
		fields, err := flatten([]byte(body), nil, nil)
		if err != nil {
			t.Fatal(err)
		}
		fields = lastOfEachField(fields)
		if len(fields) != 1 || fields[0].col != "a.b" || string(fields[0].text) != want {
			t.Errorf("flatten(%s) = %+v, want a.b = %s", body, fields, want)
		}
	}
}
