package schedule

import (
	"context"
	"encoding/json"
	"io"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
)

// eventReceiver is a loopback webhook receiver that hands every event name it gets to
// a channel, after calling hold (nil: answer at once).
func eventReceiver(t *testing.T, hold func(*http.Request)) (*httptest.Server, chan string) {
	t.Helper()
	got := make(chan string, 100)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		var p notify.Payload
		if err := json.Unmarshal(b, &p); err != nil {
			t.Errorf("not a notification: %s", b)
		}
		got <- p.Event
		if hold != nil {
			hold(r)
		}
	}))
	t.Cleanup(srv.Close)
	return srv, got
}

func notifyConfig(url string, on ...string) *config.Config {
	return &config.Config{Syncs: []config.Sync{{Name: "users", Notify: []config.Notify{{Type: "webhook", URL: url, On: on}}}}}
}

// TestServeNotifies: runs started by the server notify at their start and end, judged
// against the stored history (failed, failed, ok: run.failed once, then recovered).
func TestServeNotifies(t *testing.T) {
	t.Parallel()
	hook, got := eventReceiver(t, nil)
	store := newMemStore()
	statuses := []string{pipeline.StatusFailed, pipeline.StatusFailed, pipeline.StatusOK}
	var calls atomic.Int32
	run := func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		r := okReport(ctx, sync)
		r.Status = statuses[calls.Add(1)-1]
		return r, nil
	}
	n := notify.New(notify.Options{Config: notifyConfig(hook.URL, "started", "failed", "recovered"), History: store})
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: run, Store: store, Notifier: n})
	for range statuses {
		if _, _, err := ts.Trigger("users", false); err != nil {
			t.Fatal(err)
		}
		store.waitAppended(t, 1)
	}
	want := []string{"run.started", "run.failed", "run.started", "run.started", "sync.recovered"}
	var events []string
	deadline := time.After(wait)
	for len(events) < len(want) {
		select {
		case e := <-got:
			events = append(events, e)
		case <-deadline:
			t.Fatalf("received %q, want %q", events, want)
		}
	}
	if !slices.Equal(events, want) {
		t.Fatalf("received %q, want %q", events, want)
	}
}

// TestServeNotBlockedByReceiver: a receiver that does not answer holds neither the
// run nor the sync: the next run starts as soon as the previous one is recorded.
func TestServeNotBlockedByReceiver(t *testing.T) {
	t.Parallel()
	release := make(chan struct{})
	hook, got := eventReceiver(t, func(r *http.Request) {
		select {
		case <-release:
		case <-r.Context().Done():
		}
	})
	store := newMemStore()
	run := func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		r := okReport(ctx, sync)
		r.Status = pipeline.StatusFailed
		return r, nil
	}
	n := notify.New(notify.Options{Config: notifyConfig(hook.URL, "started", "failed"), History: store})
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: run, Store: store, Notifier: n})
	for range 2 {
		if _, _, err := ts.Trigger("users", false); err != nil {
			t.Fatalf("trigger while a notification hangs: %v", err)
		}
		store.waitAppended(t, 1)
	}
	select {
	case e := <-got:
		if e != "run.started" {
			t.Errorf("first event %q, want run.started", e)
		}
	case <-time.After(wait):
		t.Fatal("the receiver got nothing")
	}
	close(release)
	ctx, cancel := context.WithTimeout(context.Background(), n.MaxDelay()+wait)
	defer cancel()
	if err := n.Wait(ctx); err != nil {
		t.Fatal(err)
	}
}
