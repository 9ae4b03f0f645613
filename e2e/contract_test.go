package e2e

import (
	"bufio"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"
)

// contractCase is one promise of the command line: in a workspace set up by setup, the
// command exits with code and prints each of want (on stdout or stderr) and none of
// notWant.
type contractCase struct {
	name    string
	setup   func(t *testing.T, w *workspace)
	env     []string
	args    []string
	code    int
	want    []string
	notWant []string
	// count, when set, is how many times want[0] must appear in the output.
	count int
}

// peopleSync is one sync "users" over people files in data/, to file out/users.jsonl.
func peopleSync(mutate func(s *syncConfig)) config {
	c := usersConfig(fileDest("out/users.jsonl"))
	if mutate != nil {
		mutate(&c.Syncs[0])
	}
	return c
}

// withPeople writes files of people to data/ (each name with its options) and the config.
func withPeople(c config, files map[string]peopleOptions) func(*testing.T, *workspace) {
	return func(t *testing.T, w *workspace) {
		first := int64(0)
		for name, o := range files {
			writePeople(t, w.path("data", name), people(first, 100), o)
			first += 100
		}
		w.writeConfig(c)
	}
}

// TestContract is the newcomer's trial of issue 13, one row per promise: the command,
// its exit code and the line it prints.
func TestContract(t *testing.T) {
	nick := peopleOptions{Nickname: true}
	badConfig := `state:
  lease_ttl: 60
syncs:
  - name: users
    source:
      url: data
      limits:
        max_record_bytes: "three"
    mapping:
      type: identify
      user_id: ${NOPE}
      anonymous_id: ${NOPE}
    destinations:
      - type: webhook
        url: http://127.0.0.1:1/hook
        batch_size: 2.5
        timeout: 10
        max_in_flight: ${BAD}
`
	configText := func(text string) func(*testing.T, *workspace) {
		return func(t *testing.T, w *workspace) {
			writePeople(t, w.path("data", "a.parquet"), people(0, 10), peopleOptions{})
			w.writeConfigText(text)
		}
	}
	cases := []contractCase{
		// 1. The sync's schema is named wherever it matters.
		{name: "1 mapping error names the schema's file",
			setup: withPeople(peopleSync(func(s *syncConfig) { s.Mapping["columns"] = []string{"email", "nickname"} }),
				map[string]peopleOptions{"a-stray.parquet": {}, "b.parquet": nick}),
			args: []string{"sync"}, code: 2, want: []string{`"nickname"`, "sync users, whose schema is from a-stray.parquet:"}},
		{name: "1 schema shows rows and every difference",
			setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}, "b.parquet": {Nickname: true, Bio: true}}),
			args:  []string{"schema"}, code: 3,
			want: []string{"(from a.parquet)", `column "bio": not in the sync's schema, from a.parquet`,
				`column "nickname": not in the sync's schema, from a.parquet`, "b.parquet  ", " 100 "}},
		{name: "1 schema --json names the schema's file and lists differences",
			setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}, "b.parquet": {Nickname: true, Bio: true}}),
			args:  []string{"schema", "--json"}, code: 3,
			want: []string{`"schema_from": "a.parquet"`, `"differences": [`, `"rows": 100`}},

		// 2. A null in the first row: rejected by default, with the way out; accepted with warn.
		{name: "2 first-row null rejects and says how to accept it",
			setup: func(t *testing.T, w *workspace) {
				rows := people(0, 10)
				rows[0].Anon = nil
				writePeople(t, w.path("data", "a.parquet"), rows, peopleOptions{})
				writePeople(t, w.path("data", "b.parquet"), people(10, 10), peopleOptions{})
				w.writeConfig(peopleSync(nil))
			},
			args: []string{"sync"}, code: 3, want: []string{"null in the first row (source.limits.first_row_nulls: warn accepts such a file)"}},
		{name: "2 first_row_nulls warn reads the file",
			setup: func(t *testing.T, w *workspace) {
				rows := people(0, 10)
				rows[0].Anon = nil
				writePeople(t, w.path("data", "a.parquet"), rows, peopleOptions{})
				w.writeConfig(peopleSync(func(s *syncConfig) {
					s.Source["limits"] = map[string]any{"first_row_nulls": "warn"}
				}))
			},
			args: []string{"sync"}, code: 0, want: []string{"level=WARN", "null in the first row, read anyway", "10 delivered"}},

		// 3. Every configuration problem at once, one message per value.
		{name: "3 config errors all at once", setup: configText(badConfig), env: []string{"BAD=abc"},
			args: []string{"check"}, code: 2,
			want: []string{"environment variable NOPE is not set",
				"state.lease_ttl: must be a duration with a unit, such as 30s, 5m or 1h: a bare number has no unit",
				"destinations[0].timeout: must be a duration with a unit",
				`limits.max_record_bytes: "three" is not a number`,
				"destinations[0].batch_size: must be a whole number",
				`destinations[0].max_in_flight: "abc" is not a number`},
			notWant: []string{"must be at least 1", "must be greater than 0"}, count: 1},
		{name: "3 a secret from a variable is not shown", setup: configText(strings.Replace(badConfig,
			"        max_in_flight: ${BAD}\n", "        max_in_flight: ${BAD}\n        headers:\n          Authorization: ${BAD}\n", 1)),
			env: []string{"BAD=abc"}, args: []string{"check"}, code: 2,
			want: []string{`max_in_flight: "REDACTED" is not a number`}, notWant: []string{"abc"}},
		{name: "3 a destination's own keys: typo, another type's key, every problem",
			setup: configText("syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n" +
				"    destinations:\n      - {type: webhook, url: \"ftp://x\", verify_object: k, gzp: true, batch_sise: 3}\n" +
				"      - {type: s3, url: \"s3://b/p\", format: xml, max_object_rows: 1.5}\n"),
			args: []string{"check"}, code: 2,
			want: []string{`destinations[0].gzp: unknown key, did you mean "gzip"?`,
				`destinations[0].batch_sise: unknown key, did you mean "batch_size"?`,
				"destinations[0].verify_object: not used by type webhook (it is a key of type s3)",
				"destinations[0].url: must be an http:// or https:// URL",
				`destinations[1].format: "xml" is not one of jsonl, csv, parquet`,
				"destinations[1].max_object_rows: must be a whole number"}},
		{name: "3 YAML indentation error at its line", setup: configText("syncs:\n  - name: users\n    source:\n      url: data\n     include: \"*.parquet\"\n"),
			args: []string{"check"}, code: 2, want: []string{"invalid YAML: line 5:"}},

		// 4. Same rule, same answer.
		{name: "4 cron @every refused by check as by serve",
			setup: configText("syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n    schedule: {cron: \"@every 5m\"}\n    destinations: [{type: stdout}]\n"),
			args:  []string{"check"}, code: 2, want: []string{"schedule.cron:", "use `every:` for intervals"}},
		{name: "4 cron that never fires refused",
			setup: configText("syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n    schedule: {cron: \"0 0 30 2 *\"}\n    destinations: [{type: stdout}]\n"),
			args:  []string{"check"}, code: 2, want: []string{"no time matches it"}},
		{name: "4 include with an empty segment refused by the config as by the reader",
			setup: configText("syncs:\n  - name: users\n    source: {url: data, include: \"data//x.parquet\"}\n    mapping: {type: identify, user_id: customer_id}\n    destinations: [{type: stdout}]\n"),
			args:  []string{"check"}, code: 2, want: []string{"source.include:", "empty path segment"}},
		{name: "3 every missing column in one run",
			setup: withPeople(peopleSync(func(s *syncConfig) {
				s.Mapping["user_id"] = "customerid"
				s.Mapping["columns"] = []string{"emial", "paln"}
			}), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"sync"}, code: 2,
			want: []string{`mapping.user_id: no column "customerid"`, `mapping.columns[0]: no column "emial"`, `mapping.columns[1]: no column "paln"`}},
		{name: "4 check exits 2 for a mapping that does not fit, as sync does",
			setup: withPeople(peopleSync(func(s *syncConfig) { s.Mapping["columns"] = []string{"emial"} }), map[string]peopleOptions{"a.parquet": {}}),
			args:  []string{"check"}, code: 2, want: []string{`no column "emial"`, `did you mean "email"?`, "the sync's schema is from a.parquet"}},

		// 5. preview says what it cannot show.
		{name: "5 preview unknown column", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"preview", "--columns", "emial,Plan"}, code: 2,
			want: []string{`no column "emial" (did you mean "email"?), "Plan" (did you mean "plan"?)`}},
		{name: "5 preview search is about column names", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"preview", "--search", "user5@"}, code: 2, want: []string{"--search matches column names, not values"}},
		{name: "5 preview one row", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"preview", "-n", "1"}, code: 0, want: []string{"Sync users: the first row\n"}},

		// 6. state: one JSON shape; reset says what it did.
		{name: "6 state show --json without a checkpoint is null", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"state", "show", "--json"}, code: 0, want: []string{"null\n"}},
		{name: "6 state reset without a checkpoint says so", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"state", "reset"}, code: 0, want: []string{"had no checkpoint", "nothing to reset"}},

		// 7. Words.
		{name: "7 summary counts", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"sync"}, code: 0, want: []string{"rows 100 read", "file: 100 delivered, 0 failed, 0 pending"}, notWant: []string{"sent"}},
		{name: "7 check counts the mapping's columns", setup: withPeople(peopleSync(func(s *syncConfig) { s.Mapping["columns"] = []string{"email"} }), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"check"}, code: 0, want: []string{"identify message with 1 column from a.parquet", "1 Parquet file listed"}},

		// 8. Noise and silence.
		{name: "8 _SUCCESS at info", setup: func(t *testing.T, w *workspace) {
			withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}})(t, w)
			if err := os.WriteFile(w.path("data", "_SUCCESS"), nil, 0o644); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"sync"}, code: 0, want: []string{`level=INFO msg="skipping object"`}, notWant: []string{"level=WARN"}},
		{name: "8 empty source warned", setup: func(t *testing.T, w *workspace) { w.writeConfig(peopleSync(nil)) },
			args: []string{"sync"}, code: 0, want: []string{`level=WARN msg="no Parquet file to read"`}},
		{name: "8 debug line per file and row group", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"sync", "--log-level", "debug"}, code: 0,
			want: []string{`msg="reading file"`, `msg="read row group"`, "key=a.parquet"}},

		// 9. check reads past a bad file and warns of a full sync to come.
		{name: "9 check past a bad first file", setup: func(t *testing.T, w *workspace) {
			withPeople(peopleSync(nil), map[string]peopleOptions{"b.parquet": {}})(t, w)
			if err := os.WriteFile(w.path("data", "a.parquet"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		}, args: []string{"check"}, code: 0,
			want: []string{"warn  source", "a.parquet: not a Parquet file", "b.parquet is valid and gives the sync's schema", "ok    mapping"}},

		// 10. CLI habits.
		{name: "10 a sync name as an argument", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"sync", "users"}, code: 2, want: []string{"to pick a sync, use --sync users"}},
		{name: "10 unknown command", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"bogus"}, code: 2, want: []string{`unknown command "bogus"`}},
		{name: "10 check --all checks every sync", setup: func(t *testing.T, w *workspace) {
			c := peopleSync(nil)
			b := c.Syncs[0]
			b.Name = "b"
			b.Mapping = map[string]any{"type": "identify", "user_id": "customer_id", "columns": []string{"nope"}}
			b.Destinations = []map[string]any{fileDest("out/b.jsonl")}
			c.Syncs = append(c.Syncs, b)
			withPeople(c, map[string]peopleOptions{"a.parquet": {}})(t, w)
		}, args: []string{"check", "--all"}, code: 2, want: []string{"(sync users)", "(sync b)", `no column "nope"`}},
		{name: "10 serve --sync names a sync that exists", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"serve", "--sync", "nope", "--listen", "127.0.0.1:0"}, code: 2, want: []string{`no sync named "nope"`}},
		{name: "10 completion of sync names", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"__complete", "sync", "--sync", ""}, code: 0, want: []string{"users\n"}},
		{name: "10 completion of --progress", setup: withPeople(peopleSync(nil), map[string]peopleOptions{"a.parquet": {}}),
			args: []string{"__complete", "sync", "--progress", ""}, code: 0, want: []string{"auto\nalways\nnever\n"}},
	}
	for _, tc := range cases {
		t.Run(tc.name, func(t *testing.T) {
			w := newWorkspace(t)
			tc.setup(t, w)
			r := runIn(t, w.dir, tc.env, tc.args...)
			out := r.Stdout + r.Stderr
			if r.Code != tc.code {
				t.Errorf("exit %d, want %d", r.Code, tc.code)
			}
			for _, s := range tc.want {
				if !strings.Contains(out, s) {
					t.Errorf("output lacks %q", s)
				}
			}
			for _, s := range tc.notWant {
				if strings.Contains(out, s) {
					t.Errorf("output has %q", s)
				}
			}
			if tc.count > 0 && strings.Count(out, tc.want[0]) != tc.count {
				t.Errorf("%q appears %d times, want %d", tc.want[0], strings.Count(out, tc.want[0]), tc.count)
			}
			if t.Failed() {
				t.Logf("%s", r)
			}
		})
	}
}

// TestContractClosedStdout: `sync | head -1` ends with the summary and exit 1, as for a
// destination that failed, not killed by SIGPIPE.
func TestContractClosedStdout(t *testing.T) {
	w := newWorkspace(t)
	writePeople(t, w.path("data", "a.parquet"), people(0, 5000), peopleOptions{})
	c := usersConfig(map[string]any{"type": "stdout", "batch_size": 1, "retry": fastRetry(2)})
	w.writeConfig(c)
	cmd := exec.Command(binary, "sync")
	cmd.Dir = w.dir
	cmd.Env = baseEnv(nil)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		t.Fatal(err)
	}
	var stderr strings.Builder
	cmd.Stderr = &stderr
	if err := cmd.Start(); err != nil {
		t.Fatal(err)
	}
	if _, err := bufio.NewReader(stdout).ReadString('\n'); err != nil {
		t.Fatal(err)
	}
	stdout.Close() // what head does after its line
	done := make(chan error, 1)
	go func() { done <- cmd.Wait() }()
	select {
	case <-done:
	case <-time.After(runTimeout):
		_ = cmd.Process.Kill()
		t.Fatal("sync did not end after its stdout closed")
	}
	_, _ = io.Copy(io.Discard, stdout)
	if code := cmd.ProcessState.ExitCode(); code != 1 {
		t.Errorf("exit %d (%s), want 1\n%s", code, cmd.ProcessState, stderr.String())
	}
	if !strings.Contains(stderr.String(), "users: full sync (first sync) failed") || !strings.Contains(stderr.String(), "broken pipe") {
		t.Errorf("no summary naming the broken pipe:\n%s", stderr.String())
	}
}

// TestContractInterrupt: SIGINT ends a run with exit 1 (README's exit codes), and the
// summary says what the hung destination never took: pending, not "sent".
func TestContractInterrupt(t *testing.T) {
	release := make(chan struct{})
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		select { // hang until the test ends
		case <-release:
		case <-r.Context().Done():
		}
	}))
	defer hook.Close()
	defer close(release)
	w := newWorkspace(t)
	writePeople(t, w.path("data", "a.parquet"), people(0, 300), peopleOptions{})
	w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": hook.URL, "timeout": "30s"}))
	p := start(t, w.dir, nil, "sync", "--grace", "200ms")
	time.Sleep(time.Second) // the run is planned and its batch in flight to the hung hook
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	r := p.wait()
	if r.Code != 1 || !strings.Contains(r.Stderr, "webhook: 0 delivered, 0 failed, 300 pending") {
		t.Errorf("want exit 1 and 300 rows pending for the webhook\n%s", r)
	}
}

// TestContractServeWithoutSchedule: serve says when no sync has a schedule.
func TestContractServeWithoutSchedule(t *testing.T) {
	w := newWorkspace(t)
	writePeople(t, w.path("data", "a.parquet"), people(0, 10), peopleOptions{})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	p := start(t, w.dir, nil, "serve", "--sync", "users", "--listen", "127.0.0.1:0")
	time.Sleep(time.Second)
	if err := p.cmd.Process.Signal(os.Interrupt); err != nil {
		t.Fatal(err)
	}
	r := p.wait()
	if r.Code != 0 || !strings.Contains(r.Stderr, "no sync has a schedule") {
		t.Errorf("want exit 0 and a warning that no sync has a schedule\n%s", r)
	}
}
