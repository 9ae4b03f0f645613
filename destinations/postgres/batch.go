package postgres

import (
	"bytes"
	"cmp"
	"fmt"
	"slices"
	"strings"
	"time"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// tempTable is the per-transaction table batches are copied into (ON COMMIT DROP; a
// temporary table is private to its session, so concurrent batches never share one).
const tempTable = "backflow_batch"

// The columns every table has, whatever its layout.
const (
	colKey         = "key"
	colType        = "type"
	colMessageID   = "message_id"
	colUserID      = "user_id"
	colAnonymousID = "anonymous_id"
	colGroupID     = "group_id"
	colEvent       = "event"
	colTimestamp   = "timestamp"
	colUpdatedAt   = "updated_at"
	// The jsonb layout's body columns: traits for identify and group, properties for track.
	colTraits     = "traits"
	colProperties = "properties"
)

// fixedCols are the columns backflow fills itself, in the order they are created and
// copied (updated_at is set by the INSERT, not copied).
var fixedCols = []struct{ name, typ string }{
	{colKey, "text"}, {colType, "text"}, {colMessageID, "text"},
	{colUserID, "text"}, {colAnonymousID, "text"}, {colGroupID, "text"}, {colEvent, "text"},
	{colTimestamp, "timestamp with time zone"}, {colUpdatedAt, "timestamp with time zone"},
}

// copiedFixed is how many of fixedCols a batch copies (all but updated_at).
const copiedFixed = 8

func isFixed(name string) bool {
	for _, c := range fixedCols {
		if c.name == name {
			return true
		}
	}
	return false
}

// batch is one Write's messages turned into rows.
type batch struct {
	rows []row
	// cols are the columns the batch writes, fixed ones first, then the body columns in
	// the order they first appear; kinds holds each body column's first non-null kind.
	cols  []string
	kinds map[string]kind
	// upserts and inserts count the identify/group and the track rows.
	upserts, inserts int
}

// row is one message to write.
type row struct {
	index  int // in the Write's msgs
	msg    *mapper.Message
	key    string
	fields []field // the body's columns, each once
}

func (r *row) track() bool { return r.msg.Type == "track" }

// sortRows orders rows by type and rowID. It sorts positions, not the rows themselves:
// moving rows (which hold pointers) costs a write barrier at every swap.
func sortRows(rows []row) []row {
	cmpRows := func(a, b *row) int {
		return cmp.Or(cmp.Compare(a.msg.Type, b.msg.Type), cmp.Compare(a.rowID(), b.rowID()))
	}
	if slices.IsSortedFunc(rows, func(a, b row) int { return cmpRows(&a, &b) }) {
		return rows
	}
	order := make([]int32, len(rows))
	for i := range order {
		order[i] = int32(i)
	}
	slices.SortFunc(order, func(a, b int32) int { return cmpRows(&rows[a], &rows[b]) })
	out := make([]row, len(rows))
	for i, j := range order {
		out[i] = rows[j]
	}
	return out
}

// rowID is what identifies the table row: the messageId of a track row, else the key.
func (r *row) rowID() string {
	if r.track() {
		return r.msg.ID
	}
	return r.key
}

// prepare turns msgs into rows: it refuses the messages that cannot be rows, and keeps
// only the last message of each row (ON CONFLICT cannot touch a row twice in one
// statement; the earlier messages would be overwritten by the last one anyway).
func (d *Destination) prepare(msgs []mapper.Message) (*batch, []destinations.Failure) {
	var failed []destinations.Failure
	refuse := func(i int, err error) {
		failed = append(failed, destinations.Failure{Index: i, Err: &destinations.PermanentError{Err: err}})
	}
	rows := make([]row, 0, len(msgs))
	names := map[string]string{}
	for i := range msgs {
		m := &msgs[i]
		r := row{index: i, msg: m, key: d.keyOf(m)}
		switch m.Type {
		case "identify", "group":
			if r.key == "" {
				refuse(i, fmt.Errorf("the message has no %s, the key of the table's rows (key: %s)", d.key, d.key))
				continue
			}
		case "track":
		default:
			refuse(i, fmt.Errorf("message type %q is not identify, track or group", m.Type))
			continue
		}
		fields, err := d.fields(m, names)
		if err != nil {
			refuse(i, err)
			continue
		}
		r.fields = fields
		rows = append(rows, r)
	}
	rows = lastOfEachRow(rows)
	b := &batch{rows: rows, kinds: map[string]kind{}}
	for _, c := range fixedCols[:copiedFixed] {
		b.cols = append(b.cols, c.name)
	}
	for _, r := range rows {
		for _, f := range r.fields {
			k, seen := b.kinds[f.col]
			if !seen {
				b.cols = append(b.cols, f.col)
			}
			if k == kindNull {
				b.kinds[f.col] = f.kind
			}
		}
	}
	// In a fixed order, so that concurrent batches touching the same rows lock them in
	// the same order and cannot deadlock (the INSERT follows the COPY's order). After
	// the columns were collected: a new column takes the type of its first value in
	// message order.
	b.rows = sortRows(b.rows)
	b.count()
	return b, failed
}

func (b *batch) count() {
	b.upserts, b.inserts = 0, 0
	for i := range b.rows {
		if b.rows[i].track() {
			b.inserts++
		} else {
			b.upserts++
		}
	}
}

// lastOfEachRow keeps one row of those that land on the same table row: of track rows
// of one messageId the last; of identify/group rows of one type and key the newest by
// timestamp, the last of equals (or when one has no timestamp) — the rule the upsert
// applies to the row already in the table.
func lastOfEachRow(rows []row) []row {
	type id struct {
		track    bool
		typ, key string
	}
	best := make(map[id]int, len(rows))
	dup := false
	for i := range rows {
		r := &rows[i]
		k := id{track: r.track(), typ: r.msg.Type, key: r.key}
		if k.track {
			k.key = r.msg.ID
		}
		j, seen := best[k]
		if !seen {
			best[k] = i
			continue
		}
		dup = true
		if k.track || !olderThan(r.msg, rows[j].msg) {
			best[k] = i
		}
	}
	if !dup {
		return rows
	}
	keep := make([]bool, len(rows))
	for _, i := range best {
		keep[i] = true
	}
	out := rows[:0]
	for i := range rows {
		if keep[i] {
			out = append(out, rows[i])
		}
	}
	return out
}

// olderThan reports whether a's timestamp is before b's; false when either has none (or
// one that is not RFC 3339: the server parses those, and refuses the message if it must).
func olderThan(a, b *mapper.Message) bool {
	ta, errA := time.Parse(time.RFC3339Nano, a.Timestamp())
	tb, errB := time.Parse(time.RFC3339Nano, b.Timestamp())
	return errA == nil && errB == nil && ta.Before(tb)
}

func (d *Destination) keyOf(m *mapper.Message) string {
	switch d.key {
	case KeyAnonymousID:
		return m.AnonymousID
	case KeyGroupID:
		return m.GroupID
	}
	return m.UserID
}

// fields returns the body columns of m: one per leaf (layout columns), or the whole
// body in traits or properties (layout jsonb).
func (d *Destination) fields(m *mapper.Message, names map[string]string) ([]field, error) {
	what := "trait"
	if m.Type == "track" {
		what = "property"
	}
	body := m.Body()
	if d.layout == LayoutJSONB {
		col := colTraits
		if m.Type == "track" {
			col = colProperties
		}
		if len(bytes.TrimSpace(body)) == 0 {
			return []field{{col: col, kind: kindNull}}, nil
		}
		return []field{{col: col, kind: kindJSON, text: body}}, nil
	}
	if len(bytes.TrimSpace(body)) == 0 {
		return nil, nil
	}
	fields, err := flatten(body, make([]field, 0, 16), names)
	if err != nil {
		return nil, fmt.Errorf("the message's %s object cannot be read: %w", what, err)
	}
	for i := range fields {
		f := &fields[i]
		if isFixed(f.col) {
			// A warehouse table's own updated_at, type or timestamp column is common: it
			// goes into traits.updated_at (properties.… for track), as if nested under
			// the body's name, rather than into backflow's column or nowhere.
			n := bodyName(m.Type) + "." + f.col
			if interned, ok := names[n]; ok {
				n = interned
			} else {
				names[n] = n
			}
			f.col = n
		}
		switch {
		case f.col == "":
			return nil, fmt.Errorf("a %s has an empty name: it cannot be a column", what)
		case len(f.col) > maxIdentBytes:
			return nil, fmt.Errorf("%s %q is %d bytes long: PostgreSQL column names hold at most %d (rename it in the mapping)", what, f.col, len(f.col), maxIdentBytes)
		case !utf8.ValidString(f.col) || strings.ContainsRune(f.col, 0):
			return nil, fmt.Errorf("%s %q is not valid UTF-8 text without NUL: it cannot be a column name", what, f.col)
		}
	}
	return lastOfEachField(fields), nil
}

// bodyName is what the message calls its body: traits, or properties for track.
func bodyName(typ string) string {
	if typ == "track" {
		return colProperties
	}
	return colTraits
}

// lastOfEachField keeps the last value of each column: {"a.b":1,"a":{"b":2}} is one
// column a.b, and the later value wins, as a later duplicate key does in JSON.
func lastOfEachField(fields []field) []field {
	dup := false
	if len(fields) <= 16 {
		for i := range fields {
			for j := i + 1; j < len(fields) && !dup; j++ {
				dup = fields[i].col == fields[j].col
			}
		}
	} else {
		seen := make(map[string]bool, len(fields))
		for _, f := range fields {
			dup = dup || seen[f.col]
			seen[f.col] = true
		}
	}
	if !dup {
		return fields
	}
	last := map[string]int{}
	for i, f := range fields {
		last[f.col] = i
	}
	out := fields[:0:0]
	for i, f := range fields {
		if last[f.col] == i {
			out = append(out, f)
		}
	}
	return out
}

// refuseMisfits moves to failed the rows with a value their column cannot take (a trait
// that was a number and is now a string), and drops from the batch the columns the
// table does not have (a column only ever null is never created).
func (b *batch) refuseMisfits(cols map[string]column, table string, failed *[]destinations.Failure) {
	kept := b.rows[:0]
	for _, r := range b.rows {
		var misfit error
		for _, f := range r.fields {
			c, ok := cols[f.col]
			switch {
			case f.kind == kindNull:
			case !ok:
				misfit = fmt.Errorf("column %q of %s does not exist", f.col, table)
			case !c.accepts(f.kind):
				misfit = fmt.Errorf("%q is a %s here (a %s column) but column %q of %s is %s", f.col, f.kind, f.kind.pgType(), f.col, table, c.typ)
			}
			if misfit != nil {
				break
			}
		}
		if misfit != nil {
			*failed = append(*failed, destinations.Failure{Index: r.index, Err: &destinations.PermanentError{Err: misfit}})
			continue
		}
		kept = append(kept, r)
	}
	b.rows = kept
	out := b.cols[:0]
	for _, c := range b.cols {
		if _, ok := cols[c]; ok {
			out = append(out, c)
		}
	}
	b.cols = out
	b.count()
}

// createTemp is the statement that creates the batch's temporary table, with the
// types of the table's columns (read from the catalog, never from values).
func (b *batch) createTemp(cols map[string]column) string {
	var s strings.Builder
	s.WriteString("CREATE TEMP TABLE " + tempTable + " (")
	for i, n := range b.cols {
		if i > 0 {
			s.WriteString(", ")
		}
		s.WriteString(pgx.Identifier{n}.Sanitize() + " " + cols[n].typ)
	}
	s.WriteString(") ON COMMIT DROP")
	return s.String()
}

// copyData is the COPY statement and its data, in COPY's text format.
func (b *batch) copyData() (string, *bytes.Reader) {
	var s strings.Builder
	s.WriteString("COPY pg_temp." + tempTable + " (")
	pos := make(map[string]int, len(b.cols))
	for i, n := range b.cols {
		if i > 0 {
			s.WriteString(", ")
		}
		s.WriteString(pgx.Identifier{n}.Sanitize())
		pos[n] = i
	}
	s.WriteString(") FROM STDIN")

	size := 0
	for i := range b.rows {
		size += len(b.rows[i].msg.JSON) + 64
	}
	buf := make([]byte, 0, size)
	vals := make([]*field, len(b.cols))
	for i := range b.rows {
		r := &b.rows[i]
		m := r.msg
		buf = appendText(buf, r.key)
		buf = append(buf, '\t')
		buf = appendText(buf, m.Type)
		buf = append(buf, '\t')
		buf = appendText(buf, m.ID)
		for _, v := range []string{m.UserID, m.AnonymousID, m.GroupID, m.Event, m.Timestamp()} {
			buf = append(buf, '\t')
			buf = appendText(buf, v)
		}
		clear(vals)
		for j := range r.fields {
			if p, ok := pos[r.fields[j].col]; ok {
				vals[p] = &r.fields[j]
			}
		}
		for _, f := range vals[copiedFixed:] {
			buf = append(buf, '\t')
			if f == nil || f.kind == kindNull {
				buf = append(buf, `\N`...)
				continue
			}
			buf = appendCopy(buf, f.text)
		}
		buf = append(buf, '\n')
	}
	return s.String(), bytes.NewReader(buf)
}

// appendText appends v for COPY, "" as NULL (an absent identifier, event or timestamp).
func appendText(buf []byte, v string) []byte {
	if v == "" {
		return append(buf, `\N`...)
	}
	for i := 0; i < len(v); i++ {
		buf = appendCopyByte(buf, v[i])
	}
	return buf
}

// appendCopy appends v escaped for COPY's text format: backslash, and the tab, newline
// and carriage return that would end a field or a row.
func appendCopy(buf, v []byte) []byte {
	plain := true
	for _, c := range v {
		if c == '\\' || c == '\t' || c == '\n' || c == '\r' {
			plain = false
			break
		}
	}
	if plain {
		return append(buf, v...)
	}
	for _, c := range v {
		buf = appendCopyByte(buf, c)
	}
	return buf
}

func appendCopyByte(buf []byte, c byte) []byte {
	switch c {
	case '\\':
		return append(buf, '\\', '\\')
	case '\t':
		return append(buf, '\\', 't')
	case '\n':
		return append(buf, '\\', 'n')
	case '\r':
		return append(buf, '\\', 'r')
	}
	return append(buf, c)
}
