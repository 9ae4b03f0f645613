package schedule

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/destinations/webhook"
	"github.com/backflowhq/backflow/pipeline"
)

// okReport is what a fake pipeline run returns.
func okReport(ctx context.Context, sync string) *pipeline.Report {
	return &pipeline.Report{Sync: sync, RunID: RunID(ctx), Status: pipeline.StatusOK, Mode: "incremental",
		StartedAt: time.Now().UTC(), Destinations: map[string]*pipeline.DestinationCount{}}
}

type reportHead struct {
	Sync   string `json:"sync"`
	RunID  string `json:"run_id"`
	Status string `json:"status"`
	Error  string `json:"error"`
}

func TestEveryFiresRepeatedly(t *testing.T) {
	t.Parallel()
	ran := make(chan string, 10)
	store := newMemStore()
	ts := startServer(t, Options{
		Syncs: []config.Sync{{Name: "users", Schedule: config.Schedule{Every: time.Second}}, {Name: "manual"}},
		Store: store,
		Run: func(ctx context.Context, sync string, full bool) (*pipeline.Report, error) {
			if full || RunID(ctx) == "" {
				t.Errorf("scheduled run: full=%v run id %q", full, RunID(ctx))
			}
			ran <- sync
			return okReport(ctx, sync), nil
		},
	})
	deadline := time.After(wait)
	for i := range 2 {
		select {
		case s := <-ran:
			if s != "users" {
				t.Fatalf("run of %q, which has no schedule", s)
			}
		case <-deadline:
			t.Fatalf("%d runs of an `every: 1s` sync within %s, want 2", i, wait)
		}
	}
	store.waitAppended(t, 2)
	var got []SyncStatus
	do(t, "GET", ts.url+"/syncs").json(t, &got)
	if len(got) != 2 || got[0].Name != "users" || len(got[0].Runs) < 2 || got[0].Schedule != "every 1s" {
		t.Fatalf("GET /syncs = %+v", got)
	}
	if got[0].NextRun == nil || got[1].NextRun != nil {
		t.Fatalf("next_run: users %v (want a time), manual %v (want null)", got[0].NextRun, got[1].NextRun)
	}
}

func TestScheduledRunSkippedWhileRunning(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	release := make(chan struct{})
	ids := make(chan string, 10)
	ts := startServer(t, Options{
		Syncs:  []config.Sync{{Name: "users", Schedule: config.Schedule{Every: time.Second}}},
		Logger: logs.logger(),
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			ids <- RunID(ctx)
			<-release
			return okReport(ctx, sync), nil
		},
	})
	var first string
	select {
	case first = <-ids:
	case <-time.After(wait):
		t.Fatal("the scheduled run did not start")
	}
	line := logs.waitFor(t, "about a skipped run", msgIs("scheduled run skipped: the previous run is still going"))
	if line["sync"] != "users" || line["run_id"] != first {
		t.Fatalf("skip line %v: want sync users and the running run's id %s", line, first)
	}
	fams := scrape(t, ts.url)
	if v := value(t, fams, "backflow_runs_skipped_total", "sync", "users"); v < 1 {
		t.Fatalf("runs_skipped_total = %v", v)
	}
	if v := value(t, fams, "backflow_runs_in_progress", "sync", "users"); v != 1 {
		t.Fatalf("runs_in_progress = %v while a run is going", v)
	}
	select {
	case id := <-ids:
		t.Fatalf("a second run %s started while the first was going", id)
	default:
	}
	close(release)
}

func TestEndpoints(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	type call struct {
		ctx    context.Context
		sync   string
		full   bool
		finish chan *pipeline.Report
	}
	calls := make(chan call, 10)
	ts := startServer(t, Options{
		Syncs: []config.Sync{{Name: "users"}, {Name: "orders", Schedule: config.Schedule{Cron: "0 3 * * *"}}},
		Store: store,
		Run: func(ctx context.Context, sync string, full bool) (*pipeline.Report, error) {
			c := call{ctx, sync, full, make(chan *pipeline.Report)}
			calls <- c
			return <-c.finish, nil
		},
	})

	r := do(t, "GET", ts.url+"/healthz")
	if r.code != 200 || string(r.body) != "ok\n" {
		t.Fatalf("GET /healthz = %d %q", r.code, r.body)
	}
	if r := do(t, "HEAD", ts.url+"/healthz"); r.code != 200 {
		t.Fatalf("HEAD /healthz = %d", r.code)
	}
	for _, c := range []struct {
		method, path string
		code         int
	}{
		{"POST", "/syncs/nope/run", 404},
		{"GET", "/syncs/nope", 404},
		{"GET", "/nope", 404},
		{"GET", "/syncs/users/run", 405},
		{"DELETE", "/syncs", 405},
		{"POST", "/healthz", 405},
		{"POST", "/syncs/users/run?full=maybe", 400},
	} {
		if r := do(t, c.method, ts.url+c.path); r.code != c.code {
			t.Errorf("%s %s = %d %s, want %d", c.method, c.path, r.code, r.body, c.code)
		}
	}
	if r := do(t, "GET", ts.url+"/syncs/users/run"); !strings.Contains(r.header.Get("Allow"), "POST") {
		t.Errorf("405 without Allow: POST: %v", r.header)
	}
	var e errorResponse
	do(t, "POST", ts.url+"/syncs/nope/run").json(t, &e)
	if e.Error != `unknown sync "nope"` {
		t.Errorf("404 body %+v", e)
	}

	// 202, and the run gets full and the id the response names.
	r = do(t, "POST", ts.url+"/syncs/users/run?full=true")
	if r.code != http.StatusAccepted {
		t.Fatalf("POST /syncs/users/run = %d %s", r.code, r.body)
	}
	var started TriggerResponse
	r.json(t, &started)
	if started.Sync != "users" || started.Run != "started" || started.RunID == "" || !started.Full {
		t.Fatalf("202 body %s", r.body)
	}
	c := <-calls
	if c.sync != "users" || !c.full || RunID(c.ctx) != started.RunID {
		t.Fatalf("run got sync %q full %v id %q; want users true %s", c.sync, c.full, RunID(c.ctx), started.RunID)
	}

	// 409 while it runs, naming the run in progress; the other sync is free.
	r = do(t, "POST", ts.url+"/syncs/users/run")
	r.json(t, &e)
	if r.code != http.StatusConflict || e.RunID != started.RunID {
		t.Fatalf("second POST = %d %s, want 409 naming %s", r.code, r.body, started.RunID)
	}
	var list []SyncStatus
	do(t, "GET", ts.url+"/syncs").json(t, &list)
	if len(list) != 2 {
		t.Fatalf("GET /syncs: %d syncs", len(list))
	}
	u, o := list[0], list[1]
	if u.Name != "users" || !u.Running || u.Current == nil || u.Current.RunID != started.RunID ||
		u.Current.State != "running" || u.Current.Trigger != TriggerAPI || !u.Current.Full || u.Schedule != "manual" || u.NextRun != nil {
		t.Fatalf("users while running: %+v %+v", u, u.Current)
	}
	if o.Name != "orders" || o.Running || o.Schedule != "cron 0 3 * * *" || o.NextRun == nil ||
		o.NextRun.Hour() != 3 || o.NextRun.Minute() != 0 || len(o.Runs) != 0 {
		t.Fatalf("orders: %+v", o)
	}
	if raw := do(t, "GET", ts.url+"/syncs").body; !strings.Contains(string(raw), `"runs":[]`) {
		t.Fatalf("a sync without runs must show \"runs\":[] — %s", raw)
	}

	rep := okReport(c.ctx, "users")
	rep.Status, rep.FullSync, rep.FullSyncReason = pipeline.StatusPartial, true, "requested"
	c.finish <- rep
	store.waitAppended(t, 1)

	var one SyncStatus
	r = do(t, "GET", ts.url+"/syncs/users")
	r.json(t, &one)
	if r.code != 200 || one.Running || one.Current != nil || len(one.Runs) != 1 {
		t.Fatalf("GET /syncs/users after the run = %d %s", r.code, r.body)
	}
	var h reportHead
	if err := json.Unmarshal(one.Runs[0], &h); err != nil || h.RunID != started.RunID || h.Status != "partial" {
		t.Fatalf("runs[0] = %s", one.Runs[0])
	}

	// The sync is free again.
	if r := do(t, "POST", ts.url+"/syncs/users/run"); r.code != http.StatusAccepted {
		t.Fatalf("POST after the run ended = %d %s", r.code, r.body)
	}
	c = <-calls
	if c.full {
		t.Fatal("full without ?full=true")
	}
	c.finish <- okReport(c.ctx, "users")
	store.waitAppended(t, 1)
	do(t, "GET", ts.url+"/syncs/users").json(t, &one)
	if len(one.Runs) != 2 {
		t.Fatalf("%d runs", len(one.Runs))
	}
	if err := json.Unmarshal(one.Runs[0], &h); err != nil || h.RunID == started.RunID {
		t.Fatalf("runs are not newest first: %s", one.Runs[0])
	}
}

// 100 concurrent POSTs: exactly one run at any moment.
func TestNoOverlapUnderRapidTriggers(t *testing.T) {
	t.Parallel()
	var inProgress, maxInProgress, calls atomic.Int64
	enter := func() {
		n := inProgress.Add(1)
		for m := maxInProgress.Load(); n > m && !maxInProgress.CompareAndSwap(m, n); m = maxInProgress.Load() {
		}
		calls.Add(1)
	}
	var hold atomic.Pointer[chan struct{}] // non-nil: runs block until it is closed
	store := newMemStore()
	ts := startServer(t, Options{
		Syncs:             []config.Sync{{Name: "users"}},
		Store:             store,
		MaxConcurrentRuns: 8,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			enter()
			defer inProgress.Add(-1)
			if h := hold.Load(); h != nil {
				<-*h
			}
			return okReport(ctx, sync), nil
		},
	})
	storm := func() map[int]int {
		codes := map[int]int{}
		var mu sync.Mutex
		var wg sync.WaitGroup
		for range 100 {
			wg.Go(func() {
				r := do(t, "POST", ts.url+"/syncs/users/run")
				mu.Lock()
				codes[r.code]++
				mu.Unlock()
			})
		}
		wg.Wait()
		return codes
	}

	// A run that lasts longer than the storm: exactly one 202.
	h := make(chan struct{})
	hold.Store(&h)
	codes := storm()
	if codes[202] != 1 || codes[409] != 99 {
		t.Fatalf("while one run lasts: codes %v, want one 202 and 99 409", codes)
	}
	hold.Store(nil)
	close(h)
	store.waitAppended(t, 1)

	// Runs that end at once: many may run one after the other, never two at once.
	codes = storm()
	if codes[202] < 1 || codes[202]+codes[409] != 100 {
		t.Fatalf("codes %v", codes)
	}
	store.waitAppended(t, codes[202])
	if got, want := calls.Load(), int64(1+codes[202]); got != want {
		t.Fatalf("%d runs for %d accepted POSTs", got, want)
	}
	if m := maxInProgress.Load(); m != 1 {
		t.Fatalf("at most %d runs of one sync at once, want 1", m)
	}
}

func TestMaxConcurrentRuns(t *testing.T) {
	t.Parallel()
	var inProgress, maxInProgress atomic.Int64
	started := make(chan string, 10)
	release := map[string]chan struct{}{"a": make(chan struct{}), "b": make(chan struct{}), "c": make(chan struct{})}
	store := newMemStore()
	ts := startServer(t, Options{
		Syncs:             []config.Sync{{Name: "a"}, {Name: "b"}, {Name: "c"}},
		Store:             store,
		MaxConcurrentRuns: 2,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			n := inProgress.Add(1)
			defer inProgress.Add(-1)
			for m := maxInProgress.Load(); n > m && !maxInProgress.CompareAndSwap(m, n); m = maxInProgress.Load() {
			}
			started <- sync
			<-release[sync]
			return okReport(ctx, sync), nil
		},
	})
	post := func(name string) (int, TriggerResponse) {
		r := do(t, "POST", ts.url+"/syncs/"+name+"/run")
		var tr TriggerResponse
		if r.code == http.StatusAccepted {
			r.json(t, &tr)
		}
		return r.code, tr
	}
	for _, n := range []string{"a", "b"} {
		if code, tr := post(n); code != 202 || tr.Run != "started" {
			t.Fatalf("POST %s = %d %+v", n, code, tr)
		}
		if s := <-started; s != n {
			t.Fatalf("started %s, want %s", s, n)
		}
	}
	code, tr := post("c")
	if code != 202 || tr.Run != "queued" {
		t.Fatalf("POST c with both slots taken = %d %+v, want 202 queued", code, tr)
	}
	var c SyncStatus
	do(t, "GET", ts.url+"/syncs/c").json(t, &c)
	if !c.Running || c.Current == nil || c.Current.State != "waiting" || c.Current.StartedAt != nil {
		t.Fatalf("c while waiting: %+v %+v", c, c.Current)
	}
	if code, _ := post("c"); code != http.StatusConflict {
		t.Fatalf("POST c while it waits for a slot = %d, want 409", code)
	}
	close(release["a"])
	if s := <-started; s != "c" {
		t.Fatalf("started %s, want c once a's slot was free", s)
	}
	close(release["b"])
	close(release["c"])
	store.waitAppended(t, 3)
	if m := maxInProgress.Load(); m != 2 {
		t.Fatalf("%d runs at once, want max_concurrent_runs 2", m)
	}
}

func TestGracefulShutdown(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	logs := newLogRecorder()
	started, cancelled, finish := make(chan string, 1), make(chan struct{}), make(chan struct{})
	ts := startServer(t, Options{
		Syncs:         []config.Sync{{Name: "users"}, {Name: "orders"}},
		Store:         store,
		Logger:        logs.logger(),
		ShutdownGrace: wait,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			started <- RunID(ctx)
			<-ctx.Done() // the pipeline stops reading...
			close(cancelled)
			<-finish // ... and checkpoints what was acknowledged
			r := okReport(ctx, sync)
			r.Status, r.Error = pipeline.StatusFailed, "interrupted: "+ctx.Err().Error()
			return r, ctx.Err()
		},
	})
	do(t, "POST", ts.url+"/syncs/users/run")
	id := <-started
	t0 := time.Now()
	ts.cancel()
	select {
	case <-cancelled:
	case <-time.After(wait):
		t.Fatal("the run's context was not cancelled when shutdown began")
	}
	// While the run checkpoints: the HTTP server still answers, no run starts.
	if r := do(t, "GET", ts.url+"/healthz"); r.code != 200 {
		t.Fatalf("GET /healthz during shutdown = %d", r.code)
	}
	if r := do(t, "POST", ts.url+"/syncs/orders/run"); r.code != http.StatusServiceUnavailable {
		t.Fatalf("POST during shutdown = %d %s, want 503", r.code, r.body)
	}
	select {
	case err := <-ts.done:
		t.Fatalf("Run returned (%v) before the run in flight did", err)
	default:
	}
	close(finish)
	if err := ts.result(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if el := time.Since(t0); el >= wait {
		t.Fatalf("Run took %s, the whole grace", el)
	}
	// The interrupted run's report is in the history before Run returns.
	h, _ := store.History(context.Background(), "users")
	var head reportHead
	if len(h) != 1 || json.Unmarshal(h[0], &head) != nil || head.RunID != id || head.Status != "failed" {
		t.Fatalf("history after shutdown: %q", h)
	}
	line := logs.waitFor(t, "about the interrupted run", msgIs("run interrupted by shutdown"))
	if line["interrupted"] != true || line["run_id"] != id {
		t.Fatalf("interrupted line: %v", line)
	}
	if _, err := http.Get(ts.url + "/healthz"); err == nil {
		t.Fatal("the HTTP server still answers after Run returned")
	}
}

func TestShutdownAbandonsRunIgnoringCancel(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	const grace = 300 * time.Millisecond
	started, release := make(chan string, 1), make(chan struct{})
	t.Cleanup(func() { close(release) })
	ts := startServer(t, Options{
		Syncs:         []config.Sync{{Name: "users"}},
		Logger:        logs.logger(),
		ShutdownGrace: grace,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			started <- RunID(ctx)
			<-release // ignores ctx
			return okReport(ctx, sync), nil
		},
	})
	do(t, "POST", ts.url+"/syncs/users/run")
	id := <-started
	t0 := time.Now()
	if err := ts.stop(t); err != nil {
		t.Fatalf("Run = %v, want nil", err)
	}
	if el := time.Since(t0); el < grace {
		t.Fatalf("Run returned after %s, before the grace %s", el, grace)
	}
	line := logs.waitFor(t, "about the abandoned run", msgIs("run abandoned: did not return within the shutdown grace"))
	if line["sync"] != "users" || line["run_id"] != id {
		t.Fatalf("abandon line %v", line)
	}
}

func TestForceStop(t *testing.T) {
	t.Parallel()
	logs := newLogRecorder()
	started, release := make(chan struct{}, 1), make(chan struct{})
	t.Cleanup(func() { close(release) })
	ts := startServer(t, Options{
		Syncs:         []config.Sync{{Name: "users"}},
		Logger:        logs.logger(),
		ShutdownGrace: time.Hour,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			started <- struct{}{}
			<-release
			return okReport(ctx, sync), nil
		},
	})
	do(t, "POST", ts.url+"/syncs/users/run")
	<-started
	ts.cancel()
	logs.waitFor(t, "about waiting for runs", msgIs("waiting for runs in flight to checkpoint"))
	ts.ForceStop()
	ts.ForceStop() // idempotent
	if err := ts.result(t); err != nil {
		t.Fatalf("Run = %v", err)
	}
	logs.waitFor(t, "about the abandoned run", msgIs("run abandoned: forced stop"))
}

func TestMetricsAfterRun(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	logs := newLogRecorder()
	inBatch, proceed := make(chan struct{}), make(chan struct{})
	var srv atomic.Pointer[Server]
	syncs := []config.Sync{{
		Name: "users",
		Destinations: []config.Destination{
			{Type: "segment", Options: &segment.Options{WriteKey: "sekret-write-key"}},
			{Type: "webhook", Name: "hook", Options: &webhook.Options{URL: "https://hooks.example.com/x?token=sekret-url", Headers: map[string]string{"Authorization": "Bearer sekret-token"}}},
		},
	}, {Name: "idle"}}
	ts := startServer(t, Options{
		Syncs:  syncs,
		Store:  store,
		Logger: logs.logger(),
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			obs := srv.Load().Observer()
			obs.RowsRead(sync, 10, 1000)
			obs.BatchStarted(sync, "segment")
			close(inBatch)
			<-proceed
			obs.BatchDone(sync, "segment", 8, 0)
			r := okReport(ctx, sync)
			r.Status = pipeline.StatusPartial
			r.Files = pipeline.FileCounts{Listed: 2, Read: 1, Rejected: 1}
			r.Rows = pipeline.RowCounts{Read: 10, Sent: 8, Unchanged: 1, Rejected: 1}
			r.Destinations = map[string]*pipeline.DestinationCount{"segment": {Delivered: 8}, "hook": {Delivered: 7, Failed: 1}}
			return r, nil
		},
	})
	srv.Store(ts.Server)

	// Before any run every series exists at 0.
	fams := scrape(t, ts.url)
	for _, name := range []string{"backflow_rows_read_total", "backflow_rows_sent_total", "backflow_runs_skipped_total", "backflow_last_success_timestamp_seconds"} {
		if v := value(t, fams, name, "sync", "idle"); v != 0 {
			t.Errorf("%s{idle} = %v before any run", name, v)
		}
	}
	if v := value(t, fams, "backflow_messages_delivered_total", "sync", "users", "destination", "hook"); v != 0 {
		t.Errorf("delivered{hook} = %v before any run", v)
	}

	do(t, "POST", ts.url+"/syncs/users/run")
	<-inBatch
	fams = scrape(t, ts.url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"backflow_batches_in_flight", []string{"sync", "users", "destination", "segment"}, 1},
		{"backflow_runs_in_progress", []string{"sync", "users"}, 1},
		{"backflow_source_rows_read_total", []string{"sync", "users"}, 10},
		{"backflow_source_bytes_read_total", []string{"sync", "users"}, 1000},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("during the run: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	close(proceed)
	store.waitAppended(t, 1)

	before := float64(time.Now().Add(-time.Minute).Unix())
	fams = scrape(t, ts.url)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"backflow_rows_read_total", []string{"sync", "users"}, 10},
		{"backflow_rows_sent_total", []string{"sync", "users"}, 8},
		{"backflow_rows_unchanged_total", []string{"sync", "users"}, 1},
		{"backflow_rows_rejected_total", []string{"sync", "users"}, 1},
		{"backflow_files_read_total", []string{"sync", "users"}, 1},
		{"backflow_files_rejected_total", []string{"sync", "users"}, 1},
		{"backflow_messages_delivered_total", []string{"sync", "users", "destination", "segment"}, 8},
		{"backflow_messages_failed_total", []string{"sync", "users", "destination", "segment"}, 0},
		{"backflow_messages_delivered_total", []string{"sync", "users", "destination", "hook"}, 7},
		{"backflow_messages_failed_total", []string{"sync", "users", "destination", "hook"}, 1},
		{"backflow_runs_total", []string{"sync", "users", "status", "partial"}, 1},
		{"backflow_runs_total", []string{"sync", "users", "status", "ok"}, 0},
		{"backflow_runs_total", []string{"sync", "users", "status", "failed"}, 0},
		{"backflow_run_duration_seconds", []string{"sync", "users", "status", "partial"}, 1}, // sample count
		{"backflow_runs_in_progress", []string{"sync", "users"}, 0},
		{"backflow_batches_in_flight", []string{"sync", "users", "destination", "segment"}, 0},
		{"backflow_rows_read_total", []string{"sync", "idle"}, 0},
	} {
		if got := value(t, fams, c.name, c.labels...); got != c.want {
			t.Errorf("after the run: %s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if v := value(t, fams, "backflow_last_success_timestamp_seconds", "sync", "users"); v < before {
		t.Errorf("last_success_timestamp_seconds = %v, want about now", v)
	}
	for _, name := range []string{"go_goroutines", "process_start_time_seconds", "promhttp_metric_handler_requests_total"} {
		if _, ok := fams[name]; !ok {
			t.Errorf("%s missing: the go/process collectors are not registered", name)
		}
	}

	// Every line about a run names the sync and the run; no secret is ever logged.
	lines, raw := logs.all()
	if strings.Contains(raw, "sekret") {
		t.Fatalf("a secret reached the logs:\n%s", raw)
	}
	n := 0
	for _, l := range lines {
		if msg, _ := l["msg"].(string); strings.HasPrefix(msg, "run ") {
			n++
			if l["sync"] != "users" || l["run_id"] == "" || l["run_id"] == nil {
				t.Errorf("log line without sync/run_id: %v", l)
			}
		}
	}
	if n < 2 {
		t.Errorf("%d log lines about the run, want started and finished", n)
	}
}

// Two servers in one process: metrics are per server, not global.
func TestServersDoNotShareMetrics(t *testing.T) {
	t.Parallel()
	run := func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		return okReport(ctx, sync), nil
	}
	a := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: run, Store: newMemStore()})
	b := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: run, Store: newMemStore()})
	a.Observer().RowsRead("users", 5, 0)
	if v := value(t, scrape(t, b.url), "backflow_source_rows_read_total", "sync", "users"); v != 0 {
		t.Fatalf("server b sees server a's rows: %v", v)
	}
}

func TestHistorySurvivesRestart(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	run := func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		return okReport(ctx, sync), nil
	}
	opts := Options{Syncs: []config.Sync{{Name: "users"}, {Name: "orders"}}, Run: run, Store: store, History: 2}

	a := startServer(t, opts)
	var ids []string
	for range 3 {
		r := do(t, "POST", a.url+"/syncs/users/run")
		var tr TriggerResponse
		r.json(t, &tr)
		ids = append(ids, tr.RunID)
		store.waitAppended(t, 1)
	}
	if err := a.stop(t); err != nil {
		t.Fatal(err)
	}
	// A report this version cannot read is skipped, not served as broken JSON.
	store.mu.Lock()
	store.hist["users"] = append(store.hist["users"], []byte("{not json"))
	store.mu.Unlock()

	b := startServer(t, opts)
	runIDs := func() []string {
		var s SyncStatus
		r := do(t, "GET", b.url+"/syncs/users")
		r.json(t, &s)
		var out []string
		for _, raw := range s.Runs {
			var h reportHead
			if err := json.Unmarshal(raw, &h); err != nil {
				t.Fatalf("runs entry %s: %v", raw, err)
			}
			out = append(out, h.RunID)
		}
		return out
	}
	if got, want := fmt.Sprint(runIDs()), fmt.Sprint([]string{ids[2], ids[1]}); got != want {
		t.Fatalf("new server's history = %s, want the last two runs newest first %s", got, want)
	}
	var tr TriggerResponse
	do(t, "POST", b.url+"/syncs/users/run").json(t, &tr)
	store.waitAppended(t, 1)
	if got, want := fmt.Sprint(runIDs()), fmt.Sprint([]string{tr.RunID, ids[2]}); got != want {
		t.Fatalf("after a run on the new server: %s, want %s", got, want)
	}
}

func TestFailedRuns(t *testing.T) {
	t.Parallel()
	store := newMemStore()
	var mode atomic.Int32
	ts := startServer(t, Options{
		Syncs: []config.Sync{{Name: "users"}},
		Store: store,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			switch mode.Load() {
			case 0:
				return nil, errors.New("listing s3://bucket/users/: access denied")
			case 1:
				panic("index out of range")
			default:
				r := okReport(ctx, sync) // a report that says ok with an error is a failure
				return r, errors.New("saving checkpoint: conflict")
			}
		},
	})
	for i, want := range []string{"listing s3://bucket/users/: access denied", "run of users panicked: index out of range", "saving checkpoint: conflict"} {
		mode.Store(int32(i))
		var tr TriggerResponse
		do(t, "POST", ts.url+"/syncs/users/run?full=1").json(t, &tr)
		store.waitAppended(t, 1)
		h, _ := store.History(context.Background(), "users")
		var head reportHead
		if err := json.Unmarshal(h[0], &head); err != nil {
			t.Fatal(err)
		}
		if head.Status != "failed" || head.Error != want || head.RunID != tr.RunID || head.Sync != "users" {
			t.Errorf("case %d: history %s, want failed with %q", i, h[0], want)
		}
	}
	if v := value(t, scrape(t, ts.url), "backflow_runs_total", "sync", "users", "status", "failed"); v != 3 {
		t.Errorf("runs_total{failed} = %v, want 3", v)
	}
}

func TestNewServerErrors(t *testing.T) {
	run := func(context.Context, string, bool) (*pipeline.Report, error) { return nil, nil }
	for _, c := range []struct {
		opts Options
		want string
	}{
		{Options{}, "Options.Run is required"},
		{Options{Run: run, Syncs: []config.Sync{{Name: "a"}, {Name: "a"}}}, `syncs[1].name: "a" is used twice`},
		{Options{Run: run, Syncs: []config.Sync{{Name: "Users"}}}, `syncs[0].name: "Users" must match`},
		{Options{Run: run, Syncs: []config.Sync{{Name: "a"}, {Name: "b", Schedule: config.Schedule{Every: time.Millisecond}}}}, "syncs[1].schedule: every: 1ms is shorter"},
		{Options{Run: run, Syncs: []config.Sync{{Name: "a", Schedule: config.Schedule{Cron: "nope"}}}}, `syncs[0].schedule: cron: "nope"`},
		{Options{Run: run, MaxConcurrentRuns: -1}, "may not be negative"},
	} {
		if _, err := NewServer(c.opts); err == nil || !strings.Contains(err.Error(), c.want) {
			t.Errorf("NewServer error = %v, want one containing %q", err, c.want)
		}
	}
}

// next_run follows the schedule from the server's clock; `every` without start is
// anchored at the Unix epoch, not at start-up.
func TestNextRunFromClock(t *testing.T) {
	now := utc("2025-01-01T10:07:00Z")
	s, err := NewServer(Options{
		Now: func() time.Time { return now },
		Run: func(context.Context, string, bool) (*pipeline.Report, error) { return nil, nil },
		Syncs: []config.Sync{
			{Name: "anchored", Schedule: config.Schedule{Every: time.Hour, Start: utc("2025-01-01T00:30:00Z")}},
			{Name: "unanchored", Schedule: config.Schedule{Every: 20 * time.Minute}},
			{Name: "cron", Schedule: config.Schedule{Cron: "*/15 * * * *"}},
			{Name: "manual"},
		},
	})
	if err != nil {
		t.Fatal(err)
	}
	want := []string{"2025-01-01T10:30:00Z", "2025-01-01T10:20:00Z", "2025-01-01T10:15:00Z", ""}
	for i, st := range s.Status() {
		got := ""
		if st.NextRun != nil {
			got = st.NextRun.Format(time.RFC3339)
		}
		if got != want[i] {
			t.Errorf("%s: next_run %q, want %q", st.Name, got, want[i])
		}
	}
	b, _ := json.Marshal(s.Status()[3])
	if !strings.Contains(string(b), `"next_run":null`) {
		t.Errorf("manual sync JSON %s, want next_run null", b)
	}
}
