package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// s3Settings are the connection keys of an S3 source or state on the test's MinIO, the
// keys coming from the environment as in production.
func s3Settings(m *testutil.MinIO) map[string]any {
	return map[string]any{
		"region":     "us-east-1",
		"endpoint":   m.Endpoint,
		"path_style": true,
		"auth": map[string]any{
			"mode":              "keys",
			"access_key_id":     "${E2E_ACCESS_KEY}",
			"secret_access_key": "${E2E_SECRET_KEY}",
		},
	}
}

func with(m map[string]any, kv ...any) map[string]any {
	out := map[string]any{}
	for k, v := range m {
		out[k] = v
	}
	for i := 0; i+1 < len(kv); i += 2 {
		out[kv[i].(string)] = kv[i+1]
	}
	return out
}

// uploadUsers writes files of the example table and puts them under bucket/prefix.
func uploadUsers(t *testing.T, m *testutil.MinIO, bucket, prefix string, o exampledata.Options) {
	t.Helper()
	paths, err := exampledata.Write(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		m.Put(t, bucket, prefix+filepath.Base(p), b)
	}
}

// s3Workspace is a workspace whose source is s3://src/users/ and whose state is
// s3://state/<statePrefix>.
func s3Workspace(t *testing.T, m *testutil.MinIO, src, state, statePrefix string, dests ...map[string]any) *workspace {
	w := newWorkspace(t)
	w.env = []string{"E2E_ACCESS_KEY=" + m.AccessKey, "E2E_SECRET_KEY=" + m.SecretKey}
	c := usersConfig(dests...)
	c.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/")
	c.State = with(s3Settings(m), "url", "s3://"+state+"/"+statePrefix)
	w.writeConfig(c)
	return w
}

func TestMinIO(t *testing.T) {
	m := testutil.StartMinIO(t)
	state := m.Bucket(t)
	const files, per = 20, 100
	// Each subtest has a source bucket of its own, holding the same export.
	source := func(t *testing.T) string {
		src := m.Bucket(t)
		uploadUsers(t, m, src, "users/", exampledata.Options{Files: files, RowsPerFile: per, Seed: 15})
		m.Put(t, src, "users/_SUCCESS", nil)
		return src
	}
	all := idRange(0, files*per)

	t.Run("IncrementalWithS3State", func(t *testing.T) {
		src := source(t)
		w := s3Workspace(t, m, src, state, "plain", fileDest("out/users.jsonl"))
		rep := w.mustSync(0)
		if !rep.FullSync || rep.FullSyncReason != "first sync" || rep.Files.Listed != files+1 || rep.Files.Skipped != 1 ||
			rep.Files.Read != files || rep.Rows.Sent != files*per {
			t.Errorf("first run: want a first sync of %d files and %d rows, _SUCCESS skipped\n%s", files, files*per, rep)
		}
		checkExactlyOnce(t, "first run", readMessages(t, w.path("out", "users.jsonl")), all)
		if exists(w.stateDir()) {
			t.Errorf("s3 state wrote a local state directory")
		}
		keys := m.List(t, state, "plain/")
		if len(keys) == 0 || !strings.Contains(strings.Join(keys, " "), "checkpoints/users.json") {
			t.Errorf("the state bucket holds %v, want the checkpoint", keys)
		}

		rep = w.mustSync(0)
		if rep.FullSync || rep.Rows.Sent != 0 || rep.Files.Unchanged != files {
			t.Errorf("second run: want incremental, nothing sent, %d unchanged\n%s", files, rep)
		}

		r := w.run("state", "show", "--json")
		var cp struct {
			Sync  string `json:"sync"`
			Files map[string]struct {
				Rows  int64            `json:"rows"`
				Acked map[string]int64 `json:"acked"`
				ETag  string           `json:"etag"`
			} `json:"files"`
		}
		if err := json.Unmarshal([]byte(r.Stdout), &cp); err != nil || r.Code != 0 {
			t.Fatalf("state show --json on s3 state: %v\n%s", err, r)
		}
		if len(cp.Files) != files {
			t.Errorf("the checkpoint holds %d files, want %d", len(cp.Files), files)
		}
		for k, f := range cp.Files {
			if f.Rows != per || f.Acked["file"] != per || f.ETag == "" {
				t.Errorf("checkpoint entry %s: %+v", k, f)
			}
		}
		if r := w.run("state", "show"); r.Code != 0 || !strings.Contains(r.Stdout, "s3://"+state) {
			t.Errorf("state show on s3 state:\n%s", r)
		}
		if strings.Contains(r.Stdout+r.Stderr, m.SecretKey) {
			t.Errorf("state show printed the secret key")
		}

		// A new object: only it.
		uploadUsers(t, m, src, "users/new-", exampledata.Options{Files: 1, RowsPerFile: 30, FirstID: 50000})
		if rep := w.mustSync(0); rep.Rows.Sent != 30 || rep.Files.Read != 1 {
			t.Errorf("after a new object: want 30 rows sent\n%s", rep)
		}
		if r := w.run("state", "reset"); r.Code != 0 {
			t.Errorf("state reset on s3 state:\n%s", r)
		}
		if rep := w.mustSync(0); rep.FullSyncReason != "first sync" || rep.Rows.Sent != files*per+30 {
			t.Errorf("after a reset: want a first sync\n%s", rep)
		}
	})

	t.Run("TwoRunsAtOnce", func(t *testing.T) {
		src := source(t)
		hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", Delay: 150 * time.Millisecond})
		d := map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 50, "max_in_flight": 4}
		w := s3Workspace(t, m, src, state, "race", d)
		twoRunsAtOnce(t, w, hook, files, per, func() [][]byte {
			var out [][]byte
			for _, k := range m.List(t, state, "race/checkpoints/") {
				if strings.HasSuffix(k, ".json") {
					out = append(out, m.Get(t, state, k))
				}
			}
			return out
		})
	})

	t.Run("S3Destination", func(t *testing.T) {
		src, lake := source(t), m.Bucket(t)
		dest := with(s3Settings(m), "type", "s3", "url", "s3://"+lake+"/backflow/", "format", "jsonl", "compression", "none")
		w := s3Workspace(t, m, src, state, "lake", dest)
		if rep := w.mustSync(0, "--dry-run"); rep.Rows.WouldSend != files*per {
			t.Errorf("dry run: want would_send %d\n%s", files*per, rep)
		}
		if keys := m.List(t, lake, ""); len(keys) != 0 {
			t.Errorf("a dry run wrote objects: %v", keys)
		}
		rep := w.mustSync(0)
		if rep.delivered("s3") != files*per {
			t.Errorf("want %d rows delivered to s3\n%s", files*per, rep)
		}
		var got []message
		for _, k := range m.List(t, lake, "backflow/") {
			got = append(got, parseMessages(t, m.Get(t, lake, k))...)
		}
		checkExactlyOnce(t, "s3 objects", got, all)
		if rep := w.mustSync(0); rep.Rows.Sent != 0 || rep.Files.Unchanged != files {
			t.Errorf("the run after: want nothing sent\n%s", rep)
		}
		if n := len(m.List(t, lake, "")); n == 0 {
			t.Errorf("no object in the lake bucket")
		}
	})

	t.Run("RejectsOnS3State", func(t *testing.T) {
		src := m.Bucket(t)
		rows := people(0, 100)
		rows[10].ID, rows[10].Anon = nil, nil
		local := filepath.Join(t.TempDir(), "a.parquet")
		writePeople(t, local, rows, peopleOptions{})
		b, err := os.ReadFile(local)
		if err != nil {
			t.Fatal(err)
		}
		m.Put(t, src, "users/a.parquet", b)
		w := s3Workspace(t, m, src, state, "rejects", fileDest("out/users.jsonl"))
		r, rep := w.sync()
		if r.Code != 3 || rep.Rows.Rejected != 1 {
			t.Fatalf("want exit 3, 1 row rejected\n%s\n%s", r, rep)
		}
		key := "rejects/rejects/users/" + rep.RunID + ".jsonl"
		if want := "s3://" + state + "/" + key; rep.RejectsFile != want {
			t.Errorf("rejects_file = %q, want %q", rep.RejectsFile, want)
		}
		dir := t.TempDir()
		if err := os.WriteFile(filepath.Join(dir, "r.jsonl"), m.Get(t, state, key), 0o644); err != nil {
			t.Fatal(err)
		}
		rej := readRejects(t, filepath.Join(dir, "r.jsonl"))
		if len(rej) != 1 || rej[0].File != "users/a.parquet" || *rej[0].Row != 10 || rej[0].Destination != nil {
			t.Errorf("rejects = %+v, want users/a.parquet row 10 without a destination", rej)
		}
	})

	t.Run("WrongSecret", func(t *testing.T) {
		src := source(t)
		const secret = "wrong-secret-Zq81xT"
		for _, where := range []string{"source", "state"} {
			t.Run(where, func(t *testing.T) {
				w := s3Workspace(t, m, src, state, "wrong-"+where, fileDest("out/users.jsonl"))
				c := usersConfig(fileDest("out/users.jsonl"))
				good, bad := s3Settings(m), s3Settings(m)
				bad["auth"] = map[string]any{"mode": "keys", "access_key_id": "${E2E_ACCESS_KEY}", "secret_access_key": "${E2E_BAD_SECRET}"}
				c.Syncs[0].Source = with(good, "url", "s3://"+src+"/users/")
				c.State = with(good, "url", "s3://"+state+"/wrong-"+where)
				if where == "source" {
					c.Syncs[0].Source = with(bad, "url", "s3://"+src+"/users/")
				} else {
					c.State = with(bad, "url", "s3://"+state+"/wrong-"+where)
				}
				w.env = append(w.env, "E2E_BAD_SECRET="+secret)
				w.writeConfig(c)
				r, rep := w.sync()
				if r.Code != 1 {
					t.Fatalf("want exit 1\n%s", r)
				}
				lines := r.errorLines()
				t.Logf("error lines: %q", lines)
				if len(lines) != 1 || !strings.Contains(lines[0], src) && !strings.Contains(lines[0], state) {
					t.Errorf("want one error line naming the bucket, got %q\n%s", lines, r)
				}
				if len(lines) == 1 && !strings.Contains(strings.ToLower(lines[0]), "credential") &&
					!strings.Contains(strings.ToLower(lines[0]), "access denied") && !strings.Contains(strings.ToLower(lines[0]), "signature") {
					t.Errorf("the error line does not say the credentials are refused: %q", lines[0])
				}
				all := r.Stdout + r.Stderr
				if rep != nil {
					all += rep.String()
				}
				if strings.Contains(all, secret) {
					t.Errorf("the secret appears in the output or report")
				}
				if exists(w.path("out")) {
					t.Errorf("something was delivered")
				}
			})
		}
	})
}
