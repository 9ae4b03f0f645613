package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// TestExampleFlow follows a local export through its life: a first sync, a run with
// nothing new, a new file, a file rewritten, a file deleted, `state show` and
// `state reset`.
func TestExampleFlow(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 1000, Seed: 1, FirstID: 1000})
	out := w.path("out", "users.jsonl")
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))

	// First sync: every row once.
	rep := w.mustSync(0)
	if rep.Status != "ok" || !rep.FullSync || rep.FullSyncReason != "first sync" || rep.Mode != "incremental" {
		t.Errorf("first run: status %q, full_sync %v, reason %q, mode %q; want ok, true, first sync, incremental\n%s",
			rep.Status, rep.FullSync, rep.FullSyncReason, rep.Mode, rep)
	}
	if rep.Files.Listed != 3 || rep.Files.Read != 3 || rep.Files.Rejected != 0 || rep.Files.Skipped != 0 {
		t.Errorf("first run: files %+v, want 3 listed, 3 read\n%s", rep.Files, rep)
	}
	if rep.Rows.Read != 3000 || rep.Rows.Sent != 3000 || rep.Rows.Rejected != 0 || rep.delivered("file") != 3000 {
		t.Errorf("first run: rows %+v, file delivered %d; want 3000 read, sent, delivered\n%s", rep.Rows, rep.delivered("file"), rep)
	}
	if rep.RunID == "" || rep.Sync != "users" || rep.StartedAt.IsZero() {
		t.Errorf("first run: run_id %q, sync %q, started_at %v", rep.RunID, rep.Sync, rep.StartedAt)
	}
	msgs := readMessages(t, out)
	checkExactlyOnce(t, "first run", msgs, idRange(1000, 3000))
	for _, m := range msgs[:5] {
		if m.Type != "identify" || !strings.HasPrefix(m.AnonymousID, "anon-") || m.Traits["email"] != "user"+m.UserID+"@example.com" {
			t.Errorf("unexpected message %s", m.line)
		}
		if _, ok := m.Traits["customer_id"]; ok {
			t.Errorf("the user_id column is also a trait: %s", m.line)
		}
	}

	// Nothing new: nothing sent.
	rep = w.mustSync(0)
	if rep.FullSync || rep.FullSyncReason != "" || rep.Rows.Sent != 0 || rep.Files.Unchanged != 3 || rep.Files.Read != 0 {
		t.Errorf("second run: want incremental, 0 sent, 3 files unchanged, 0 read\n%s", rep)
	}
	if n := len(readMessages(t, out)); n != 3000 {
		t.Errorf("second run: the output has %d lines, want still 3000", n)
	}

	// A new file: only its rows.
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 1000, Seed: 2, FirstID: 5000, Prefix: "new-"})
	rep = w.mustSync(0)
	if rep.FullSync || rep.Rows.Sent != 1000 || rep.Files.Read != 1 || rep.Files.Unchanged != 3 || rep.Files.Listed != 4 {
		t.Errorf("after adding a file: want 1000 sent, 1 file read, 3 unchanged, 4 listed\n%s", rep)
	}
	checkExactlyOnce(t, "after adding a file", readMessages(t, out)[3000:], idRange(5000, 1000))

	// A file rewritten with other rows: that file again, whole.
	tmp := t.TempDir()
	paths, err := exampledata.Write(tmp, exampledata.Options{Files: 1, RowsPerFile: 1000, Seed: 3, FirstID: 7000})
	if err != nil {
		t.Fatal(err)
	}
	data, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, w.path("data", "part-00001.parquet"), data)
	rep = w.mustSync(0)
	if rep.FullSync || rep.Rows.Sent != 1000 || rep.Files.Read != 1 || rep.Files.Unchanged != 3 {
		t.Errorf("after rewriting a file: want 1000 sent, 1 file read, 3 unchanged\n%s", rep)
	}
	checkExactlyOnce(t, "after rewriting a file", readMessages(t, out)[4000:], idRange(7000, 1000))

	// A file deleted: counted, nothing sent.
	if err := os.Remove(w.path("data", "part-00000.parquet")); err != nil {
		t.Fatal(err)
	}
	rep = w.mustSync(0)
	if rep.FullSync || rep.Files.Deleted != 1 || rep.Rows.Sent != 0 || rep.Files.Unchanged != 3 || rep.Files.Listed != 3 {
		t.Errorf("after deleting a file: want 1 deleted, 0 sent, 3 unchanged, 3 listed\n%s", rep)
	}

	// state show --json: the checkpoint has the three files, each acknowledged whole.
	r := w.run("state", "show", "--json")
	if r.Code != 0 {
		t.Fatalf("state show --json:\n%s", r)
	}
	var cp struct {
		Sync  string `json:"sync"`
		Files map[string]struct {
			Key   string           `json:"key"`
			Size  int64            `json:"size"`
			Rows  int64            `json:"rows"`
			Acked map[string]int64 `json:"acked"`
		} `json:"files"`
		MappingFingerprint string `json:"mapping_fingerprint"`
		SchemaFingerprint  string `json:"schema_fingerprint"`
		SourceFingerprint  string `json:"source_fingerprint"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &cp); err != nil {
		t.Fatalf("state show --json is not a checkpoint: %v\n%s", err, r)
	}
	var keys []string
	for k, f := range cp.Files {
		keys = append(keys, k)
		if f.Key != k || f.Rows != 1000 || f.Acked["file"] != 1000 || f.Size <= 0 {
			t.Errorf("checkpoint entry %s = %+v, want 1000 rows acknowledged by file", k, f)
		}
		if info, err := os.Stat(w.path("data", k)); err != nil || info.Size() != f.Size {
			t.Errorf("checkpoint entry %s: size %d, the file's is %v (%v)", k, f.Size, info, err)
		}
	}
	slices.Sort(keys)
	if want := []string{"new-00000.parquet", "part-00001.parquet", "part-00002.parquet"}; cp.Sync != "users" || !slices.Equal(keys, want) {
		t.Errorf("checkpoint of sync %q holds %v, want users with %v", cp.Sync, keys, want)
	}
	if cp.MappingFingerprint == "" || cp.SchemaFingerprint == "" || cp.SourceFingerprint == "" {
		t.Errorf("checkpoint lacks a fingerprint:\n%s", r.Stdout)
	}
	if r := w.run("state", "show"); r.Code != 0 || !strings.Contains(r.Stdout, "part-00002.parquet") {
		t.Errorf("state show:\n%s", r)
	}

	// state reset: the next run is a first sync again.
	if r := w.run("state", "reset"); r.Code != 0 {
		t.Fatalf("state reset:\n%s", r)
	}
	if r := w.run("state", "show", "--json"); r.Code != 0 || strings.Contains(r.Stdout, "part-00002.parquet") {
		t.Errorf("state show after a reset still shows files:\n%s", r)
	}
	rep = w.mustSync(0)
	if !rep.FullSync || rep.FullSyncReason != "first sync" || rep.Rows.Sent != 3000 || rep.Files.Read != 3 {
		t.Errorf("after a reset: want a first sync of 3000 rows\n%s", rep)
	}
	// The same rows carry the same messageIds as before: a replay is deduplicated.
	all := readMessages(t, out)
	first := map[string]string{}
	for _, m := range all[:5000] {
		first[m.UserID] = m.MessageID
	}
	same := 0
	for _, m := range all[5000:] {
		if first[m.UserID] == m.MessageID {
			same++
		}
	}
	if same != 3000 {
		t.Errorf("after the reset %d of 3000 resent rows kept their messageId, want all", same)
	}
}

// TestFullSyncReasons checks each reason a run sends everything again.
func TestFullSyncReasons(t *testing.T) {
	const rows = 2 * 300
	setup := func(t *testing.T) *workspace {
		w := newWorkspace(t)
		w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 300, Seed: 4})
		w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
		w.mustSync(0)
		return w
	}
	wantFull := func(t *testing.T, rep *report, reason string) {
		t.Helper()
		if !rep.FullSync || rep.FullSyncReason != reason || rep.Rows.Sent != rows || rep.Files.Read != 2 || rep.Files.Unchanged != 0 {
			t.Errorf("want a full sync (%s) sending %d rows\n%s", reason, rows, rep)
		}
	}

	t.Run("MappingChanged", func(t *testing.T) {
		w := setup(t)
		c := usersConfig(fileDest("out/users.jsonl"))
		c.Syncs[0].Mapping["constants"] = map[string]any{"source": "warehouse"}
		w.writeConfig(c)
		wantFull(t, w.mustSync(0), "mapping changed")
		msgs := readMessages(t, w.path("out", "users.jsonl"))
		if len(msgs) != 2*rows || msgs[len(msgs)-1].Traits["source"] != "warehouse" {
			t.Errorf("the resent messages do not carry the new mapping: %d lines, last %s", len(msgs), msgs[len(msgs)-1].line)
		}
		// And the run after is incremental again.
		if rep := w.mustSync(0); rep.FullSync || rep.Rows.Sent != 0 {
			t.Errorf("the run after a mapping change: want incremental\n%s", rep)
		}
	})

	t.Run("Requested", func(t *testing.T) {
		w := setup(t)
		wantFull(t, w.mustSync(0, "--full"), "requested")
	})

	t.Run("ModeFull", func(t *testing.T) {
		w := newWorkspace(t)
		w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 300, Seed: 4})
		c := usersConfig(fileDest("out/users.jsonl"))
		c.Syncs[0].Mode = "full"
		w.writeConfig(c)
		rep := w.mustSync(0)
		if !rep.FullSync || rep.Rows.Sent != rows || rep.Mode != "full" {
			t.Errorf("first run of mode full: want full, %d sent\n%s", rows, rep)
		}
		for range 2 {
			wantFull(t, w.mustSync(0), "mode full")
		}
		if n := len(readMessages(t, w.path("out", "users.jsonl"))); n != 3*rows {
			t.Errorf("three runs of mode full wrote %d lines, want %d", n, 3*rows)
		}
	})

	t.Run("SourceChanged", func(t *testing.T) {
		w := setup(t)
		c := usersConfig(fileDest("out/users.jsonl"))
		c.Syncs[0].Source["include"] = "part-*.parquet"
		w.writeConfig(c)
		wantFull(t, w.mustSync(0), "source changed")
	})

	t.Run("EmptySourceFirst", func(t *testing.T) {
		// A first run that finds no file yet has no schema; the files that come later are
		// all new, and their schema is the sync's first, not a change.
		w := newWorkspace(t)
		w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
		if rep := w.mustSync(0); rep.Rows.Sent != 0 || rep.Files.Listed != 0 {
			t.Errorf("a run on an empty folder\n%s", rep)
		}
		w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 300, Seed: 4})
		rep := w.mustSync(0)
		if rep.Rows.Sent != rows || rep.FullSyncReason == "schema changed" {
			t.Errorf("the first files after an empty run: want %d rows sent, and no \"schema changed\"\n%s", rows, rep)
		}
	})

	t.Run("SchemaChanged", func(t *testing.T) {
		w := setup(t)
		// Every file replaced by files of another table: an extra column.
		for i, name := range []string{"part-00000.parquet", "part-00001.parquet"} {
			writePeople(t, w.path("data", name), people(int64(i*300), 300), peopleOptions{Nickname: true})
		}
		rep := w.mustSync(0)
		wantFull(t, rep, "schema changed")
		msgs := readMessages(t, w.path("out", "users.jsonl"))
		if len(msgs) != 2*rows || msgs[len(msgs)-1].Traits["nickname"] == nil {
			t.Errorf("the resent messages do not carry the new column: %d lines, last %s", len(msgs), msgs[len(msgs)-1].line)
		}
		r := w.run("state", "show", "--json")
		var cp map[string]any
		if err := json.Unmarshal([]byte(r.Stdout), &cp); err != nil || r.Code != 0 {
			t.Fatalf("state show --json: %v\n%s", err, r)
		}
		if rep := w.mustSync(0); rep.FullSync {
			t.Errorf("the run after a schema change: want incremental\n%s", rep)
		}
	})
}

// TestRelativePaths runs the binary from another directory: the state, the source and
// the file destination are relative to the config file, not to the working directory.
func TestRelativePaths(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 100})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	elsewhere := t.TempDir()
	r := runIn(t, elsewhere, []string{"BACKFLOW_CONFIG=" + w.configPath()}, "sync")
	if r.Code != 0 {
		t.Fatalf("sync with BACKFLOW_CONFIG:\n%s", r)
	}
	if n := len(readMessages(t, w.path("out", "users.jsonl"))); n != 100 {
		t.Errorf("%d messages next to the config, want 100", n)
	}
	if !exists(filepath.Join(w.stateDir(), "checkpoints")) {
		t.Errorf("no state next to the config file")
	}
	if entries, _ := os.ReadDir(elsewhere); len(entries) != 0 {
		t.Errorf("the run wrote into the working directory: %v", entries)
	}
}

// TestAddDestination: a destination added to a synced sync receives every row; the
// destinations that already have them receive nothing again.
func TestAddDestination(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 400, Seed: 16})
	w.writeConfig(usersConfig(fileDest("out/a.jsonl")))
	w.mustSync(0)

	b := fileDest("out/b.jsonl")
	b["name"] = "second"
	w.writeConfig(usersConfig(fileDest("out/a.jsonl"), b))
	rep := w.mustSync(0)
	if rep.FullSync || rep.delivered("file") != 0 || rep.delivered("second") != 800 {
		t.Errorf("want an incremental run delivering 800 rows to the new destination only\n%s", rep)
	}
	checkExactlyOnce(t, "first destination", readMessages(t, w.path("out", "a.jsonl")), idRange(0, 800))
	checkExactlyOnce(t, "added destination", readMessages(t, w.path("out", "b.jsonl")), idRange(0, 800))
	if rep := w.mustSync(0); rep.Rows.Sent != 0 || rep.Files.Unchanged != 2 {
		t.Errorf("the run after: want nothing sent\n%s", rep)
	}
}

// TestStdoutDestination: standard output holds only the messages; logs and the summary
// go to standard error, and no progress bar is drawn on a pipe.
func TestStdoutDestination(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 250, Seed: 17})
	w.writeConfig(usersConfig(map[string]any{"type": "stdout"}))
	r := w.run("sync")
	if r.Code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	checkExactlyOnce(t, "stdout", parseMessages(t, []byte(r.Stdout)), idRange(0, 500))
	if strings.Contains(r.Stderr, "\r") || strings.Contains(r.Stderr, "%|") {
		t.Errorf("a progress bar was drawn on a pipe:\n%q", r.Stderr)
	}
	if !strings.Contains(r.Stderr, "users:") {
		t.Errorf("no run summary on stderr:\n%s", r.Stderr)
	}

	// --progress always draws on stderr only; stdout still holds only messages.
	r = w.run("sync", "--full", "--progress", "always")
	if r.Code != 0 {
		t.Fatalf("--progress always: want exit 0\n%s", r)
	}
	checkExactlyOnce(t, "stdout with a progress bar", parseMessages(t, []byte(r.Stdout)), idRange(0, 500))
	if r := w.run("sync", "--progress", "sometimes"); r.Code != 2 {
		t.Errorf("--progress sometimes: want exit 2\n%s", r)
	}
}

// TestJSONLogs: with --log-format json every line on stderr is a JSON object, the run's
// summary included, so that a log shipper can read them all.
func TestJSONLogs(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 100})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	r := w.run("sync", "--log-format", "json")
	if r.Code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	for _, l := range strings.Split(strings.TrimSpace(r.Stderr), "\n") {
		if !json.Valid([]byte(l)) {
			t.Errorf("a stderr line is not JSON with --log-format json: %q", l)
		}
	}
}
