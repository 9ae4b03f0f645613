package e2e

import (
	"bufio"
	"bytes"
	"context"
	"crypto/sha256"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"net"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"go.yaml.in/yaml/v3"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// runTimeout bounds one invocation of the binary.
const runTimeout = 60 * time.Second

// result is how one invocation of the binary ended.
type result struct {
	Args   []string
	Code   int
	Stdout string
	Stderr string
}

func (r result) String() string {
	return fmt.Sprintf("backflow %s: exit %d\nstdout:\n%s\nstderr:\n%s", strings.Join(r.Args, " "), r.Code, r.Stdout, r.Stderr)
}

// errorLines are the lines of stderr the binary prints for errors ("backflow: …"), as
// opposed to log lines and the run summary.
func (r result) errorLines() []string {
	var out []string
	for _, l := range strings.Split(r.Stderr, "\n") {
		if strings.HasPrefix(l, "backflow: ") {
			out = append(out, l)
		}
	}
	return out
}

// proc is a running invocation of the binary.
type proc struct {
	t      testing.TB
	args   []string
	cmd    *exec.Cmd
	cancel context.CancelFunc
	stdout bytes.Buffer
	stderr bytes.Buffer
}

// start starts the binary in dir with args and the extra environment variables env
// (NAME=value). The environment is otherwise minimal, so that nothing of the machine's
// (BACKFLOW_CONFIG, AWS_*) leaks into a test.
func start(t testing.TB, dir string, env []string, args ...string) *proc {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), runTimeout)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	cmd.Env = baseEnv(env)
	cmd.WaitDelay = 5 * time.Second
	p := &proc{t: t, args: args, cmd: cmd, cancel: cancel}
	cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		t.Fatalf("starting backflow: %v", err)
	}
	t.Cleanup(func() {
		// Only when the test ended without waiting (it failed): never leave it running.
		if cmd.ProcessState == nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
		}
		cancel()
	})
	return p
}

// wait waits for the process and returns how it ended. Whatever the command, its output
// must never show a panic or a goroutine dump.
func (p *proc) wait() result {
	p.t.Helper()
	err := p.cmd.Wait()
	p.cancel()
	r := result{Args: p.args, Stdout: p.stdout.String(), Stderr: p.stderr.String()}
	var exit *exec.ExitError
	switch {
	case err == nil:
	case errors.As(err, &exit) && exit.Exited():
		r.Code = exit.ExitCode()
	default:
		p.t.Fatalf("backflow %s did not exit normally within %s: %v\n%s", strings.Join(p.args, " "), runTimeout, err, r)
	}
	for _, out := range []string{r.Stdout, r.Stderr} {
		if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
			p.t.Errorf("output shows a panic or a goroutine dump:\n%s", r)
		}
	}
	return r
}

// runIn runs the binary in dir and waits for it.
func runIn(t testing.TB, dir string, env []string, args ...string) result {
	t.Helper()
	return start(t, dir, env, args...).wait()
}

func baseEnv(extra []string) []string {
	var env []string
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			env = append(env, k+"="+v)
		}
	}
	return append(env, extra...)
}

// ---- configuration ----

// config is a backflow config file, written as YAML. Maps keep the tests free to set any
// key, including wrong ones.
type config struct {
	State map[string]any `yaml:"state,omitempty"`
	Syncs []syncConfig   `yaml:"syncs"`
}

type syncConfig struct {
	Name         string           `yaml:"name"`
	Source       map[string]any   `yaml:"source"`
	Mapping      map[string]any   `yaml:"mapping"`
	Mode         string           `yaml:"mode,omitempty"`
	Destinations []map[string]any `yaml:"destinations"`
}

// usersConfig is one sync "users" of the example table in data/, identify messages, state
// in .backflow, delivered to dests.
func usersConfig(dests ...map[string]any) config {
	return config{
		State: map[string]any{"url": ".backflow"},
		Syncs: []syncConfig{{
			Name:   "users",
			Source: map[string]any{"url": "data"},
			Mapping: map[string]any{
				"type":         "identify",
				"user_id":      "customer_id",
				"anonymous_id": "anon_id",
			},
			Destinations: dests,
		}},
	}
}

func fileDest(path string) map[string]any { return map[string]any{"type": "file", "path": path} }

// fastRetry are retry settings that keep fault tests fast.
func fastRetry(attempts int) map[string]any {
	return map[string]any{"max_attempts": attempts, "max_backoff": "20ms"}
}

// ---- workspace ----

// workspace is a directory holding a config file (backflow.yaml), its data/ folder and,
// once a run wrote it, its .backflow state.
type workspace struct {
	t   *testing.T
	dir string
	env []string
}

func newWorkspace(t *testing.T) *workspace {
	t.Helper()
	w := &workspace{t: t, dir: t.TempDir()}
	if err := os.MkdirAll(w.path("data"), 0o755); err != nil {
		t.Fatal(err)
	}
	return w
}

func (w *workspace) path(rel ...string) string {
	return filepath.Join(append([]string{w.dir}, rel...)...)
}

func (w *workspace) configPath() string { return w.path("backflow.yaml") }
func (w *workspace) stateDir() string   { return w.path(".backflow") }

func (w *workspace) writeConfig(c config) {
	w.t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		w.t.Fatal(err)
	}
	w.writeConfigText(string(b))
}

func (w *workspace) writeConfigText(text string) {
	w.t.Helper()
	if err := os.WriteFile(w.configPath(), []byte(text), 0o644); err != nil {
		w.t.Fatal(err)
	}
}

// run runs a command against the workspace's config.
func (w *workspace) run(args ...string) result {
	w.t.Helper()
	return runIn(w.t, w.dir, w.env, append(args, "-c", w.configPath())...)
}

// sync runs `backflow sync` with --report and returns the result and the report.
func (w *workspace) sync(args ...string) (result, *report) {
	w.t.Helper()
	f, err := os.CreateTemp(w.t.TempDir(), "report-*.json")
	if err != nil {
		w.t.Fatal(err)
	}
	f.Close()
	r := w.run(append([]string{"sync", "--report", f.Name()}, args...)...)
	return r, readReport(w.t, f.Name(), r)
}

// mustSync runs a sync that must exit with code want.
func (w *workspace) mustSync(want int, args ...string) *report {
	w.t.Helper()
	r, rep := w.sync(args...)
	if r.Code != want {
		w.t.Fatalf("want exit %d\n%s", want, r)
	}
	return rep
}

// writeUsers writes example-table files into data/<sub> (deterministic for the seed).
func (w *workspace) writeUsers(sub string, o exampledata.Options) []string {
	w.t.Helper()
	paths, err := exampledata.Write(w.path("data", sub), o)
	if err != nil {
		w.t.Fatal(err)
	}
	return paths
}

// ---- the run report ----

// report is SPEC.md's run report, with the fields backflow adds.
type report struct {
	Sync         string `json:"sync"`
	RunID        string `json:"run_id"`
	Status       string `json:"status"`
	Mode         string `json:"mode"`
	Shard        string `json:"shard"`
	PeakRSSBytes int64  `json:"peak_rss_bytes"`
	Discovery    *struct {
		Received  int  `json:"received"`
		Deleted   int  `json:"deleted"`
		Ignored   int  `json:"ignored"`
		Malformed int  `json:"malformed"`
		Listed    bool `json:"listed"`
	} `json:"discovery"`
	DryRun         bool   `json:"dry_run"`
	FullSync       bool   `json:"full_sync"`
	FullSyncReason string `json:"full_sync_reason"`
	Files          struct {
		Listed    int `json:"listed"`
		Read      int `json:"read"`
		Skipped   int `json:"skipped"`
		Rejected  int `json:"rejected"`
		Unchanged int `json:"unchanged"`
		Deleted   int `json:"deleted"`
	} `json:"files"`
	Rows struct {
		Read      int64 `json:"read"`
		Sent      int64 `json:"sent"`
		Unchanged int64 `json:"unchanged"`
		Rejected  int64 `json:"rejected"`
		WouldSend int64 `json:"would_send"`
	} `json:"rows"`
	Destinations map[string]struct {
		Delivered int64 `json:"delivered"`
		Failed    int64 `json:"failed"`
	} `json:"destinations"`
	StartedAt   time.Time `json:"started_at"`
	Error       string    `json:"error"`
	RejectsFile string    `json:"rejects_file"`
	FileErrors  []struct {
		Key   string `json:"key"`
		Error string `json:"error"`
	} `json:"file_errors"`

	raw []byte
}

// readReport reads a report the binary wrote, and checks that it has every field SPEC.md
// names.
func readReport(t testing.TB, path string, r result) *report {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the report: %v\n%s", err, r)
	}
	if len(bytes.TrimSpace(b)) == 0 {
		return nil // a run that stopped before it could report (a config error)
	}
	rep := &report{raw: b}
	if err := json.Unmarshal(b, rep); err != nil {
		t.Fatalf("report %s: %v\n%s", b, err, r)
	}
	var m map[string]any
	if err := json.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for _, k := range []string{"sync", "run_id", "status", "mode", "full_sync", "full_sync_reason", "files", "rows", "destinations", "started_at", "duration_ms"} {
		if _, ok := m[k]; !ok {
			t.Errorf("report has no %q: %s", k, b)
		}
	}
	for obj, keys := range map[string][]string{
		"files": {"listed", "read", "skipped", "rejected"},
		"rows":  {"read", "sent", "unchanged", "rejected"},
	} {
		sub, _ := m[obj].(map[string]any)
		for _, k := range keys {
			if _, ok := sub[k]; !ok {
				t.Errorf("report has no %s.%s: %s", obj, k, b)
			}
		}
	}
	return rep
}

func (rep *report) String() string { return string(rep.raw) }

func (rep *report) delivered(dest string) int64 { return rep.Destinations[dest].Delivered }

// ---- rejects ----

// rejectLine is one line of a rejects file. Pointers tell absent fields from zero ones.
type rejectLine struct {
	File        string          `json:"file"`
	Row         *int64          `json:"row"`
	Destination *string         `json:"destination"`
	Reason      string          `json:"reason"`
	Message     json.RawMessage `json:"message"`
}

// rejects reads the rejects file of a run from its SPEC.md place,
// <state dir>/rejects/<sync>/<run id>.jsonl.
func (w *workspace) rejects(rep *report) []rejectLine {
	w.t.Helper()
	return readRejects(w.t, filepath.Join(w.stateDir(), "rejects", rep.Sync, rep.RunID+".jsonl"))
}

func readRejects(t testing.TB, path string) []rejectLine {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("reading the rejects file: %v", err)
	}
	var out []rejectLine
	for i, line := range bytes.Split(bytes.TrimSpace(b), []byte("\n")) {
		var l rejectLine
		if err := json.Unmarshal(line, &l); err != nil {
			t.Fatalf("rejects file line %d %q: %v", i+1, line, err)
		}
		var keys map[string]json.RawMessage
		_ = json.Unmarshal(line, &keys)
		for k := range keys {
			if !slices.Contains([]string{"file", "row", "destination", "reason", "message"}, k) {
				t.Errorf("rejects file line %d has an unexpected field %q: %s", i+1, k, line)
			}
		}
		if l.File == "" || l.Row == nil || l.Reason == "" {
			t.Errorf("rejects file line %d lacks file, row or reason: %s", i+1, line)
		}
		out = append(out, l)
	}
	return out
}

// ---- messages ----

// message is a delivered message, decoded.
type message struct {
	Type        string         `json:"type"`
	UserID      string         `json:"userId"`
	AnonymousID string         `json:"anonymousId"`
	MessageID   string         `json:"messageId"`
	Timestamp   string         `json:"timestamp"`
	Traits      map[string]any `json:"traits"`
	Context     map[string]any `json:"context"`

	line []byte
}

// readMessages reads a JSON-lines output file; a missing file holds none.
func readMessages(t testing.TB, path string) []message {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		t.Fatal(err)
	}
	return parseMessages(t, b)
}

func parseMessages(t testing.TB, b []byte) []message {
	t.Helper()
	var out []message
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 16<<20)
	for sc.Scan() {
		line := slices.Clone(sc.Bytes())
		var m message
		if err := json.Unmarshal(line, &m); err != nil {
			t.Fatalf("not a JSON message: %q: %v", line, err)
		}
		if m.MessageID == "" || m.Type == "" {
			t.Errorf("message without messageId or type: %s", line)
		}
		m.line = line
		out = append(out, m)
	}
	return out
}

// userIDs returns the userIds of msgs, sorted, duplicates kept.
func userIDs(msgs []message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.UserID
	}
	sort.Strings(out)
	return out
}

// idRange returns the decimal ids first … first+n-1, sorted as strings.
func idRange(first, n int64) []string {
	out := make([]string, n)
	for i := range out {
		out[i] = strconv.FormatInt(first+int64(i), 10)
	}
	sort.Strings(out)
	return out
}

// distinctIDs counts the distinct messageIds of msgs.
func distinctIDs(msgs []message) int {
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.MessageID] = true
	}
	return len(seen)
}

// checkExactlyOnce fails unless msgs are exactly one message per id in want, each with a
// distinct messageId.
func checkExactlyOnce(t testing.TB, what string, msgs []message, want []string) {
	t.Helper()
	got := userIDs(msgs)
	if len(got) != len(want) {
		t.Errorf("%s: %d messages, want %d", what, len(got), len(want))
	}
	if n := distinctIDs(msgs); n != len(msgs) {
		t.Errorf("%s: %d distinct messageIds among %d messages", what, n, len(msgs))
	}
	if !slices.Equal(got, want) {
		t.Errorf("%s: the userIds are not one per row: %s", what, diffSummary(got, want))
	}
}

// diffSummary describes how two sorted lists differ, briefly.
func diffSummary(got, want []string) string {
	count := func(l []string) map[string]int {
		m := map[string]int{}
		for _, s := range l {
			m[s]++
		}
		return m
	}
	g, w := count(got), count(want)
	var missing, extra []string
	for k, n := range w {
		if g[k] < n {
			missing = append(missing, k)
		}
	}
	for k, n := range g {
		if w[k] < n {
			extra = append(extra, k)
		}
	}
	sort.Strings(missing)
	sort.Strings(extra)
	clip := func(l []string) []string { return l[:min(len(l), 10)] }
	return fmt.Sprintf("%d missing %v, %d extra or duplicated %v", len(missing), clip(missing), len(extra), clip(extra))
}

// ---- Parquet files of our own ----

// person is a row of the "people" table, whose files the tests shape at will (nulls,
// extra columns, large values), unlike the example table.
type person struct {
	ID    *int64  // customer_id
	Anon  *string // anon_id
	Email string
	Plan  string
	Bio   string // only with peopleOptions.Bio
	Nick  string // only with peopleOptions.Nickname
}

type peopleOptions struct {
	Bio      bool // add a "bio" string column
	Nickname bool // add a "nickname" string column
}

func ptr[T any](v T) *T { return &v }

var plans = []string{"free", "starter", "pro", "enterprise"}

// people returns n rows with customer_ids first, first+1, ….
func people(first int64, n int) []person {
	out := make([]person, n)
	for i := range out {
		id := first + int64(i)
		out[i] = person{
			ID:    ptr(id),
			Anon:  ptr(fmt.Sprintf("anon-%d", id)),
			Email: fmt.Sprintf("user%d@example.com", id),
			Plan:  plans[id%int64(len(plans))],
			Nick:  fmt.Sprintf("nick%d", id),
		}
	}
	return out
}

// writePeople writes rows as one Parquet file at path (parents created).
func writePeople(t testing.TB, path string, rows []person, o peopleOptions) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.DefaultAllocator)
	defer mem.AssertSize(t, 0)
	fields := []arrow.Field{
		{Name: "customer_id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "anon_id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "email", Type: arrow.BinaryTypes.String},
		{Name: "plan", Type: arrow.BinaryTypes.String},
	}
	if o.Bio {
		fields = append(fields, arrow.Field{Name: "bio", Type: arrow.BinaryTypes.String})
	}
	if o.Nickname {
		fields = append(fields, arrow.Field{Name: "nickname", Type: arrow.BinaryTypes.String})
	}
	sc := arrow.NewSchema(fields, nil)
	b := array.NewRecordBuilder(mem, sc)
	defer b.Release()
	for _, p := range rows {
		if p.ID != nil {
			b.Field(0).(*array.Int64Builder).Append(*p.ID)
		} else {
			b.Field(0).(*array.Int64Builder).AppendNull()
		}
		if p.Anon != nil {
			b.Field(1).(*array.StringBuilder).Append(*p.Anon)
		} else {
			b.Field(1).(*array.StringBuilder).AppendNull()
		}
		b.Field(2).(*array.StringBuilder).Append(p.Email)
		b.Field(3).(*array.StringBuilder).Append(p.Plan)
		i := 4
		if o.Bio {
			b.Field(i).(*array.StringBuilder).Append(p.Bio)
			i++
		}
		if o.Nickname {
			b.Field(i).(*array.StringBuilder).Append(p.Nick)
		}
	}
	rec := b.NewRecordBatch()
	defer rec.Release()

	if err := os.MkdirAll(filepath.Dir(path), 0o755); err != nil {
		t.Fatal(err)
	}
	var buf bytes.Buffer
	props := parquet.NewWriterProperties(parquet.WithCompression(compress.Codecs.Snappy), parquet.WithAllocator(mem))
	fw, err := pqarrow.NewFileWriter(sc, &buf, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema(), pqarrow.WithAllocator(mem)))
	if err != nil {
		t.Fatal(err)
	}
	if err := fw.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := fw.Close(); err != nil {
		t.Fatal(err)
	}
	writeFileAtomic(t, path, buf.Bytes())
}

// writeFileAtomic replaces path with data in one rename, as an export tool would.
func writeFileAtomic(t testing.TB, path string, data []byte) {
	t.Helper()
	tmp := filepath.Join(filepath.Dir(path), "."+filepath.Base(path)+".tmp")
	if err := os.WriteFile(tmp, data, 0o644); err != nil {
		t.Fatal(err)
	}
	if err := os.Rename(tmp, path); err != nil {
		t.Fatal(err)
	}
}

// closedPort returns an http URL on 127.0.0.1 where nothing listens.
func closedPort(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return "http://" + addr + "/hook"
}

// exists tells whether path exists.
func exists(path string) bool {
	_, err := os.Stat(path)
	return err == nil
}

// digestTree returns the SHA-256 of every file under dir, by relative path.
func digestTree(t testing.TB, dir string) map[string]string {
	t.Helper()
	out := map[string]string{}
	err := filepath.WalkDir(dir, func(p string, d fs.DirEntry, err error) error {
		if err != nil || d.IsDir() {
			return err
		}
		b, err := os.ReadFile(p)
		if err != nil {
			return err
		}
		rel, _ := filepath.Rel(dir, p)
		out[rel] = fmt.Sprintf("%x", sha256.Sum256(b))[:12]
		return nil
	})
	if err != nil {
		t.Fatal(err)
	}
	return out
}
