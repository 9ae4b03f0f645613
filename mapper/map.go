package mapper

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"hash"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
)

// chunkSize bounds the buffers messages are encoded into: every message of a Map call
// lives in a few shared chunks rather than one allocation each.
const chunkSize = 1 << 20

// firstGuess is the size of a message assumed before a Mapper has encoded one: it sizes the
// first chunk of the first Map call (later calls use the last call's average).
const firstGuess = 512

// maxPooled bounds the scratch buffers a Map call hands back to the pool.
const maxPooled = 8 << 20

// state is the scratch space of one Map call, pooled between calls.
type state struct {
	ids   []byte // the identifier texts, message ids and keys of the call's messages
	key   []byte // the text a Key is hashed from
	tmp   []byte
	clock minuteCache // the messages' timestamps
	sum   [sha256.Size]byte
	hash  hash.Hash // SHA-256 of the messageId
	spans []spans
	encs  []encoder
}

type span struct{ start, end int }

// spans locate a message's strings in state.ids until they become one string.
type spans struct {
	user, anon, group, event, id, key span
}

// Map appends the messages of rec's rows to msgs and the rows that cannot be delivered to
// rejects. firstRow is the index within its file of rec's row 0: Message.Row and
// Reject.Row are firstRow+i. rec must have the columns of the Mapper's schema (by name);
// if it does not, every row is rejected with the reason. Map may be called from several
// goroutines at once on different records (arrow-go builds some arrays lazily, such as a
// dictionary's values, so one record is not safe to share); the messages it returns share
// no memory with another call's, nor with rec.
func (m *Mapper) Map(rec arrow.RecordBatch, firstRow int64, msgs []Message, rejects []Reject) (outMsgs []Message, outRejects []Reject) {
	n := int(rec.NumRows())
	if n == 0 {
		return msgs, rejects
	}
	st := m.pool.Get().(*state)
	defer func() {
		clear(st.encs) // let the record's arrays go
		st.encs = st.encs[:0]
		if cap(st.ids) > maxPooled { // one huge row should not pin its buffer for good
			st.ids = nil
		}
		m.pool.Put(st)
	}()
	msgs0, rejects0 := len(msgs), len(rejects)
	defer func() {
		// A bug must cost the rows of one record, not the process (serve runs for days).
		if p := recover(); p != nil {
			outMsgs, outRejects = msgs[:msgs0], rejects[:rejects0]
			reason := fmt.Sprintf("mapping failed: %v", p)
			for i := range n {
				outRejects = append(outRejects, Reject{Row: firstRow + int64(i), Reason: reason})
			}
		}
	}()

	b, err := m.bind(rec, st)
	if err != nil {
		reason := err.Error()
		for i := range n {
			rejects = append(rejects, Reject{Row: firstRow + int64(i), Reason: reason})
		}
		return msgs, rejects
	}

	st.ids, st.spans = st.ids[:0], st.spans[:0]
	if st.hash == nil {
		st.hash = sha256.New()
	}
	// Each message is encoded straight into the free space of the current chunk, so that it
	// is written once. A chunk is allocated when the free space is less than twice the
	// average message: a message larger than the free space grows out of it, into an
	// array of its own that append allocates, and that array becomes the current chunk.
	// (Sizing by the largest message instead would leave up to that much unused at the end
	// of every chunk after one huge row.)
	var chunk []byte
	written, count := 0, 0 // bytes and number of the call's messages so far
	avg := max(int(m.avgSize.Load()), 32)
	for i := range n {
		row := firstRow + int64(i)
		ids0 := len(st.ids)
		var sp spans
		if count > 0 {
			avg = max(written/count, 32)
		}
		if cap(chunk)-len(chunk) < 2*avg {
			// Enough for the rest of the record at the average size so far.
			chunk = make([]byte, 0, min(chunkSize, avg*(n-i)+2*avg))
		}
		start := len(chunk)
		buf := append(chunk[start:start], m.head...)

		var ok bool
		if b.user != nil {
			buf, sp.user, _ = m.appendID(buf, st, b.user, i, `,"userId":`)
		}
		if b.anon != nil {
			buf, sp.anon, _ = m.appendID(buf, st, b.anon, i, `,"anonymousId":`)
		}
		if sp.user.end == 0 && sp.anon.end == 0 { // neither has a value
			st.ids = st.ids[:ids0]
			rejects = append(rejects, Reject{Row: row, Reason: m.noID})
			continue
		}
		if b.group != nil {
			if buf, sp.group, ok = m.appendID(buf, st, b.group, i, `,"groupId":`); !ok {
				st.ids = st.ids[:ids0]
				rejects = append(rejects, Reject{Row: row, Reason: m.noGroup})
				continue
			}
		}
		if b.event != nil {
			if buf, sp.event, ok = m.appendID(buf, st, b.event, i, `,"event":`); !ok {
				st.ids = st.ids[:ids0]
				rejects = append(rejects, Reject{Row: row, Reason: m.noEvent})
				continue
			}
		} else {
			buf = append(buf, m.eventJSON...)
		}

		buf = append(buf, m.bodyKey...)
		bodyStart := len(buf)
		buf, _ = m.appendObject(buf, m.root, st.encs, i)
		bodyEnd := len(buf)

		tsStart, tsEnd := 0, 0
		if b.ts != nil {
			mark := len(buf)
			buf = append(buf, `,"timestamp":"`...)
			start := len(buf)
			if buf, ok = b.ts.appendTimestamp(buf, i, st); ok {
				tsStart, tsEnd = start, len(buf)
				buf = append(buf, '"')
			} else {
				buf = buf[:mark]
			}
		}

		// The messageId hashes the sync name and everything so far: type, identifiers,
		// event, body and timestamp, in an encoding that is the same for the same content.
		st.hash.Reset()
		st.hash.Write(m.prefix)
		st.hash.Write(buf)
		sum := st.hash.Sum(st.sum[:0])
		buf = append(buf, `,"messageId":"`...)
		idStart := len(buf)
		buf = append(buf, "bf-"...)
		buf = hex.AppendEncode(buf, sum[:16])
		idEnd := len(buf)
		buf = append(buf, '"')
		buf = append(buf, m.tail...)

		if m.maxBytes > 0 && int64(len(buf)) > m.maxBytes {
			st.ids = st.ids[:ids0]
			rejects = append(rejects, Reject{
				Row:     row,
				Reason:  fmt.Sprintf("message is %d bytes, over max_record_bytes (%d)", len(buf), m.maxBytes),
				Message: append([]byte(nil), buf...),
			})
			continue
		}

		sp.id = st.addID(buf[idStart:idEnd])
		if !m.skipKeys {
			st.key = m.appendKeyText(st.key[:0], st, &sp, buf[tsStart:tsEnd])
			keySum := sha256.Sum256(st.key)
			start := len(st.ids)
			st.ids = hex.AppendEncode(st.ids, keySum[:16])
			sp.key = span{start, len(st.ids)}
		}

		if cap(buf) == cap(chunk)-start {
			chunk = chunk[:start+len(buf)] // written in place
		} else {
			chunk = buf // grown out of the chunk: the message's own array is the chunk now
		}
		written += len(buf)
		count++
		msgs = append(msgs, Message{
			Row:            row,
			Type:           m.typ,
			Event:          m.event,
			JSON:           buf[:len(buf):len(buf)],
			BodyStart:      bodyStart,
			BodyEnd:        bodyEnd,
			TimestampStart: tsStart,
			TimestampEnd:   tsEnd,
		})
		st.spans = append(st.spans, sp)
	}
	if count > 0 {
		m.avgSize.Store(int64(written / count))
	}

	// One string holds every identifier, id and key of the call: the messages slice it.
	all := string(st.ids)
	str := func(s span) string { return all[s.start:s.end] }
	for k, sp := range st.spans {
		msg := &msgs[msgs0+k]
		msg.UserID, msg.AnonymousID, msg.GroupID = str(sp.user), str(sp.anon), str(sp.group)
		if b.event != nil {
			msg.Event = str(sp.event)
		}
		msg.ID, msg.Key = str(sp.id), str(sp.key)
	}
	return msgs, rejects
}

// appendID reads identifier column r at row i into st.ids and, when it is not null or
// empty, writes it to buf as the member key (`,"userId":`).
func (m *Mapper) appendID(buf []byte, st *state, r idReader, i int, key string) ([]byte, span, bool) {
	start := len(st.ids)
	var ok bool
	st.ids, ok = r.appendID(st.ids, i)
	if !ok || len(st.ids) == start {
		st.ids = st.ids[:start]
		return buf, span{}, false
	}
	buf = append(buf, key...)
	buf = appendString(buf, st.ids[start:])
	return buf, span{start, len(st.ids)}, true
}

func (st *state) addID(b []byte) span {
	start := len(st.ids)
	st.ids = append(st.ids, b...)
	return span{start, len(st.ids)}
}

// appendKeyText writes what a message's Key is the hash of: its type and identifiers, and
// for track its event and timestamp too (one entity of a track is one event occurrence).
func (m *Mapper) appendKeyText(dst []byte, st *state, sp *spans, ts []byte) []byte {
	dst = append(dst, m.typ...)
	for _, s := range []span{sp.user, sp.anon, sp.group} {
		dst = append(dst, 0)
		dst = append(dst, st.ids[s.start:s.end]...)
	}
	if m.typ == "track" {
		dst = append(dst, 0)
		if m.eventCol != nil {
			dst = append(dst, st.ids[sp.event.start:sp.event.end]...)
		} else {
			dst = append(dst, m.event...)
		}
		dst = append(dst, 0)
		dst = append(dst, ts...)
	}
	return dst
}

// appendObject writes an object of the body tree for row i. With skip_nulls, null values
// are left out, and so is a nested object they leave empty; it reports whether it wrote
// any member.
func (m *Mapper) appendObject(dst []byte, members []*node, encs []encoder, i int) ([]byte, bool) {
	dst = append(dst, '{')
	wrote := false
	for _, nd := range members {
		mark := len(dst)
		if wrote {
			dst = append(dst, ',')
		}
		dst = append(dst, nd.key...)
		switch {
		case nd.members != nil:
			var any bool
			if dst, any = m.appendObject(dst, nd.members, encs, i); !any && m.skipNulls {
				dst = dst[:mark]
				continue
			}
		case nd.col >= 0:
			e := encs[nd.col]
			if e.isNull(i) {
				if m.skipNulls {
					dst = dst[:mark]
					continue
				}
				dst = append(dst, "null"...)
			} else {
				dst = e.appendValue(dst, i)
			}
		default:
			dst = append(dst, nd.value...)
		}
		wrote = true
	}
	return append(dst, '}'), wrote
}

// bound is a Mapper's view of one record: the readers of its identifier, event and
// timestamp columns (the body's encoders are in state.encs).
type bound struct {
	user, anon, group, event idReader
	ts                       tsReader
}

// bind finds the Mapper's columns in rec and builds their readers. It returns an error when
// rec lacks a column, or holds an identifier or timestamp column of a type they cannot have.
func (m *Mapper) bind(rec arrow.RecordBatch, st *state) (bound, error) {
	var b bound
	sc := rec.Schema()
	find := func(c *sourceColumn) (arrow.Array, error) {
		i := c.index
		if i >= int(rec.NumCols()) || sc.Field(i).Name != c.name {
			idx := sc.FieldIndices(c.name)
			if len(idx) != 1 {
				return nil, fmt.Errorf("record has no column %q (or has it more than once)", c.name)
			}
			i = idx[0]
		}
		return rec.Column(i), nil
	}
	for _, f := range []struct {
		c   *sourceColumn
		dst *idReader
	}{{m.userID, &b.user}, {m.anonID, &b.anon}, {m.groupID, &b.group}, {m.eventCol, &b.event}} {
		if f.c == nil {
			continue
		}
		arr, err := find(f.c)
		if err != nil {
			return b, err
		}
		if *f.dst = newIDReader(arr); *f.dst == nil {
			return b, fmt.Errorf("column %q (%s) is %s in this record; %s needs a string, an integer or a UUID", f.c.name, f.c.role, arr.DataType(), f.c.role)
		}
	}
	if m.tsCol != nil {
		arr, err := find(m.tsCol)
		if err != nil {
			return b, err
		}
		if b.ts = newTSReader(arr); b.ts == nil {
			return b, fmt.Errorf("column %q (timestamp) is %s in this record; timestamp needs a timestamp, a date or a string", m.tsCol.name, arr.DataType())
		}
	}
	st.encs = st.encs[:0]
	for k := range m.body {
		arr, err := find(&m.body[k])
		if err != nil {
			return b, err
		}
		st.encs = append(st.encs, newEncoder(arr))
	}
	return b, nil
}

// idReader reads an identifier (user id, anonymous id, group id, event name) as text.
type idReader interface {
	// appendID appends row i's text (invalid UTF-8 replaced) and reports whether the
	// row has a value (is not null).
	appendID(dst []byte, i int) ([]byte, bool)
}

// newIDReader returns the reader of arr, nil when arr's type cannot hold identifiers.
func newIDReader(arr arrow.Array) idReader {
	v := validityOf(arr)
	switch a := arr.(type) {
	case *array.String:
		return utf8ID{v, utf8ValuesOf(a)}
	case *array.LargeString:
		return stringID[*array.LargeString]{v, a}
	case *array.StringView:
		return stringID[*array.StringView]{v, a}
	case *array.Int8:
		return intID[int8]{v, a.Values()}
	case *array.Int16:
		return intID[int16]{v, a.Values()}
	case *array.Int32:
		return intID[int32]{v, a.Values()}
	case *array.Int64:
		return intID[int64]{v, a.Values()}
	case *array.Uint8:
		return uintID[uint8]{v, a.Values()}
	case *array.Uint16:
		return uintID[uint16]{v, a.Values()}
	case *array.Uint32:
		return uintID[uint32]{v, a.Values()}
	case *array.Uint64:
		return uintID[uint64]{v, a.Values()}
	case *array.Dictionary:
		if !isStringType(a.DataType()) {
			return nil
		}
		if values := newIDReader(a.Dictionary()); values != nil {
			return dictID{v, a, values}
		}
	case array.ExtensionArray:
		if isUUIDType(a.DataType()) {
			if s, ok := a.Storage().(*array.FixedSizeBinary); ok {
				return uuidID{validityOf(s), s}
			}
		}
	}
	return nil
}

type stringID[A interface{ Value(int) string }] struct {
	validity
	a A
}

func (r stringID[A]) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return appendValidUTF8(dst, r.a.Value(i)), true
}

type utf8ID struct {
	validity
	values utf8Values
}

func (r utf8ID) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return appendValidUTF8(dst, r.values.value(i)), true
}

type intID[T int8 | int16 | int32 | int64] struct {
	validity
	vals []T
}

func (r intID[T]) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return strconv.AppendInt(dst, int64(r.vals[i]), 10), true
}

type uintID[T uint8 | uint16 | uint32 | uint64] struct {
	validity
	vals []T
}

func (r uintID[T]) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return strconv.AppendUint(dst, uint64(r.vals[i]), 10), true
}

type dictID struct {
	validity
	a      *array.Dictionary
	values idReader
}

func (r dictID) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return r.values.appendID(dst, r.a.GetValueIndex(i))
}

type uuidID struct {
	validity
	a *array.FixedSizeBinary
}

func (r uuidID) appendID(dst []byte, i int) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	return appendUUID(dst, r.a.Value(i)), true
}

// tsReader reads the message timestamp.
type tsReader interface {
	// appendTimestamp appends row i's timestamp as the content of a JSON string (RFC 3339
	// for timestamps and dates, the escaped text for strings) and reports whether the row
	// has one (a null or an empty string has none).
	appendTimestamp(dst []byte, i int, st *state) ([]byte, bool)
}

func newTSReader(arr arrow.Array) tsReader {
	v := validityOf(arr)
	switch a := arr.(type) {
	case *array.Timestamp:
		return timestampTS{timestampEncoder{v, a.Values(), unitNanos(a.DataType().(*arrow.TimestampType).Unit)}}
	case *array.Date32:
		return dateTS{v, func(i int) int64 { return int64(a.Value(i)) }}
	case *array.Date64:
		return dateTS{v, func(i int) int64 { d, _ := floorDiv(int64(a.Value(i)), 86400000); return d }}
	}
	if isStringType(arr.DataType()) {
		if r := newIDReader(arr); r != nil {
			return stringTS{r}
		}
	}
	return nil
}

type timestampTS struct{ e timestampEncoder }

func (r timestampTS) appendTimestamp(dst []byte, i int, st *state) ([]byte, bool) {
	if r.e.isNull(i) {
		return dst, false
	}
	sec, nsec := r.e.instant(i)
	return st.clock.appendTimestamp(dst, sec, nsec), true
}

// minuteCache is appendTimestamp remembering the text of the last minute it wrote: exports
// are often in time order, and then row after row shares its date, hour and minute, which
// cost most of the conversion.
type minuteCache struct {
	minute int64  // seconds since the epoch / 60
	prefix []byte // "YYYY-MM-DDTHH:MM:" of minute; empty when none is remembered
}

func (c *minuteCache) appendTimestamp(dst []byte, sec, nsec int64) []byte {
	minute, s := floorDiv(sec, 60)
	if len(c.prefix) == 0 || minute != c.minute {
		start := len(dst)
		dst = appendTimestamp(dst, sec, nsec)
		c.prefix = c.prefix[:0]
		// Only four-digit years have the fixed-width form (not +10000 or -0001).
		if b := dst[start]; b != '+' && b != '-' {
			c.prefix = append(c.prefix, dst[start:start+len("2006-01-02T15:04:")]...)
			c.minute = minute
		}
		return dst
	}
	dst = append(dst, c.prefix...)
	dst = append2(dst, int(s))
	dst = appendFraction(dst, nsec)
	return append(dst, 'Z')
}

type dateTS struct {
	validity
	days func(int) int64
}

func (r dateTS) appendTimestamp(dst []byte, i int, _ *state) ([]byte, bool) {
	if r.isNull(i) {
		return dst, false
	}
	dst = appendDate(dst, r.days(i))
	return append(dst, "T00:00:00Z"...), true
}

// stringTS passes a string timestamp through as it is (escaped): the destination judges it.
type stringTS struct{ r idReader }

func (r stringTS) appendTimestamp(dst []byte, i int, st *state) ([]byte, bool) {
	var ok bool
	st.tmp, ok = r.r.appendID(st.tmp[:0], i)
	if !ok || len(st.tmp) == 0 {
		return dst, false
	}
	return appendStringContent(dst, st.tmp), true
}

// FormatCell returns the value of row i of arr as text for a table: the JSON text of the
// value as a message would carry it, with a string's quotes removed (and \" and \\ with
// them), but its control characters still escaped so that a cell stays on one line.
// A null is "null".
func FormatCell(arr arrow.Array, i int) string {
	if i < 0 || i >= arr.Len() {
		return ""
	}
	b := appendJSON(newEncoder(arr), nil, i)
	if len(b) < 2 || b[0] != '"' {
		return string(b)
	}
	out := make([]byte, 0, len(b)-2)
	for j := 1; j < len(b)-1; j++ {
		if b[j] == '\\' && (b[j+1] == '"' || b[j+1] == '\\') {
			j++
		} else if b[j] == '\\' {
			out = append(out, b[j])
			j++
		}
		out = append(out, b[j])
	}
	return string(out)
}
