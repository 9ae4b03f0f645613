package schedule

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net/http"
	"os"
	"regexp"
	"slices"
	"strings"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// openLocalStore is the real local state store in a temporary directory.
func openLocalStore(t testing.TB) state.Store {
	t.Helper()
	st, err := state.Open(context.Background(), config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	return st
}

// writeRejects writes n lines into the rejects file of a run, as the pipeline does.
func writeRejects(t testing.TB, st state.Store, sync, runID string, n int) {
	t.Helper()
	ctx := context.Background()
	f, err := st.Rejects(ctx, sync, runID)
	if err != nil {
		t.Fatal(err)
	}
	for i := range n {
		reason := fmt.Sprintf("400 Bad Request: row %d refused", i)
		if i == 1 {
			reason = `<script>alert("x")</script> refused`
		}
		line, _ := json.Marshal(map[string]any{"file": "users/part-0.parquet", "row": i, "destination": "hook",
			"reason": reason, "message": map[string]any{"userId": fmt.Sprint(i)}})
		if _, err := f.Write(append(line, '\n')); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(ctx); err != nil {
		t.Fatal(err)
	}
}

func getOK(t *testing.T, u string, headers ...string) response {
	t.Helper()
	r := req(t, "GET", u, headers...)
	if r.code != http.StatusOK {
		t.Fatalf("GET %s: %d %s", u, r.code, r.body)
	}
	return r
}

func mustContain(t *testing.T, what string, body []byte, subs ...string) {
	t.Helper()
	for _, s := range subs {
		if !bytes.Contains(body, []byte(s)) {
			t.Errorf("%s lacks %q", what, s)
		}
	}
}

var tagsRE = regexp.MustCompile(`<[^>]*>`)

// text is the page's text without its tags, spaces collapsed.
func text(b []byte) string {
	return strings.Join(strings.Fields(tagsRE.ReplaceAllString(string(b), " ")), " ")
}

// TestStatusPage follows a run on the page: the syncs and their schedules, the live
// counts of the run in progress (page and GET /ui/live), then the history and the
// first rejected rows once it ended.
func TestStatusPage(t *testing.T) {
	t.Parallel()
	store := openLocalStore(t)
	progressed, release := make(chan struct{}), make(chan struct{})
	var srv *Server
	ts := startServer(t, Options{
		Syncs: []config.Sync{
			{Name: "users", Schedule: config.Schedule{Every: time.Hour},
				Destinations: []config.Destination{{Type: "segment"}, {Type: "webhook", Name: "hook"}}},
			{Name: "orders", Destinations: []config.Destination{{Type: "file"}}},
		},
		Store: store,
		Run: func(ctx context.Context, sync string, full bool) (*pipeline.Report, error) {
			rep := okReport(ctx, sync)
			if sync != "users" {
				return rep, nil
			}
			o := srv.Observer().(pipeline.ProgressObserver)
			o.Planned(sync, 2, 4000)
			o.RowsRead(sync, 1500, 1000)
			o.FileRead(sync, "users/part-0.parquet")
			o.BatchStarted(sync, "segment")
			o.BatchDone(sync, "segment", 1200, 0)
			o.BatchStarted(sync, "hook")
			close(progressed)
			select {
			case <-release:
			case <-ctx.Done():
				return nil, ctx.Err()
			}
			o.BatchDone(sync, "hook", 1175, 25)
			writeRejects(t, store, sync, RunID(ctx), 25)
			rep.Status = pipeline.StatusPartial
			rep.FullSync, rep.FullSyncReason = full, "requested"
			rep.Rows = pipeline.RowCounts{Read: 1500, Sent: 1200, Rejected: 25}
			rep.Destinations = map[string]*pipeline.DestinationCount{"segment": {Delivered: 1200}, "hook": {Delivered: 1175, Failed: 25}}
			return rep, nil
		},
	})
	srv = ts.Server

	// Idle: every sync, its schedule, no run yet.
	page := getOK(t, ts.url+"/")
	mustContain(t, "GET /", page.body, `href="/ui/syncs/users"`, `href="/ui/syncs/orders"`, "every 1h", "manual", "No runs yet.")
	// every 1h without start runs on the hour (anchored at the epoch): the next run is
	// in at most an hour (seconds, just before the hour).
	if txt := text(page.body); !regexp.MustCompile(`users every 1h in (\d+m \d+s|\d+m|\d+s|1h 00m)`).MatchString(txt) {
		t.Errorf("GET / does not show the next run of users within the hour:\n%s", txt)
	}

	// The page's own form starts a full sync and comes back with a notice.
	r := reqBody(t, "POST", ts.url+"/ui/syncs/users/run", "full=1&back=sync", "Content-Type", "application/x-www-form-urlencoded")
	loc := r.header.Get("Location")
	if r.code != http.StatusSeeOther || !strings.HasPrefix(loc, "/ui/syncs/users?") {
		t.Fatalf("form POST: %d Location %q", r.code, loc)
	}
	select {
	case <-progressed:
	case <-time.After(wait):
		t.Fatal("the run did not start")
	}
	notice := getOK(t, ts.url+loc)
	mustContain(t, "the page after the form", notice.body, "A full sync of users started (run ")
	if r := reqBody(t, "POST", ts.url+"/ui/syncs/users/run", "back=index", "Content-Type", "application/x-www-form-urlencoded"); r.code != http.StatusSeeOther ||
		!strings.Contains(r.header.Get("Location"), "running=") {
		t.Fatalf("second POST while running: %d %q, want a redirect saying it is running", r.code, r.header.Get("Location"))
	}

	// In progress: the live counts, per destination, on both pages and in /ui/live.
	for _, path := range []string{"/", "/ui/syncs/users"} {
		p := getOK(t, ts.url+path)
		mustContain(t, path, p.body, `id="live-users"`, `<span class="badge running">running</span>`,
			`data-k="rows_read">1,500<`, `data-k="rows_sent">1,200<`, `data-k="d.segment.delivered">1,200<`,
			`data-k="d.hook.inflight">1<`, `data-k="files">1 of 2 files done`, `value="0.250"`, "full sync", "disabled")
	}
	var live liveResponse
	getOK(t, ts.url+"/ui/live").json(t, &live)
	if !live.Running || live.Live["users"]["rows_read"] != "1,500" || live.Live["users"]["d.hook.inflight"] != "1" ||
		live.Live["users"]["progress"] != "0.250" || !strings.HasSuffix(live.Live["users"]["rate"], " rows/s") || !strings.HasSuffix(live.Live["users"]["read_rate"], " rows/s") {
		t.Fatalf("GET /ui/live: %+v", live)
	}
	if _, ok := live.Live["orders"]; ok {
		t.Fatal("GET /ui/live shows orders, which is idle")
	}
	genRunning := live.Gen

	close(release)
	waitIdle(t, ts, "users")
	var after liveResponse
	getOK(t, ts.url+"/ui/live").json(t, &after)
	if after.Running || after.Gen == genRunning || len(after.Live) != 0 {
		t.Fatalf("GET /ui/live after the run: %+v (gen while running %s)", after, genRunning)
	}

	// Finished: the history, and the first rejected rows with their reasons, escaped.
	page = getOK(t, ts.url+"/ui/syncs/users")
	mustContain(t, "the sync page", page.body, `<span class="badge partial">partial</span>`, "full: requested",
		"25 rows rejected; the first 20 below", "users/part-0.parquet", "400 Bad Request: row 19 refused",
		"&lt;script&gt;alert(&#34;x&#34;)&lt;/script&gt; refused", `<a href="#rejects">25</a>`)
	if bytes.Contains(page.body, []byte("row 20 refused")) {
		t.Error("the sync page lists more than the first 20 rejected rows")
	}
	if bytes.Contains(page.body, []byte(`<script>alert`)) {
		t.Fatal("a rejection reason reached the page unescaped")
	}
	if n := bytes.Count(page.body, []byte("<tr><td><code>users/part-0.parquet</code>")); n != RejectsShown {
		t.Errorf("%d rejected rows listed, want %d", n, RejectsShown)
	}
	idx := getOK(t, ts.url+"/")
	mustContain(t, "GET / after the run", idx.body, `<span class="badge partial">partial</span>`, "1,500 read · 1,200 sent · 25 rejected")

	if r := req(t, "GET", ts.url+"/ui/syncs/nope"); r.code != http.StatusNotFound {
		t.Errorf("unknown sync page: %d", r.code)
	}
	if r := req(t, "GET", ts.url+"/ui/live?sync=nope"); r.code != http.StatusNotFound {
		t.Errorf("unknown sync live: %d", r.code)
	}
}

// waitIdle polls /syncs until the sync has no run and at least one report.
func waitIdle(t *testing.T, ts *testServer, name string) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		var ss SyncStatus
		getOK(t, ts.url+"/syncs/"+name).json(t, &ss)
		if !ss.Running && len(ss.Runs) > 0 {
			return
		}
		time.Sleep(20 * time.Millisecond)
	}
	t.Fatalf("%s did not finish its run within %s", name, wait)
}

// TestStatusPageHeaders checks what keeps the page self-contained and safe: one
// response with everything inline under a nonce-based policy, no framing, no caching
// of authenticated content, and gzip for clients that take it.
func TestStatusPageHeaders(t *testing.T) {
	t.Parallel()
	ts := startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: countingRun(new(atomic.Int64))})
	plain := getOK(t, ts.url+"/", "Accept-Encoding", "identity")
	csp := plain.header.Get("Content-Security-Policy")
	m := regexp.MustCompile(`script-src 'nonce-([^']+)'`).FindStringSubmatch(csp)
	if m == nil || !strings.Contains(csp, "default-src 'none'") || !strings.Contains(csp, "frame-ancestors 'none'") || !strings.Contains(csp, "form-action 'self'") {
		t.Fatalf("Content-Security-Policy %q", csp)
	}
	mustContain(t, "GET /", plain.body, `<script nonce="`+m[1]+`">`, `<style nonce="`+m[1]+`">`, `<link rel="icon" href="data:image/svg`,
		`<meta name="viewport"`, `<noscript><meta http-equiv="refresh"`)
	for _, ext := range []string{`src="http`, `href="http`, `url(`, `@import`} {
		if bytes.Contains(plain.body, []byte(ext)) {
			t.Errorf("the page refers to something outside itself: %q", ext)
		}
	}
	if plain.header.Get("Cache-Control") != "no-store" || plain.header.Get("X-Content-Type-Options") != "nosniff" {
		t.Errorf("headers %v", plain.header)
	}
	again := getOK(t, ts.url+"/", "Accept-Encoding", "identity")
	if again.header.Get("Content-Security-Policy") == csp {
		t.Error("two responses share a nonce")
	}

	// The transport would decompress silently: ask for gzip explicitly.
	zr := getOK(t, ts.url+"/", "Accept-Encoding", "gzip")
	if zr.header.Get("Content-Encoding") != "gzip" {
		t.Fatalf("Content-Encoding %q, want gzip", zr.header.Get("Content-Encoding"))
	}
	zrd, err := gzip.NewReader(bytes.NewReader(zr.body))
	if err != nil {
		t.Fatal(err)
	}
	unz, err := io.ReadAll(zrd)
	if err != nil || !bytes.Contains(unz, []byte("<h1>Syncs</h1>")) {
		t.Fatalf("gzip body: %v %.200s", err, unz)
	}
}

// TestFormatting pins the formats people read on the page.
func TestFormatting(t *testing.T) {
	for n, want := range map[int64]string{0: "0", 999: "999", 1000: "1,000", 1234567: "1,234,567", -4321: "-4,321"} {
		if got := formatCount(n); got != want {
			t.Errorf("formatCount(%d) = %q, want %q", n, got, want)
		}
	}
	for d, want := range map[time.Duration]string{850 * time.Millisecond: "850ms", 12 * time.Second: "12s",
		185 * time.Second: "3m 05s", 130 * time.Minute: "2h 10m", 50 * time.Hour: "2d 02h"} {
		if got := formatDuration(d); got != want {
			t.Errorf("formatDuration(%v) = %q, want %q", d, got, want)
		}
	}
	if got := formatBytes(1536); got != "1.5 KiB" {
		t.Errorf("formatBytes(1536) = %q", got)
	}
	now := time.Date(2025, 1, 1, 12, 0, 0, 0, time.UTC)
	if got := formatRelative(now.Add(5*time.Minute), now); got != "in 5m 00s" {
		t.Errorf("formatRelative future %q", got)
	}
	if got := formatRelative(now.Add(-90*time.Second), now); got != "1m 30s ago" {
		t.Errorf("formatRelative past %q", got)
	}
}

// ---- figures: a page of 50 syncs and 1,000 runs ----

// bigStore is a local store holding runsPerSync realistic reports for each of syncs
// syncs, as serve's history would after a while.
func bigStore(t testing.TB, syncs, runsPerSync int) (state.Store, []config.Sync) {
	t.Helper()
	st := openLocalStore(t)
	ctx := context.Background()
	var cfg []config.Sync
	start := time.Date(2025, 4, 14, 0, 0, 0, 0, time.UTC)
	for i := range syncs {
		cfg = append(cfg, config.Sync{Name: fmt.Sprintf("sync_%02d", i), Schedule: config.Schedule{Every: time.Hour},
			Destinations: []config.Destination{{Type: "segment"}, {Type: "webhook", Name: "hook"}}})
	}
	// One writer per sync, as in serve: every append is a durable write.
	var g errgroup.Group
	g.SetLimit(8)
	for i, sc := range cfg {
		g.Go(func() error {
			for j := range runsPerSync {
				began := start.Add(time.Duration(j) * time.Hour)
				rep := pipeline.Report{Sync: sc.Name, RunID: fmt.Sprintf("%s-%08x", began.Format("20060102T150405Z"), i*100000+j),
					Status: pipeline.StatusOK, Mode: "incremental", StartedAt: began, DurationMS: 81234,
					Files: pipeline.FileCounts{Listed: 40, Read: 3, Unchanged: 37}, Rows: pipeline.RowCounts{Read: 1234567, Sent: 1234500, Rejected: 67},
					Destinations: map[string]*pipeline.DestinationCount{"segment": {Delivered: 1234500}, "hook": {Delivered: 1234500, Failed: 67}}}
				if j%10 == 9 {
					rep.Status, rep.Error = pipeline.StatusFailed, "destination hook: POST https://hooks.example.com/backflow: 503 Service Unavailable after 5 attempts"
				}
				b, err := json.Marshal(rep)
				if err != nil {
					return err
				}
				if err := st.AppendHistory(ctx, sc.Name, b, runsPerSync); err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	return st, cfg
}

// pageFigures loads a page n times and returns the median time of a load and the
// page's weight, plain and gzipped.
func pageFigures(t *testing.T, u string, n int) (median time.Duration, raw, gz int) {
	t.Helper()
	times := make([]time.Duration, 0, n)
	for range n {
		began := time.Now()
		r := getOK(t, u, "Accept-Encoding", "identity")
		times = append(times, time.Since(began))
		raw = len(r.body)
	}
	slices.Sort(times)
	gz = len(getOK(t, u, "Accept-Encoding", "gzip").body)
	return times[n/2], raw, gz
}

// TestStatusPageFigures measures the home page with 50 syncs and 1,000 runs of
// history (20 a sync, serve.history's default), and the page of one of them, over
// real HTTP on loopback. The budgets are loose (a loaded CI machine);
// the figures are logged for docs/serve.md. Like the project's other figures it runs
// with BACKFLOW_FIGURES=1, keeping the normal suite fast.
func TestStatusPageFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("figures: set BACKFLOW_FIGURES=1")
	}
	st, syncs := bigStore(t, 50, 20)
	ts := startServer(t, Options{Syncs: syncs, Store: st, History: 20, Run: countingRun(new(atomic.Int64))})
	began := time.Now()
	getOK(t, ts.url+"/") // the first load reads the history from the store
	first := time.Since(began)
	med, raw, gz := pageFigures(t, ts.url+"/", 21)
	t.Logf("home page, 50 syncs, 1,000 runs: first load %v (reads the store), then median %v; %d bytes (%d gzipped)", first.Round(time.Microsecond), med.Round(time.Microsecond), raw, gz)
	if med > 500*time.Millisecond || raw > 120<<10 || gz > 16<<10 {
		t.Errorf("home page budget: median %v (≤500ms), %d bytes (≤120 KiB), %d gzipped (≤16 KiB)", med, raw, gz)
	}

	med1, raw1, gz1 := pageFigures(t, ts.url+"/ui/syncs/sync_00", 21)
	t.Logf("sync page, 20 runs: median %v; %d bytes (%d gzipped)", med1.Round(time.Microsecond), raw1, gz1)
	if med1 > 500*time.Millisecond {
		t.Errorf("sync page: median %v", med1)
	}
}

// BenchmarkStatusPage renders the home page of 50 syncs with 1,000 runs of history
// (go test -bench StatusPage ./schedule).
func BenchmarkStatusPage(b *testing.B) {
	st, syncs := bigStore(b, 50, 20)
	s, err := NewServer(Options{Syncs: syncs, Store: st, History: 20, Run: countingRun(new(atomic.Int64))})
	if err != nil {
		b.Fatal(err)
	}
	h := s.Handler()
	r, _ := http.NewRequest("GET", "/", nil)
	b.ReportAllocs()
	var size int
	for b.Loop() {
		w := &countingWriter{header: http.Header{}}
		h.ServeHTTP(w, r)
		if w.code != http.StatusOK {
			b.Fatalf("GET /: %d", w.code)
		}
		size = w.n
	}
	b.ReportMetric(float64(size), "bytes/page")
}

// countingWriter is an http.ResponseWriter that only counts.
type countingWriter struct {
	header http.Header
	code   int
	n      int
}

func (w *countingWriter) Header() http.Header { return w.header }
func (w *countingWriter) WriteHeader(code int) {
	if w.code == 0 {
		w.code = code
	}
}
func (w *countingWriter) Write(p []byte) (int, error) {
	if w.code == 0 {
		w.code = http.StatusOK
	}
	w.n += len(p)
	return len(p), nil
}

// TestStatusPageWaitingAndLongHistory checks a run waiting for a slot, and a history
// longer than the sync page lists by default.
func TestStatusPageWaitingAndLongHistory(t *testing.T) {
	t.Parallel()
	st, syncs := bigStore(t, 2, 60)
	release := make(chan struct{})
	started := make(chan string, 2)
	ts := startServer(t, Options{Syncs: syncs, Store: st, History: 100, MaxConcurrentRuns: 1,
		Run: func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
			started <- sync
			select {
			case <-release:
			case <-ctx.Done():
			}
			return okReport(ctx, sync), nil
		}})
	defer close(release)
	if _, _, err := ts.Trigger("sync_00", false); err != nil {
		t.Fatal(err)
	}
	<-started
	if _, queued, err := ts.Trigger("sync_01", false); err != nil || !queued {
		t.Fatalf("second run: queued %v, %v; want it waiting for the one slot", queued, err)
	}
	page := getOK(t, ts.url+"/")
	mustContain(t, "GET / with a run waiting", page.body, `id="live-sync_01"`, "is waiting for a free slot", `id="live-sync_00"`)
	var live liveResponse
	getOK(t, ts.url+"/ui/live").json(t, &live)
	if _, ok := live.Live["sync_01"]; ok || live.Live["sync_00"] == nil {
		t.Fatalf("GET /ui/live: %+v; want the running sync only", live)
	}

	one := getOK(t, ts.url+"/ui/syncs/sync_00")
	if n := bytes.Count(one.body, []byte(`<time class="when"`)); n != syncPageRuns {
		t.Errorf("the sync page lists %d runs, want the newest %d", n, syncPageRuns)
	}
	mustContain(t, "the sync page", one.body, `<a href="/ui/syncs/sync_00?runs=all">All 60 kept runs</a>`)
	all := getOK(t, ts.url+"/ui/syncs/sync_00?runs=all")
	if n := bytes.Count(all.body, []byte(`<time class="when"`)); n != 60 {
		t.Errorf("?runs=all lists %d runs, want 60", n)
	}
	idx := getOK(t, ts.url+"/")
	if n := bytes.Count(idx.body, []byte(`<time class="when"`)); n != recentRuns {
		t.Errorf("the home page lists %d recent runs, want %d", n, recentRuns)
	}
}
