package e2e

import (
	"bytes"
	"encoding/json"
	"os"
	"slices"
	"sort"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
)

// keysOf returns the sorted keys of a JSON object.
func keysOf(m map[string]any) []string {
	var out []string
	for k := range m {
		out = append(out, k)
	}
	sort.Strings(out)
	return out
}

// TestSchemaJSON: `schema --json` is exactly SPEC.md's object.
func TestSchemaJSON(t *testing.T) {
	w := newWorkspace(t)
	paths := w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 300, RowGroupRows: 100, Seed: 13})
	if err := os.WriteFile(w.path("data", "README.txt"), []byte("the users table\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.WriteFile(w.path("data", "zz-broken.parquet"), []byte("not parquet at all"), 0o644); err != nil {
		t.Fatal(err)
	}
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))

	r := w.run("schema", "--json")
	// One invalid file: the command reports it (exit 3, as a sync would).
	if r.Code != 3 && r.Code != 0 {
		t.Fatalf("schema --json: want exit 0 or 3\n%s", r)
	}
	var top map[string]any
	d := json.NewDecoder(strings.NewReader(r.Stdout))
	if err := d.Decode(&top); err != nil {
		t.Fatalf("schema --json is not one JSON object: %v\n%s", err, r)
	}
	if d.More() {
		t.Errorf("schema --json printed more than one JSON value:\n%s", r.Stdout)
	}
	if got := keysOf(top); !slices.Equal(got, []string{"columns", "files", "schema_from", "skipped", "sync"}) {
		t.Errorf("top-level keys %v, want columns, files, schema_from, skipped, sync", got)
	}
	if top["sync"] != "users" {
		t.Errorf("sync = %v", top["sync"])
	}

	cols, _ := top["columns"].([]any)
	var names []string
	jsonTypes := map[string]string{}
	for _, c := range cols {
		c, _ := c.(map[string]any)
		if got := keysOf(c); !slices.Equal(got, []string{"json", "name", "parquet"}) {
			t.Errorf("a column has keys %v, want json, name, parquet: %v", got, c)
		}
		name, _ := c["name"].(string)
		names = append(names, name)
		jsonTypes[name], _ = c["json"].(string)
		if p, _ := c["parquet"].(string); p == "" {
			t.Errorf("column %s has no parquet type", name)
		}
	}
	var want []string
	for _, f := range exampledata.Schema.Fields() {
		want = append(want, f.Name)
	}
	if !slices.Equal(names, want) {
		t.Errorf("columns %v, want %v", names, want)
	}
	for col, typ := range map[string]string{"customer_id": "number", "email": "string", "lifetime_value": "number",
		"is_active": "boolean", "updated_at": "string", "score": "number"} {
		if jsonTypes[col] != typ {
			t.Errorf("column %s: json %q, want %q", col, jsonTypes[col], typ)
		}
	}

	files, _ := top["files"].([]any)
	if len(files) != 3 {
		t.Fatalf("%d files, want 3 (2 valid, 1 invalid): %v", len(files), files)
	}
	for i, f := range files[:2] {
		f, _ := f.(map[string]any)
		if got := keysOf(f); !slices.Equal(got, []string{"key", "row_groups", "rows", "size", "valid"}) {
			t.Errorf("a valid file has keys %v, want key, row_groups, rows, size, valid", got)
		}
		info, _ := os.Stat(paths[i])
		if f["valid"] != true || f["rows"] != 300.0 || f["row_groups"] != 3.0 || f["size"] != float64(info.Size()) {
			t.Errorf("file %v, want valid, 300 rows, 3 row groups, %d bytes", f, info.Size())
		}
	}
	bad, _ := files[2].(map[string]any)
	if bad["key"] != "zz-broken.parquet" || bad["valid"] != false || !strings.Contains(bad["error"].(string), "zz-broken.parquet") {
		t.Errorf("the broken file: %v, want key, valid false and an error naming it", bad)
	}
	for _, k := range keysOf(bad) {
		if !slices.Contains([]string{"key", "size", "valid", "error"}, k) {
			t.Errorf("the broken file has key %q: %v", k, bad)
		}
	}

	skipped, _ := top["skipped"].([]any)
	if len(skipped) != 1 {
		t.Fatalf("skipped = %v, want README.txt", skipped)
	}
	sk, _ := skipped[0].(map[string]any)
	if got := keysOf(sk); !slices.Equal(got, []string{"key", "reason"}) {
		t.Errorf("a skipped object has keys %v, want key, reason (SPEC.md): %v", got, sk)
	}
	if sk["key"] != "README.txt" || sk["reason"] == "" {
		t.Errorf("skipped %v, want README.txt with a reason", sk)
	}
	if exists(w.stateDir()) {
		t.Errorf("schema wrote the state directory")
	}
}

// TestPreview: --json prints exactly the messages a destination receives, and the table
// narrows to --columns or --search; nothing is written.
func TestPreview(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 200, Seed: 14})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))

	r := w.run("preview", "-n", "3", "--json")
	if r.Code != 0 {
		t.Fatalf("preview --json:\n%s", r)
	}
	lines := strings.Split(strings.TrimSuffix(r.Stdout, "\n"), "\n")
	if len(lines) != 3 {
		t.Fatalf("preview -n 3 --json printed %d lines, want 3:\n%s", len(lines), r.Stdout)
	}
	msgs := parseMessages(t, []byte(r.Stdout))
	for i, m := range msgs {
		if !json.Valid([]byte(lines[i])) || m.Type != "identify" || m.UserID != []string{"0", "1", "2"}[i] {
			t.Errorf("preview line %d: %s", i, lines[i])
		}
	}
	if exists(w.stateDir()) || exists(w.path("out")) {
		t.Errorf("preview wrote state or output")
	}
	// More rows than the first file holds: the preview goes on into the next file.
	r = w.run("preview", "-n", "300", "--json")
	if r.Code != 0 {
		t.Fatalf("preview -n 300 --json:\n%s", r)
	}
	checkExactlyOnce(t, "preview -n 300", parseMessages(t, []byte(r.Stdout)), idRange(0, 300))

	// The same bytes as the file destination writes.
	w.mustSync(0)
	synced := map[string][]byte{}
	for _, m := range readMessages(t, w.path("out", "users.jsonl")) {
		synced[m.MessageID] = m.line
	}
	for _, m := range msgs {
		if !bytes.Equal(synced[m.MessageID], m.line) {
			t.Errorf("preview shows\n%s\nthe destination got\n%s", m.line, synced[m.MessageID])
		}
	}

	header := func(r result) []string {
		for _, l := range strings.Split(r.Stdout, "\n") {
			if f := strings.Fields(l); len(f) > 0 && f[0] == "#" {
				return f[1:]
			}
		}
		t.Fatalf("no table header in\n%s", r)
		return nil
	}
	r = w.run("preview", "-n", "2", "--columns", "email")
	if got := header(r); r.Code != 0 || !slices.Equal(got, []string{"email"}) {
		t.Errorf("preview --columns email: columns %v, want [email]\n%s", got, r)
	}
	if !strings.Contains(r.Stdout, "user0@example.com") || strings.Contains(r.Stdout, "Row 3 ") {
		t.Errorf("preview -n 2 --columns email: want 2 rows with their emails\n%s", r.Stdout)
	}
	r = w.run("preview", "-n", "2", "--search", "_ID")
	if got := header(r); r.Code != 0 || !slices.Equal(got, []string{"customer_id", "anon_id"}) {
		t.Errorf("preview --search _ID: columns %v, want [customer_id anon_id]\n%s", got, r)
	}
	r = w.run("preview", "-n", "2", "--search", "mail")
	if got := header(r); r.Code != 0 || !slices.Equal(got, []string{"email"}) {
		t.Errorf("preview --search mail: columns %v, want [email]\n%s", got, r)
	}
	if r := w.run("preview", "-n", "0"); r.Code != 2 {
		t.Errorf("preview -n 0: want exit 2\n%s", r)
	}
}

// TestCheck: exit 0 with a reachable setup, 1 with an unreachable webhook; nothing sent.
func TestCheck(t *testing.T) {
	seg := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 100})
	w.writeConfig(usersConfig(segmentDest(seg), webhookDest(hook.URL+"/hook"), fileDest("out/users.jsonl")))

	r := w.run("check")
	if r.Code != 0 || strings.Contains(r.Stdout, "FAIL") {
		t.Fatalf("check: want exit 0\n%s", r)
	}
	for _, s := range []string{"segment", "webhook", "file", "part-00000.parquet"} {
		if !strings.Contains(r.Stdout, s) {
			t.Errorf("check does not mention %s:\n%s", s, r.Stdout)
		}
	}
	if n := len(seg.Received()) + len(hook.Received()); n != 0 {
		t.Errorf("check delivered %d messages", n)
	}
	if exists(w.stateDir()) || exists(w.path("out")) {
		t.Errorf("check wrote state or output")
	}
	if strings.Contains(r.Stdout+r.Stderr, writeKey) {
		t.Errorf("check printed the write key")
	}

	w.writeConfig(usersConfig(segmentDest(seg), webhookDest(closedPort(t))))
	r = w.run("check")
	if r.Code != 1 {
		t.Fatalf("check with an unreachable webhook: want exit 1\n%s", r)
	}
	var fails []string
	for _, l := range strings.Split(r.Stdout, "\n") {
		if strings.HasPrefix(l, "FAIL") {
			fails = append(fails, l)
		}
	}
	if len(fails) != 1 || !strings.Contains(fails[0], "webhook") {
		t.Errorf("want one FAIL line naming the webhook, got %q\n%s", fails, r)
	}

	// A wrong write key fails the check too.
	w.env = []string{"SEG_WRITE_KEY=wrong-key-0000"}
	w.writeConfig(usersConfig(segmentDest(seg)))
	if r := w.run("check"); r.Code != 1 || !strings.Contains(r.Stdout, "segment") || strings.Contains(r.Stdout+r.Stderr, "wrong-key-0000") {
		t.Errorf("check with a wrong write key: want exit 1 naming segment, without the key\n%s", r)
	}
}
