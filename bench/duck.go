package main

import (
	"context"
	"database/sql"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"time"

	_ "github.com/duckdb/duckdb-go/v2" // registers the "duckdb" database/sql driver
)

// duckDB is an in-memory DuckDB database in this process.
type duckDB struct {
	db      *sql.DB
	conn    *sql.Conn
	version string
}

func openDuckDB(ctx context.Context, threads int) (*duckDB, error) {
	db, err := sql.Open("duckdb", "")
	if err != nil {
		return nil, fmt.Errorf("opening DuckDB: %w", err)
	}
	// One connection, so that the SET statements apply to every query.
	conn, err := db.Conn(ctx)
	if err != nil {
		db.Close()
		return nil, fmt.Errorf("opening DuckDB: %w", err)
	}
	d := &duckDB{db: db, conn: conn}
	for _, q := range []string{
		fmt.Sprintf("SET threads TO %d", threads),
		"SET TimeZone = 'UTC'",
	} {
		if _, err := conn.ExecContext(ctx, q); err != nil {
			d.close()
			return nil, fmt.Errorf("DuckDB: %s: %w", q, err)
		}
	}
	if err := conn.QueryRowContext(ctx, "SELECT version()").Scan(&d.version); err != nil {
		d.close()
		return nil, fmt.Errorf("DuckDB: version(): %w", err)
	}
	return d, nil
}

func (d *duckDB) close() {
	d.conn.Close()
	d.db.Close()
}

func sqlString(s string) string { return "'" + strings.ReplaceAll(s, "'", "''") + "'" }

// duckSelect is the SELECT that makes, from the example users table, the messages
// backflow makes with the bench's mapping (identify; user_id customer_id, anonymous_id
// anon_id, timestamp updated_at; every other column a trait): the same fields in the same
// order and the same JSON text (RFC 3339 timestamps in UTC), with a messageId hashed with
// SHA-256 from the row's values as backflow's is, and the same context. With full false
// it is only five fields — type, userId, anonymousId, traits and timestamp, in DuckDB's
// own timestamp text: the plain export.
func duckSelect(files []string, full bool) string {
	var list []string
	for _, f := range files {
		list = append(list, sqlString(f))
	}
	from := "read_parquet([" + strings.Join(list, ", ") + "])"
	if !full {
		return `SELECT 'identify' AS type, CAST(customer_id AS VARCHAR) AS userId, anon_id AS anonymousId,
  struct_pack(email, plan, city, logins, lifetime_value, score, is_active) AS traits,
  updated_at AS timestamp
FROM ` + from
	}
	return `SELECT 'identify' AS type, CAST(customer_id AS VARCHAR) AS userId, anon_id AS anonymousId,
  struct_pack(email, plan, city, logins, lifetime_value, score, is_active) AS traits,
  strftime(updated_at, '%Y-%m-%dT%H:%M:%S.%fZ') AS timestamp,
  'bf-' || left(sha256(concat_ws('|', customer_id, anon_id, email, plan, city, logins, lifetime_value, score, is_active, updated_at)), 32) AS messageId,
  {'library': {'name': 'backflow', 'version': 'bench'}} AS context
FROM ` + from
}

// copyJSON runs COPY (query) TO out (FORMAT json): one JSON object per line.
func (d *duckDB) copyJSON(ctx context.Context, query, out string) (time.Duration, error) {
	_ = os.Remove(out)
	if err := os.MkdirAll(filepath.Dir(out), 0o755); err != nil {
		return 0, err
	}
	q := "COPY (" + query + ") TO " + sqlString(out) + " (FORMAT json)"
	start := time.Now()
	if _, err := d.conn.ExecContext(ctx, q); err != nil {
		return 0, fmt.Errorf("DuckDB: %w", err)
	}
	return time.Since(start), nil
}
