package e2e

import (
	"encoding/json"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
)

func webhookDest(url string) map[string]any {
	return map[string]any{"type": "webhook", "url": url, "batch_size": 100, "retry": fastRetry(3), "timeout": "2s"}
}

// TestWebhookRefusesForGood: an endpoint answering 401 to everything fails the run with
// one clear line; nothing is acknowledged, so the next run, with the credentials fixed,
// sends every row.
func TestWebhookRefusesForGood(t *testing.T) {
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		Path: "/hook", Headers: map[string]string{"X-Token": "let-me-in"},
	})
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 500, Seed: 10})
	w.writeConfig(usersConfig(webhookDest(hook.URL + "/hook")))

	r, rep := w.sync()
	if r.Code != 1 || rep.Status != "failed" {
		t.Fatalf("want exit 1, status failed\n%s\n%s", r, rep)
	}
	lines := r.errorLines()
	if len(lines) != 1 || !strings.Contains(lines[0], "webhook") || !strings.Contains(lines[0], "401") {
		t.Errorf("want one error line naming the webhook and its 401, got %q\n%s", lines, r)
	}
	if rep.delivered("webhook") != 0 || rep.Rows.Sent != 0 || rep.Rows.Rejected != 0 {
		t.Errorf("want nothing delivered nor rejected\n%s", rep)
	}
	for _, b := range hook.Batches() {
		if b.Status != 401 {
			t.Errorf("a request was answered %d", b.Status)
		}
	}
	// A refused credential is not split message by message: few requests were made.
	if n := len(hook.Batches()); n > 12 {
		t.Errorf("%d requests answered 401: the refused batches were split or retried", n)
	}

	// The credentials fixed, the next run delivers every row.
	d := webhookDest(hook.URL + "/hook")
	d["headers"] = map[string]any{"X-Token": "let-me-in"}
	w.writeConfig(usersConfig(d))
	rep = w.mustSync(0)
	if rep.FullSync || rep.delivered("webhook") != 1000 {
		t.Errorf("the run after: want an incremental run delivering all 1000 rows\n%s", rep)
	}
	checkExactlyOnce(t, "webhook", received(t, hook), idRange(0, 1000))
}

// TestWebhookUnreachable: a closed port fails the run quickly with one clear line.
func TestWebhookUnreachable(t *testing.T) {
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 300, Seed: 11})
	url := closedPort(t)
	w.writeConfig(usersConfig(webhookDest(url)))
	start := time.Now()
	r, rep := w.sync()
	if r.Code != 1 || rep.Status != "failed" || rep.delivered("webhook") != 0 {
		t.Fatalf("want exit 1, nothing delivered\n%s\n%s", r, rep)
	}
	lines := r.errorLines()
	if len(lines) != 1 || !strings.Contains(lines[0], "webhook") || !strings.Contains(lines[0], "refused") {
		t.Errorf("want one error line naming the webhook and the refused connection, got %q", lines)
	}
	if d := time.Since(start); d > 15*time.Second {
		t.Errorf("the run took %s with 3 attempts of max_backoff 20ms", d)
	}
	// Nothing acknowledged: the checkpoint holds the file with 0 rows acknowledged.
	r = w.run("state", "show", "--json")
	var cp struct {
		Files map[string]struct {
			Acked map[string]int64 `json:"acked"`
		} `json:"files"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &cp); err != nil {
		t.Fatalf("state show --json: %v\n%s", err, r)
	}
	for k, f := range cp.Files {
		if f.Acked["webhook"] != 0 {
			t.Errorf("file %s: %d rows acknowledged by an unreachable webhook", k, f.Acked["webhook"])
		}
	}
}

// hookRecorder is a webhook endpoint that accepts the first `accept` requests carrying
// messages, then answers 503 to every later one, recording what it accepted.
type hookRecorder struct {
	mu       sync.Mutex
	accept   int
	answered int
	got      []message
}

func (h *hookRecorder) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	defer h.mu.Unlock()
	h.answered++
	if h.accept >= 0 && h.answered > h.accept {
		w.WriteHeader(http.StatusServiceUnavailable)
		return
	}
	for _, raw := range body.Batch {
		var m message
		_ = json.Unmarshal(raw, &m)
		m.line = raw
		h.got = append(h.got, m)
	}
	w.WriteHeader(http.StatusOK)
}

func (h *hookRecorder) set(accept int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.accept, h.answered = accept, 0
}

func (h *hookRecorder) messages() []message {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got)
}

// TestWebhookFailsMidway: an endpoint that goes down after 5 batches fails the run; what
// it acknowledged is checkpointed, and the next run sends exactly the rest.
func TestWebhookFailsMidway(t *testing.T) {
	h := &hookRecorder{accept: 5}
	srv := httptest.NewServer(h)
	t.Cleanup(srv.Close)
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 1000, Seed: 18})
	d := webhookDest(srv.URL)
	d["max_in_flight"] = 1 // batches in order: exactly 500 rows acknowledged
	w.writeConfig(usersConfig(d))

	r, rep := w.sync()
	if r.Code != 1 || rep.Status != "failed" || rep.delivered("webhook") != 500 {
		t.Fatalf("want exit 1 with 500 rows delivered\n%s\n%s", r, rep)
	}
	if got := len(h.messages()); got != 500 {
		t.Errorf("the endpoint accepted %d messages, want 500", got)
	}
	h.set(-1)
	rep = w.mustSync(0)
	if rep.FullSync || rep.delivered("webhook") != 2500 {
		t.Errorf("the run after: want the 2500 remaining rows\n%s", rep)
	}
	checkExactlyOnce(t, "webhook over both runs", h.messages(), idRange(0, 3000))
}
