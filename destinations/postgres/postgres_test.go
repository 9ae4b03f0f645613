package postgres

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/mapper"
)

func write(t *testing.T, d destinations.Destination, msgs []mapper.Message) error {
	t.Helper()
	return d.Write(context.Background(), msgs)
}

func mustWrite(t *testing.T, d destinations.Destination, msgs []mapper.Message) {
	t.Helper()
	if err := write(t, d, msgs); err != nil {
		t.Fatalf("Write: %v", err)
	}
}

func identify(id, user, traits string) mapper.Message {
	return destinationstest.NewMessage("identify", id, user, traits, "2024-01-02T03:04:05.5Z")
}

func track(id, user, props string) mapper.Message {
	return destinationstest.NewMessage("track", id, user, props, "2024-01-02T03:04:05Z")
}

// TestColumnsLayout: a column per leaf, typed by its JSON type, exact numbers, nested
// keys joined with dots, arrays as jsonb; the fixed columns filled from the message.
func TestColumnsLayout(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("crm.users", LayoutColumns))
	e.exec(t, "CREATE SCHEMA crm")
	mustWrite(t, d, []mapper.Message{
		identify("m1", "u1", `{"email":"a@b.c","amount":12.30,"big":9007199254740993,"active":true,"address":{"city":"Oslo","zip":"0150"},"tags":["a","b"],"empty":{},"gone":null,"line":"tab\there\nback\\slash"}`),
		track("m2", "u1", `{"amount":1.5e-7,"sku":"X"}`),
	})
	rows := e.rows(t, "crm.users")
	if len(rows) != 2 {
		t.Fatalf("%d rows, want 2: %v", len(rows), rows)
	}
	id, tr := rows[0], rows[1]
	want := map[string]any{
		"key": "u1", "type": "identify", "message_id": "m1", "user_id": "u1", "anonymous_id": nil, "group_id": nil,
		"event": nil, "timestamp": "2024-01-02T03:04:05.5+00:00", "email": "a@b.c", "amount": json.Number("12.30"),
		"big": json.Number("9007199254740993"), "active": true, "address.city": "Oslo", "address.zip": "0150",
		"tags": []any{"a", "b"}, "empty": map[string]any{}, "line": "tab\there\nback\\slash", "sku": nil,
	}
	for k, v := range want {
		if got := fmt.Sprint(id[k]); got != fmt.Sprint(v) {
			t.Errorf("identify row: %s = %v, want %v", k, id[k], v)
		}
	}
	if _, ok := id["gone"]; ok {
		t.Error("a trait only ever null got a column")
	}
	if tr["type"] != "track" || tr["event"] != "Order Completed" || tr["message_id"] != "m2" || tr["sku"] != "X" ||
		fmt.Sprint(tr["amount"]) != "0.00000015" || tr["email"] != nil {
		t.Errorf("track row: %v", tr)
	}
	types := map[string]string{}
	rs, err := e.admin.Query(context.Background(), `SELECT column_name, data_type FROM information_schema.columns WHERE table_schema = 'crm' AND table_name = 'users'`)
	if err != nil {
		t.Fatal(err)
	}
	for rs.Next() {
		var c, ty string
		rs.Scan(&c, &ty)
		types[c] = ty
	}
	for c, ty := range map[string]string{"email": "text", "amount": "numeric", "active": "boolean", "address.city": "text",
		"tags": "jsonb", "timestamp": "timestamp with time zone", "updated_at": "timestamp with time zone"} {
		if types[c] != ty {
			t.Errorf("column %s is %q, want %s", c, types[c], ty)
		}
	}
}

// TestUpsertOverRuns: identify rows are upserted by key over repeated runs (the last
// message wins, also within one batch); track rows are inserted once by messageId.
func TestUpsertOverRuns(t *testing.T) {
	for _, layout := range []string{LayoutColumns, LayoutJSONB} {
		t.Run(layout, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg("users", layout)
			for run := 1; run <= 3; run++ {
				d := open(t, cfg)
				mustWrite(t, d, []mapper.Message{
					identify(fmt.Sprintf("a%d", run), "u1", fmt.Sprintf(`{"plan":"p%d","n":%d}`, run, run)),
					identify(fmt.Sprintf("b%d", run), "u2", `{"plan":"old"}`),
					track(fmt.Sprintf("t%d", run), "u1", `{"n":1}`),
					identify(fmt.Sprintf("c%d", run), "u2", fmt.Sprintf(`{"plan":"new%d"}`, run)),
					track("t-same", "u1", `{"n":1}`),
				})
				if err := d.Close(context.Background()); err != nil {
					t.Fatal(err)
				}
				if n := e.count(t, `users WHERE type = 'identify'`); n != 2 {
					t.Errorf("run %d: %d identify rows, want 2", run, n)
				}
				if n := e.count(t, `users WHERE type = 'track'`); n != run+1 {
					t.Errorf("run %d: %d track rows, want %d", run, n, run+1)
				}
				plan := fmt.Sprintf(`"plan"`)
				if layout == LayoutJSONB {
					plan = `traits->>'plan'`
				}
				var p1, p2, m2 string
				if err := e.admin.QueryRow(context.Background(), fmt.Sprintf(`SELECT (SELECT %[1]s FROM users WHERE key = 'u1' AND type = 'identify'),
					(SELECT %[1]s FROM users WHERE key = 'u2' AND type = 'identify'), (SELECT message_id FROM users WHERE key = 'u2' AND type = 'identify')`, plan)).Scan(&p1, &p2, &m2); err != nil {
					t.Fatal(err)
				}
				if p1 != fmt.Sprintf("p%d", run) || p2 != fmt.Sprintf("new%d", run) || m2 != fmt.Sprintf("c%d", run) {
					t.Errorf("run %d: u1 plan %q, u2 plan %q (message %s)", run, p1, p2, m2)
				}
			}
		})
	}
}

// TestOlderMessageDoesNotOverwrite: batches commit concurrently and rows of several
// files reach them in no set order, so an identify row keeps the newest message by
// timestamp — across batches and within one — and the last one when a timestamp is
// missing or equal.
func TestOlderMessageDoesNotOverwrite(t *testing.T) {
	for _, layout := range []string{LayoutColumns, LayoutJSONB} {
		t.Run(layout, func(t *testing.T) {
			e := newEnv(t)
			d := open(t, e.cfg("users", layout))
			msg := func(id, user, plan, ts string) mapper.Message {
				return destinationstest.NewMessage("identify", id, user, `{"plan":"`+plan+`"}`, ts)
			}
			const older, newer = "2024-01-01T00:00:00Z", "2024-06-01T00:00:00.5Z"
			mustWrite(t, d, []mapper.Message{msg("a1", "u1", "new", newer), msg("b1", "u2", "new", newer), msg("c1", "u3", "old", older)})
			mustWrite(t, d, []mapper.Message{
				msg("a2", "u1", "old", older),                                // older than the row: kept out
				msg("b2", "u2", "new", newer), msg("b3", "u2", "old", older), // newest of the batch wins
				msg("c2", "u3", "none", ""), // no timestamp: the last wins
			})
			plan := `"plan"`
			if layout == LayoutJSONB {
				plan = `traits->>'plan'`
			}
			for user, want := range map[string]string{"u1": "new", "u2": "new", "u3": "none"} {
				var got string
				if err := e.admin.QueryRow(context.Background(), `SELECT `+plan+` FROM users WHERE type = 'identify' AND key = $1`, user).Scan(&got); err != nil {
					t.Fatal(err)
				}
				if got != want {
					t.Errorf("%s: plan %q, want %q", user, got, want)
				}
			}
		})
	}
}

// TestReplay: a batch written again (a run killed after the commit, before its
// checkpoint) adds no row and changes no row, not even its updated_at.
func TestReplay(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("users", LayoutColumns))
	msgs := destinationstest.Messages("replay", 300)
	mustWrite(t, d, msgs)
	before := e.rows(t, "users")
	mustWrite(t, d, msgs)
	mustWrite(t, d, msgs[100:200])
	after := e.rows(t, "users")
	if len(before) != 300 || len(after) != 300 {
		t.Fatalf("%d rows, then %d after replays, want 300", len(before), len(after))
	}
	for i := range before {
		if fmt.Sprint(before[i]) != fmt.Sprint(after[i]) {
			t.Errorf("row %d changed by a replay:\n%v\n%v", i, before[i], after[i])
		}
	}
}

// TestWidening: a new trait adds a column, older rows hold null in it; a trait whose
// type changed is refused for that message alone, naming the column and both types.
func TestWidening(t *testing.T) {
	e := newEnv(t)
	d := open(t, e.cfg("users", LayoutColumns))
	mustWrite(t, d, []mapper.Message{identify("m1", "u1", `{"age":41}`)})
	mustWrite(t, d, []mapper.Message{identify("m2", "u2", `{"age":30,"city":"Oslo"}`)})
	rows := e.rows(t, "users")
	if len(rows) != 2 || rows[0]["city"] != nil || rows[1]["city"] != "Oslo" {
		t.Fatalf("rows after widening: %v", rows)
	}
	err := write(t, d, []mapper.Message{
		identify("m3", "u3", `{"age":"forty","city":"Bergen"}`),
		identify("m4", "u4", `{"age":22,"city":"Bergen"}`),
	})
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 0 {
		t.Fatalf("Write with a type conflict = %v, want message 0 refused", err)
	}
	msg := be.Failed[0].Err.Error()
	for _, s := range []string{`"age"`, "string", "text", "numeric", "public.users"} {
		if !strings.Contains(msg, s) {
			t.Errorf("conflict error %q does not name %s", msg, s)
		}
	}
	if destinations.IsRetryable(be.Failed[0].Err) {
		t.Error("a type conflict is retryable")
	}
	if n := e.count(t, "users WHERE key = 'u4'"); n != 1 {
		t.Errorf("the message without conflict was not written (%d rows)", n)
	}

	// A new column takes the type of its first value in message order (here the later
	// key); a later value of another type in the same batch is refused.
	err = write(t, d, []mapper.Message{identify("m5", "zz", `{"score":1.5}`), identify("m6", "aa", `{"score":"high"}`)})
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 1 || !strings.Contains(be.Failed[0].Err.Error(), "is numeric") {
		t.Fatalf("Write with a type conflict inside the batch = %v, want message 1 refused", err)
	}
}

// TestConcurrentWidening: batches in flight at once, each bringing new columns (some the
// same), all land; every column exists once with the type of its values.
func TestConcurrentWidening(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("users", LayoutColumns)
	// Two destinations, as two processes would be: their caches and locks are separate.
	ds := []destinations.Destination{open(t, cfg), open(t, cfg)}
	errs := make(chan error, 16)
	for w := range 16 {
		go func() {
			var msgs []mapper.Message
			for i := range 20 {
				msgs = append(msgs, identify(fmt.Sprintf("m%d-%d", w, i), fmt.Sprintf("u%d-%d", w, i),
					fmt.Sprintf(`{"shared":%d,"c%d":"x","c%d":true}`, i, w%5, w%3+10)))
			}
			errs <- ds[w%2].Write(context.Background(), msgs)
		}()
	}
	for range 16 {
		if err := <-errs; err != nil {
			t.Error(err)
		}
	}
	if n := e.count(t, "users"); n != 320 {
		t.Errorf("%d rows, want 320", n)
	}
	if n := e.count(t, "information_schema.columns WHERE table_name = 'users' AND column_name LIKE 'c%'"); n != 8 {
		t.Errorf("%d trait columns c…, want 8", n)
	}
}

// TestKeyOption: key groupId makes group rows one per groupId; a message without the
// key and a trait too long for a column name are refused alone, with a reason that says
// what to do; a trait named like one of backflow's columns gets traits.<name>.
func TestKeyOption(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("groups", LayoutColumns)
	cfg.Options.(*Options).Key = KeyGroupID
	d := open(t, cfg)
	g1 := destinationstest.NewMessage("group", "g1", "u1", `{"name":"Acme"}`, "") // groupId g-u1
	g2 := destinationstest.NewMessage("group", "g2", "u2", `{"name":"Beta"}`, "")
	g1again := destinationstest.NewMessage("group", "g3", "u1", `{"name":"Acme Inc"}`, "")
	noKey := identify("i1", "u1", `{"a":1}`) // an identify has no groupId
	reserved := destinationstest.NewMessage("group", "g4", "u4", `{"timestamp":"x"}`, "")
	long := destinationstest.NewMessage("group", "g5", "u5", `{"`+strings.Repeat("n", 64)+`":1}`, "")
	err := write(t, d, []mapper.Message{g1, g2, noKey, reserved, g1again, long})
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 2 || be.Failed[1].Index != 5 {
		t.Fatalf("Write = %v, want messages 2 and 5 refused", err)
	}
	for i, want := range []string{"has no groupId", "at most 63"} {
		if !strings.Contains(be.Failed[i].Err.Error(), want) {
			t.Errorf("refusal %d: %v, want it to say %q", i, be.Failed[i].Err, want)
		}
	}
	rows := e.rows(t, "groups")
	if len(rows) != 3 || rows[0]["key"] != "g-u1" || rows[0]["name"] != "Acme Inc" || rows[0]["group_id"] != "g-u1" || rows[1]["key"] != "g-u2" {
		t.Errorf("rows %v", rows)
	}
	// A trait named like one of backflow's columns goes into traits.<name>.
	if len(rows) == 3 && (rows[2]["key"] != "g-u4" || rows[2]["traits.timestamp"] != "x" || rows[2]["timestamp"] != nil) {
		t.Errorf("the message with a trait named timestamp: %v", rows[2])
	}
}

// TestQuotedNames: schema, table and column names that need quoting (quotes, dots,
// spaces, capitals, SQL) are always quoted: no name is ever read as SQL.
func TestQuotedNames(t *testing.T) {
	e := newEnv(t)
	e.exec(t, `CREATE SCHEMA "Odd ""Schema"""`)
	d := open(t, e.cfg(`"Odd ""Schema"""."my.Table; DROP TABLE x"`, LayoutColumns))
	mustWrite(t, d, []mapper.Message{identify("m1", "u1", `{"a \"b\"":1,"x'); DROP TABLE y; --":"v","Upper Case":true}`)})
	d2 := open(t, e.cfg(`"Odd ""Schema"""."my.Table; DROP TABLE x"`, LayoutColumns)) // reads the columns back
	mustWrite(t, d2, []mapper.Message{identify("m2", "u1", `{"a \"b\"":2}`)})
	rows := e.rows(t, `"Odd ""Schema"""."my.Table; DROP TABLE x"`)
	// Columns the second batch does not carry keep their values.
	if len(rows) != 1 || fmt.Sprint(rows[0][`a "b"`]) != "2" || rows[0]["x'); DROP TABLE y; --"] != "v" || rows[0]["Upper Case"] != true {
		t.Errorf("rows %v", rows)
	}
	if err := d2.(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("check: %v", err)
	}
}
