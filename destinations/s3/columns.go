package s3

import (
	"github.com/backflowhq/backflow/mapper"
)

// fieldColumns are the message fields every CSV and Parquet object starts with, in
// this order.
var fieldColumns = [...]string{"type", "userId", "anonymousId", "groupId", "event", "timestamp", "messageId"}

const numFieldColumns = len(fieldColumns)

func isFieldColumn(name []byte) bool {
	for _, f := range fieldColumns {
		if string(name) == f {
			return true
		}
	}
	return false
}

// colType is the type of a column in a Parquet object (CSV ignores it).
type colType uint8

const (
	typeUnknown colType = iota // only nulls seen so far; written as a string
	typeString                 // strings, and JSON text of anything else
	typeInt64
	typeFloat64
	typeBool
)

// typeOf is the column type a value asks for.
func typeOf(k kind) colType {
	switch k {
	case kindInt:
		return typeInt64
	case kindFloat:
		return typeFloat64
	case kindBool:
		return typeBool
	case kindNull:
		return typeUnknown
	}
	return typeString
}

// widen returns the narrowest type holding values of both a and b.
func widen(a, b colType) colType {
	switch {
	case a == b || b == typeUnknown:
		return a
	case a == typeUnknown:
		return b
	case (a == typeInt64 && b == typeFloat64) || (a == typeFloat64 && b == typeInt64):
		return typeFloat64
	}
	return typeString
}

// fits tells whether a value of kind k can be written to a column of type t without
// changing the column: a string column takes anything (as JSON text), a float column
// takes integers too.
func fits(t colType, k kind) bool {
	switch {
	case k == kindNull, t == typeString:
		return true
	case t == typeFloat64:
		return k == kindFloat || k == kindInt
	}
	return t == typeOf(k)
}

// columns is the fixed set of columns of one CSV or Parquet object: the message fields,
// then one per trait/property leaf in order of first appearance.
type columns struct {
	names []string
	types []colType
	index map[string]int
	typed bool // Parquet: a value must fit its column's type
}

func newColumns(typed bool) *columns {
	c := &columns{typed: typed, index: make(map[string]int)}
	for _, f := range fieldColumns {
		c.add(f, typeString)
	}
	return c
}

func (c *columns) add(name string, t colType) {
	c.index[name] = len(c.names)
	c.names = append(c.names, name)
	c.types = append(c.types, t)
}

// clone returns a copy that may be widened without changing c.
func (c *columns) clone() *columns {
	n := &columns{
		names: append([]string(nil), c.names...),
		types: append([]colType(nil), c.types...),
		index: make(map[string]int, len(c.index)),
		typed: c.typed,
	}
	for k, v := range c.index {
		n.index[k] = v
	}
	return n
}

// widenWith adds the keys of msgs that c lacks and, for typed columns, widens types so
// that every value of msgs fits. A message whose body cannot be read is skipped here: the
// encoder rejects it.
func (c *columns) widenWith(f *flattener, msgs []mapper.Message) {
	for i := range msgs {
		m := &msgs[i]
		// The walk may have added some of a malformed body's keys before failing: an
		// extra column, harmless.
		_ = f.walk(body(m), bodyName(m), func(name []byte, v value) error {
			j, ok := c.index[string(name)]
			if !ok {
				c.add(string(name), typeOf(v.kind))
				return nil
			}
			c.types[j] = widen(c.types[j], typeOf(v.kind))
			return nil
		})
	}
}

// settle gives a type to the columns that saw only nulls: a Parquet object's schema is
// fixed when it starts.
func (c *columns) settle() {
	for i, t := range c.types {
		if t == typeUnknown {
			c.types[i] = typeString
		}
	}
}

// body returns the traits/properties object of m, or an empty object when the message
// has none.
func body(m *mapper.Message) []byte {
	if m.BodyEnd <= m.BodyStart || m.BodyStart < 0 || m.BodyEnd > len(m.JSON) {
		return emptyBody
	}
	return m.JSON[m.BodyStart:m.BodyEnd]
}

var emptyBody = []byte("{}")

// bodyName is the key of m's body in the message, used to rename a trait/property that
// has the name of a message-field column.
func bodyName(m *mapper.Message) string {
	if m.Type == "track" {
		return "properties"
	}
	return "traits"
}

// row holds one message's values by column index, before they are written. The
// message-field columns are read from the message itself (see field); vals and set hold
// the trait/property columns.
type row struct {
	msg  *mapper.Message
	ts   []byte
	vals []value
	set  []bool
}

// forget drops the references r holds into the last message filled: the destination
// must not keep the caller's messages (and their JSON) alive after a write returns.
func (r *row) forget() {
	r.msg, r.ts = nil, nil
	clear(r.vals)
}

// field returns the value of message-field column i (< numFieldColumns); "" is null.
func (r *row) field(i int) string {
	switch i {
	case 0:
		return r.msg.Type
	case 1:
		return r.msg.UserID
	case 2:
		return r.msg.AnonymousID
	case 3:
		return r.msg.GroupID
	case 4:
		return r.msg.Event
	case 6:
		return r.msg.ID
	}
	return ""
}

// errMisfit reports that a message does not fit the object's columns.
type errMisfit struct{ column string }

func (e errMisfit) Error() string { return "column " + e.column + " does not fit" }

// fill puts m's values in r, or returns errMisfit when m has a key c lacks or (typed) a
// value that does not fit its column's type.
func (c *columns) fill(f *flattener, m *mapper.Message, r *row) error {
	n := len(c.names)
	if cap(r.vals) < n {
		r.vals = make([]value, n)
		r.set = make([]bool, n)
	}
	r.vals, r.set = r.vals[:n], r.set[:n]
	clear(r.set)
	r.msg = m
	r.ts = timestamp(m)
	return f.walk(body(m), bodyName(m), func(name []byte, v value) error {
		j, ok := c.index[string(name)]
		if !ok {
			return errMisfit{column: string(name)}
		}
		if c.typed && !fits(c.types[j], v.kind) {
			return errMisfit{column: string(name)}
		}
		if v.kind == kindNull {
			r.set[j] = false
			return nil
		}
		r.vals[j] = v
		r.set[j] = true
		return nil
	})
}

func timestamp(m *mapper.Message) []byte {
	if m.TimestampEnd <= m.TimestampStart || m.TimestampStart < 0 || m.TimestampEnd > len(m.JSON) {
		return nil
	}
	return m.JSON[m.TimestampStart:m.TimestampEnd]
}
