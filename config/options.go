package config

import (
	"fmt"
	"path/filepath"
	"reflect"
	"slices"
	"strings"
)

// Options is one destination type's own options: a pointer to a struct whose
// mapstructure tags name the keys the type takes besides the shared ones (SharedKeys).
// Load decodes those keys into it by the rules of the whole file — an unknown key is
// refused with the nearest known one suggested, values are converted strictly, every
// problem is reported at once at its full path — and then calls Prepare. A new
// destination type therefore touches its own folder only: config imports none.
type Options interface {
	// Prepare fills every option left unset with its default, resolves relative local
	// paths (OptionsCheck.LocalPath), and reports every problem through c, at keys
	// relative to the destination ("url", "csv.delimiter"). It does no I/O.
	Prepare(c *OptionsCheck)
}

// SecretOptions is implemented by options that hold credentials (a write key, header
// values, an S3 secret key): Load redacts them from every message, and the command line
// from its logs.
type SecretOptions interface {
	Secrets() []string
}

// Kind is what the configuration knows of one destination type.
type Kind struct {
	// MaxInFlight and BatchSize are the defaults of the shared keys max_in_flight and
	// batch_size for this type.
	MaxInFlight, BatchSize int
	// NewOptions returns a pointer to a new, zero options struct.
	NewOptions func() Options
}

// Kinds tells Load which destination types exist. The destinations registry implements
// it; Load with nil Kinds knows no destination type.
type Kinds interface {
	// Kind returns the kind of typ, and false when no such type exists.
	Kind(typ string) (Kind, bool)
	// Types returns every type, sorted.
	Types() []string
}

// SharedKeys are the keys every destination type takes; the rest belong to its Options.
var SharedKeys = []string{"type", "name", "max_in_flight", "rate_limit", "retry", "timeout", "batch_size"}

// OptionsCheck is what Prepare may use: whether a key was written, where to report a
// problem, the configuration's directory, and the checks every destination shares.
type OptionsCheck struct {
	v    *validator
	path string // the destination's path: syncs[0].destinations[1]
	dir  string
	// claims are the local files destinations write, by path, across the whole file.
	claims map[string]string
}

// IsSet reports whether key (relative to the destination, "csv.delimiter") was written
// in the file, even as zero or empty.
func (c *OptionsCheck) IsSet(key string) bool { return c.v.isSet(joinPath(c.path, key)) }

// Problem reports msg at key (relative to the destination). A key whose value could
// not be decoded was reported already: Problem is then silent.
func (c *OptionsCheck) Problem(key, msg string) { c.v.p.check(joinPath(c.path, key), msg) }

// Required reports "is required for type T" when value is empty, and returns whether
// it is set.
func (c *OptionsCheck) Required(key, typ, value string) bool {
	if value == "" {
		c.Problem(key, "is required for type "+typ)
		return false
	}
	return true
}

// OneOf checks an enumerated value ("is required: one of …" when empty).
func (c *OptionsCheck) OneOf(key, value string, allowed ...string) bool {
	return c.v.oneOf(joinPath(c.path, key), value, allowed...)
}

// HTTPURL reports a value that is not an http:// or https:// URL with a host.
func (c *OptionsCheck) HTTPURL(key, value string) bool {
	if !isHTTPURL(value) {
		c.Problem(key, "must be an http:// or https:// URL")
		return false
	}
	return true
}

// S3 checks connection settings that sit directly in the destination (endpoint, auth).
func (c *OptionsCheck) S3(o S3Options) { c.v.s3Options(c.path, o) }

// LocalPath returns p as an absolute, clean path, resolved against the configuration's
// directory when relative.
func (c *OptionsCheck) LocalPath(p string) string {
	if p == "" {
		return ""
	}
	if !filepath.IsAbs(p) {
		p = filepath.Join(c.dir, p)
	}
	return filepath.Clean(p)
}

// Claim records that this destination writes the local file path; a second
// destination claiming the same file is reported at key.
func (c *OptionsCheck) Claim(key, path string) {
	if prev, dup := c.claims[path]; dup {
		c.Problem(key, "is also written by "+prev)
		return
	}
	c.claims[path] = joinPath(c.path, key)
}

// HeaderName reports whether s is an HTTP token (RFC 9110), as a header name must be.
func HeaderName(s string) bool { return isToken(s) }

// ValidHeaderValue reports whether s can be sent as a header value: no line break or NUL.
func ValidHeaderValue(s string) bool { return !strings.ContainsAny(s, "\r\n\x00") }

// destinationOptions splits each destination's own keys from the shared ones, before
// the whole file is checked and decoded: the raw own keys of syncs[i].destinations[j]
// are returned at that path, and removed from raw.
func destinationOptions(raw map[string]any) map[string]map[string]any {
	out := map[string]map[string]any{}
	syncs, _ := raw["syncs"].([]any)
	for i, s := range syncs {
		sm, _ := s.(map[string]any)
		ds, _ := sm["destinations"].([]any)
		for j, d := range ds {
			dm, ok := d.(map[string]any)
			if !ok {
				continue
			}
			own := map[string]any{}
			for k, v := range dm {
				if !slices.Contains(SharedKeys, k) {
					own[k] = v
					delete(dm, k)
				}
			}
			out[indexPath(indexPath("syncs", i)+".destinations", j)] = own
		}
	}
	return out
}

// decodeOptions decodes the own keys of destination d (at path dp) into its type's
// options struct: unknown keys are refused (a key of another type is "not used by type
// T", a typo gets the nearest key suggested among the type's and the shared ones), the
// others are recorded as present and converted strictly.
func decodeOptions(kinds Kinds, d *Destination, dp string, raw map[string]any, p *problems, present map[string]bool) {
	kind, ok := kinds.Kind(d.Type)
	if !ok || kind.NewOptions == nil {
		return // the type is reported by validation
	}
	opts := kind.NewOptions()
	t := reflect.TypeOf(opts).Elem()
	fields := structKeys(t)
	known := slices.Clone(fields)
	for _, k := range SharedKeys {
		known = append(known, field{key: k})
	}
	for _, k := range sortedKeys(raw) {
		kp := joinPath(dp, k)
		i := slices.IndexFunc(fields, func(f field) bool { return f.key == k })
		if i < 0 {
			delete(raw, k)
			p.addBad(kp, unknownOptionKey(kinds, d.Type, k, known))
			continue
		}
		present[kp] = true
		checkKeys(raw[k], fields[i].typ, kp, p, present)
	}
	decodeInto(raw, opts, dp, p)
	d.Options = opts
}

// unknownOptionKey is the message for key k, unknown to type typ whose keys (its own
// and the shared ones) are known: the key of another type is "not used", a typo gets
// the nearest key of this type or, failing that, of another type.
func unknownOptionKey(kinds Kinds, typ, k string, known []field) string {
	if other := typesWithKey(kinds, k); len(other) > 0 {
		return fmt.Sprintf("not used by type %s (it is a key of type %s)", typ, strings.Join(other, ", "))
	}
	if s := suggest(k, known); s != "" {
		return "unknown key" + s
	}
	var all []field
	for _, t := range kinds.Types() {
		if kind, _ := kinds.Kind(t); kind.NewOptions != nil {
			all = append(all, structKeys(reflect.TypeOf(kind.NewOptions()).Elem())...)
		}
	}
	if s := suggest(k, all); s != "" {
		near := strings.TrimSuffix(strings.TrimPrefix(s, `, did you mean "`), `"?`)
		return fmt.Sprintf("unknown key%s (a key of type %s)", s, strings.Join(typesWithKey(kinds, near), ", "))
	}
	return "unknown key"
}

// typesWithKey lists the destination types whose options have key k.
func typesWithKey(kinds Kinds, k string) []string {
	var out []string
	for _, typ := range kinds.Types() {
		kind, _ := kinds.Kind(typ)
		if kind.NewOptions == nil {
			continue
		}
		if slices.ContainsFunc(structKeys(reflect.TypeOf(kind.NewOptions()).Elem()), func(f field) bool { return f.key == k }) {
			out = append(out, typ)
		}
	}
	return out
}

// OptionKeys lists the keys of a destination type's options, nested ones as
// "csv.delimiter", for documentation and tests.
func OptionKeys(o Options) []string {
	var out []string
	var walk func(t reflect.Type, prefix string)
	walk = func(t reflect.Type, prefix string) {
		for _, f := range structKeys(t) {
			ft := f.typ
			for ft.Kind() == reflect.Pointer {
				ft = ft.Elem()
			}
			out = append(out, joinPath(prefix, f.key))
			if ft.Kind() == reflect.Struct && ft != timeType {
				walk(ft, joinPath(prefix, f.key))
			}
		}
	}
	walk(reflect.TypeOf(o).Elem(), "")
	return out
}
