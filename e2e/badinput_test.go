package e2e

import (
	"math/rand/v2"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// configText is a valid config, as text, for tests that break it by hand.
const configText = `state:
  url: .backflow
syncs:
  - name: users
    source:
      url: data
    mapping:
      type: identify
      user_id: customer_id
      columns: [email, plan]
    destinations:
      - type: file
        path: out/users.jsonl
`

// TestConfigErrors: a config problem exits 2 with one line naming the key, and nothing
// is read, sent or written.
func TestConfigErrors(t *testing.T) {
	cases := []struct {
		name    string
		config  string
		want    []string // each must appear in the one error line
		command []string
	}{
		{"UnknownKey", strings.Replace(configText, "columns:", "colums:", 1),
			[]string{"syncs[0].mapping.colums"}, []string{"sync"}},
		{"UnknownKeyCheck", strings.Replace(configText, "columns:", "colums:", 1),
			[]string{"syncs[0].mapping.colums"}, []string{"check"}},
		{"UnsetVariable", strings.Replace(configText, "path: out/users.jsonl", "path: out/${BF_E2E_UNSET_VARIABLE}.jsonl", 1),
			[]string{"BF_E2E_UNSET_VARIABLE", "syncs[0].destinations[0].path"}, []string{"sync"}},
		{"MissingColumn", strings.Replace(configText, "user_id: customer_id", "user_id: no_such_column", 1),
			[]string{"no_such_column"}, []string{"sync"}},
		{"MissingColumnPreview", strings.Replace(configText, "user_id: customer_id", "user_id: no_such_column", 1),
			[]string{"no_such_column"}, []string{"preview"}},
		{"MissingTraitColumn", strings.Replace(configText, "[email, plan]", "[email, plan, nope]", 1),
			[]string{"nope"}, []string{"sync"}},
		{"UnknownSync", configText, []string{"other"}, []string{"sync", "--sync", "other"}},
		{"BadFlag", configText, []string{"--no-such-flag"}, []string{"sync", "--no-such-flag"}},
		{"NoConfigFile", "", []string{"backflow.yaml"}, []string{"sync"}},
		{"BadYAML", strings.Replace(configText, "type: identify", "type: [identify", 1), []string{"backflow.yaml"}, []string{"sync"}},
		{"BadDuration", strings.Replace(configText, "path: out/users.jsonl", "path: out/users.jsonl\n        timeout: 30", 1),
			[]string{"syncs[0].destinations[0].timeout"}, []string{"sync"}},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			w := newWorkspace(t)
			w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 20})
			if c.config != "" {
				w.writeConfigText(c.config)
			}
			r := w.run(c.command...)
			if r.Code != 2 {
				t.Fatalf("want exit 2\n%s", r)
			}
			lines := r.errorLines()
			if len(lines) != 1 {
				t.Errorf("want one error line, got %q\n%s", lines, r)
			}
			for _, s := range c.want {
				if !strings.Contains(strings.Join(lines, "\n"), s) {
					t.Errorf("the error does not name %q: %q", s, lines)
				}
			}
			if exists(w.stateDir()) || exists(w.path("out")) {
				t.Errorf("a configuration error wrote state or output")
			}
		})
	}
}

// TestBrokenFile: random bytes named x.parquet among good files are rejected; the good
// files are still delivered.
func TestBrokenFile(t *testing.T) {
	for _, name := range []string{"x.parquet", "0-first.parquet"} {
		t.Run(name, func(t *testing.T) {
			w := newWorkspace(t)
			w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 400, Seed: 12})
			junk := make([]byte, 5000)
			rng := rand.New(rand.NewPCG(1, 2))
			for i := range junk {
				junk[i] = byte(rng.UintN(256))
			}
			if err := os.WriteFile(w.path("data", name), junk, 0o644); err != nil {
				t.Fatal(err)
			}
			w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
			r, rep := w.sync()
			if r.Code != 3 || rep.Status != "partial" {
				t.Fatalf("want exit 3, status partial\n%s\n%s", r, rep)
			}
			if rep.Files.Rejected != 1 || rep.Files.Listed != 4 || rep.Files.Read != 3 || rep.Rows.Sent != 1200 {
				t.Errorf("want 1 file rejected, 4 listed, 3 read, 1200 rows sent\n%s", rep)
			}
			if len(rep.FileErrors) != 1 || rep.FileErrors[0].Key != name || !strings.Contains(rep.FileErrors[0].Error, "Parquet") {
				t.Errorf("file_errors = %+v, want %s named as not Parquet", rep.FileErrors, name)
			}
			if !strings.Contains(r.Stderr, name) {
				t.Errorf("stderr does not name %s:\n%s", name, r.Stderr)
			}
			checkExactlyOnce(t, "file", readMessages(t, w.path("out", "users.jsonl")), idRange(0, 1200))

			// The rejected file is checked again by the next run, and rejected again.
			r, rep = w.sync()
			if r.Code != 3 || rep.Files.Rejected != 1 || rep.Rows.Sent != 0 || rep.Files.Unchanged != 3 {
				t.Errorf("the next run: want exit 3, the file rejected again, nothing sent\n%s\n%s", r, rep)
			}
			// Replaced by a good file, it is delivered.
			writePeopleAsUsers(t, w, name)
			r, rep = w.sync()
			if r.Code != 0 || rep.Rows.Sent != 50 || rep.Files.Rejected != 0 {
				t.Errorf("after fixing the file: want exit 0, its 50 rows sent\n%s\n%s", r, rep)
			}
		})
	}
}

// writePeopleAsUsers writes a valid file of the example table, 50 rows from id 9000,
// under data/name.
func writePeopleAsUsers(t *testing.T, w *workspace, name string) {
	t.Helper()
	paths, err := exampledata.Write(t.TempDir(), exampledata.Options{Files: 1, RowsPerFile: 50, FirstID: 9000})
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, w.path("data", name), b)
}

// TestSchemaMismatch: a file whose columns differ from the sync's is rejected with a
// message naming the column.
func TestSchemaMismatch(t *testing.T) {
	w := newWorkspace(t)
	writePeople(t, w.path("data", "a.parquet"), people(0, 100), peopleOptions{})
	writePeople(t, w.path("data", "b.parquet"), people(100, 100), peopleOptions{Nickname: true})
	writePeople(t, w.path("data", "c.parquet"), people(200, 100), peopleOptions{})
	nullFirst := people(300, 100)
	nullFirst[0].Email = "" // an empty string is fine ...
	nullFirst[0].Anon = nil // ... a null in the first row is not
	writePeople(t, w.path("data", "d.parquet"), nullFirst, peopleOptions{})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	r, rep := w.sync()
	if r.Code != 3 || rep.Files.Rejected != 2 || rep.Rows.Sent != 200 {
		t.Fatalf("want exit 3, 2 files rejected, 200 rows sent\n%s\n%s", r, rep)
	}
	errs := map[string]string{}
	for _, fe := range rep.FileErrors {
		errs[fe.Key] = fe.Error
	}
	if len(errs) != 2 || !strings.Contains(errs["b.parquet"], `"nickname"`) {
		t.Errorf("file_errors = %+v, want b.parquet naming the column \"nickname\"", rep.FileErrors)
	}
	if e := errs["d.parquet"]; !strings.Contains(e, `"anon_id"`) || !strings.Contains(e, "first row") {
		t.Errorf("d.parquet: error %q, want the column \"anon_id\" null in the first row", e)
	}
	if !strings.Contains(r.Stderr, "b.parquet") || !strings.Contains(r.Stderr, "nickname") {
		t.Errorf("stderr does not name the file and the column:\n%s", r.Stderr)
	}
	want := append(idRange(0, 100), idRange(200, 100)...)
	slices.Sort(want)
	checkExactlyOnce(t, "file", readMessages(t, w.path("out", "users.jsonl")), want)
}

// TestNullIdentifiers: rows whose identifiers are all null are rejected before delivery
// (no destination in the rejects file); the other rows are delivered.
func TestNullIdentifiers(t *testing.T) {
	w := newWorkspace(t)
	rows := people(0, 200)
	bad := []int{7, 150}
	for _, i := range bad {
		rows[i].ID, rows[i].Anon = nil, nil
	}
	rows[90].ID = nil // the anonymous id alone is enough
	writePeople(t, w.path("data", "a.parquet"), rows, peopleOptions{})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	r, rep := w.sync()
	if r.Code != 3 || rep.Status != "partial" || rep.Rows.Rejected != 2 || rep.delivered("file") != 198 {
		t.Fatalf("want exit 3, 2 rows rejected, 198 delivered\n%s\n%s", r, rep)
	}
	rej := w.rejects(rep)
	if len(rej) != len(bad) {
		t.Fatalf("%d rejects, want %d: %+v", len(rej), len(bad), rej)
	}
	for i, l := range rej {
		if l.File != "a.parquet" || *l.Row != int64(bad[i]) && *l.Row != int64(bad[len(bad)-1-i]) {
			t.Errorf("reject %+v, want a.parquet row 7 or 150", l)
		}
		if l.Destination != nil {
			t.Errorf("reject of row %d names destination %q; it was refused before delivery", *l.Row, *l.Destination)
		}
	}
	msgs := readMessages(t, w.path("out", "users.jsonl"))
	if len(msgs) != 198 {
		t.Errorf("%d messages, want 198", len(msgs))
	}
	for _, m := range msgs {
		if m.UserID == "" && m.AnonymousID != "anon-90" {
			t.Errorf("a message without identifiers: %s", m.line)
		}
	}
}

// TestLimits: a row over max_record_bytes is rejected before delivery; a file with a row
// group over max_row_group_bytes is rejected naming the row group.
func TestLimits(t *testing.T) {
	w := newWorkspace(t)
	rows := people(0, 300)
	for i := range rows {
		rows[i].Bio = "short"
	}
	rows[42].Bio = strings.Repeat("long ", 1000)
	writePeople(t, w.path("data", "a.parquet"), rows, peopleOptions{Bio: true})
	c := usersConfig(fileDest("out/users.jsonl"))
	c.Syncs[0].Source["limits"] = map[string]any{"max_record_bytes": 2000}
	w.writeConfig(c)
	r, rep := w.sync()
	if r.Code != 3 || rep.Rows.Rejected != 1 || rep.delivered("file") != 299 {
		t.Fatalf("max_record_bytes: want exit 3, 1 row rejected, 299 delivered\n%s\n%s", r, rep)
	}
	rej := w.rejects(rep)
	if len(rej) != 1 || *rej[0].Row != 42 || rej[0].Destination != nil || !strings.Contains(rej[0].Reason, "max_record_bytes") {
		t.Errorf("rejects = %+v, want row 42 over max_record_bytes, no destination", rej)
	}

	w = newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 2000, RowGroupRows: 1000})
	c = usersConfig(fileDest("out/users.jsonl"))
	c.Syncs[0].Source["limits"] = map[string]any{"max_row_group_bytes": 1000}
	w.writeConfig(c)
	r, rep = w.sync()
	if r.Code != 3 || rep.Files.Rejected != 1 || rep.Rows.Sent != 0 {
		t.Fatalf("max_row_group_bytes: want exit 3, the file rejected\n%s\n%s", r, rep)
	}
	if len(rep.FileErrors) != 1 || !strings.Contains(rep.FileErrors[0].Error, "row group 0") || !strings.Contains(rep.FileErrors[0].Error, "max_row_group_bytes") {
		t.Errorf("file_errors = %+v, want row group 0 over max_row_group_bytes", rep.FileErrors)
	}
}

// TestSeveralSyncs: a file with two syncs needs --sync; each sync keeps its own state.
func TestSeveralSyncs(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 100})
	c := usersConfig(fileDest("out/users.jsonl"))
	other := c.Syncs[0]
	other.Name = "users-track"
	other.Mapping = map[string]any{"type": "track", "user_id": "customer_id", "event": "User Seen"}
	other.Destinations = []map[string]any{fileDest("out/track.jsonl")}
	c.Syncs = append(c.Syncs, other)
	w.writeConfig(c)

	r := w.run("sync")
	if r.Code != 2 || len(r.errorLines()) != 1 || !strings.Contains(r.Stderr, "users-track") {
		t.Errorf("sync without --sync in a file of two syncs: want exit 2 and one line naming the syncs\n%s", r)
	}
	if rep := w.mustSync(0, "--sync", "users-track"); rep.Sync != "users-track" || rep.Rows.Sent != 100 {
		t.Errorf("--sync users-track\n%s", rep)
	}
	msgs := readMessages(t, w.path("out", "track.jsonl"))
	if len(msgs) != 100 || msgs[0].Type != "track" || !strings.Contains(string(msgs[0].line), `"event":"User Seen"`) {
		t.Errorf("track messages: %d, first %s", len(msgs), msgs[0].line)
	}
	if rep := w.mustSync(0, "--sync", "users"); rep.FullSyncReason != "first sync" || rep.Rows.Sent != 100 {
		t.Errorf("--sync users after the other sync: want its own first sync\n%s", rep)
	}
}
