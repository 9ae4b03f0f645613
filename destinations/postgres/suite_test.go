package postgres

import (
	"context"
	"encoding/json"
	"sync"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// TestSuite runs the behavioural suite every destination passes, against a real server,
// with layout jsonb (whose rows can be read back as the messages they hold). Faults are
// injected in the server itself, by triggers on the table: a refused user is a data
// error (SQLSTATE 22023) raised for its row, a transient failure a serialization failure
// (40001) raised for the next statements, and a stall an advisory lock the statements
// wait for.
func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		e := newEnv(t)
		cfg := e.cfg("users", LayoutJSONB)
		raw, err := New(context.Background(), cfg, testEnv())
		if err != nil {
			t.Fatal(err)
		}
		createTable(t, raw.(*Destination))
		e.exec(t, faultSQL)
		return destinations.Wrap(raw, cfg, nil), &tableReceiver{e: e, t: t}
	})
}

// createTable creates d's table as its first Write would.
func createTable(t *testing.T, d *Destination) {
	t.Helper()
	conn, err := d.pool.Acquire(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	defer conn.Release()
	if err := d.create(context.Background(), conn); err != nil {
		t.Fatal(err)
	}
}

// stallLock is the advisory lock a stalled statement waits for.
const stallLock = 4242

const faultSQL = `
CREATE TABLE bf_refused (user_id text PRIMARY KEY);
CREATE TABLE bf_faults (fail_until bigint NOT NULL);
INSERT INTO bf_faults VALUES (0);
CREATE SEQUENCE bf_statements;
CREATE FUNCTION bf_row() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	IF EXISTS (SELECT 1 FROM bf_refused WHERE user_id = NEW.user_id) THEN
		RAISE EXCEPTION 'user % refused', NEW.user_id USING ERRCODE = '22023';
	END IF;
	RETURN NEW;
END $$;
CREATE FUNCTION bf_statement() RETURNS trigger LANGUAGE plpgsql AS $$
BEGIN
	-- nextval is not rolled back with the failed transaction: each statement counts once.
	IF nextval('bf_statements') <= (SELECT fail_until FROM bf_faults) THEN
		RAISE EXCEPTION 'injected transient failure' USING ERRCODE = '40001';
	END IF;
	PERFORM pg_advisory_xact_lock_shared(4242);
	RETURN NULL;
END $$;
CREATE TRIGGER bf_row BEFORE INSERT ON users FOR EACH ROW EXECUTE FUNCTION bf_row();
CREATE TRIGGER bf_statement BEFORE INSERT ON users FOR EACH STATEMENT EXECUTE FUNCTION bf_statement();
`

// tableReceiver reads the table back: one message per row, rebuilt from its columns.
type tableReceiver struct {
	e *env
	t *testing.T
}

func (r *tableReceiver) Capabilities() destinationstest.Capabilities {
	return destinationstest.Capabilities{Refuse: true, Fail: true, Stall: true, Idempotent: true, NumbersByValue: true}
}

func (r *tableReceiver) Received() []destinationstest.Received {
	var out []destinationstest.Received
	for _, row := range r.e.rows(r.t, "users") {
		m := map[string]any{"type": row["type"], "messageId": row["message_id"], "timestamp": row["timestamp"]}
		for col, field := range map[string]string{"user_id": "userId", "anonymous_id": "anonymousId", "group_id": "groupId", "event": "event", "traits": "traits", "properties": "properties"} {
			if v := row[col]; v != nil {
				m[field] = v
			}
		}
		b, err := json.Marshal(m)
		if err != nil {
			r.t.Fatal(err)
		}
		id, _ := row["message_id"].(string)
		user, _ := row["user_id"].(string)
		out = append(out, destinationstest.Received{ID: id, UserID: user, JSON: b})
	}
	return out
}

func (r *tableReceiver) RefuseUsers(userIDs ...string) {
	for _, u := range userIDs {
		r.e.exec(r.t, "INSERT INTO bf_refused VALUES ($1)", u)
	}
}

func (r *tableReceiver) FailNext(n int) {
	r.e.exec(r.t, `UPDATE bf_faults SET fail_until = (SELECT CASE WHEN is_called THEN last_value ELSE 0 END FROM bf_statements) + $1`, n)
}

// Stall holds the advisory lock every INSERT into the table waits for, on a connection of
// its own; arrived is closed once a statement waits for it.
func (r *tableReceiver) Stall() (<-chan struct{}, func()) {
	ctx := context.Background()
	conn, err := pgx.Connect(ctx, r.e.pg.AdminURL(r.e.db))
	if err != nil {
		r.t.Fatal(err)
	}
	if _, err := conn.Exec(ctx, "SELECT pg_advisory_lock($1)", stallLock); err != nil {
		r.t.Fatal(err)
	}
	arrived, stop := make(chan struct{}), make(chan struct{})
	var wg sync.WaitGroup
	wg.Go(func() {
		watch, err := pgx.Connect(ctx, r.e.pg.AdminURL(r.e.db))
		if err != nil {
			r.t.Error(err)
			return
		}
		defer watch.Close(ctx)
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			var waiting int
			err := watch.QueryRow(ctx, "SELECT count(*) FROM pg_locks WHERE locktype = 'advisory' AND NOT granted").Scan(&waiting)
			if err != nil {
				r.t.Error(err)
				return
			}
			if waiting > 0 {
				close(arrived)
				return
			}
			select {
			case <-stop:
				return
			case <-tick.C:
			}
		}
	})
	var once sync.Once
	return arrived, func() {
		once.Do(func() {
			close(stop)
			wg.Wait()
			conn.Close(ctx) // ends the session: its lock goes with it
		})
	}
}
