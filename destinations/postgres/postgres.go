// Package postgres is the postgres destination: it keeps a sync's messages as rows of a
// table in an operational database. identify and group messages are upserted, one row
// per (type, key); track messages are inserted once, one row per messageId.
//
// Every batch is one transaction: its rows are streamed with COPY into a temporary table,
// then moved with one INSERT … ON CONFLICT per kind of row (upserts, inserts). The batch
// is acknowledged when the transaction commits (with synchronous_commit on), so a batch
// cut short by a kill or a dropped connection leaves nothing behind, and a replayed batch
// adds no row: an upsert by key is idempotent and a known messageId is ignored.
//
// With layout columns, each trait or property has its own column, added (never dropped
// or narrowed) when a message first carries it; with layout jsonb, traits or properties
// are one JSONB column.
//
// Sample config:
//
//	destinations:
//	  - type: postgres
//	    url: ${DATABASE_URL}        # postgres://user:password@host:5432/db?sslmode=require
//	    table: public.crm_users     # created when absent
//	    key: userId                 # userId | anonymousId | groupId
//	    layout: columns             # columns | jsonb
package postgres

import (
	"cmp"
	"context"
	"errors"
	"fmt"
	"hash/fnv"
	"log/slog"
	"net/url"
	"slices"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/jackc/pgx/v5"
	"github.com/jackc/pgx/v5/pgxpool"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// Interface guards.
var (
	_ destinations.Destination = (*Destination)(nil)
	_ destinations.Checker     = (*Destination)(nil)
)

// Type is the postgres destination's type name in the configuration.
const Type = "postgres"

// The values of layout and key.
const (
	LayoutColumns = "columns"
	LayoutJSONB   = "jsonb"

	KeyUserID      = "userId"
	KeyAnonymousID = "anonymousId"
	KeyGroupID     = "groupId"
)

// Options are the postgres destination's own configuration keys.
type Options struct {
	// URL is postgres://user:password@host:port/db?sslmode=…; it holds the password.
	URL string `mapstructure:"url"`
	// Table is table or schema.table (public when no schema), created when absent.
	Table string `mapstructure:"table"`
	// Key is the message field that identifies the row of an identify or group message.
	Key string `mapstructure:"key"`
	// Layout is columns (a column per trait or property) or jsonb (one JSONB column).
	Layout string `mapstructure:"layout"`
}

// Prepare fills the defaults (key userId, layout columns) and checks every key.
func (o *Options) Prepare(c *config.OptionsCheck) {
	if o.Key == "" {
		o.Key = KeyUserID
	}
	if o.Layout == "" {
		o.Layout = LayoutColumns
	}
	if c.Required("url", Type, o.URL) {
		if err := checkURL(o.URL); err != nil {
			c.Problem("url", err.Error())
		}
	}
	if c.Required("table", Type, o.Table) {
		if _, err := ParseTable(o.Table); err != nil {
			c.Problem("table", err.Error())
		}
	}
	c.OneOf("key", o.Key, KeyUserID, KeyAnonymousID, KeyGroupID)
	c.OneOf("layout", o.Layout, LayoutColumns, LayoutJSONB)
}

// Secrets are the URL and the password in it.
func (o *Options) Secrets() []string {
	s := []string{o.URL}
	if u, err := url.Parse(o.URL); err == nil && u.User != nil {
		if p, ok := u.User.Password(); ok && p != "" {
			s = append(s, p)
		}
	}
	return s
}

// checkURL accepts postgres:// and postgresql:// URLs with a host. Its messages never
// quote the URL: it holds the password.
func checkURL(raw string) error {
	u, err := url.Parse(raw)
	if err != nil {
		return errors.New("is not a valid URL: write postgres://user:password@host:5432/db?sslmode=require")
	}
	if u.Scheme != "postgres" && u.Scheme != "postgresql" {
		return errors.New("must be a postgres:// URL: postgres://user:password@host:5432/db?sslmode=require")
	}
	if u.Host == "" && u.Query().Get("host") == "" { // ?host=/run/postgresql: a Unix socket
		return errors.New("has no host: postgres://user:password@host:5432/db?sslmode=require")
	}
	return nil
}

// Kind is the postgres destination's kind: 4 transactions in flight of 1,000 rows each.
// A batch of 1,000 rows is one COPY and one INSERT of a few hundred kilobytes: large
// enough that the per-transaction costs (a temporary table, a commit's WAL flush) are
// spread thin, small enough that a retried batch costs little.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: 1000, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// rollbackTimeout bounds the rollback of a failed batch.
const rollbackTimeout = 5 * time.Second

// Destination writes messages as rows of one table.
type Destination struct {
	name     string
	pool     *pgxpool.Pool
	table    TableName
	ident    string // the table as quoted SQL: "schema"."table"
	lockKey  int64  // the advisory lock that serializes creating and widening the table
	layout   string
	key      string
	location string // host and database, for messages (never the password)
	log      *slog.Logger
	closed   atomic.Bool

	// setupMu serializes creating and widening the table within this process (the
	// advisory lock does across processes); mu guards the fields below it.
	setupMu sync.Mutex
	mu      sync.RWMutex
	ready   bool              // the table and its unique indexes exist
	cols    map[string]column // the table's columns as last read from the catalog
}

// New is the postgres destination's Factory. It connects to nothing: the pool connects
// on the first Write or Check.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if err := checkURL(o.URL); err != nil {
		return nil, fmt.Errorf("url %w", err)
	}
	tbl, err := ParseTable(o.Table)
	if err != nil {
		return nil, fmt.Errorf("table %q %w", o.Table, err)
	}
	layout, key := cmp.Or(o.Layout, LayoutColumns), cmp.Or(o.Key, KeyUserID)
	if layout != LayoutColumns && layout != LayoutJSONB {
		return nil, fmt.Errorf("layout %q: want columns or jsonb", layout)
	}
	if key != KeyUserID && key != KeyAnonymousID && key != KeyGroupID {
		return nil, fmt.Errorf("key %q: want userId, anonymousId or groupId", key)
	}
	pc, err := pgxpool.ParseConfig(o.URL)
	if err != nil {
		// pgx's message may quote the URL: say only what is wrong with it.
		return nil, fmt.Errorf("url: %s", destinations.RedactURL(o.URL)+" cannot be parsed")
	}
	// One connection per batch in flight: more would only sit idle.
	pc.MaxConns = int32(max(cfg.MaxInFlight, 1))
	pc.MinConns = 0
	if pc.ConnConfig.RuntimeParams == nil {
		pc.ConnConfig.RuntimeParams = map[string]string{}
	}
	if pc.ConnConfig.RuntimeParams["application_name"] == "" {
		pc.ConnConfig.RuntimeParams["application_name"] = "backflow"
	}
	pool, err := pgxpool.NewWithConfig(context.Background(), pc)
	if err != nil {
		return nil, fmt.Errorf("postgres pool: %w", err)
	}
	h := fnv.New64a()
	h.Write([]byte("backflow postgres destination\x00" + tbl.Schema + "\x00" + tbl.Table))
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	return &Destination{
		name:     cmp.Or(cfg.Name, Type),
		pool:     pool,
		table:    tbl,
		ident:    pgx.Identifier{tbl.Schema, tbl.Table}.Sanitize(),
		lockKey:  int64(h.Sum64()),
		layout:   layout,
		key:      key,
		location: pc.ConnConfig.Host + "/" + pc.ConnConfig.Database,
		log:      logger,
	}, nil
}

// Close waits for the batches in flight and closes every connection.
func (d *Destination) Close(ctx context.Context) error {
	d.closed.Store(true)
	done := make(chan struct{})
	go func() { d.pool.Close(); close(done) }()
	select {
	case <-done:
		return nil
	case <-ctx.Done():
		return fmt.Errorf("closing postgres %s: %w", d.location, ctx.Err())
	}
}

// Write delivers msgs in one transaction. Messages that cannot become a row (no key, a
// trait whose column cannot exist or has another type) are refused in a
// *destinations.BatchError; the others are committed together or not at all.
func (d *Destination) Write(ctx context.Context, msgs []mapper.Message) error {
	if d.closed.Load() {
		return destinations.ErrClosed
	}
	if err := ctx.Err(); err != nil {
		return fmt.Errorf("writing to postgres: %w", err)
	}
	if len(msgs) == 0 {
		return nil
	}
	b, failed := d.prepare(msgs)
	if len(b.rows) > 0 {
		if err := d.deliver(ctx, b, &failed); err != nil {
			return err
		}
	}
	if len(failed) == 0 {
		return nil
	}
	slices.SortFunc(failed, func(a, b destinations.Failure) int { return a.Index - b.Index })
	return &destinations.BatchError{Failed: failed}
}

// deliver makes sure the table can take b's rows (creating or widening it), refuses the
// rows whose values do not fit their columns, and writes the rest in one transaction.
func (d *Destination) deliver(ctx context.Context, b *batch, failed *[]destinations.Failure) error {
	conn, err := d.pool.Acquire(ctx)
	if err != nil {
		if d.closed.Load() {
			return destinations.ErrClosed
		}
		return d.classify(ctx, "connecting", err)
	}
	defer conn.Release()
	if err := d.ensure(ctx, conn, b); err != nil {
		return err
	}
	cols := d.columns()
	b.refuseMisfits(cols, d.table.String(), failed)
	if len(b.rows) == 0 {
		return nil
	}
	return d.commit(ctx, conn, b, cols)
}

// commit writes b in one transaction: COPY into a temporary table dropped at commit, then
// an upsert of the identify/group rows and an insert of the track rows.
func (d *Destination) commit(ctx context.Context, conn *pgxpool.Conn, b *batch, cols map[string]column) error {
	tx, err := conn.Begin(ctx)
	if err != nil {
		return d.classify(ctx, "beginning a transaction", err)
	}
	defer func() {
		// A no-op after Commit. Bounded: a server that stopped answering must not hold
		// the Write (the pool drops the connection when the rollback fails).
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), rollbackTimeout)
		defer cancel()
		_ = tx.Rollback(rctx)
	}()
	// Acknowledged means durable: whatever the server's or the role's default.
	stmts := []string{"SET LOCAL synchronous_commit = on", b.createTemp(cols)}
	for _, s := range stmts {
		if _, err := tx.Exec(ctx, s); err != nil {
			return d.classify(ctx, "preparing the batch", err)
		}
	}
	copySQL, body := b.copyData()
	if _, err := tx.Conn().PgConn().CopyFrom(ctx, body, copySQL); err != nil {
		return d.classify(ctx, "copying the batch", err)
	}
	upsert, insert := d.moveSQL(b)
	if b.upserts > 0 {
		if _, err := tx.Exec(ctx, upsert); err != nil {
			return d.classify(ctx, "upserting the batch into "+d.table.String(), err)
		}
	}
	if b.inserts > 0 {
		if _, err := tx.Exec(ctx, insert); err != nil {
			return d.classify(ctx, "inserting the batch into "+d.table.String(), err)
		}
	}
	if err := tx.Commit(ctx); err != nil {
		return d.classify(ctx, "committing the batch", err)
	}
	return nil
}

// moveSQL is the upsert of identify/group rows and the insert of track rows from the
// temporary table into the table. Only the batch's columns are written: columns no
// message of the batch carries (and columns of the table backflow does not know of)
// keep their values.
func (d *Destination) moveSQL(b *batch) (upsert, insert string) {
	var list, set strings.Builder
	for i, n := range b.cols {
		q := pgx.Identifier{n}.Sanitize()
		if i > 0 {
			list.WriteString(", ")
		}
		list.WriteString(q)
		if n != colType && n != colKey {
			set.WriteString(q + " = EXCLUDED." + q + ", ")
		}
	}
	set.WriteString(`"updated_at" = EXCLUDED."updated_at"`)
	into := fmt.Sprintf(`INSERT INTO %s AS t (%s, "updated_at") SELECT %s, now() FROM pg_temp.%s`, d.ident, list.String(), list.String(), tempTable)
	// A row that already holds this very message (a replay, or a full sync of unchanged
	// rows: the messageId is a hash of the mapped content) is left as it is, instead of
	// being rewritten as a new row version for nothing. A message older than the row's
	// (both with a timestamp) does not overwrite it either: batches commit concurrently
	// and rows of several files reach them in no set order, so the commit order is not
	// the data's.
	upsert = into + ` WHERE "type" <> 'track' ON CONFLICT ("type", "key") WHERE "type" <> 'track' DO UPDATE SET ` + set.String() +
		` WHERE t."message_id" IS DISTINCT FROM EXCLUDED."message_id"` +
		` AND (t."timestamp" IS NULL OR EXCLUDED."timestamp" IS NULL OR EXCLUDED."timestamp" >= t."timestamp")`
	insert = into + ` WHERE "type" = 'track' ON CONFLICT ("message_id") WHERE "type" = 'track' DO NOTHING`
	return upsert, insert
}
