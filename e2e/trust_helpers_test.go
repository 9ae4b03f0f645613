package e2e

// Helpers of trust_test.go (issue 10, "Delivery you can trust"). Every identifier here
// starts with "trust": other files of the package are written by other people.

import (
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"net/http/httptest"
	"os"
	"regexp"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/internal/testutil"
)

// trustConfig writes backflow.yaml into the crash workspace s: one identify sync "users"
// of data/, with the state and the destinations given as YAML (state: the lines under
// "state:", indented by two; dests: list items indented by six), and extra lines of the
// sync (indented by four: mode, source options).
func trustConfig(t *testing.T, s *crashSpace, stateYAML, extra, dests string) {
	t.Helper()
	if stateYAML == "" {
		stateYAML = "  url: .backflow\n"
	}
	cfg := "state:\n" + stateYAML + `syncs:
  - name: ` + crashSyncName + `
    source:
      url: data
    mapping:
      type: identify
      user_id: customer_id
      anonymous_id: anon_id
` + extra + `    destinations:
` + dests
	if err := os.WriteFile(s.path("backflow.yaml"), []byte(cfg), 0o644); err != nil {
		t.Fatal(err)
	}
}

// trustS3YAML are the connection settings of an s3:// state or destination on the test's
// MinIO, indented by indent spaces. The keys are the throwaway root keys of the test's own
// server, written in the file: crashSpace runs the binary with a minimal environment.
func trustS3YAML(m *testutil.MinIO, indent int) string {
	p := strings.Repeat(" ", indent)
	return p + "region: us-east-1\n" +
		p + "endpoint: " + m.Endpoint + "\n" +
		p + "path_style: true\n" +
		p + "auth:\n" +
		p + "  mode: keys\n" +
		p + "  access_key_id: " + m.AccessKey + "\n" +
		p + "  secret_access_key: " + m.SecretKey + "\n"
}

// trustRunningElsewhere is SPEC.md's line for a run that finds the sync's lease held.
var trustRunningElsewhere = regexp.MustCompile(`sync users is running elsewhere \(host [^,]+, pid (\d+), run [^,]+, since [^)]+\)`)

// trustWaitPosts waits until the crash hook got at least n POSTs, failing the test when
// the process ends first or the deadline passes.
func trustWaitPosts(t *testing.T, hook *crashHook, p *crashProc, n int, within time.Duration) {
	t.Helper()
	deadline := time.NewTimer(within)
	defer deadline.Stop()
	for {
		posts, _ := hook.snapshot()
		if len(posts) >= n {
			return
		}
		select {
		case <-hook.arrived:
		case <-p.done:
			posts, _ := hook.snapshot()
			if len(posts) >= n {
				return
			}
			t.Fatalf("the sync ended before %d POSTs arrived (%d did)\n%s", n, len(posts), p.output())
		case <-deadline.C:
			t.Fatalf("%d POSTs did not arrive within %v\n%s", n, within, p.output())
		}
	}
}

// trustMsgCounts counts the deliveries of every messageId the crash hook got.
func trustMsgCounts(hook *crashHook) (counts map[string]int, users map[int64]bool) {
	posts, _ := hook.snapshot()
	counts, users = map[string]int{}, map[int64]bool{}
	for _, p := range posts {
		for i, id := range p.ids {
			counts[p.msgIDs[i]]++
			users[id] = true
		}
	}
	return counts, users
}

// ---- a webhook receiver whose answers a test decides ----

// trustRequest is one POST a trustHook got.
type trustRequest struct {
	users    []string // userIds, in order
	msgIDs   []string
	received time.Time
	status   int
}

// trustHook is a webhook receiver on 127.0.0.1 that answers each POST with what answer
// decides (given the userIds of the batch); 2xx answers count as deliveries.
type trustHook struct {
	t      *testing.T
	srv    *httptest.Server
	answer func(users []string) (status int, header http.Header)

	mu       sync.Mutex
	requests []trustRequest
	arrived  chan struct{} // closed and replaced on every request
}

func newTrustHook(t *testing.T, answer func(users []string) (int, http.Header)) *trustHook {
	t.Helper()
	h := &trustHook{t: t, answer: answer, arrived: make(chan struct{})}
	h.srv = httptest.NewServer(h)
	t.Cleanup(h.srv.Close)
	return h
}

func (h *trustHook) url() string { return h.srv.URL + "/hook" }

func (h *trustHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return
	}
	var b struct {
		Batch []struct {
			UserID    string `json:"userId"`
			MessageID string `json:"messageId"`
		} `json:"batch"`
	}
	req := trustRequest{received: time.Now()}
	if err := json.Unmarshal(body, &b); err != nil {
		h.t.Errorf("a POST is not a {\"batch\":[…]}: %v: %.200s", err, body)
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	for _, m := range b.Batch {
		req.users = append(req.users, m.UserID)
		req.msgIDs = append(req.msgIDs, m.MessageID)
	}
	h.mu.Lock()
	status, hdr := h.answer(req.users) // under mu: answer may keep state
	req.status = status
	h.requests = append(h.requests, req)
	close(h.arrived)
	h.arrived = make(chan struct{})
	h.mu.Unlock()
	for k, vs := range hdr {
		for _, v := range vs {
			w.Header().Add(k, v)
		}
	}
	w.WriteHeader(status)
	fmt.Fprintf(w, `{"status":%d}`, status)
}

// snapshot returns the requests so far.
func (h *trustHook) snapshot() []trustRequest {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]trustRequest, len(h.requests))
	copy(out, h.requests)
	return out
}

// waitRequests waits until at least n requests arrived, or ctx ends.
func (h *trustHook) waitRequests(ctx context.Context, n int) error {
	for {
		h.mu.Lock()
		got, ch := len(h.requests), h.arrived
		h.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d requests arrived, waiting for %d: %w", got, n, ctx.Err())
		}
	}
}

// delivered returns, per userId, how often a 2xx answer accepted it.
func (h *trustHook) delivered() map[string]int {
	out := map[string]int{}
	for _, r := range h.snapshot() {
		if r.status/100 == 2 {
			for _, u := range r.users {
				out[u]++
			}
		}
	}
	return out
}
