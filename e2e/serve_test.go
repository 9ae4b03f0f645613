package e2e

// Black-box tests of `backflow serve`: the real binary on a loopback port, the real
// pipeline (a local Parquet folder to a file or webhook destination, local state), driven
// and observed only through its HTTP endpoints, signals, exit code and state.

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"slices"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"
	"go.yaml.in/yaml/v3"

	"github.com/backflowhq/backflow/internal/exampledata"
)

const (
	// serveWait bounds every wait for the server to reach a state (ready, a run listed,
	// exited): generous for a loaded machine, and never a sleep — every wait polls.
	serveWait = 15 * time.Second
	// servePoll is the polling interval of those waits.
	servePoll = 50 * time.Millisecond
)

// ---- the serve process ----

// serveProc is a running `backflow serve`. Its exit is watched by a goroutine, so a test
// can wait for it with a deadline; its output may be read only once it has exited.
type serveProc struct {
	t    *testing.T
	p    *proc
	addr string // 127.0.0.1:PORT
	url  string // http://127.0.0.1:PORT
	done chan struct{}
	err  error // cmd.Wait's; set before done is closed
	// authz, when set, is the Authorization header of every request the helpers make.
	authz string
}

// startServeAt starts `backflow serve --listen addr` (and the extra arguments) on the
// workspace's config without waiting for it to be ready.
func (w *workspace) startServeAt(t *testing.T, addr string, extra ...string) *serveProc {
	t.Helper()
	p := start(t, w.dir, w.env, append([]string{"serve", "-c", w.configPath(), "--listen", addr}, extra...)...)
	s := &serveProc{t: t, p: p, addr: addr, url: "http://" + addr, done: make(chan struct{})}
	go func() {
		s.err = p.cmd.Wait()
		p.cancel()
		close(s.done)
	}()
	// Registered after start's own clean-up, so it runs first: kill a server the test
	// left running and reap it here, so that start's clean-up finds it waited for.
	t.Cleanup(func() {
		select {
		case <-s.done:
		default:
			_ = p.cmd.Process.Kill()
			<-s.done
		}
	})
	return s
}

// startServe starts `backflow serve` on a free loopback port and waits until /healthz
// answers. A port taken between choosing it and binding it (another test's listener) is
// retried on a new port.
func (w *workspace) startServe(t *testing.T, extra ...string) *serveProc {
	t.Helper()
	for attempt := 1; ; attempt++ {
		s := w.startServeAt(t, freeLoopbackAddr(t), extra...)
		if s.waitReady() {
			return s
		}
		out := s.output()
		if attempt < 3 && s.exitCode() == 2 && strings.Contains(out, "address already in use") {
			t.Logf("port race on %s, retrying", s.addr)
			continue
		}
		t.Fatalf("backflow serve did not become ready on %s\n%s", s.addr, out)
	}
}

// freeLoopbackAddr returns a 127.0.0.1 address nothing listens on (right now).
func freeLoopbackAddr(t testing.TB) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

// waitReady polls /healthz until it answers 200 "ok" (true) or the process exits (false).
func (s *serveProc) waitReady() bool {
	s.t.Helper()
	deadline := time.Now().Add(serveWait)
	for time.Now().Before(deadline) {
		select {
		case <-s.done:
			return false
		default:
		}
		code, body, err := s.tryDo(http.MethodGet, "/healthz")
		if err == nil && code == http.StatusOK && strings.TrimSpace(string(body)) == "ok" {
			// Another process could answer on a raced port: ours must still be running.
			select {
			case <-s.done:
				return false
			default:
				return true
			}
		}
		time.Sleep(servePoll)
	}
	s.fatalf("/healthz did not answer 200 within %s", serveWait)
	return false
}

// exited tells whether the process has exited.
func (s *serveProc) exited() bool {
	select {
	case <-s.done:
		return true
	default:
		return false
	}
}

// exitCode is the process's exit code; it must have exited.
func (s *serveProc) exitCode() int {
	<-s.done
	var ee *exec.ExitError
	switch {
	case s.err == nil:
		return 0
	case errors.As(s.err, &ee) && ee.Exited():
		return ee.ExitCode()
	default:
		return -1 // killed by a signal
	}
}

// output is the process's stdout and stderr; it must have exited. It also checks that
// they show no panic.
func (s *serveProc) output() string {
	<-s.done
	out := fmt.Sprintf("backflow serve --listen %s: %v\nstdout:\n%s\nstderr:\n%s", s.addr, s.err, s.p.stdout.String(), s.p.stderr.String())
	if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
		s.t.Errorf("output shows a panic or a goroutine dump:\n%s", out)
	}
	return out
}

// stderr is the process's stderr; it must have exited.
func (s *serveProc) stderr() string {
	<-s.done
	return s.p.stderr.String()
}

// waitExit waits up to d for the process to exit and returns its exit code.
func (s *serveProc) waitExit(d time.Duration) int {
	s.t.Helper()
	select {
	case <-s.done:
	case <-time.After(d):
		s.fatalf("backflow serve did not exit within %s", d)
	}
	return s.exitCode()
}

// signal sends sig to the process.
func (s *serveProc) signal(sig syscall.Signal) {
	s.t.Helper()
	if err := s.p.cmd.Process.Signal(sig); err != nil {
		s.t.Fatalf("sending %v: %v", sig, err)
	}
}

// stop sends SIGTERM and requires exit 0 within d.
func (s *serveProc) stop(d time.Duration) {
	s.t.Helper()
	s.signal(syscall.SIGTERM)
	if code := s.waitExit(d); code != 0 {
		s.t.Fatalf("exit %d after SIGTERM, want 0\n%s", code, s.output())
	}
	_ = s.output() // the panic check
}

// fatalf stops the process (so that its output can be read) and fails the test with
// msg and that output.
func (s *serveProc) fatalf(format string, args ...any) {
	s.t.Helper()
	if !s.exited() {
		_ = s.p.cmd.Process.Kill()
	}
	s.t.Fatalf("%s\n%s", fmt.Sprintf(format, args...), s.output())
}

var serveClient = &http.Client{Timeout: 5 * time.Second}

func (s *serveProc) tryDo(method, path string) (int, []byte, error) {
	req, err := http.NewRequest(method, s.url+path, nil)
	if err != nil {
		return 0, nil, err
	}
	if s.authz != "" {
		req.Header.Set("Authorization", s.authz)
	}
	res, err := serveClient.Do(req)
	if err != nil {
		return 0, nil, err
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	return res.StatusCode, b, err
}

// do makes one request and returns the status code and the body.
func (s *serveProc) do(method, path string) (int, []byte) {
	s.t.Helper()
	code, b, err := s.tryDo(method, path)
	if err != nil {
		s.fatalf("%s %s: %v", method, path, err)
	}
	return code, b
}

// trigger POSTs /syncs/{name}/run, requires 202 "started" and returns the run's id.
func (s *serveProc) trigger(name string) string {
	s.t.Helper()
	code, b := s.do(http.MethodPost, "/syncs/"+name+"/run")
	var resp struct {
		Sync  string `json:"sync"`
		Run   string `json:"run"`
		RunID string `json:"run_id"`
	}
	if code != http.StatusAccepted || json.Unmarshal(b, &resp) != nil || resp.Sync != name || resp.Run != "started" || resp.RunID == "" {
		s.fatalf("POST /syncs/%s/run: %d %s; want 202 with the started run's id", name, code, b)
	}
	return resp.RunID
}

// ---- GET /syncs ----

// serveSync is one element of GET /syncs.
type serveSync struct {
	Name     string     `json:"name"`
	Schedule string     `json:"schedule"`
	NextRun  *time.Time `json:"next_run"`
	Running  bool       `json:"running"`
	Current  *struct {
		RunID   string `json:"run_id"`
		Trigger string `json:"trigger"`
		State   string `json:"state"`
	} `json:"current"`
	Runs []json.RawMessage `json:"runs"`
}

// reports decodes the sync's run reports, newest first.
func (ss serveSync) reports(t testing.TB) []*report {
	t.Helper()
	out := make([]*report, len(ss.Runs))
	for i, raw := range ss.Runs {
		rep := &report{raw: raw}
		if err := json.Unmarshal(raw, rep); err != nil {
			t.Fatalf("sync %s: run %d is not a report: %v: %s", ss.Name, i, err, raw)
		}
		out[i] = rep
	}
	return out
}

// runIDs are the ids of the sync's listed runs, newest first.
func (ss serveSync) runIDs(t testing.TB) []string {
	var ids []string
	for _, r := range ss.reports(t) {
		ids = append(ids, r.RunID)
	}
	return ids
}

// syncs GETs /syncs and returns it by name, with the raw body.
func (s *serveProc) syncs() (map[string]serveSync, []byte) {
	s.t.Helper()
	code, b := s.do(http.MethodGet, "/syncs")
	var list []serveSync
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
		s.fatalf("GET /syncs: %d %s; want 200 and a JSON array", code, b)
	}
	out := map[string]serveSync{}
	for _, ss := range list {
		out[ss.Name] = ss
	}
	return out, b
}

// waitSync polls GET /syncs until done(the named sync) holds, and returns that sync.
func (s *serveProc) waitSync(name, what string, done func(serveSync) bool) serveSync {
	s.t.Helper()
	deadline := time.Now().Add(serveWait)
	var last []byte
	for time.Now().Before(deadline) {
		if s.exited() {
			s.fatalf("backflow serve exited while waiting for %s", what)
		}
		all, body := s.syncs()
		last = body
		if ss, ok := all[name]; ok && done(ss) {
			return ss
		}
		time.Sleep(servePoll)
	}
	s.fatalf("waited %s for %s; last GET /syncs:\n%s", serveWait, what, last)
	return serveSync{}
}

// waitRun waits until the run id is listed for the sync, and returns its report.
func (s *serveProc) waitRun(name, id string) *report {
	s.t.Helper()
	ss := s.waitSync(name, "run "+id+" of "+name+" to be listed", func(ss serveSync) bool {
		return slices.Contains(ss.runIDs(s.t), id)
	})
	for _, r := range ss.reports(s.t) {
		if r.RunID == id {
			checkServeReport(s.t, r)
			return r
		}
	}
	s.t.Fatalf("run %s vanished from the listing", id)
	return nil
}

// checkServeReport checks that a report listed by GET /syncs has every field of
// SPEC.md's run report, as `sync --report` writes it.
func checkServeReport(t testing.TB, rep *report) {
	t.Helper()
	f, err := os.CreateTemp(t.TempDir(), "listed-report-*.json")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(rep.raw); err != nil {
		t.Fatal(err)
	}
	f.Close()
	readReport(t, f.Name(), result{Args: []string{"serve"}})
}

// ---- configuration ----

// serveYAML is c with a serve: section and, per sync name, a schedule.
func serveYAML(t testing.TB, c config, serve map[string]any, schedules map[string]map[string]any) string {
	t.Helper()
	b, err := yaml.Marshal(c)
	if err != nil {
		t.Fatal(err)
	}
	var m map[string]any
	if err := yaml.Unmarshal(b, &m); err != nil {
		t.Fatal(err)
	}
	if serve != nil {
		m["serve"] = serve
	}
	for _, sc := range m["syncs"].([]any) {
		s := sc.(map[string]any)
		if sched, ok := schedules[s["name"].(string)]; ok {
			s["schedule"] = sched
		}
	}
	out, err := yaml.Marshal(m)
	if err != nil {
		t.Fatal(err)
	}
	return string(out)
}

// addUsers writes example-table files into data/ atomically — whole files appear in
// the folder at once — so that a run listing the folder meanwhile sees all or nothing.
func (w *workspace) addUsers(o exampledata.Options) {
	w.t.Helper()
	staging := w.t.TempDir()
	paths, err := exampledata.Write(staging, o)
	if err != nil {
		w.t.Fatal(err)
	}
	for _, p := range paths {
		if err := os.Rename(p, w.path("data", filepath.Base(p))); err != nil {
			w.t.Fatal(err)
		}
	}
}

// ---- a webhook receiver that holds requests until released ----

// heldHook answers every POST only once the test releases it. It records what it
// acknowledged, and how many requests the client gave up on while they were held.
type heldHook struct {
	url     string
	arrived chan struct{} // one token per POST (buffered far beyond what a test sends)
	held    chan struct{}
	once    sync.Once

	mu    sync.Mutex
	posts int
	acked []message
	cut   int // requests whose client went away before they were answered
}

func newHeldHook(t *testing.T) *heldHook {
	h := &heldHook{arrived: make(chan struct{}, 10000), held: make(chan struct{})}
	srv := httptest.NewServer(h) // on 127.0.0.1
	h.url = srv.URL + "/hook"
	t.Cleanup(srv.Close)
	t.Cleanup(h.release) // runs first: Close waits for the held handlers
	return h
}

func (h *heldHook) release() { h.once.Do(func() { close(h.held) }) }

func (h *heldHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.posts++
	h.mu.Unlock()
	h.arrived <- struct{}{}
	select {
	case <-h.held:
	case <-r.Context().Done():
		h.mu.Lock()
		h.cut++
		h.mu.Unlock()
		return
	}
	msgs := make([]message, 0, len(body.Batch))
	for _, raw := range body.Batch {
		var m message
		_ = json.Unmarshal(raw, &m)
		m.line = raw
		msgs = append(msgs, m)
	}
	h.mu.Lock()
	h.acked = append(h.acked, msgs...)
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// waitArrivals waits until n more POSTs have arrived.
func (h *heldHook) waitArrivals(s *serveProc, n int) {
	s.t.Helper()
	timeout := time.After(serveWait)
	for range n {
		select {
		case <-h.arrived:
		case <-s.done:
			s.fatalf("backflow serve exited before %d POSTs reached the webhook", n)
		case <-timeout:
			s.fatalf("%d POSTs did not reach the webhook within %s", n, serveWait)
		}
	}
}

func (h *heldHook) snapshot() (acked []message, posts, cut int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.acked), h.posts, h.cut
}

func heldWebhookDest(url string) map[string]any {
	d := webhookDest(url)
	d["timeout"] = "30s" // a held request must not time out and be retried
	d["max_in_flight"] = 2
	return d
}

// ---- 1. schedules ----

// TestServeSchedule: a sync with `every: 1s` runs on its own, again and again; GET /syncs
// lists the runs newest first — a first full sync, then incremental ones, one of which
// picks up a file added meanwhile — and every row reaches the output file exactly once.
func TestServeSchedule(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 2, RowsPerFile: 500, Seed: 51})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), nil,
		map[string]map[string]any{"users": {"every": "1s"}}))
	s := w.startServe(t)

	first := s.waitSync("users", "the first scheduled run", func(ss serveSync) bool { return len(ss.Runs) >= 1 })
	firstID := first.reports(t)[len(first.Runs)-1].RunID
	// A new export file while the server runs: a later scheduled run sends only it.
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 300, Seed: 52, FirstID: 1000, Prefix: "later-"})
	ss := s.waitSync("users", "a scheduled run that sends the new file", func(ss serveSync) bool {
		for _, r := range ss.reports(t) {
			if r.RunID != firstID && r.Rows.Sent == 300 {
				return true
			}
		}
		return false
	})
	requested := time.Now()
	all, body := s.syncs()
	ss = all["users"]

	// The shape of the sync object: types as SPEC.md gives them.
	var raw []map[string]any
	if err := json.Unmarshal(body, &raw); err != nil || len(raw) != 1 {
		t.Fatalf("GET /syncs: %v\n%s", err, body)
	}
	if _, ok := raw[0]["running"].(bool); !ok {
		t.Errorf("running is not a bool: %s", body)
	}
	if v, ok := raw[0]["schedule"].(string); !ok || v != "every 1s" {
		t.Errorf("schedule = %#v, want the string %q", raw[0]["schedule"], "every 1s")
	}
	// next_run is the next due time: in the future and at most one interval ahead. A
	// timer that has just fired may not have moved it on yet when the GET is served (on
	// a loaded machine, for a while): then a later GET must show the next one.
	for deadline := time.Now().Add(serveWait); ; {
		if ss.NextRun == nil {
			t.Fatalf("next_run is null for a scheduled sync: %s", body)
		}
		if ss.NextRun.After(requested) && !ss.NextRun.After(time.Now().Add(time.Second)) {
			break
		}
		if ss.NextRun.After(requested) || time.Now().After(deadline) {
			t.Fatalf("next_run %s is not within the second after %s: %s", ss.NextRun.Format(time.RFC3339Nano), requested.Format(time.RFC3339Nano), body)
		}
		time.Sleep(servePoll)
		requested = time.Now()
		all, body = s.syncs()
		ss = all["users"]
	}

	reps := ss.reports(t)
	if len(reps) < 2 {
		t.Fatalf("%d runs listed, want at least 2: %s", len(reps), body)
	}
	var sent int64
	ids := map[string]bool{}
	for i, r := range reps {
		checkServeReport(t, r)
		if r.Status != "ok" || r.Sync != "users" || r.Mode != "incremental" {
			t.Errorf("run %d: want sync users, status ok, mode incremental: %s", i, r)
		}
		if ids[r.RunID] {
			t.Errorf("run id %s listed twice", r.RunID)
		}
		ids[r.RunID] = true
		if i > 0 && !reps[i-1].StartedAt.After(r.StartedAt) {
			t.Errorf("runs not newest first: run %d started %s, run %d started %s", i-1, reps[i-1].StartedAt, i, r.StartedAt)
		}
		if r.Rows.Sent != r.delivered("file") {
			t.Errorf("run %d: rows.sent %d but the file destination delivered %d", i, r.Rows.Sent, r.delivered("file"))
		}
		sent += r.Rows.Sent
		oldest := i == len(reps)-1
		switch {
		case oldest && (!r.FullSync || r.FullSyncReason != "first sync" || r.Rows.Read != 1000 || r.Rows.Sent != 1000):
			t.Errorf("the first run: want a full sync (first sync) of 1000 rows: %s", r)
		case !oldest && (r.FullSync || r.FullSyncReason != ""):
			t.Errorf("run %d: want an incremental run: %s", i, r)
		}
	}
	if reps[len(reps)-1].RunID != firstID {
		t.Errorf("the oldest run listed is %s, the first run was %s", reps[len(reps)-1].RunID, firstID)
	}
	if sent != 1300 {
		t.Errorf("the runs sent %d rows in all, want 1300", sent)
	}
	s.stop(serveWait)
	checkExactlyOnce(t, "output file", readMessages(t, w.path("out", "users.jsonl")), idRange(0, 1300))
}

// ---- 2. POST /syncs/{name}/run ----

// TestServeRunNow: POST starts a manual sync (202) whose run then shows in GET /syncs;
// an unknown sync is 404; a sync that is running answers 409 until its run is over.
func TestServeRunNow(t *testing.T) {
	t.Parallel()
	hook := newHeldHook(t)
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 600, Seed: 53})
	c := usersConfig(fileDest("out/users.jsonl"))
	slow := c.Syncs[0]
	slow.Name = "slow"
	slow.Destinations = []map[string]any{heldWebhookDest(hook.url)}
	c.Syncs = append(c.Syncs, slow)
	w.writeConfigText(serveYAML(t, c, nil, nil))
	s := w.startServe(t)

	all, body := s.syncs()
	for _, name := range []string{"users", "slow"} {
		ss, ok := all[name]
		if !ok || ss.Schedule != "manual" || ss.NextRun != nil || ss.Running || len(ss.Runs) != 0 {
			t.Errorf("sync %s before any run: want schedule manual, next_run null, not running, no runs: %s", name, body)
		}
	}

	id := s.trigger("users")
	rep := s.waitRun("users", id)
	if rep.Status != "ok" || !rep.FullSync || rep.delivered("file") != 600 {
		t.Errorf("the run started over HTTP: want ok, a first full sync delivering 600 rows: %s", rep)
	}
	checkExactlyOnce(t, "output file", readMessages(t, w.path("out", "users.jsonl")), idRange(0, 600))

	code, b := s.do(http.MethodPost, "/syncs/nope/run")
	if code != http.StatusNotFound || !strings.Contains(string(b), "nope") {
		t.Errorf("POST /syncs/nope/run: %d %s; want 404 naming the sync", code, b)
	}
	if code, b := s.do(http.MethodGet, "/syncs/nope"); code != http.StatusNotFound {
		t.Errorf("GET /syncs/nope: %d %s; want 404", code, b)
	}
	var one serveSync
	if code, b := s.do(http.MethodGet, "/syncs/users"); code != http.StatusOK || json.Unmarshal(b, &one) != nil || one.Name != "users" || len(one.Runs) != 1 {
		t.Errorf("GET /syncs/users: %d %s; want the users sync with its run", code, b)
	}
	if code, b := s.do(http.MethodGet, "/syncs/users/run"); code != http.StatusMethodNotAllowed {
		t.Errorf("GET /syncs/users/run: %d %s; want 405", code, b)
	}
	if code, b := s.do(http.MethodPost, "/syncs/users/run?full=maybe"); code != http.StatusBadRequest || !strings.Contains(string(b), "maybe") {
		t.Errorf("POST /syncs/users/run?full=maybe: %d %s; want 400 naming the bad value", code, b)
	}
	// ?full=true forces a full sync: every row is sent again.
	code, b = s.do(http.MethodPost, "/syncs/users/run?full=true")
	var started struct {
		RunID string `json:"run_id"`
		Full  bool   `json:"full"`
	}
	if code != http.StatusAccepted || json.Unmarshal(b, &started) != nil || !started.Full {
		s.fatalf("POST /syncs/users/run?full=true: %d %s; want 202 with full true", code, b)
	}
	rep = s.waitRun("users", started.RunID)
	if rep.Status != "ok" || !rep.FullSync || rep.FullSyncReason != "requested" || rep.delivered("file") != 600 {
		t.Errorf("the run started with ?full=true: want ok, a full sync (requested) of 600 rows: %s", rep)
	}

	// A run held at the webhook is in progress: a second start is refused with 409.
	slowID := s.trigger("slow")
	hook.waitArrivals(s, 1)
	code, b = s.do(http.MethodPost, "/syncs/slow/run")
	var conflict struct {
		Error string `json:"error"`
		RunID string `json:"run_id"`
	}
	if code != http.StatusConflict || json.Unmarshal(b, &conflict) != nil || conflict.RunID != slowID {
		t.Errorf("POST /syncs/slow/run while it runs: %d %s; want 409 naming run %s", code, b, slowID)
	}
	all, body = s.syncs()
	if cur := all["slow"].Current; !all["slow"].Running || cur == nil || cur.RunID != slowID || cur.State != "running" || cur.Trigger != "api" {
		t.Errorf("GET /syncs while slow runs: want running with current run %s (state running, trigger api): %s", slowID, body)
	}
	// Another sync is not blocked by it.
	if all["users"].Running {
		t.Errorf("users shows as running: %s", body)
	}

	hook.release()
	rep = s.waitRun("slow", slowID)
	if rep.Status != "ok" || rep.delivered("webhook") != 600 {
		t.Errorf("the held run once released: want ok with 600 rows delivered: %s", rep)
	}
	acked, _, cut := hook.snapshot()
	checkExactlyOnce(t, "webhook", acked, idRange(0, 600))
	if cut != 0 {
		t.Errorf("%d held requests were abandoned by the client", cut)
	}
	ss := s.waitSync("slow", "slow to be idle", func(ss serveSync) bool { return !ss.Running })
	if ss.Current != nil {
		t.Errorf("slow is idle but shows a current run: %+v", ss.Current)
	}
	// Idle again: a new start is accepted.
	s.waitRun("slow", s.trigger("slow"))
	s.stop(serveWait)
}

// ---- 3. /metrics and /healthz ----

// TestServeMetrics: /metrics is the Prometheus text format; the series of a sync exist at
// 0 before its first run and count its rows, deliveries and runs after it.
func TestServeMetrics(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 3, RowsPerFile: 400, Seed: 54})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), nil, nil))
	s := w.startServe(t)

	code, b := s.do(http.MethodGet, "/healthz")
	if code != http.StatusOK || strings.TrimSpace(string(b)) != "ok" {
		t.Errorf("GET /healthz: %d %q; want 200 ok", code, b)
	}

	fams := scrapeServe(t, s)
	for _, name := range []string{"backflow_rows_read_total", "backflow_rows_sent_total", "backflow_source_rows_read_total"} {
		if v := serveMetric(t, fams, name, dto.MetricType_COUNTER, "sync", "users"); v != 0 {
			t.Errorf("%s{sync=users} = %v before any run, want 0", name, v)
		}
	}
	if v := serveMetric(t, fams, "backflow_messages_delivered_total", dto.MetricType_COUNTER, "sync", "users", "destination", "file"); v != 0 {
		t.Errorf("backflow_messages_delivered_total before any run = %v, want 0", v)
	}

	id := s.trigger("users")
	rep := s.waitRun("users", id)
	if rep.Status != "ok" || rep.Rows.Read != 1200 || rep.Rows.Sent != 1200 {
		t.Fatalf("the run: want ok with 1200 rows read and sent: %s", rep)
	}

	fams = scrapeServe(t, s)
	for _, c := range []struct {
		name   string
		labels []string
		want   float64
	}{
		{"backflow_rows_read_total", []string{"sync", "users"}, 1200},
		{"backflow_rows_sent_total", []string{"sync", "users"}, 1200},
		{"backflow_rows_rejected_total", []string{"sync", "users"}, 0},
		{"backflow_source_rows_read_total", []string{"sync", "users"}, 1200},
		{"backflow_files_read_total", []string{"sync", "users"}, 3},
		{"backflow_messages_delivered_total", []string{"sync", "users", "destination", "file"}, 1200},
		{"backflow_messages_failed_total", []string{"sync", "users", "destination", "file"}, 0},
		{"backflow_runs_total", []string{"sync", "users", "status", "ok"}, 1},
		{"backflow_runs_total", []string{"sync", "users", "status", "failed"}, 0},
	} {
		if got := serveMetric(t, fams, c.name, dto.MetricType_COUNTER, c.labels...); got != c.want {
			t.Errorf("%s%v = %v, want %v", c.name, c.labels, got, c.want)
		}
	}
	if v := serveMetric(t, fams, "backflow_runs_in_progress", dto.MetricType_GAUGE, "sync", "users"); v != 0 {
		t.Errorf("backflow_runs_in_progress = %v after the run, want 0", v)
	}
	if v := serveMetric(t, fams, "backflow_last_success_timestamp_seconds", dto.MetricType_GAUGE, "sync", "users"); v < float64(rep.StartedAt.Unix()) {
		t.Errorf("backflow_last_success_timestamp_seconds = %v, before the run started (%d)", v, rep.StartedAt.Unix())
	}
	h := serveSeries(t, fams, "backflow_run_duration_seconds", dto.MetricType_HISTOGRAM, "sync", "users", "status", "ok").GetHistogram()
	if h.GetSampleCount() != 1 || h.GetSampleSum() <= 0 || len(h.GetBucket()) == 0 {
		t.Errorf("backflow_run_duration_seconds{sync=users,status=ok}: want 1 sample of a positive duration in buckets, got count %d sum %v, %d buckets",
			h.GetSampleCount(), h.GetSampleSum(), len(h.GetBucket()))
	}
	s.stop(serveWait)
}

// scrapeServe reads /metrics and parses it as the Prometheus text format.
func scrapeServe(t *testing.T, s *serveProc) map[string]*dto.MetricFamily {
	t.Helper()
	res, err := serveClient.Get(s.url + "/metrics")
	if err != nil {
		s.fatalf("GET /metrics: %v", err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil || res.StatusCode != http.StatusOK {
		s.fatalf("GET /metrics: %d %v", res.StatusCode, err)
	}
	if ct := res.Header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Errorf("GET /metrics: Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("/metrics is not the Prometheus text format: %v\n%s", err, b)
	}
	return fams
}

// serveSeries returns the series of the family name, of type typ, with exactly these
// label pairs.
func serveSeries(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels ...string) *dto.Metric {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("/metrics has no %s", name)
	}
	if f.GetType() != typ {
		t.Fatalf("%s is a %v, want a %v", name, f.GetType(), typ)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
	for _, m := range f.GetMetric() {
		got := map[string]string{}
		for _, l := range m.GetLabel() {
			got[l.GetName()] = l.GetValue()
		}
		if fmt.Sprint(got) == fmt.Sprint(want) {
			return m
		}
	}
	t.Fatalf("/metrics has no %s with labels %v", name, want)
	return nil
}

// serveMetric is the value of a counter or gauge series.
func serveMetric(t *testing.T, fams map[string]*dto.MetricFamily, name string, typ dto.MetricType, labels ...string) float64 {
	t.Helper()
	m := serveSeries(t, fams, name, typ, labels...)
	if typ == dto.MetricType_GAUGE {
		return m.GetGauge().GetValue()
	}
	return m.GetCounter().GetValue()
}

// ---- 4. SIGTERM ----

// TestServeSigtermLetsDeliveriesFinish: SIGTERM while a run's batches are held at the
// webhook; once they are answered the run checkpoints them and the process exits 0 within
// the grace. The checkpoint counts exactly what the webhook acknowledged, and the next
// `backflow sync` sends exactly the rest.
func TestServeSigtermLetsDeliveriesFinish(t *testing.T) {
	t.Parallel()
	const rows = 2000
	hook := newHeldHook(t)
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 2, RowsPerFile: rows / 2, Seed: 55})
	w.writeConfigText(serveYAML(t, usersConfig(heldWebhookDest(hook.url)), map[string]any{"shutdown_grace": "10s"}, nil))
	s := w.startServe(t)

	runID := s.trigger("users")
	hook.waitArrivals(s, 2) // max_in_flight: 2 batches are held at the webhook
	signalled := time.Now()
	s.signal(syscall.SIGTERM)
	// Shutdown has begun once starting a run is refused with 503 (until then the run in
	// progress makes it 409). Only then are the held batches answered.
	deadline := time.Now().Add(serveWait)
	for {
		code, b, err := s.tryDo(http.MethodPost, "/syncs/users/run")
		if s.exited() {
			t.Errorf("backflow serve exited before the webhook answered the batches it held: it did not let in-flight deliveries finish")
			break
		}
		if err == nil && code == http.StatusServiceUnavailable {
			if code, _ := s.do(http.MethodGet, "/healthz"); code != http.StatusOK {
				t.Errorf("GET /healthz while runs drain: %d, want 200", code)
			}
			break
		}
		if err != nil || code != http.StatusConflict || time.Now().After(deadline) {
			s.fatalf("POST /syncs/users/run after SIGTERM: %d %s %v; want 409 until shutdown begins, then 503", code, b, err)
		}
		time.Sleep(servePoll)
	}
	hook.release()
	if code := s.waitExit(serveWait); code != 0 {
		t.Errorf("exit %d after SIGTERM, want 0\n%s", code, s.output())
	}
	if took := time.Since(signalled); took > 10*time.Second {
		t.Errorf("exited %v after SIGTERM, beyond the 10s shutdown_grace", took)
	}
	stderr := s.stderr()
	_ = s.output()
	acked, posts, cut := hook.snapshot()
	t.Logf("SIGTERM: %d POSTs, %d rows acknowledged, exited in %v", posts, len(acked), time.Since(signalled).Round(time.Millisecond))
	if cut != 0 {
		t.Errorf("%d of %d POSTs held at the webhook were abandoned by backflow instead of being let finish", cut, posts)
	}
	if len(acked) == 0 {
		t.Fatalf("the webhook acknowledged nothing\n%s", stderr)
	}

	// The checkpoint counts every row the webhook acknowledged, and only those.
	r := w.run("state", "show", "--json")
	var cp struct {
		Files map[string]struct {
			Rows        int64                 `json:"rows"`
			Acked       map[string]int64      `json:"acked"`
			AckedRanges map[string][][2]int64 `json:"acked_ranges"`
		} `json:"files"`
	}
	if r.Code != 0 || json.Unmarshal([]byte(r.Stdout), &cp) != nil {
		t.Fatalf("state show --json\n%s", r)
	}
	covered := func(id int64) bool {
		part := fmt.Sprintf("part-%05d.parquet", id/(rows/2))
		row := id % (rows / 2)
		for key, f := range cp.Files {
			if !strings.HasSuffix(key, part) {
				continue
			}
			if row < f.Acked["webhook"] {
				return true
			}
			for _, rg := range f.AckedRanges["webhook"] {
				if row >= rg[0] && row < rg[1] {
					return true
				}
			}
		}
		return false
	}
	var counted int64
	for _, f := range cp.Files {
		counted += f.Acked["webhook"]
		for _, rg := range f.AckedRanges["webhook"] {
			counted += rg[1] - rg[0]
		}
	}
	var uncounted []string
	for _, m := range acked {
		id, err := strconv.ParseInt(m.UserID, 10, 64)
		if err != nil {
			t.Fatalf("the webhook acknowledged a message with userId %q", m.UserID)
		}
		if !covered(id) {
			uncounted = append(uncounted, m.UserID)
		}
	}
	if len(uncounted) > 0 {
		t.Errorf("the checkpoint does not count %d of the %d rows the webhook acknowledged (userIds %v…)", len(uncounted), len(acked), uncounted[:min(10, len(uncounted))])
	}
	if counted != int64(len(acked)) {
		t.Errorf("the checkpoint counts %d rows, the webhook acknowledged %d\n%s", counted, len(acked), r.Stdout)
	}

	// The interrupted run's report was recorded before the process exited: the next
	// server lists it, with what was delivered.
	s = w.startServe(t)
	listed, body := s.syncs()
	if reps := listed["users"].reports(t); len(reps) != 1 || reps[0].RunID != runID || reps[0].delivered("webhook") != counted {
		t.Errorf("after a restart: want the interrupted run %s listed, %d rows delivered: %s", runID, counted, body)
	} else {
		checkServeReport(t, reps[0])
	}
	s.stop(serveWait)

	// The next run sends the rest, and nothing twice.
	rep := w.mustSync(0)
	if rep.FullSync || rep.delivered("webhook") != rows-counted {
		t.Errorf("the run after SIGTERM: want an incremental run delivering the %d rows not acknowledged: %s", rows-counted, rep)
	}
	all, _, _ := hook.snapshot()
	checkExactlyOnce(t, "webhook over the interrupted run and the next", all, idRange(0, rows))
}

// ---- 5. history across restarts ----

// TestServeHistorySurvivesRestart: the runs of one process are listed by the next one,
// from the state; new runs come before them.
func TestServeHistorySurvivesRestart(t *testing.T) {
	t.Parallel()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 300, Seed: 56})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), map[string]any{"shutdown_grace": "10s"}, nil))

	s := w.startServe(t)
	id1 := s.trigger("users")
	s.waitRun("users", id1)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 200, Seed: 57, FirstID: 300, Prefix: "more-"})
	id2 := s.trigger("users")
	s.waitRun("users", id2)
	before, _ := s.syncs()
	if got := before["users"].runIDs(t); !slices.Equal(got, []string{id2, id1}) {
		t.Fatalf("runs listed %v, want %v", got, []string{id2, id1})
	}
	s.stop(serveWait)

	s = w.startServe(t)
	after, body := s.syncs()
	if got := after["users"].runIDs(t); !slices.Equal(got, []string{id2, id1}) {
		t.Fatalf("after a restart, runs listed %v, want the earlier %v: %s", got, []string{id2, id1}, body)
	}
	for i, r := range after["users"].reports(t) {
		was := before["users"].reports(t)[i]
		checkServeReport(t, r)
		if r.Status != "ok" || r.Rows.Sent != was.Rows.Sent || r.FullSync != was.FullSync || !r.StartedAt.Equal(was.StartedAt) {
			t.Errorf("run %s after the restart:\n%s\nbefore:\n%s", r.RunID, r, was)
		}
	}
	if reps := after["users"].reports(t); len(reps) == 2 && (reps[1].Rows.Sent != 300 || reps[0].Rows.Sent != 200) {
		t.Errorf("want 300 rows sent by the first run and 200 by the second: %s", body)
	}
	// The checkpoint survived too: a new run has nothing to send, and is listed first.
	id3 := s.trigger("users")
	rep := s.waitRun("users", id3)
	if rep.Status != "ok" || rep.FullSync || rep.Rows.Sent != 0 {
		t.Errorf("the run after the restart: want ok, incremental, nothing to send: %s", rep)
	}
	now, _ := s.syncs()
	if got := now["users"].runIDs(t); !slices.Equal(got, []string{id3, id2, id1}) {
		t.Errorf("runs listed %v, want %v", got, []string{id3, id2, id1})
	}
	s.stop(serveWait)
	checkExactlyOnce(t, "output file", readMessages(t, w.path("out", "users.jsonl")), idRange(0, 500))
}

// ---- 6. --listen on a port in use ----

// TestServeListenInUse: a port already taken is a usage error: exit 2 with one line
// naming the address, and no run.
func TestServeListenInUse(t *testing.T) {
	t.Parallel()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	defer l.Close()
	w := newWorkspace(t)
	w.addUsers(exampledata.Options{Files: 1, RowsPerFile: 100, Seed: 58})
	w.writeConfigText(serveYAML(t, usersConfig(fileDest("out/users.jsonl")), nil,
		map[string]map[string]any{"users": {"every": "1s"}}))

	s := w.startServeAt(t, l.Addr().String())
	code := s.waitExit(serveWait)
	out := s.output()
	if code != 2 {
		t.Errorf("exit %d, want 2\n%s", code, out)
	}
	var lines []string
	for _, line := range strings.Split(strings.TrimSpace(s.stderr()), "\n") {
		if strings.TrimSpace(line) != "" {
			lines = append(lines, line)
		}
	}
	if len(lines) != 1 || !strings.HasPrefix(lines[0], "backflow: ") || !strings.Contains(lines[0], l.Addr().String()) || !strings.Contains(lines[0], "in use") {
		t.Errorf("want stderr to be one line naming %s and saying it is in use, got %q", l.Addr(), lines)
	}
	if exists(w.path("out", "users.jsonl")) {
		t.Errorf("a run happened although serve could not listen")
	}
}
