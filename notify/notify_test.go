package notify_test

import (
	"bytes"
	"context"
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// receiver is a loopback HTTP server that records what it is sent and answers with
// answer (200 when nil).
type receiver struct {
	*httptest.Server
	answer func(n int, w http.ResponseWriter, r *http.Request)

	mu   sync.Mutex
	got  []received
	hits int
}

type received struct {
	path   string
	header http.Header
	body   []byte
	at     time.Time
}

func newReceiver(t *testing.T, answer func(n int, w http.ResponseWriter, r *http.Request)) *receiver {
	t.Helper()
	rc := &receiver{answer: answer}
	rc.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		rc.mu.Lock()
		rc.hits++
		n := rc.hits
		rc.got = append(rc.got, received{path: r.URL.Path, header: r.Header.Clone(), body: b, at: time.Now()})
		rc.mu.Unlock()
		if rc.answer != nil {
			rc.answer(n, w, r)
		}
	}))
	t.Cleanup(rc.Close)
	return rc
}

func (rc *receiver) requests() []received {
	rc.mu.Lock()
	defer rc.mu.Unlock()
	return slices.Clone(rc.got)
}

// events returns the "event" of every webhook body received at path, in order.
func (rc *receiver) events(t *testing.T, path string) []string {
	t.Helper()
	var out []string
	for _, r := range rc.requests() {
		if r.path != path {
			continue
		}
		var p notify.Payload
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatalf("body %s: %v", r.body, err)
		}
		out = append(out, p.Event)
	}
	return out
}

// logBuffer collects log output from concurrent goroutines.
type logBuffer struct {
	mu  sync.Mutex
	buf bytes.Buffer
}

func (l *logBuffer) Write(p []byte) (int, error) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.Write(p)
}

func (l *logBuffer) String() string {
	l.mu.Lock()
	defer l.mu.Unlock()
	return l.buf.String()
}

// plainLogger logs every level as JSON without any scrubbing: what reaches it is what
// the notify package itself wrote.
func plainLogger(w io.Writer) *slog.Logger {
	return slog.New(slog.NewJSONHandler(w, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// oneSync is a config with one sync "users" and the given notify entries (top level and
// the sync's own), defaulted as Load would.
func oneSync(top, own []config.Notify) *config.Config {
	c := &config.Config{Notify: top, Syncs: []config.Sync{{Name: "users", Notify: own}}}
	c.SetDefaults(nil)
	for _, ns := range [][]config.Notify{c.Notify, c.Syncs[0].Notify} {
		for i := range ns {
			if ns[i].On == nil {
				ns[i].On = config.DefaultNotifyOn()
			}
		}
	}
	return c
}

func report(runID, status string) *pipeline.Report {
	r := &pipeline.Report{
		Sync: "users", RunID: runID, Status: status, Mode: "incremental",
		Rows:         pipeline.RowCounts{Read: 1000, Sent: 990, Rejected: 10},
		Files:        pipeline.FileCounts{Listed: 2, Read: 2},
		Destinations: map[string]*pipeline.DestinationCount{"segment": {Delivered: 990, Failed: 10}, "crm": {Delivered: 1000}},
		StartedAt:    time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC),
	}
	if status == pipeline.StatusFailed {
		r.Error = "listing s3://acme/users/: connection refused"
	}
	return r
}

func wait(t *testing.T, n *notify.Notifier) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), n.MaxDelay()+5*time.Second)
	defer cancel()
	if err := n.Wait(ctx); err != nil {
		t.Fatalf("Wait: %v", err)
	}
}

func TestTransition(t *testing.T) {
	ok, partial, failed := pipeline.StatusOK, pipeline.StatusPartial, pipeline.StatusFailed
	tests := []struct {
		prev, status string
		want         []string
	}{
		{"", ok, []string{notify.EventSucceeded}},
		{"", failed, []string{notify.EventFailed}},
		{"", partial, []string{notify.EventPartial}},
		{ok, ok, []string{notify.EventSucceeded}},
		{ok, failed, []string{notify.EventFailed}},
		{failed, failed, nil},
		{partial, partial, nil},
		{failed, partial, []string{notify.EventPartial}},
		{partial, failed, []string{notify.EventFailed}},
		{failed, ok, []string{notify.EventSucceeded, notify.EventRecovered}},
		{partial, ok, []string{notify.EventSucceeded, notify.EventRecovered}},
		{ok, "weird", []string{notify.EventFailed}},
	}
	for _, tc := range tests {
		if got := notify.Transition(tc.prev, tc.status); !slices.Equal(got, tc.want) {
			t.Errorf("Transition(%q, %q) = %q, want %q", tc.prev, tc.status, got, tc.want)
		}
	}
}

// TestEventsOverRuns runs the sequence ok, failed, failed, partial, ok through a real
// local state store, the way `backflow sync` does (Started, run, Finished, then the
// report joins the history), and checks what each subscription received.
func TestEventsOverRuns(t *testing.T) {
	ctx := context.Background()
	store, err := state.Open(ctx, config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	rc := newReceiver(t, nil)
	cfg := oneSync(
		[]config.Notify{{Type: "webhook", URL: rc.URL + "/default"}},
		[]config.Notify{
			{Type: "webhook", URL: rc.URL + "/changes", On: []string{"failed", "partial", "recovered"}},
			{Type: "webhook", URL: rc.URL + "/all", On: []string{"started", "succeeded", "partial", "failed", "recovered"}},
		},
	)
	n := notify.New(notify.Options{Config: cfg, History: store})
	for i, status := range []string{"ok", "failed", "failed", "partial", "ok"} {
		id := pipeline.NewRunID(time.Now()) + "-" + itoa(i)
		n.Started("users", id)
		rep := report(id, status)
		n.Finished(ctx, rep)
		b, _ := json.Marshal(rep)
		if err := store.AppendHistory(ctx, "users", b, 20); err != nil {
			t.Fatal(err)
		}
		wait(t, n) // each run's notifications before the next run, to compare orders
	}
	// A dry run raises nothing, whatever the history says.
	n.Finished(ctx, &pipeline.Report{Sync: "users", RunID: "dry", Status: "failed", DryRun: true})
	wait(t, n)

	check := func(path string, want []string) {
		t.Helper()
		if got := rc.events(t, path); !slices.Equal(got, want) {
			t.Errorf("%s received %q, want %q", path, got, want)
		}
	}
	check("/default", []string{"run.failed", "sync.recovered"})
	check("/changes", []string{"run.failed", "run.partial", "sync.recovered"})
	check("/all", []string{
		"run.started", "run.succeeded",
		"run.started", "run.failed",
		"run.started",
		"run.started", "run.partial",
		"run.started", "run.succeeded", "sync.recovered",
	})
}

// TestWebhookSigned: a receiver verifies the signature of every body with the shared
// secret, and the body has SPEC.md's fields.
func TestWebhookSigned(t *testing.T) {
	const secret = "notify-signing-secret"
	var bad []string
	rc := newReceiver(t, nil)
	cfg := oneSync(nil, []config.Notify{
		{Type: "webhook", URL: rc.URL + "/signed", Secret: secret, On: []string{"started", "failed"}},
		{Type: "webhook", URL: rc.URL + "/unsigned", On: []string{"failed"}},
	})
	cfg.Serve.PublicURL = "https://backflow.example.com/ops/"
	n := notify.New(notify.Options{Config: cfg})
	n.Started("users", "run-1")
	n.Finished(context.Background(), report("run-1", "failed"))
	wait(t, n)

	reqs := rc.requests()
	if len(reqs) != 3 {
		t.Fatalf("received %d requests, want 3", len(reqs))
	}
	for _, r := range reqs {
		sig := r.header.Get("X-Backflow-Signature")
		if r.path == "/unsigned" {
			if sig != "" {
				t.Errorf("unsigned entry sent a signature %q", sig)
			}
			continue
		}
		mac := hmac.New(sha256.New, []byte(secret))
		mac.Write(r.body)
		want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
		if !hmac.Equal([]byte(sig), []byte(want)) {
			bad = append(bad, string(r.body))
		}
		if ct := r.header.Get("Content-Type"); ct != "application/json" {
			t.Errorf("Content-Type %q", ct)
		}
		var p map[string]any
		if err := json.Unmarshal(r.body, &p); err != nil {
			t.Fatal(err)
		}
		if r.header.Get("X-Backflow-Event") != p["event"] {
			t.Errorf("X-Backflow-Event %q, body event %v", r.header.Get("X-Backflow-Event"), p["event"])
		}
		switch p["event"] {
		case "run.started":
			if p["status"] != "running" || p["run_id"] != "run-1" || p["sync"] != "users" || p["report"] != nil {
				t.Errorf("started body: %s", r.body)
			}
		case "run.failed":
			rep, _ := p["report"].(map[string]any)
			if p["status"] != "failed" || p["run_id"] != "run-1" || p["sync"] != "users" ||
				p["error"] != "listing s3://acme/users/: connection refused" || rep["run_id"] != "run-1" || rep["rows"] == nil ||
				p["url"] != "https://backflow.example.com/ops/ui/syncs/users" {
				t.Errorf("failed body: %s", r.body)
			}
		default:
			t.Errorf("unexpected event: %s", r.body)
		}
	}
	if len(bad) > 0 {
		t.Errorf("bad signatures on %q", bad)
	}
	// RFC 4231-style known vector: HMAC-SHA256("key", "The quick brown fox …").
	if got := notify.Signature([]byte("key"), []byte("The quick brown fox jumps over the lazy dog")); got != "sha256=f7bc83f430538424b13298e6aa6fb143ef4d59a14946175997479dbc2d1a3cd8" {
		t.Errorf("Signature = %q", got)
	}
}

// TestSlackText: the text names the sync and status, has the counts, the error and the
// link to the sync's page, with Slack's special characters escaped.
func TestSlackText(t *testing.T) {
	rc := newReceiver(t, nil)
	cfg := oneSync([]config.Notify{{Type: "slack", URL: rc.URL + "/services/T0/B0/x", On: []string{"failed", "recovered"}}}, nil)
	cfg.Serve.PublicURL = "https://backflow.example.com"
	n := notify.New(notify.Options{Config: cfg})
	rep := report("run-2", "failed")
	rep.Error = "row <12> & more"
	n.Finished(context.Background(), rep)
	wait(t, n)
	reqs := rc.requests()
	if len(reqs) != 1 {
		t.Fatalf("received %d requests, want 1", len(reqs))
	}
	var msg map[string]string
	if err := json.Unmarshal(reqs[0].body, &msg); err != nil || len(msg) != 1 {
		t.Fatalf("not a Slack message: %s (%v)", reqs[0].body, err)
	}
	text := msg["text"]
	t.Logf("Slack text:\n%s", text)
	for _, want := range []string{
		"*users* failed", "run-2", "1000 read", "990 sent", "10 rejected",
		"crm: 1000 delivered, 0 failed", "segment: 990 delivered, 10 failed",
		"error: row &lt;12&gt; &amp; more", "https://backflow.example.com/ui/syncs/users",
	} {
		if !strings.Contains(text, want) {
			t.Errorf("text lacks %q:\n%s", want, text)
		}
	}
	if reqs[0].header.Get("X-Backflow-Signature") != "" {
		t.Error("a Slack message was signed")
	}
}

// TestHangingReceiver: a receiver that never answers costs each attempt its timeout;
// Finished returns at once, Wait within MaxDelay, and the failure is logged.
func TestHangingReceiver(t *testing.T) {
	release := make(chan struct{})
	rc := newReceiver(t, func(_ int, _ http.ResponseWriter, r *http.Request) {
		select {
		case <-r.Context().Done():
		case <-release:
		}
	})
	defer close(release) // before rc.Close (cleanup), which waits for handlers
	var logs logBuffer
	cfg := oneSync([]config.Notify{{Type: "webhook", URL: rc.URL + "/hang"}}, nil)
	n := notify.New(notify.Options{Config: cfg, Logger: plainLogger(&logs), Timeout: 150 * time.Millisecond, Attempts: 2, Backoff: 10 * time.Millisecond})

	began := time.Now()
	n.Finished(context.Background(), report("run-3", "failed"))
	if d := time.Since(began); d > 100*time.Millisecond {
		t.Errorf("Finished took %s: it must not wait for the receiver", d)
	}
	wait(t, n)
	took := time.Since(began)
	if took > n.MaxDelay()+time.Second {
		t.Errorf("Wait returned after %s, MaxDelay is %s", took, n.MaxDelay())
	}
	if got := len(rc.requests()); got != 2 {
		t.Errorf("%d attempts, want 2", got)
	}
	out := logs.String()
	if !strings.Contains(out, "notification not delivered") || !strings.Contains(out, "no answer within 150ms") {
		t.Errorf("the failure is not logged:\n%s", out)
	}
}

// TestServerErrorRetried: 500s are retried and then logged; a receiver that recovers
// within the attempts gets the notification once; a 400 is not retried.
func TestServerErrorRetried(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		switch {
		case r.URL.Path == "/always":
			http.Error(w, "boom", http.StatusInternalServerError)
		case r.URL.Path == "/bad":
			http.Error(w, "no such channel", http.StatusBadRequest)
		}
	})
	var logs logBuffer
	cfg := oneSync(nil, []config.Notify{
		{Type: "webhook", URL: rc.URL + "/always", On: []string{"failed"}},
		{Type: "webhook", URL: rc.URL + "/bad", On: []string{"failed"}},
	})
	n := notify.New(notify.Options{Config: cfg, Logger: plainLogger(&logs), Attempts: 3, Backoff: 5 * time.Millisecond})
	n.Finished(context.Background(), report("run-4", "failed"))
	wait(t, n)
	count := func(path string) int {
		c := 0
		for _, r := range rc.requests() {
			if r.path == path {
				c++
			}
		}
		return c
	}
	if c := count("/always"); c != 3 {
		t.Errorf("/always got %d attempts, want 3", c)
	}
	if c := count("/bad"); c != 1 {
		t.Errorf("/bad got %d attempts, want 1 (a 400 is not retried)", c)
	}
	out := logs.String()
	for _, want := range []string{"answered 500 Internal Server Error: boom", "answered 400 Bad Request: no such channel", "notify[0] (webhook to 127.0.0.1"} {
		if !strings.Contains(out, want) {
			t.Errorf("log lacks %q:\n%s", want, out)
		}
	}

	// Flaky: 503 once, then 200.
	flaky := newReceiver(t, func(n int, w http.ResponseWriter, _ *http.Request) {
		if n == 1 {
			w.WriteHeader(http.StatusServiceUnavailable)
		}
	})
	var logs2 logBuffer
	n = notify.New(notify.Options{Config: oneSync([]config.Notify{{Type: "slack", URL: flaky.URL + "/x"}}, nil), Logger: plainLogger(&logs2), Backoff: 5 * time.Millisecond})
	n.Finished(context.Background(), report("run-5", "failed"))
	wait(t, n)
	if got := len(flaky.requests()); got != 2 {
		t.Errorf("flaky receiver got %d requests, want 2", got)
	}
	if strings.Contains(logs2.String(), "not delivered") || !strings.Contains(logs2.String(), "notification sent") {
		t.Errorf("flaky receiver: want one delivery and no failure logged:\n%s", logs2.String())
	}
}

// TestSecretsNotLogged: URLs whose path and query are credentials, and signing
// secrets, never reach the log, even when the receiver echoes the URL or the
// connection is refused.
func TestSecretsNotLogged(t *testing.T) {
	rc := newReceiver(t, func(_ int, w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusBadGateway)
		_, _ = io.WriteString(w, "bad gateway for "+r.URL.String())
	})
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	closed := "http://" + l.Addr().String()
	l.Close()
	var logs logBuffer
	cfg := oneSync(
		[]config.Notify{{Type: "slack", URL: rc.URL + "/services/T0KEN-IN-PATH?key=QUERY-SECRET"}},
		[]config.Notify{{Type: "webhook", URL: closed + "/hooks/CLOSED-PORT-SECRET", Secret: "SIGNING-SECRET"}},
	)
	n := notify.New(notify.Options{Config: cfg, Logger: plainLogger(&logs), Attempts: 2, Backoff: time.Millisecond})
	n.Finished(context.Background(), report("run-6", "failed"))
	wait(t, n)
	out := logs.String()
	t.Logf("log:\n%s", out)
	if strings.Count(out, "notification not delivered") != 2 {
		t.Errorf("want two failures logged:\n%s", out)
	}
	for _, secret := range []string{"T0KEN-IN-PATH", "QUERY-SECRET", "CLOSED-PORT-SECRET", "SIGNING-SECRET"} {
		if strings.Contains(out, secret) {
			t.Errorf("the log shows %q", secret)
		}
	}
}

// TestNilNotifier: a nil *Notifier (no notifications: a dry run) does nothing.
func TestNilNotifier(t *testing.T) {
	var n *notify.Notifier
	n.Started("users", "x")
	n.Finished(context.Background(), report("x", "failed"))
	if err := n.Wait(context.Background()); err != nil || n.MaxDelay() != 0 {
		t.Fatal("a nil Notifier must do nothing")
	}
}

func itoa(i int) string { return strconv.Itoa(i) }
