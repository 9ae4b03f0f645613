package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"sync"
	"testing"
	"unicode/utf8"

	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// poisonHook is a webhook receiver that answers 400 to every batch holding a message of
// a poisoned user, and records the messages of the batches it accepts.
type poisonHook struct {
	mu     sync.Mutex
	poison map[string]bool
	down   bool // answer 503 to everything
	got    []message
}

func newPoisonHook(t *testing.T, users ...string) (*poisonHook, string) {
	h := &poisonHook{}
	h.setPoison(users...)
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	return h, srv.URL + "/hook"
}

func (h *poisonHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	msgs := make([]message, len(body.Batch))
	for i, raw := range body.Batch {
		_ = json.Unmarshal(raw, &msgs[i])
		msgs[i].line = raw
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.down {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	for _, m := range msgs {
		if h.poison[m.UserID] {
			w.WriteHeader(http.StatusBadRequest)
			_, _ = w.Write([]byte(`{"error":"invalid message: user ` + m.UserID + ` is malformed"}`))
			return
		}
	}
	h.got = append(h.got, msgs...)
	w.WriteHeader(http.StatusOK)
}

func (h *poisonHook) setDown(down bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.down = down
}

func (h *poisonHook) setPoison(users ...string) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.poison = map[string]bool{}
	for _, u := range users {
		h.poison[u] = true
	}
}

// take returns the messages accepted since the last call.
func (h *poisonHook) take() []message {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := h.got
	h.got = nil
	return out
}

// retryReport is the report of `rejects retry --report FILE`.
type retryReport struct {
	RunID   string `json:"run_id"`
	RetryOf string `json:"retry_of"`
	Status  string `json:"status"`
	Files   struct {
		Read    int `json:"read"`
		Changed int `json:"changed"`
	} `json:"files"`
	Rows struct {
		Read       int64 `json:"read"`
		Sent       int64 `json:"sent"`
		Rejected   int64 `json:"rejected"`
		NotRetried int64 `json:"not_retried"`
	} `json:"rows"`
	RejectsFile string `json:"rejects_file"`
	FileErrors  []struct {
		Key   string `json:"key"`
		Error string `json:"error"`
	} `json:"file_errors"`
}

func (w *workspace) retry(args ...string) (result, retryReport) {
	w.t.Helper()
	path := filepath.Join(w.t.TempDir(), "retry.json")
	r := w.run(append([]string{"rejects", "retry", "--report", path}, args...)...)
	var rep retryReport
	b, err := os.ReadFile(path)
	if err != nil {
		w.t.Fatalf("reading the retry report: %v\n%s", err, r)
	}
	if err := json.Unmarshal(b, &rep); err != nil {
		w.t.Fatalf("retry report %s: %v", b, err)
	}
	return r, rep
}

// rejectsList is `rejects list --json`.
type rejectsList struct {
	Sync      string       `json:"sync"`
	RunID     string       `json:"run_id"`
	Location  string       `json:"location"`
	RetriedBy string       `json:"retried_by"`
	Rejects   []rejectLine `json:"rejects"`
}

func (w *workspace) listRejects(args ...string) rejectsList {
	w.t.Helper()
	r := w.run(append([]string{"rejects", "list", "--json"}, args...)...)
	if r.Code != 0 {
		w.t.Fatalf("rejects list --json: want exit 0\n%s", r)
	}
	var l rejectsList
	if err := json.Unmarshal([]byte(r.Stdout), &l); err != nil {
		w.t.Fatalf("rejects list --json: %v\n%s", err, r)
	}
	return l
}

// poisonedRun syncs the workspace against a receiver that refuses users 42 and 777
// (part-00000.parquet row 42, part-00001.parquet row 277), and checks that the run
// rejected exactly them.
func poisonedRun(t *testing.T, w *workspace, hook *poisonHook) *report {
	t.Helper()
	r, rep := w.sync()
	if r.Code != 3 || rep.Status != "partial" || rep.Rows.Rejected != 2 || rep.delivered("webhook") != 998 {
		t.Fatalf("sync: want exit 3, 2 rows rejected, 998 delivered\n%s\n%s", r, rep)
	}
	checkExactlyOnce(t, "first run", hook.take(), slices.DeleteFunc(idRange(0, 1000), func(s string) bool { return s == "42" || s == "777" }))
	return rep
}

// checkPoisonRejects checks the rejects of poisonedRun; prefix is the source's key prefix.
func checkPoisonRejects(t *testing.T, prefix string, rows []rejectLine) {
	t.Helper()
	if len(rows) != 2 {
		t.Fatalf("%d rejected rows, want 2: %+v", len(rows), rows)
	}
	slices.SortFunc(rows, func(a, b rejectLine) int { return strings.Compare(a.File, b.File) })
	for i, want := range []struct {
		file string
		row  int64
	}{{prefix + "part-00000.parquet", 42}, {prefix + "part-00001.parquet", 277}} {
		l := rows[i]
		if l.File != want.file || l.Row == nil || *l.Row != want.row || l.Destination == nil || *l.Destination != "webhook" ||
			!strings.Contains(l.Reason, "400") || !json.Valid(l.Message) {
			t.Errorf("reject %d: %+v; want %s row %d refused by webhook with its 400", i, l, want.file, want.row)
		}
	}
}

// tableRows counts the lines of `rejects list` that show the rows of poisonedRun: file,
// row, destination and, when whole, the reason with the receiver's 400.
func tableRows(out string, whole bool) int {
	found := 0
	for _, line := range strings.Split(out, "\n") {
		f := strings.Fields(line)
		if len(f) >= 4 && f[2] == "webhook" && (!whole || strings.Contains(line, "400") && strings.Contains(line, "is malformed")) &&
			((f[0] == "part-00000.parquet" && f[1] == "42") || (f[0] == "part-00001.parquet" && f[1] == "277")) {
			found++
		}
	}
	return found
}

// TestRejectsListAndRetry: a receiver refuses two rows; once it is fixed, `rejects retry`
// sends exactly those rows, once, and `rejects list` shows them.
func TestRejectsListAndRetry(t *testing.T) {
	hook, url := newPoisonHook(t, "42", "777")
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 500, RowGroupRows: 100, Seed: 61})
	w.writeConfig(usersConfig(webhookDest(url)))
	first := poisonedRun(t, w, hook)
	checkPoisonRejects(t, "", w.rejects(first))

	// The table: file, row, destination and reason; not on a terminal, reasons are whole.
	r := w.run("rejects", "list")
	if r.Code != 0 || !strings.Contains(r.Stdout, first.RunID) {
		t.Fatalf("rejects list: want exit 0 naming run %s\n%s", first.RunID, r)
	}
	if n := tableRows(r.Stdout, true); n != 2 {
		t.Errorf("rejects list shows %d of the 2 rows (file, row, destination, reason with the 400)\n%s", n, r)
	}
	// On a narrow terminal, reasons are cut to its width.
	w.env = []string{"COLUMNS=70"}
	r = w.run("rejects", "list")
	for _, line := range strings.Split(r.Stdout, "\n") {
		if n := utf8.RuneCountInString(line); n > 70 && !strings.HasPrefix(line, "Sync ") {
			t.Errorf("line of %d columns, COLUMNS=70: %q", n, line)
		}
	}
	if n := tableRows(r.Stdout, false); r.Code != 0 || n != 2 {
		t.Errorf("rejects list, COLUMNS=70: %d of the 2 rows\n%s", n, r)
	}
	w.env = nil
	l := w.listRejects()
	if l.Sync != "users" || l.RunID != first.RunID || l.Location != first.RejectsFile || l.RetriedBy != "" {
		t.Errorf("rejects list --json: sync %q run %q location %q; want users, %s, %s", l.Sync, l.RunID, l.Location, first.RunID, first.RejectsFile)
	}
	checkPoisonRejects(t, "", l.Rejects)

	// A run without rejects: exit 2, naming it and the runs that have some.
	r = w.run("rejects", "list", "--run", "20200101T000000Z-0badc0de")
	if r.Code != 2 || len(r.errorLines()) != 1 || !strings.Contains(r.Stderr, "20200101T000000Z-0badc0de") || !strings.Contains(r.Stderr, first.RunID) {
		t.Errorf("rejects list --run <no rejects>: want exit 2 naming the run and %s\n%s", first.RunID, r)
	}
	r = w.run("rejects", "retry", "--run", "20200101T000000Z-0badc0de")
	if r.Code != 2 || !strings.Contains(r.Stderr, first.RunID) {
		t.Errorf("rejects retry --run <no rejects>: want exit 2 naming %s\n%s", first.RunID, r)
	}

	// A retry while the receiver is down fails (exit 1) and sends nothing.
	hook.setPoison()
	hook.setDown(true)
	r, failed := w.retry()
	if r.Code != 1 || failed.Status != "failed" || len(r.errorLines()) != 1 || !strings.Contains(r.errorLines()[0], "webhook") {
		t.Fatalf("retry to a receiver that is down: want exit 1 and one line naming the webhook\n%s\n%+v", r, failed)
	}
	hook.setDown(false)

	// The receiver fixed, the retry (of the first run, not of the failed retry) delivers
	// exactly the two rows, once.
	r, rep := w.retry()
	if r.Code != 0 || rep.Status != "ok" || rep.RetryOf != first.RunID || rep.RunID == first.RunID ||
		rep.Rows.Read != 2 || rep.Rows.Sent != 2 || rep.Files.Read != 2 || rep.RejectsFile != "" {
		t.Fatalf("retry: want exit 0, 2 rows read and sent, retry_of %s\n%s\n%+v", first.RunID, r, rep)
	}
	got := hook.take()
	checkExactlyOnce(t, "retry", got, []string{"42", "777"})
	// The same messages as those refused: a replay is deduplicated downstream.
	for _, m := range got {
		found := false
		for _, l := range w.rejects(first) {
			var refused message
			_ = json.Unmarshal(l.Message, &refused)
			found = found || refused.MessageID == m.MessageID
		}
		if !found {
			t.Errorf("user %s retried with messageId %s, not the refused one", m.UserID, m.MessageID)
		}
	}

	// Nothing is left to retry; retrying again sends nothing.
	r = w.run("rejects", "retry")
	if r.Code != 0 || !strings.Contains(r.Stderr, "no rejected rows left to retry") {
		t.Errorf("second retry: want exit 0, nothing left\n%s", r)
	}
	if got := hook.take(); len(got) != 0 {
		t.Errorf("the second retry sent %d messages", len(got))
	}
	if l := w.listRejects(); l.RunID != first.RunID || l.RetriedBy != rep.RunID {
		t.Errorf("rejects list after the retry: run %s retried by %q; want %s retried by %s", l.RunID, l.RetriedBy, first.RunID, rep.RunID)
	}
	// The retry is in the run history with the syncs.
	if rep := w.mustSync(0); rep.Rows.Sent != 0 {
		t.Errorf("the sync after the retry sent %d rows", rep.Rows.Sent)
	}
}

// TestRejectsRetryFileChanged: a file overwritten since the run is reported, and none of
// its rows sent.
func TestRejectsRetryFileChanged(t *testing.T) {
	hook, url := newPoisonHook(t, "42", "777")
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 500, RowGroupRows: 100, Seed: 62})
	w.writeConfig(usersConfig(webhookDest(url)))
	first := poisonedRun(t, w, hook)

	// part-00000.parquet is overwritten with other rows; part-00001.parquet is unchanged.
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 600, Seed: 63, FirstID: 10_000})
	hook.setPoison()
	r, rep := w.retry()
	if r.Code != 3 || rep.Status != "partial" || rep.Files.Changed != 1 || rep.Rows.NotRetried != 1 || rep.Rows.Sent != 1 {
		t.Fatalf("retry: want exit 3, 1 file changed, 1 row not retried, 1 sent\n%s\n%+v", r, rep)
	}
	checkExactlyOnce(t, "retry", hook.take(), []string{"777"})
	if len(rep.FileErrors) != 1 || rep.FileErrors[0].Key != "part-00000.parquet" || !strings.Contains(rep.FileErrors[0].Error, "changed") {
		t.Errorf("file_errors %+v: want part-00000.parquet changed", rep.FileErrors)
	}
	lines := r.errorLines()
	if len(lines) != 1 || !strings.Contains(lines[0], "part-00000.parquet") || !strings.Contains(lines[0], "changed since run "+first.RunID) {
		t.Errorf("want one line on stderr naming the changed file\n%s", r)
	}

	// With every file changed, nothing at all is sent.
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 600, Seed: 64, FirstID: 20_000})
	r, rep = w.retry("--run", first.RunID)
	if r.Code != 3 || rep.Files.Changed != 2 || rep.Rows.Sent != 0 || rep.Rows.NotRetried != 2 {
		t.Fatalf("retry of two changed files: want exit 3, nothing sent\n%s\n%+v", r, rep)
	}
	if got := hook.take(); len(got) != 0 {
		t.Errorf("a retry of changed files sent %d messages", len(got))
	}
}

// TestRejectsOnS3State: list and retry with the state (and the source) on S3.
func TestRejectsOnS3State(t *testing.T) {
	m := testutil.StartMinIO(t)
	src, state := m.Bucket(t), m.Bucket(t)
	uploadUsers(t, m, src, "users/", exampledata.Options{Files: 2, RowsPerFile: 500, RowGroupRows: 100, Seed: 65})
	hook, url := newPoisonHook(t, "42", "777")
	w := s3Workspace(t, m, src, state, "rejects", webhookDest(url))
	first := poisonedRun(t, w, hook)
	if !strings.HasPrefix(first.RejectsFile, "s3://"+state+"/rejects/") {
		t.Fatalf("the rejects file is %q, want it in the state bucket", first.RejectsFile)
	}

	l := w.listRejects()
	if l.RunID != first.RunID || l.Location != first.RejectsFile {
		t.Errorf("rejects list --json: run %q location %q; want %s, %s", l.RunID, l.Location, first.RunID, first.RejectsFile)
	}
	checkPoisonRejects(t, "users/", l.Rejects)
	if r := w.run("rejects", "list"); r.Code != 0 || !strings.Contains(r.Stdout, "part-00001.parquet") {
		t.Errorf("rejects list on s3 state\n%s", r)
	}

	hook.setPoison("777") // still refused
	r, rep := w.retry()
	if r.Code != 3 || rep.Rows.Sent != 1 || rep.Rows.Rejected != 1 || !strings.HasPrefix(rep.RejectsFile, "s3://"+state+"/") {
		t.Fatalf("retry: want exit 3, 1 sent, 1 refused again into an s3 rejects file\n%s\n%+v", r, rep)
	}
	checkExactlyOnce(t, "retry", hook.take(), []string{"42"})

	// The newest run with rejects is now the retry's; retrying it delivers the last row.
	hook.setPoison()
	if l := w.listRejects(); l.RunID != rep.RunID || len(l.Rejects) != 1 {
		t.Errorf("rejects list: run %s with %d rows; want the retry %s with 1", l.RunID, len(l.Rejects), rep.RunID)
	}
	r, rep2 := w.retry()
	if r.Code != 0 || rep2.RetryOf != rep.RunID || rep2.Rows.Sent != 1 {
		t.Fatalf("second retry: want exit 0, retry_of %s, 1 sent\n%s\n%+v", rep.RunID, r, rep2)
	}
	checkExactlyOnce(t, "second retry", hook.take(), []string{"777"})
	if r := w.run("rejects", "retry"); r.Code != 0 || !strings.Contains(r.Stderr, "no rejected rows left") {
		t.Errorf("third retry: want nothing left\n%s", r)
	}
	if got := hook.take(); len(got) != 0 {
		t.Errorf("the third retry sent %d messages", len(got))
	}
}

// The rejects commands' usage errors exit 2 with one line; a sync without rejects has
// nothing to list or retry (exit 0).
func TestRejectsUsage(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 10})
	w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
	for _, args := range [][]string{
		{"rejects"},
		{"rejects", "bogus"},
		{"rejects", "list", "extra"},
		{"rejects", "list", "--run", "../../etc/passwd"},
		{"rejects", "retry", "--run", "20200101T000000Z-0badc0de"},
		{"rejects", "retry", "--sync", "nope"},
	} {
		r := w.run(args...)
		if r.Code != 2 || len(r.errorLines()) != 1 {
			t.Errorf("%v: exit %d with error lines %q, want exit 2 and one line\n%s", args, r.Code, r.errorLines(), r)
		}
	}
	if r := w.run("rejects", "list"); r.Code != 0 || !strings.Contains(r.Stdout, "no rejected rows") {
		t.Errorf("rejects list without rejects: want exit 0 saying so\n%s", r)
	}
	if l := w.listRejects(); l.Sync != "users" || len(l.Rejects) != 0 {
		t.Errorf("rejects list --json without rejects: %+v", l)
	}
	if r := w.run("rejects", "retry"); r.Code != 0 || !strings.Contains(r.Stderr, "no rejected rows to retry") {
		t.Errorf("rejects retry without rejects: want exit 0 saying so\n%s", r)
	}
	if exists(w.path(".backflow", "history")) {
		t.Errorf("a retry of nothing wrote a run history")
	}
}
