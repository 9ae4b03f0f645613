package postgres

import (
	"context"
	"encoding/json"
	"os"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopPostgres()
	os.Exit(code)
}

// env is one test's database on the test binary's server.
type env struct {
	pg    *testutil.Postgres
	db    string
	admin *pgx.Conn // the superuser, for reading back and injecting faults
}

func newEnv(t *testing.T) *env {
	t.Helper()
	pg := testutil.StartPostgres(t)
	db := pg.NewDatabase(t)
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	conn, err := pgx.Connect(ctx, pg.AdminURL(db))
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { conn.Close(context.Background()) })
	return &env{pg: pg, db: db, admin: conn}
}

// cfg is a destination writing table with layout, as the superuser.
func (e *env) cfg(table, layout string) config.Destination {
	return config.Destination{
		Type: Type, Name: "pg", MaxInFlight: 4, BatchSize: 1000, Timeout: 30 * time.Second,
		Retry:   config.Retry{MaxAttempts: 3, MaxBackoff: 50 * time.Millisecond},
		Options: &Options{URL: e.pg.AdminURL(e.db), Table: table, Key: KeyUserID, Layout: layout},
	}
}

func testEnv() destinations.Env {
	return destinations.Env{Sync: "users", RunID: "run1", Version: "test"}
}

// open builds and wraps the destination of cfg, closed when the test ends.
func open(t *testing.T, cfg config.Destination) destinations.Destination {
	t.Helper()
	d, err := New(context.Background(), cfg, testEnv())
	if err != nil {
		t.Fatal(err)
	}
	w := destinations.Wrap(d, cfg, nil)
	t.Cleanup(func() { w.Close(context.Background()) })
	return w
}

func (e *env) exec(t *testing.T, sql string, args ...any) {
	t.Helper()
	if _, err := e.admin.Exec(context.Background(), sql, args...); err != nil {
		t.Fatalf("%s: %v", sql, err)
	}
}

// rows reads the table back as one map per row (column → value as text), sorted by
// type, key and message_id.
func (e *env) rows(t *testing.T, table string) []map[string]any {
	t.Helper()
	rs, err := e.admin.Query(context.Background(), "SELECT to_jsonb(r) FROM "+table+" r")
	if err != nil {
		t.Fatalf("reading %s: %v", table, err)
	}
	var out []map[string]any
	for rs.Next() {
		var raw []byte
		if err := rs.Scan(&raw); err != nil {
			t.Fatal(err)
		}
		d := json.NewDecoder(strings.NewReader(string(raw)))
		d.UseNumber()
		var m map[string]any
		if err := d.Decode(&m); err != nil {
			t.Fatal(err)
		}
		out = append(out, m)
	}
	if err := rs.Err(); err != nil {
		t.Fatalf("reading %s: %v", table, err)
	}
	sort.Slice(out, func(i, j int) bool {
		a, b := out[i], out[j]
		for _, k := range []string{"type", "key", "message_id"} {
			x, _ := a[k].(string)
			y, _ := b[k].(string)
			if x != y {
				return x < y
			}
		}
		return false
	})
	return out
}

// count returns SELECT count(*) of a query's FROM/WHERE part.
func (e *env) count(t *testing.T, from string) int {
	t.Helper()
	var n int
	if err := e.admin.QueryRow(context.Background(), "SELECT count(*) FROM "+from).Scan(&n); err != nil {
		t.Fatalf("count %s: %v", from, err)
	}
	return n
}
