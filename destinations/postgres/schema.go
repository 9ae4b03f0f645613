package postgres

import (
	"context"
	"fmt"
	"hash/fnv"
	"maps"
	"slices"
	"strings"
	"unicode/utf8"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"
)

// column is one column of the table as the catalog describes it.
type column struct {
	typ      string // format_type: "text", "numeric(10,2)", "timestamp with time zone"
	typname  string // pg_type.typname: text, numeric, jsonb, uuid, …
	category string // pg_type.typcategory: S string, N numeric, B boolean, D date/time, U user-defined (json, uuid)
}

// accepts reports whether a value of kind k may go into c. Strings go into string, date
// and time, uuid and JSON columns (the server parses them: a bad date is a data error
// that refuses that message alone); numbers into numeric and JSON columns; booleans into
// boolean and JSON ones; objects and arrays into JSON columns only.
func (c column) accepts(k kind) bool {
	json := c.typname == "jsonb" || c.typname == "json"
	switch k {
	case kindNull:
		return true
	case kindString:
		return json || c.category == "S" || c.category == "D" || c.typname == "uuid"
	case kindNumber:
		return json || c.category == "N"
	case kindBool:
		return json || c.category == "B"
	}
	return json
}

// lockTimeout bounds how long creating or widening the table waits for the locks it
// needs (ALTER TABLE waits for every transaction using the table, and blocks new ones
// meanwhile): past it the batch fails with a retryable error instead of queueing every
// other writer of the table behind it.
const lockTimeout = "10s"

// ensure makes the table ready for b: it creates the table and its unique indexes when
// absent, and adds the columns b needs that it lacks (ADD COLUMN IF NOT EXISTS, under an
// advisory lock, in a transaction of its own: ALTER TABLE waits for the transactions of
// the batches in flight, and must not itself hold a lock one of them waits for, or they
// would deadlock). Concurrent batches, in this process or others, may
// widen at once: each reads the columns again after its ALTER, and a column another one
// created with another type is a conflict for the messages that do not fit it.
func (d *Destination) ensure(ctx context.Context, conn *pgxpool.Conn, b *batch) error {
	if d.satisfied(b) {
		return nil
	}
	d.setupMu.Lock()
	defer d.setupMu.Unlock()
	if d.satisfied(b) { // another batch did it while we waited
		return nil
	}
	d.mu.RLock()
	ready := d.ready
	d.mu.RUnlock()
	if !ready {
		if err := d.create(ctx, conn); err != nil {
			return err
		}
	}
	if err := d.reload(ctx, conn); err != nil {
		return err
	}
	if err := d.checkFixed(d.columns()); err != nil {
		return err
	}
	add := d.missing(b)
	if len(add) == 0 {
		return nil
	}
	var alter strings.Builder
	alter.WriteString("ALTER TABLE " + d.ident)
	for i, c := range add {
		if i > 0 {
			alter.WriteByte(',')
		}
		alter.WriteString(" ADD COLUMN IF NOT EXISTS " + pgx.Identifier{c[0]}.Sanitize() + " " + c[1])
	}
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		for _, s := range []string{"SET LOCAL lock_timeout = '" + lockTimeout + "'", "SELECT pg_advisory_xact_lock($1)", alter.String()} {
			var args []any
			if strings.Contains(s, "$1") {
				args = []any{d.lockKey}
			}
			if _, err := tx.Exec(ctx, s, args...); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		names := make([]string, len(add))
		for i, c := range add {
			names[i] = c[0]
		}
		return d.classify(ctx, fmt.Sprintf("adding columns %s to %s", strings.Join(names, ", "), d.table), err)
	}
	d.log.Info("added columns", "destination", d.name, "table", d.table.String(), "columns", len(add))
	return d.reload(ctx, conn)
}

// satisfied reports whether the table is known to be ready for b.
func (d *Destination) satisfied(b *batch) bool {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.ready && len(d.missingLocked(b)) == 0
}

func (d *Destination) missing(b *batch) [][2]string {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.missingLocked(b)
}

// missingLocked lists the columns b needs that the table lacks, with their types: the
// fixed columns (a table created by hand may lack some), then b's body columns that
// carry a value (a column only ever null has no type to create it with).
func (d *Destination) missingLocked(b *batch) [][2]string {
	var add [][2]string
	for _, c := range fixedCols {
		if _, ok := d.cols[c.name]; !ok {
			add = append(add, [2]string{c.name, c.typ})
		}
	}
	for _, n := range b.cols[copiedFixed:] {
		if k := b.kinds[n]; k != kindNull {
			if _, ok := d.cols[n]; !ok {
				add = append(add, [2]string{n, k.pgType()})
			}
		}
	}
	return add
}

// columns returns the table's columns as last read.
func (d *Destination) columns() map[string]column {
	d.mu.RLock()
	defer d.mu.RUnlock()
	return d.cols
}

// create creates the table and its two unique indexes where absent, under the advisory
// lock: CREATE TABLE IF NOT EXISTS alone may fail when two sessions race.
func (d *Destination) create(ctx context.Context, conn *pgxpool.Conn) error {
	var cols []string
	for _, c := range fixedCols {
		def := pgx.Identifier{c.name}.Sanitize() + " " + c.typ
		switch c.name {
		case colType, colMessageID:
			def += " NOT NULL"
		case colUpdatedAt:
			def += " NOT NULL DEFAULT now()"
		}
		cols = append(cols, def)
	}
	keyIdx, msgIdx := d.indexNames()
	schema := pgx.Identifier{d.table.Schema}.Sanitize()
	err := pgx.BeginFunc(ctx, conn, func(tx pgx.Tx) error {
		if _, err := tx.Exec(ctx, "SET LOCAL lock_timeout = '"+lockTimeout+"'"); err != nil {
			return err
		}
		if _, err := tx.Exec(ctx, "SELECT pg_advisory_xact_lock($1)", d.lockKey); err != nil {
			return err
		}
		var exists, hasKey, hasMsg bool
		err := tx.QueryRow(ctx, `SELECT to_regclass($1) IS NOT NULL, to_regclass($2) IS NOT NULL, to_regclass($3) IS NOT NULL`,
			d.ident, schema+"."+pgx.Identifier{keyIdx}.Sanitize(), schema+"."+pgx.Identifier{msgIdx}.Sanitize()).Scan(&exists, &hasKey, &hasMsg)
		if err != nil {
			return err
		}
		if !exists {
			if _, err := tx.Exec(ctx, "CREATE TABLE "+d.ident+" ("+strings.Join(cols, ", ")+")"); err != nil {
				return err
			}
		}
		// The unique indexes ON CONFLICT infers: one row per (type, key) for identify and
		// group, one per messageId for track.
		if !hasKey {
			if _, err := tx.Exec(ctx, "CREATE UNIQUE INDEX IF NOT EXISTS "+pgx.Identifier{keyIdx}.Sanitize()+" ON "+d.ident+
				` ("type", "key") WHERE "type" <> 'track'`); err != nil {
				return err
			}
		}
		if !hasMsg {
			if _, err := tx.Exec(ctx, "CREATE UNIQUE INDEX IF NOT EXISTS "+pgx.Identifier{msgIdx}.Sanitize()+" ON "+d.ident+
				` ("message_id") WHERE "type" = 'track'`); err != nil {
				return err
			}
		}
		return nil
	})
	if err != nil {
		return d.classify(ctx, "creating table "+d.table.String(), err)
	}
	d.mu.Lock()
	d.ready = true
	d.mu.Unlock()
	return nil
}

// indexNames are the names of the table's unique indexes: the table's name (cut to fit)
// and a hash of the full schema and name, so that two long names sharing a prefix do not
// share an index name (CREATE INDEX IF NOT EXISTS would then skip the second one).
func (d *Destination) indexNames() (key, msg string) {
	h := fnv.New32a()
	h.Write([]byte(d.table.Schema + "\x00" + d.table.Table))
	base := d.table.Table
	for len(base) > 40 {
		_, size := utf8.DecodeLastRuneInString(base)
		base = base[:len(base)-size]
	}
	base = fmt.Sprintf("%s_%08x", base, h.Sum32())
	return base + "_backflow_key", base + "_backflow_msg"
}

// loadColumns reads the table's columns from the catalog; an absent table has none.
func loadColumns(ctx context.Context, q interface {
	Query(context.Context, string, ...any) (pgx.Rows, error)
}, ident string) (map[string]column, error) {
	rows, err := q.Query(ctx, `SELECT a.attname::text, format_type(a.atttypid, a.atttypmod), t.typname::text, t.typcategory::text
		FROM pg_attribute a JOIN pg_type t ON t.oid = a.atttypid
		WHERE a.attrelid = to_regclass($1) AND a.attnum > 0 AND NOT a.attisdropped`, ident)
	if err != nil {
		return nil, err
	}
	cols := map[string]column{}
	var name string
	var c column
	_, err = pgx.ForEachRow(rows, []any{&name, &c.typ, &c.typname, &c.category}, func() error {
		cols[name] = c
		return nil
	})
	return cols, err
}

func (d *Destination) reload(ctx context.Context, conn *pgxpool.Conn) error {
	cols, err := loadColumns(ctx, conn, d.ident)
	if err != nil {
		return d.classify(ctx, "reading the columns of "+d.table.String(), err)
	}
	d.mu.Lock()
	d.cols = cols
	d.mu.Unlock()
	return nil
}

// checkFixed refuses a table whose own columns have types backflow cannot fill (a table
// created by hand with key integer): every batch would fail the same way.
func (d *Destination) checkFixed(cols map[string]column) error {
	for _, name := range slices.Sorted(maps.Keys(cols)) {
		if !isFixed(name) {
			continue
		}
		c := cols[name]
		ok := c.category == "S"
		if name == colTimestamp || name == colUpdatedAt {
			ok = c.category == "D"
		}
		if !ok {
			need := "text"
			if name == colTimestamp || name == colUpdatedAt {
				need = "timestamp with time zone"
			}
			return fmt.Errorf("column %q of %s is %s: backflow writes %s there", name, d.table, c.typ, need)
		}
	}
	return nil
}
