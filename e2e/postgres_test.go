package e2e

// The postgres destination against the real binary and a real PostgreSQL server: a run
// killed (SIGKILL) while batches are committing, resumed, ends with one row per customer,
// and a full sync of the same export afterwards rewrites nothing (SPEC.md: "Replaying a
// row never adds a second row … postgres upserts by key or ignores a known message_id").
// Every identifier here starts with "pg": other files of the package are written by other
// people.

import (
	"context"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

func TestPostgresKillResumeReplay(t *testing.T) {
	pg := testutil.StartPostgres(t)
	db := pg.NewDatabase(t)
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, pg.AdminURL(db))
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Close(ctx)
	pgCount := func(sql string) int64 {
		t.Helper()
		var n int64
		if err := conn.QueryRow(ctx, sql).Scan(&n); err != nil {
			// The table appears with the run's first batch.
			if !strings.Contains(err.Error(), "does not exist") {
				t.Fatalf("%s: %v", sql, err)
			}
			return 0
		}
		return n
	}

	const files, rows = 4, 50_000
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: files, RowsPerFile: rows, RowGroupRows: 10_000})
	w.env = []string{"DATABASE_URL=" + pg.AdminURL(db)}
	w.writeConfig(usersConfig(map[string]any{
		"type": "postgres", "url": "${DATABASE_URL}", "table": "public.crm_users", "layout": "columns",
	}))

	// Killed once some batches have committed, well before the end.
	p := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	deadline := time.Now().Add(runTimeout)
	for pgCount("SELECT count(*) FROM crm_users") == 0 {
		if time.Now().After(deadline) {
			_ = p.cmd.Process.Kill()
			r := p.wait()
			t.Fatalf("no row arrived\n%s", r)
		}
		time.Sleep(5 * time.Millisecond) // polling the table, not waiting out a race
	}
	if err := p.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait()
	p.cancel()
	atKill := pgCount("SELECT count(*) FROM crm_users")
	if atKill >= files*rows {
		t.Skipf("the run ended (%d rows) before the kill: nothing to resume", atKill)
	}
	t.Logf("%d rows committed when the run was killed", atKill)

	w.mustSync(0)
	total := int64(files * rows)
	if n := pgCount("SELECT count(*) FROM crm_users"); n != total {
		t.Errorf("%d rows after the resumed run, want %d", n, total)
	}
	if n := pgCount("SELECT count(DISTINCT key) FROM crm_users WHERE type = 'identify'"); n != total {
		t.Errorf("%d distinct customers, want %d", n, total)
	}

	// A full sync sends every row again: no row is added, none rewritten.
	var before time.Time
	if err := conn.QueryRow(ctx, "SELECT max(updated_at) FROM crm_users").Scan(&before); err != nil {
		t.Fatal(err)
	}
	rep := w.mustSync(0, "--full")
	if d := rep.delivered("postgres"); d != total {
		t.Errorf("the full sync delivered %d, want %d", d, total)
	}
	var after time.Time
	if err := conn.QueryRow(ctx, "SELECT max(updated_at) FROM crm_users").Scan(&after); err != nil {
		t.Fatal(err)
	}
	if n := pgCount("SELECT count(*) FROM crm_users"); n != total || !after.Equal(before) {
		t.Errorf("after a full sync: %d rows (want %d), last update %s (was %s)", n, total, after, before)
	}
}
