package config

import (
	"fmt"
	"reflect"
	"slices"
	"strings"
	"time"

	suggestpkg "github.com/backflowhq/backflow/internal/suggest"
)

// normalize turns the maps a decoder may produce with non-string keys (YAML allows
// `2024: year`) into map[string]any, so that every later step sees one shape.
func normalize(raw any) any {
	switch v := raw.(type) {
	case map[string]any:
		for k, e := range v {
			v[k] = normalize(e)
		}
		return v
	case map[any]any:
		m := make(map[string]any, len(v))
		for k, e := range v {
			m[fmt.Sprint(k)] = normalize(e)
		}
		return m
	case []any:
		for i, e := range v {
			v[i] = normalize(e)
		}
		return v
	default:
		return raw
	}
}

// field is one key a struct accepts.
type field struct {
	key string
	typ reflect.Type
}

// structKeys lists the keys of a config struct, in declaration order, following
// mapstructure tags (",squash" embeds the fields of the tagged struct).
func structKeys(t reflect.Type) []field {
	var out []field
	for i := 0; i < t.NumField(); i++ {
		f := t.Field(i)
		if !f.IsExported() {
			continue
		}
		tag := f.Tag.Get("mapstructure")
		name, opts, _ := strings.Cut(tag, ",")
		if name == "-" {
			continue
		}
		if slices.Contains(strings.Split(opts, ","), "squash") {
			out = append(out, structKeys(f.Type)...)
			continue
		}
		if name == "" {
			name = strings.ToLower(f.Name)
		}
		out = append(out, field{key: name, typ: f.Type})
	}
	return out
}

var (
	durationType = reflect.TypeFor[time.Duration]()
	timeType     = reflect.TypeFor[time.Time]()
)

// checkKeys walks raw along the config type t. It removes every key t does not know,
// recording "unknown key" (with the nearest known key as a suggestion) at its full
// path, and records the path of every key that is present, so that validation can
// tell "set to zero" from "absent" and spot fields a destination's type does not use.
// Shape mismatches (a list where a mapping belongs) are left to the decoder.
func checkKeys(raw any, t reflect.Type, path string, p *problems, present map[string]bool) {
	for t.Kind() == reflect.Pointer {
		t = t.Elem()
	}
	switch t.Kind() {
	case reflect.Struct:
		if t == timeType {
			return
		}
		m, ok := raw.(map[string]any)
		if !ok {
			return
		}
		fields := structKeys(t)
		for _, k := range sortedKeys(m) {
			i := slices.IndexFunc(fields, func(f field) bool { return f.key == k })
			kp := joinPath(path, k)
			if i < 0 {
				delete(m, k)
				p.addBad(kp, "unknown key"+suggest(k, fields))
				continue
			}
			present[kp] = true
			checkKeys(m[k], fields[i].typ, kp, p, present)
		}
	case reflect.Slice:
		l, ok := raw.([]any)
		if !ok {
			return
		}
		for i, e := range l {
			ip := indexPath(path, i)
			present[ip] = true
			checkKeys(e, t.Elem(), ip, p, present)
		}
	case reflect.Map:
		m, ok := raw.(map[string]any)
		if !ok {
			return
		}
		for k := range m {
			present[joinPath(path, k)] = true
		}
	}
}

// suggest returns `, did you mean "key"?` for the known key nearest to k, when one is
// near enough to be a likely typo (or differs only in case).
func suggest(k string, fields []field) string {
	keys := make([]string, len(fields))
	for i, f := range fields {
		keys[i] = f.key
	}
	if best := suggestpkg.Closest(k, keys); best != "" {
		return fmt.Sprintf(", did you mean %q?", best)
	}
	return ""
}

// sortedKeys returns the keys of m in order, so that problems are found deterministically.
func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	return keys
}
