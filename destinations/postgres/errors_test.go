package postgres

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/mapper"
)

// TestDroppedConnectionRetried: the server ends the destination's connection in the
// middle of a batch's transaction (pg_terminate_backend while its INSERT waits for a
// lock); the batch is retried on a new connection and every row ends up there once.
func TestDroppedConnectionRetried(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("users", LayoutJSONB)
	raw, err := New(context.Background(), cfg, testEnv())
	if err != nil {
		t.Fatal(err)
	}
	createTable(t, raw.(*Destination))
	e.exec(t, faultSQL)
	d := destinations.Wrap(raw, cfg, nil)
	t.Cleanup(func() { d.Close(context.Background()) })

	ctx := context.Background()
	lock, err := pgx.Connect(ctx, e.pg.AdminURL(e.db))
	if err != nil {
		t.Fatal(err)
	}
	defer lock.Close(ctx)
	if _, err := lock.Exec(ctx, "SELECT pg_advisory_lock($1)", stallLock); err != nil {
		t.Fatal(err)
	}
	msgs := destinationstest.Messages("dropped", 2500) // three batches of at most 1,000
	done := make(chan error, 1)
	go func() { done <- d.Write(ctx, msgs) }()

	// The first batch's transaction has copied its rows and waits in its INSERT: end it.
	var pid int
	deadline := time.Now().Add(20 * time.Second)
	for pid == 0 {
		err := e.admin.QueryRow(ctx, `SELECT coalesce(max(l.pid), 0) FROM pg_locks l JOIN pg_stat_activity a ON a.pid = l.pid
			WHERE l.locktype = 'advisory' AND NOT l.granted AND a.application_name = 'backflow'`).Scan(&pid)
		if err != nil {
			t.Fatal(err)
		}
		if pid == 0 && time.Now().After(deadline) {
			t.Fatal("no batch reached its INSERT")
		}
		if pid == 0 {
			time.Sleep(10 * time.Millisecond) // polling the server's state, not waiting out a race
		}
	}
	var killed bool
	if err := e.admin.QueryRow(ctx, "SELECT pg_terminate_backend($1)", pid).Scan(&killed); err != nil || !killed {
		t.Fatalf("pg_terminate_backend: %v %v", killed, err)
	}
	if _, err := lock.Exec(ctx, "SELECT pg_advisory_unlock($1)", stallLock); err != nil {
		t.Fatal(err)
	}
	select {
	case err := <-done:
		if err != nil {
			t.Fatalf("Write after a dropped connection: %v", err)
		}
	case <-time.After(30 * time.Second):
		t.Fatal("Write did not return")
	}
	if n := e.count(t, "users"); n != len(msgs) {
		t.Errorf("%d rows, want %d", n, len(msgs))
	}
	if n := e.count(t, "(SELECT message_id FROM users GROUP BY message_id HAVING count(*) > 1) dup"); n != 0 {
		t.Errorf("%d message ids twice", n)
	}
}

// TestClassify: what the server says becomes the error kind Wrap acts on.
func TestClassify(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("users", LayoutJSONB)
	raw, err := New(context.Background(), cfg, testEnv())
	if err != nil {
		t.Fatal(err)
	}
	d := raw.(*Destination)
	t.Cleanup(func() { d.Close(context.Background()) })
	ctx := context.Background()
	for _, tc := range []struct {
		sql       string
		retryable bool
		status    int // a *PermanentError's; -1: a plain error
	}{
		{"SELECT 1/0", false, 0},      // 22012: a data error, splittable
		{"SELECT 'x'::int", false, 0}, // 22P02
		{"CREATE TABLE t23 (a int NOT NULL); INSERT INTO t23 VALUES (NULL)", false, 0}, // 23502
		{"DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40001'; END$$", true, 0},
		{"DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '40P01'; END$$", true, 0},
		{"DO $$BEGIN RAISE EXCEPTION 'x' USING ERRCODE = '42501'; END$$", false, http.StatusForbidden},
		{"SELECT * FROM no_such_table", false, -1},
	} {
		conn, err := d.pool.Acquire(ctx)
		if err != nil {
			t.Fatal(err)
		}
		_, err = conn.Exec(ctx, tc.sql)
		conn.Release()
		if err == nil {
			t.Fatalf("%s: no error", tc.sql)
		}
		got := d.classify(ctx, "testing", err)
		if destinations.IsRetryable(got) != tc.retryable {
			t.Errorf("%s: %v: retryable %v, want %v", tc.sql, got, !tc.retryable, tc.retryable)
		}
		var pe *destinations.PermanentError
		switch {
		case tc.status < 0 && errors.As(got, &pe):
			t.Errorf("%s: %v is a PermanentError", tc.sql, got)
		case tc.status >= 0 && !tc.retryable && (!errors.As(got, &pe) || pe.Status != tc.status):
			t.Errorf("%s: %v, want a PermanentError with status %d", tc.sql, got, tc.status)
		}
	}
}

// TestDataErrorRefusesOnlyThatMessage: a value the column's type cannot hold (a column
// created by hand as numeric(3)) and a string PostgreSQL cannot store (NUL) are data
// errors; Wrap splits the batch and only those messages are refused.
func TestDataErrorRefusesOnlyThatMessage(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("users", LayoutColumns))
	mustWrite(t, d, []mapper.Message{identify("m0", "u0", `{"age":1}`)})
	e.exec(t, `ALTER TABLE users ALTER COLUMN age TYPE numeric(3)`)
	var msgs []mapper.Message
	for i := range 40 {
		age := fmt.Sprint(i)
		switch i {
		case 7:
			age = "12345"
		case 30:
			age = `1, "nul": "a\u0000b"`
		}
		msgs = append(msgs, identify(fmt.Sprintf("m%d", i+1), fmt.Sprintf("u%d", i+1), `{"age":`+age+`}`))
	}
	// Reload the column types the destination knows: a new destination.
	d = open(t, e.cfg("users", LayoutColumns))
	err := write(t, d, msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 7 || be.Failed[1].Index != 30 {
		t.Fatalf("Write = %v, want messages 7 and 30 refused", err)
	}
	if !strings.Contains(be.Failed[0].Err.Error(), "numeric field overflow") {
		t.Errorf("refusal of 12345: %v", be.Failed[0].Err)
	}
	if n := e.count(t, "users"); n != 39 {
		t.Errorf("%d rows, want 39", n)
	}
}

// TestPermissionDenied: a role that may read the table but not insert into it fails
// the destination with a PermanentError Wrap does not split (no message is rejected).
func TestPermissionDenied(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("users", LayoutJSONB))
	mustWrite(t, d, destinationstest.Messages("owner", 3))
	e.exec(t, `CREATE ROLE reader LOGIN PASSWORD 'readerpw'; GRANT SELECT ON users TO reader`)
	cfg := e.cfg("users", LayoutJSONB)
	cfg.Options.(*Options).URL = e.pg.URL("reader", "readerpw", e.db)
	raw, err := New(context.Background(), cfg, testEnv())
	if err != nil {
		t.Fatal(err)
	}
	w := destinations.Wrap(raw, cfg, nil)
	t.Cleanup(func() { w.Close(context.Background()) })
	err = w.Write(context.Background(), destinationstest.Messages("denied", 20))
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || destinations.Splittable(pe) || !strings.Contains(err.Error(), "permission denied") {
		t.Fatalf("Write as a role without INSERT = %v, want an unsplittable PermanentError", err)
	}
	if err := raw.(destinations.Checker).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "lacks INSERT, UPDATE on table public.users") {
		t.Errorf("Check as a role without INSERT = %v", err)
	}
	if n := e.count(t, "users"); n != 3 {
		t.Errorf("%d rows, want the owner's 3", n)
	}
}

// TestBadPassword: refused credentials fail the destination (and check), unsplit.
func TestBadPassword(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("users", LayoutJSONB)
	cfg.Options.(*Options).URL = e.pg.URL("backflow", "wrong-password", e.db)
	raw, err := New(context.Background(), cfg, testEnv())
	if err != nil {
		t.Fatal(err)
	}
	w := destinations.Wrap(raw, cfg, nil)
	t.Cleanup(func() { w.Close(context.Background()) })
	err = w.Write(context.Background(), destinationstest.Messages("pw", 4))
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || pe.Status != http.StatusUnauthorized || destinations.IsRetryable(err) {
		t.Fatalf("Write with a bad password = %v, want a PermanentError 401", err)
	}
	if strings.Contains(err.Error(), "wrong-password") {
		t.Errorf("the error shows the password: %v", err)
	}
	if err := raw.(destinations.Checker).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "password authentication failed") {
		t.Errorf("Check with a bad password = %v", err)
	}
}

// TestConnectionRefused: nothing listens; the failure is retryable (the run keeps the
// batch for the next one).
func TestConnectionRefused(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("users", LayoutJSONB)
	cfg.Options.(*Options).URL = "postgres://backflow:pw@127.0.0.1:1/db?sslmode=disable&connect_timeout=5"
	cfg.Retry.MaxAttempts = 1
	d := open(t, cfg)
	err := d.Write(context.Background(), destinationstest.Messages("refused", 2))
	if err == nil || !destinations.IsRetryable(err) {
		t.Fatalf("Write to a closed port = %v, want a retryable error", err)
	}
	_ = e
}

// TestCheck: check reaches the server, looks at privileges and the table's shape, and
// changes nothing.
func TestCheck(t *testing.T) {
	e := newEnv(t)
	check := func(url, table string) error {
		cfg := e.cfg(table, LayoutColumns)
		if url != "" {
			cfg.Options.(*Options).URL = url
		}
		d, err := New(context.Background(), cfg, testEnv())
		if err != nil {
			t.Fatal(err)
		}
		defer d.Close(context.Background())
		return d.(destinations.Checker).Check(context.Background())
	}
	e.exec(t, `CREATE ROLE app LOGIN PASSWORD 'apppw'; CREATE SCHEMA locked; CREATE SCHEMA open; GRANT USAGE, CREATE ON SCHEMA open TO app;
		GRANT USAGE ON SCHEMA locked TO app;
		CREATE TABLE open.bad (key integer, type text, message_id text, "timestamp" timestamptz, updated_at timestamptz);
		CREATE TABLE open.partial (key text, type text);
		GRANT ALL ON open.bad, open.partial TO app`)
	app := e.pg.URL("app", "apppw", e.db)
	for _, tc := range []struct {
		url, table, want string // want "": no error
	}{
		{"", "users", ""},
		{app, "open.users", ""},
		{app, "locked.users", "may not create it"},
		{app, "nowhere.users", "schema nowhere does not exist"},
		{app, "open.bad", `column "key" of open.bad is integer`},
		{app, "open.partial", "has no column message_id"},
	} {
		err := check(tc.url, tc.table)
		switch {
		case tc.want == "" && err != nil:
			t.Errorf("check %s: %v", tc.table, err)
		case tc.want != "" && (err == nil || !strings.Contains(err.Error(), tc.want)):
			t.Errorf("check %s = %v, want %q", tc.table, err, tc.want)
		}
	}
	if n := e.count(t, "pg_tables WHERE tablename = 'users'"); n != 0 {
		t.Errorf("check created %d tables", n)
	}
	// After a run created it, the table passes check as its owner.
	d := open(t, e.cfg("users", LayoutColumns))
	mustWrite(t, d, destinationstest.Messages("check", 3))
	if err := check("", "users"); err != nil {
		t.Errorf("check after a run: %v", err)
	}
}

// TestCloseWaitsAndRefuses: Close waits for a Write in flight; a Write after Close fails
// claiming nothing.
func TestCloseWaitsAndRefuses(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("users", LayoutJSONB))
	var wg sync.WaitGroup
	var werr error
	wg.Go(func() { werr = d.Write(context.Background(), destinationstest.Messages("close", 500)) })
	wg.Wait()
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if werr != nil {
		t.Fatal(werr)
	}
	if err := d.Write(context.Background(), destinationstest.Messages("after", 1)); !errors.Is(err, destinations.ErrClosed) {
		t.Errorf("Write after Close = %v, want ErrClosed", err)
	}
}

// TestNewRefusesBadURL: a URL pgx cannot use is refused by New without showing it whole.
func TestNewRefusesBadURL(t *testing.T) {
	for _, u := range []string{"postgres://u:hunter2@h/db?sslmode=sometimes", "mysql://u:hunter2@h/db", "postgres://u:hunter2@/db"} {
		cfg := config.Destination{Type: Type, Options: &Options{URL: u, Table: "t"}}
		_, err := New(context.Background(), cfg, testEnv())
		if err == nil || strings.Contains(err.Error(), "hunter2") {
			t.Errorf("New(%s) = %v, want an error without the password", u, err)
		}
	}
}
