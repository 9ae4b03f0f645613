package mapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"slices"
	"sort"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/suggest"
)

// Options configure a Mapper.
type Options struct {
	// Sync is the sync's name; it is part of every messageId.
	Sync string
	// Mapping is the sync's mapping section.
	Mapping config.Mapping
	// Schema is the sync's schema: the records given to Map have its columns.
	Schema *arrow.Schema
	// MaxRecordBytes bounds one encoded message; a larger one is rejected. 0: no limit.
	MaxRecordBytes int64
	// Version is backflow's version, sent as context.library.version.
	Version string
	// SkipKeys leaves Message.Key empty: only mode diff needs it, and hashing it costs.
	SkipKeys bool
}

// ConfigError is a mapping that does not fit the schema, or contradicts itself: the
// configuration's own error type (one type for every configuration problem), its Path
// naming the offending setting: mapping.user_id, mapping.columns[2],
// mapping.rename.city, mapping.constants.source.
type ConfigError = config.FieldError

// configError builds the *ConfigError of the setting at path.
func configError(path, msg string) *ConfigError { return &ConfigError{Path: path, Msg: msg} }

// Mapper maps the records of one sync. It is immutable once built: Map may be called from
// several goroutines at once.
type Mapper struct {
	typ       string
	skipNulls bool
	skipKeys  bool
	maxBytes  int64

	// Source columns of the identifiers, the event and the timestamp (nil: not configured).
	userID, anonID, groupID, eventCol, tsCol *sourceColumn
	event                                    string // constant event name

	body []sourceColumn // the selected columns, in schema order
	root []*node        // members of the traits/properties object

	// Constant parts of every message.
	prefix    []byte // sync name and a NUL: hashed before the message for its messageId
	head      []byte // {"type":"…"
	eventJSON []byte // ,"event":"…" for a constant event
	bodyKey   []byte // ,"traits": or ,"properties":
	tail      []byte // ,"context":{…}}

	noID, noGroup, noEvent string // reject reasons

	pool    sync.Pool    // *state
	avgSize atomic.Int64 // bytes per message of the last Map call: sizes the next call's first chunk
}

// sourceColumn is a column of the schema the mapping reads.
type sourceColumn struct {
	name  string
	index int            // in the sync's schema
	typ   arrow.DataType // in the sync's schema
	role  string         // mapping key (user_id, timestamp, …), "" for a body column
}

// node is a member of the traits/properties object: a column, a constant or a nested object.
type node struct {
	key     []byte  // `"key":`
	col     int     // index in Mapper.body, -1 when not a column
	value   []byte  // a constant's JSON
	members []*node // a nested object's members (non-nil for an object)

	// For configuration errors only.
	name   string // this key segment
	origin string // what put it there: column "x", constant "y", ...
	path   string // the setting to blame for a collision
	user   bool   // put there by rename or constants (not a column's own name)
}

// New checks opts.Mapping against opts.Schema and compiles it. A mapping that does not
// fit returns a *ConfigError naming the setting at fault.
func New(opts Options) (*Mapper, error) {
	if opts.Schema == nil {
		return nil, errors.New("mapper: no schema")
	}
	mp := opts.Mapping
	m := &Mapper{typ: mp.Type, skipNulls: mp.SkipNulls, skipKeys: opts.SkipKeys, maxBytes: opts.MaxRecordBytes}
	c := compiler{m: m, schema: opts.Schema, mp: mp}
	if err := c.compile(); err != nil {
		return nil, err
	}

	version := opts.Version
	if version == "" {
		version = "dev"
	}
	m.prefix = append([]byte(opts.Sync), 0)
	m.head = appendString([]byte(`{"type":`), m.typ)
	if m.eventCol == nil && m.typ == "track" {
		m.eventJSON = appendString([]byte(`,"event":`), m.event)
	}
	if m.typ == "track" {
		m.bodyKey = []byte(`,"properties":`)
	} else {
		m.bodyKey = []byte(`,"traits":`)
	}
	m.tail = appendString([]byte(`,"context":{"library":{"name":"backflow","version":`), version)
	m.tail = append(m.tail, "}}}"...)

	var ids []string
	for _, c := range []*sourceColumn{m.userID, m.anonID} {
		if c != nil {
			ids = append(ids, fmt.Sprintf("%s (%s)", c.role, c.name))
		}
	}
	verb := "is"
	if len(ids) > 1 {
		verb = "are"
	}
	m.noID = fmt.Sprintf("no identifier: %s %s null or empty", strings.Join(ids, " and "), verb)
	if m.groupID != nil {
		m.noGroup = fmt.Sprintf("no group id: group_id (%s) is null or empty", m.groupID.name)
	}
	if m.eventCol != nil {
		m.noEvent = fmt.Sprintf("no event: event_column (%s) is null or empty", m.eventCol.name)
	}
	m.pool.New = func() any { return new(state) }
	m.avgSize.Store(firstGuess)
	return m, nil
}

// Columns returns the selected source columns, in the order their values appear.
func (m *Mapper) Columns() []string {
	names := make([]string, len(m.body))
	for i, c := range m.body {
		names[i] = c.name
	}
	return names
}

// compiler holds what New needs while it checks and compiles a mapping.
type compiler struct {
	m      *Mapper
	schema *arrow.Schema
	mp     config.Mapping
}

func (c *compiler) compile() error {
	m, mp := c.m, c.mp
	switch mp.Type {
	case "identify", "track", "group":
	case "":
		return configError("mapping.type", "required: identify, track or group")
	default:
		return configError("mapping.type", fmt.Sprintf("%q is not identify, track or group", mp.Type))
	}
	if mp.UserID == "" && mp.AnonymousID == "" {
		return configError("mapping.user_id", "at least one of user_id and anonymous_id is required")
	}
	switch {
	case mp.Type == "group" && mp.GroupID == "":
		return configError("mapping.group_id", "required for type group")
	case mp.Type != "group" && mp.GroupID != "":
		return configError("mapping.group_id", "only used with type group")
	case mp.Type == "track" && mp.Event == "" && mp.EventColumn == "":
		return configError("mapping.event", "type track needs event (a constant name) or event_column")
	case mp.Type == "track" && mp.Event != "" && mp.EventColumn != "":
		return configError("mapping.event_column", "set either event or event_column, not both")
	case mp.Type != "track" && mp.Event != "":
		return configError("mapping.event", "only used with type track")
	case mp.Type != "track" && mp.EventColumn != "":
		return configError("mapping.event_column", "only used with type track")
	}
	m.event = mp.Event

	used := map[int]string{} // schema index -> the mapping key using it
	// Columns the schema lacks are all reported at once: three typos, one run.
	var missing []error
	for _, f := range []struct {
		role, name string
		dst        **sourceColumn
		ok         func(arrow.DataType) bool
		want       string
	}{
		{"user_id", mp.UserID, &m.userID, idType, "an identifier must be a string, an integer or a UUID"},
		{"anonymous_id", mp.AnonymousID, &m.anonID, idType, "an identifier must be a string, an integer or a UUID"},
		{"group_id", mp.GroupID, &m.groupID, idType, "a group id must be a string, an integer or a UUID"},
		{"event_column", mp.EventColumn, &m.eventCol, idType, "an event name must be a string, an integer or a UUID"},
		{"timestamp", mp.Timestamp, &m.tsCol, timestampType, "a timestamp must be a timestamp, a date or a string"},
	} {
		if f.name == "" {
			continue
		}
		path := "mapping." + f.role
		i, err := c.lookup(f.name)
		if err != nil {
			missing = append(missing, configError(path, err.Error()))
			continue
		}
		t := c.schema.Field(i).Type
		if !f.ok(t) {
			return configError(path, fmt.Sprintf("column %q is %s; %s", f.name, t, f.want))
		}
		if prev := used[i]; identifierRole(prev) && identifierRole(f.role) {
			return configError(path, fmt.Sprintf("column %q is already %s; one column cannot be two identifiers", f.name, prev))
		}
		*f.dst = &sourceColumn{name: f.name, index: i, typ: t, role: f.role}
		if used[i] == "" {
			used[i] = f.role
		}
	}

	// The selected columns, in schema order.
	var selected []int
	if len(mp.Columns) == 0 {
		for i := range c.schema.NumFields() {
			if used[i] == "" {
				selected = append(selected, i)
			}
		}
	} else {
		seen := map[int]int{}
		for j, name := range mp.Columns {
			path := fmt.Sprintf("mapping.columns[%d]", j)
			i, err := c.lookup(name)
			if err != nil {
				missing = append(missing, configError(path, err.Error()))
				continue
			}
			if k, dup := seen[i]; dup {
				return configError(path, fmt.Sprintf("column %q is already listed at columns[%d]", name, k))
			}
			seen[i] = j
			selected = append(selected, i)
		}
		slices.Sort(selected)
	}
	byName := map[string]bool{}
	for _, i := range selected {
		f := c.schema.Field(i)
		if byName[f.Name] {
			missing = append(missing, configError("mapping.columns", fmt.Sprintf("column %q appears more than once in the schema", f.Name)))
			continue
		}
		byName[f.Name] = true
		m.body = append(m.body, sourceColumn{name: f.Name, index: i, typ: f.Type})
	}

	for _, name := range sortedKeys(mp.Rename) {
		if byName[name] {
			continue
		}
		path := "mapping.rename." + name
		i, err := c.lookup(name)
		switch {
		case err != nil:
			missing = append(missing, configError(path, err.Error()))
			continue
		case used[i] != "" && len(mp.Columns) == 0:
			return configError(path, fmt.Sprintf("column %q is the %s column, left out of the %s unless listed in columns", name, used[i], c.bodyName()))
		default:
			return configError(path, fmt.Sprintf("column %q is not among the selected columns", name))
		}
	}

	if len(missing) > 0 {
		return errors.Join(missing...)
	}

	// The traits/properties tree: the columns, then the constants.
	for j, col := range m.body {
		key, path, origin, user := col.name, "mapping.columns", fmt.Sprintf("column %q", col.name), false
		segments := []string{key}
		if to, ok := mp.Rename[col.name]; ok {
			path, user = "mapping.rename."+col.name, true
			origin = fmt.Sprintf("column %q renamed to %q", col.name, to)
			var err error
			if segments, err = splitKey(to); err != nil {
				return configError(path, err.Error())
			}
		}
		if err := c.insert(segments, &node{col: j, origin: origin, path: path, user: user}); err != nil {
			return err
		}
	}
	for _, key := range sortedKeys(mp.Constants) {
		path := "mapping.constants." + key
		segments, err := splitKey(key)
		if err != nil {
			return configError(path, err.Error())
		}
		v := mp.Constants[key]
		if v == nil && mp.SkipNulls {
			continue
		}
		raw, err := encodeConstant(v)
		if err != nil {
			return configError(path, err.Error())
		}
		if err := c.insert(segments, &node{col: -1, value: raw, origin: fmt.Sprintf("constant %q", key), path: path, user: true}); err != nil {
			return err
		}
	}
	return nil
}

// identifierRole reports whether a mapping key names an identifier column.
func identifierRole(role string) bool {
	return role == "user_id" || role == "anonymous_id" || role == "group_id"
}

// bodyName is what the message calls its body.
func (c *compiler) bodyName() string {
	if c.mp.Type == "track" {
		return "properties"
	}
	return "traits"
}

// lookup returns the index of the schema column called name, or an error that helps find
// the right name.
func (c *compiler) lookup(name string) (int, error) {
	idx := c.schema.FieldIndices(name)
	switch len(idx) {
	case 1:
		return idx[0], nil
	case 0:
	default:
		return 0, fmt.Errorf("column %q appears %d times in the schema", name, len(idx))
	}
	names := make([]string, c.schema.NumFields())
	for i := range names {
		names[i] = c.schema.Field(i).Name
	}
	msg := fmt.Sprintf("no column %q in the schema", name)
	if best := suggest.Closest(name, names); best != "" {
		return 0, fmt.Errorf("%s (did you mean %q?)", msg, best)
	}
	if len(names) == 0 {
		return 0, fmt.Errorf("%s, which has no columns", msg)
	}
	if len(names) <= 12 {
		return 0, fmt.Errorf("%s; its columns are %s", msg, strings.Join(names, ", "))
	}
	return 0, errors.New(msg)
}

// insert puts leaf at the path segments of the body tree, creating the nested objects it
// needs where they first appear, and refuses a key that something else already holds.
func (c *compiler) insert(segments []string, leaf *node) error {
	members := &c.m.root
	full := strings.Join(segments, ".")
	for d, seg := range segments {
		var found *node
		for _, n := range *members {
			if n.name == seg {
				found = n
				break
			}
		}
		last := d == len(segments)-1
		prefix := strings.Join(segments[:d+1], ".")
		switch {
		case found == nil && last:
			leaf.name = seg
			leaf.key = append(appendString(nil, seg), ':')
			*members = append(*members, leaf)
			return nil
		case found == nil:
			obj := &node{col: -1, members: []*node{}, name: seg, key: append(appendString(nil, seg), ':'),
				origin: leaf.origin, path: leaf.path, user: leaf.user}
			*members = append(*members, obj)
			members = &obj.members
		case found.members != nil && !last:
			members = &found.members
		case found.members != nil:
			return collision(leaf, found, fmt.Sprintf("key %q of %s is already an object, made for %s", full, leaf.origin, found.origin))
		case last:
			return collision(leaf, found, fmt.Sprintf("key %q is used by both %s and %s", full, found.origin, leaf.origin))
		default:
			return collision(leaf, found, fmt.Sprintf("key %q of %s needs %q to be an object, but %q is %s", full, leaf.origin, prefix, prefix, found.origin))
		}
	}
	return nil
}

// collision blames the setting a user wrote (a rename or a constant) rather than a
// column's own name.
func collision(added, existing *node, msg string) error {
	path := added.path
	if !added.user && existing.user {
		path = existing.path
	}
	return configError(path, msg)
}

// splitKey splits a dotted key into its segments, none of which may be empty.
func splitKey(key string) ([]string, error) {
	if key == "" {
		return nil, errors.New("empty key")
	}
	segments := strings.Split(key, ".")
	for _, s := range segments {
		if s == "" {
			return nil, fmt.Errorf("key %q has an empty segment (dots nest objects: a.b)", key)
		}
	}
	return segments, nil
}

// encodeConstant encodes a constant from the config file once, with sorted map keys.
func encodeConstant(v any) ([]byte, error) {
	var buf bytes.Buffer
	enc := json.NewEncoder(&buf)
	enc.SetEscapeHTML(false)
	if err := enc.Encode(normalize(v)); err != nil {
		return nil, fmt.Errorf("cannot be written as JSON: %w", err)
	}
	return bytes.TrimSuffix(buf.Bytes(), []byte("\n")), nil
}

// normalize turns the map[any]any that some YAML decoders produce into map[string]any.
func normalize(v any) any {
	switch v := v.(type) {
	case map[any]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[fmt.Sprint(k)] = normalize(e)
		}
		return out
	case map[string]any:
		out := make(map[string]any, len(v))
		for k, e := range v {
			out[k] = normalize(e)
		}
		return out
	case []any:
		out := make([]any, len(v))
		for i, e := range v {
			out[i] = normalize(e)
		}
		return out
	}
	return v
}

func sortedKeys[V any](m map[string]V) []string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	return keys
}

// idType reports whether a column of type t can hold identifiers or event names: text,
// integers or UUIDs.
func idType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.STRING_VIEW,
		arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64:
		return true
	case arrow.DICTIONARY:
		return isStringType(t)
	case arrow.EXTENSION:
		return isUUIDType(t)
	}
	return false
}

// timestampType reports whether a column of type t can give the message timestamp.
func timestampType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.TIMESTAMP, arrow.DATE32, arrow.DATE64:
		return true
	}
	return isStringType(t)
}

func isUUIDType(t arrow.DataType) bool {
	ext, ok := t.(arrow.ExtensionType)
	if !ok || ext.ExtensionName() != "arrow.uuid" {
		return false
	}
	fsb, ok := ext.StorageType().(*arrow.FixedSizeBinaryType)
	return ok && fsb.ByteWidth == 16
}
