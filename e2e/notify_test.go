package e2e

// Notifications (SPEC.md, "Running unattended"): the real binary tells a loopback
// receiver what happened to runs of `backflow sync` and of `backflow serve`.

import (
	"crypto/hmac"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"go.yaml.in/yaml/v3"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// note is one notification a hookReceiver got.
type note struct {
	path  string
	event string // the webhook's "event"; "" for a Slack message
	text  string // the Slack message's "text"
	body  map[string]any
	at    time.Time
}

// hookReceiver is a loopback HTTP server standing for a webhook receiver and a Slack
// incoming webhook. Webhook bodies must carry a valid signature under secret.
type hookReceiver struct {
	*httptest.Server
	t      *testing.T
	secret string

	mu      sync.Mutex
	notes   []note
	arrived chan struct{} // closed and replaced on every notification
}

func newHookReceiver(t *testing.T, secret string) *hookReceiver {
	t.Helper()
	h := &hookReceiver{t: t, secret: secret, arrived: make(chan struct{})}
	h.Server = httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		at := time.Now()
		b, err := io.ReadAll(r.Body)
		if err != nil {
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		var body map[string]any
		if err := json.Unmarshal(b, &body); err != nil {
			t.Errorf("%s: not JSON: %s", r.URL.Path, b)
		}
		n := note{path: r.URL.Path, body: body, at: at}
		if strings.HasPrefix(r.URL.Path, "/slack/") {
			n.text, _ = body["text"].(string)
		} else {
			n.event, _ = body["event"].(string)
			mac := hmac.New(sha256.New, []byte(h.secret))
			mac.Write(b)
			want := "sha256=" + hex.EncodeToString(mac.Sum(nil))
			if got := r.Header.Get("X-Backflow-Signature"); !hmac.Equal([]byte(got), []byte(want)) {
				t.Errorf("%s: signature %q, want %q for %s", n.event, got, want, b)
			}
		}
		h.mu.Lock()
		h.notes = append(h.notes, n)
		close(h.arrived)
		h.arrived = make(chan struct{})
		h.mu.Unlock()
	}))
	t.Cleanup(h.Close)
	return h
}

// got returns the notifications received at paths starting with prefix, in order.
func (h *hookReceiver) got(prefix string) []note {
	h.mu.Lock()
	defer h.mu.Unlock()
	var out []note
	for _, n := range h.notes {
		if strings.HasPrefix(n.path, prefix) {
			out = append(out, n)
		}
	}
	return out
}

// events are the webhook events received at prefix, in order.
func (h *hookReceiver) events(prefix string) []string {
	var out []string
	for _, n := range h.got(prefix) {
		out = append(out, n.event)
	}
	return out
}

// waitFor waits until done holds for the notifications at prefix, without sleeping: it
// wakes on every arrival.
func (h *hookReceiver) waitFor(what, prefix string, done func([]note) bool) []note {
	h.t.Helper()
	deadline := time.After(serveWait)
	for {
		h.mu.Lock()
		arrived := h.arrived
		h.mu.Unlock()
		if ns := h.got(prefix); done(ns) {
			return ns
		}
		select {
		case <-arrived:
		case <-deadline:
			h.t.Fatalf("waited %s for %s; got %q", serveWait, what, h.events(prefix))
		}
	}
}

func countEvent(ns []note, event string) int {
	c := 0
	for _, n := range ns {
		if n.event == event {
			c++
		}
	}
	return c
}

// notifyYAML is c as YAML with the keys of top added at the top level and those of
// perSync added to every sync.
func notifyYAML(t testing.TB, c config, top, perSync map[string]any) string {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	for k, v := range top {
		m[k] = v
	}
	for _, sc := range m["syncs"].([]any) {
		for k, v := range perSync {
			sc.(map[string]any)[k] = v
		}
	}
	out, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// unreachableS3Source is an S3 source whose endpoint refuses connections: a run fails
// (exit 1) at the listing, quickly.
func unreachableS3Source(t testing.TB) map[string]any {
	return map[string]any{
		"url": "s3://exports/users/", "endpoint": "http://" + freeLoopbackAddr(t),
		"region": "us-east-1", "path_style": true,
		"auth": map[string]any{"mode": "keys", "access_key_id": "AKIDNOTIFY", "secret_access_key": "sk-notify-e2e"},
	}
}

// runEnd is when a run ended, from its report: started_at + duration_ms.
func runEnd(t testing.TB, raw []byte) time.Time {
	t.Helper()
	var r struct {
		StartedAt  time.Time `json:"started_at"`
		DurationMS int64     `json:"duration_ms"`
	}
	if err := json.Unmarshal(raw, &r); err != nil || r.StartedAt.IsZero() {
		t.Fatalf("report without started_at: %s (%v)", raw, err)
	}
	return r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
}

const (
	notifySecret = "hmac-secret-e2e-notify"
	notifyToken  = "T0KEN-e2e-notify" // the secret part of the receivers' URLs
)

// TestNotifySyncFailedOnceThenRecovered: a sync whose source fails twice and is then
// fixed notifies run.failed once across the two failed runs, then sync.recovered;
// run.started carries the run's id; a dry run and a configuration error notify
// nothing; the receivers' URLs and the signing secret never appear in the output.
func TestNotifySyncFailedOnceThenRecovered(t *testing.T) {
	t.Parallel()
	rc := newHookReceiver(t, notifySecret)
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 200, Seed: 61})
	w.env = append(w.env, "NOTIFY_URL="+rc.URL+"/hook/"+notifyToken, "NOTIFY_SECRET="+notifySecret)
	configText := func(source map[string]any) string {
		c := usersConfig(fileDest("out/users.jsonl"))
		c.Syncs[0].Source = source
		return notifyYAML(t, c, map[string]any{
			"serve":  map[string]any{"public_url": "https://backflow.example.com/"},
			"notify": []any{map[string]any{"type": "slack", "url": rc.URL + "/slack/" + notifyToken}}, // on: [failed, recovered]
		}, map[string]any{
			"notify": []any{map[string]any{"type": "webhook", "url": "${NOTIFY_URL}", "secret": "${NOTIFY_SECRET}",
				"on": []any{"started", "failed", "recovered"}}},
		})
	}
	var outputs []string
	sync := func(want int, args ...string) *report {
		t.Helper()
		r, rep := w.sync(args...)
		outputs = append(outputs, r.Stdout+r.Stderr)
		if r.Code != want {
			t.Fatalf("want exit %d\n%s", want, r)
		}
		return rep
	}
	// The CLI waits for its notifications before it exits: no polling below.
	latency := func(what string, rep *report, n note) {
		t.Helper()
		d := n.at.Sub(runEnd(t, rep.raw))
		t.Logf("%s: run end to notification at the receiver: %s", what, d)
		if d < -2*time.Millisecond || d > 5*time.Second {
			t.Errorf("%s arrived %s after the run ended", what, d)
		}
	}

	w.writeConfigText(configText(unreachableS3Source(t)))
	first := sync(1)
	hook := rc.got("/hook/")
	if got := rc.events("/hook/"); !slices.Equal(got, []string{"run.started", "run.failed"}) {
		t.Fatalf("after the first failed run the webhook got %q, want run.started, run.failed", got)
	}
	for _, n := range hook {
		if n.body["run_id"] != first.RunID || n.body["sync"] != "users" {
			t.Errorf("%s names run %v of %v, want run %s of users", n.event, n.body["run_id"], n.body["sync"], first.RunID)
		}
	}
	if f := hook[1].body; f["status"] != "failed" || f["error"] != first.Error || f["error"] == "" || f["report"] == nil {
		t.Errorf("run.failed body: %v; report error %q", f, first.Error)
	}
	latency("run.failed (sync)", first, hook[1])
	slack := rc.got("/slack/")
	if len(slack) != 1 || !strings.Contains(slack[0].text, "*users* failed") ||
		!strings.Contains(slack[0].text, "https://backflow.example.com/ui/syncs/users") {
		t.Fatalf("Slack got %d messages, want one about the failure with the link: %+v", len(slack), slack)
	}
	t.Logf("Slack text:\n%s", slack[0].text)

	sync(1) // still failing: run.started only
	if got := rc.events("/hook/"); !slices.Equal(got, []string{"run.started", "run.failed", "run.started"}) {
		t.Fatalf("after the second failed run the webhook got %q: run.failed must not repeat", got)
	}

	w.writeConfigText(configText(map[string]any{"url": "data"}))
	sync(0, "--dry-run")
	w.writeConfigText(configText(map[string]any{"url": "data"}) + "colour: blue\n")
	sync(2)
	if n := len(rc.got("/")); n != 4 {
		t.Fatalf("a dry run or a configuration error notified: %d notifications, want 4: %q", n, rc.events("/"))
	}

	w.writeConfigText(configText(map[string]any{"url": "data"}))
	fixed := sync(0)
	want := []string{"run.started", "run.failed", "run.started", "run.started", "sync.recovered"}
	if got := rc.events("/hook/"); !slices.Equal(got, want) {
		t.Fatalf("the webhook got %q, want %q", got, want)
	}
	hook = rc.got("/hook/")
	latency("sync.recovered (sync)", fixed, hook[4])
	slack = rc.got("/slack/")
	if len(slack) != 2 || !strings.Contains(slack[1].text, "*users* recovered") || !strings.Contains(slack[1].text, "200 sent") {
		t.Fatalf("Slack: want a second message saying the sync recovered, with its counts: %+v", slack)
	}

	for _, out := range outputs {
		for _, secret := range []string{notifyToken, notifySecret} {
			if strings.Contains(out, secret) {
				t.Errorf("the output shows %q:\n%s", secret, out)
			}
		}
	}
}

// TestNotifyServe: `serve` with `every: 1s` notifies too — its failing runs raise
// run.failed once however many there are, and once the source is fixed, sync.recovered
// after a served run, judged from the history the earlier process left.
func TestNotifyServe(t *testing.T) {
	t.Parallel()
	rc := newHookReceiver(t, notifySecret)
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 200, Seed: 62})
	configText := func(source map[string]any) string {
		c := usersConfig(fileDest("out/users.jsonl"))
		c.Syncs[0].Source = source
		return notifyYAML(t, c, nil, map[string]any{
			"schedule": map[string]any{"every": "1s"},
			"notify": []any{map[string]any{"type": "webhook", "url": rc.URL + "/hook/" + notifyToken, "secret": notifySecret,
				"on": []any{"started", "succeeded", "failed", "recovered"}}},
		})
	}

	w.writeConfigText(configText(unreachableS3Source(t)))
	s := w.startServe(t)
	ns := rc.waitFor("three scheduled runs to start", "/hook/", func(ns []note) bool { return countEvent(ns, "run.started") >= 3 })
	failed := ns[slices.IndexFunc(ns, func(n note) bool { return n.event == "run.failed" })]
	if rep, ok := failed.body["report"].(map[string]any); ok {
		raw, _ := json.Marshal(rep)
		t.Logf("run.failed (serve): run end to notification at the receiver: %s", failed.at.Sub(runEnd(t, raw)))
	} else {
		t.Errorf("run.failed without a report: %v", failed.body)
	}
	s.stop(serveWait) // serve waits for the notifications in flight before it exits
	stderr := s.stderr()
	if n := countEvent(rc.got("/hook/"), "run.failed"); n != 1 {
		t.Fatalf("%d run.failed over %d failed runs, want 1: %q", n, countEvent(rc.got("/hook/"), "run.started"), rc.events("/hook/"))
	}

	w.writeConfigText(configText(map[string]any{"url": "data"}))
	s = w.startServe(t)
	ns = rc.waitFor("sync.recovered", "/hook/", func(ns []note) bool { return countEvent(ns, "sync.recovered") >= 1 })
	i := slices.IndexFunc(ns, func(n note) bool { return n.event == "sync.recovered" })
	rec := ns[i]
	if ns[i-1].event != "run.succeeded" || ns[i-1].body["run_id"] != rec.body["run_id"] {
		t.Fatalf("want run.succeeded then sync.recovered of the same run: %q", rc.events("/hook/"))
	}
	rep, _ := rec.body["report"].(map[string]any)
	raw, _ := json.Marshal(rep)
	t.Logf("sync.recovered (serve): run end to notification at the receiver: %s", rec.at.Sub(runEnd(t, raw)))
	if d := rec.at.Sub(runEnd(t, raw)); d > 5*time.Second {
		t.Errorf("sync.recovered arrived %s after the run ended", d)
	}
	s.stop(serveWait)
	stderr += s.stderr()
	got := rc.got("/hook/")
	if countEvent(got, "sync.recovered") != 1 || countEvent(got, "run.failed") != 1 {
		t.Errorf("want one run.failed and one sync.recovered in all: %q", rc.events("/hook/"))
	}
	if strings.Contains(stderr, notifyToken) || strings.Contains(stderr, notifySecret) {
		t.Errorf("serve's output shows the receiver's URL or the signing secret:\n%s", stderr)
	}
}
