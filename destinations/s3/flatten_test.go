package s3

import (
	"bytes"
	"encoding/json"
	"fmt"
	"reflect"
	"strings"
	"testing"
	"unicode/utf8"
)

type leaf struct {
	kind kind
	val  string
}

func flattenAll(t testing.TB, body string) (map[string]leaf, error) {
	var f flattener
	out := map[string]leaf{}
	err := f.walk([]byte(body), "traits", func(name []byte, v value) error {
		out[string(name)] = leaf{v.kind, string(v.raw)}
		return nil
	})
	return out, err
}

func TestFlatten(t *testing.T) {
	got, err := flattenAll(t, ` { "a" : 1 , "b":{"c":"x\"y\u00e9\ud83d\ude00","d":{"e":-2.5e3}},"l":[1,{"z":[]}],"n":null,`+
		`"t":true,"f":false,"big":99999999999999999999,"min":-9223372036854775808,"type":"t","o":{ },"esc\nkey":"v"} `)
	if err != nil {
		t.Fatal(err)
	}
	want := map[string]leaf{
		"a":           {kindInt, "1"},
		"b.c":         {kindString, "x\"yé😀"},
		"b.d.e":       {kindFloat, "-2.5e3"},
		"l":           {kindJSON, `[1,{"z":[]}]`},
		"n":           {kindNull, "null"},
		"t":           {kindBool, "true"},
		"f":           {kindBool, "false"},
		"big":         {kindFloat, "99999999999999999999"},
		"min":         {kindInt, "-9223372036854775808"},
		"traits.type": {kindString, "t"},
		"o":           {kindJSON, "{ }"},
		"esc\nkey":    {kindString, "v"},
	}
	if !reflect.DeepEqual(got, want) {
		t.Errorf("got  %v\nwant %v", got, want)
	}
}

func TestFlattenMalformed(t *testing.T) {
	for _, body := range []string{``, `[]`, `{`, `{"a"}`, `{"a":}`, `{"a":1,}`, `{"a":tru}`, `{"a":"x}`, `{"a":1}x`,
		`{"a":-}`, `{"a":1.}`, `{"a":1e}`, `{"a":[1,2}`, `{"a":"\x"}`, `{"a":"\u12"}`, `{a:1}`, `{"a":1 "b":2}`,
		strings.Repeat(`{"a":`, 100) + "1" + strings.Repeat("}", 100)} {
		if _, err := flattenAll(t, body); err == nil {
			t.Errorf("walk(%q) succeeded", body)
		}
	}
}

// reference flattens body with encoding/json: name → leaf value (json.Number, string,
// bool, nil, or a list / empty object).
func reference(body []byte) (map[string]any, bool) {
	if !json.Valid(body) {
		return nil, false
	}
	d := json.NewDecoder(bytes.NewReader(body))
	d.UseNumber()
	var top map[string]any
	if err := d.Decode(&top); err != nil || top == nil {
		return nil, false
	}
	out := map[string]any{}
	var walk func(string, any)
	walk = func(name string, v any) {
		if o, ok := v.(map[string]any); ok && len(o) > 0 {
			for k, x := range o {
				walk(name+"."+k, x)
			}
			return
		}
		out[name] = v
	}
	for k, v := range top {
		name := k
		if isFieldColumn([]byte(k)) {
			name = "traits." + k
		}
		walk(name, v)
	}
	return out, true
}

// FuzzFlatten: the walker never panics, accepts every object encoding/json accepts, and
// reports the same leaves.
func FuzzFlatten(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, `{"a":{"b":[1,"x"]},"c":"\u00e9\n","d":null,"e":1.5e-3}`,
		`{"type":{"x":true}}`, `{"a":{"b":{}}}`, `{"a":"\ud800"}`, `{"a":-0}`} {
		f.Add([]byte(s))
	}
	f.Fuzz(func(t *testing.T, body []byte) {
		got, err := flattenAll(t, string(body))
		want, valid := reference(body)
		if !valid || !utf8.Valid(body) || hasDuplicateKeys(body) {
			// The walker may accept more than encoding/json (it checks less inside lists);
			// with duplicate keys encoding/json keeps the last, the walker reports each.
			return
		}
		if err != nil {
			if strings.Contains(err.Error(), "nested deeper") {
				return
			}
			t.Fatalf("walk(%q) failed on valid JSON: %v", body, err)
		}
		if len(got) != len(want) {
			t.Fatalf("walk(%q): %d leaves, reference %d (%v vs %v)", body, len(got), len(want), got, want)
		}
		for name, w := range want {
			g, ok := got[name]
			if !ok {
				t.Fatalf("walk(%q): no leaf %q", body, name)
			}
			switch w := w.(type) {
			case nil:
				if g.kind != kindNull {
					t.Fatalf("%q: %v, want null", name, g)
				}
			case string:
				if g.kind != kindString || g.val != w {
					t.Fatalf("%q: %v, want string %q", name, g, w)
				}
			case bool:
				if g.kind != kindBool || g.val != fmt.Sprint(w) {
					t.Fatalf("%q: %v, want %v", name, g, w)
				}
			case json.Number:
				if (g.kind != kindInt && g.kind != kindFloat) || g.val != w.String() {
					t.Fatalf("%q: %v, want number %s", name, g, w)
				}
				if _, err := w.Int64(); (err == nil) != (g.kind == kindInt) {
					t.Fatalf("%q: %v: int classification differs from strconv", name, g)
				}
			default:
				var v any
				d := json.NewDecoder(strings.NewReader(g.val))
				d.UseNumber()
				if g.kind != kindJSON || d.Decode(&v) != nil || !reflect.DeepEqual(v, w) {
					t.Fatalf("%q: %v, want JSON %v", name, g, w)
				}
			}
		}
	})
}

// hasDuplicateKeys tells whether an object of the valid JSON body repeats a key.
func hasDuplicateKeys(body []byte) bool {
	d := json.NewDecoder(bytes.NewReader(body))
	type frame struct {
		keys   map[string]bool
		object bool
		expect bool // the next string token is a key
	}
	var stack []*frame
	for {
		tok, err := d.Token()
		if err != nil {
			return false
		}
		var top *frame
		if len(stack) > 0 {
			top = stack[len(stack)-1]
		}
		if k, ok := tok.(string); ok && top != nil && top.object && top.expect {
			if top.keys[k] {
				return true
			}
			top.keys[k] = true
			top.expect = false
			continue
		}
		switch tok {
		case json.Delim('{'):
			stack = append(stack, &frame{keys: map[string]bool{}, object: true, expect: true})
			continue
		case json.Delim('['):
			stack = append(stack, &frame{})
			continue
		case json.Delim('}'), json.Delim(']'):
			stack = stack[:len(stack)-1]
		}
		if len(stack) > 0 && stack[len(stack)-1].object {
			stack[len(stack)-1].expect = true
		}
	}
}
