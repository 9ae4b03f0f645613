package schedule

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	dto "github.com/prometheus/client_model/go"
	"github.com/prometheus/common/expfmt"
	"github.com/prometheus/common/model"

	"github.com/backflowhq/backflow/state"
)

// wait bounds every wait in these tests: long enough for a loaded 2-core machine,
// short enough that a hang fails fast.
const wait = 10 * time.Second

// memStore is a state.Store that keeps run history in memory; the other methods are
// not used by the server. appended receives the sync of every AppendHistory.
type memStore struct {
	state.Store // nil: the methods the server does not use panic if called
	mu          sync.Mutex
	hist        map[string][][]byte
	appended    chan string
}

func newMemStore() *memStore {
	return &memStore{hist: map[string][][]byte{}, appended: make(chan string, 1000)}
}

var errNotUsed = errors.New("memStore: not used by the server")

func (m *memStore) Load(context.Context, string) (*state.Checkpoint, error) { return nil, errNotUsed }
func (m *memStore) Save(context.Context, *state.Checkpoint) error           { return errNotUsed }
func (m *memStore) Reset(context.Context, string) error                     { return errNotUsed }
func (m *memStore) ReadHashes(context.Context, string) (state.HashStore, error) {
	return nil, nil
}

func (m *memStore) Hashes(context.Context, string) (state.HashStore, error) {
	return nil, errNotUsed
}
func (m *memStore) Rejects(context.Context, string, string) (state.RejectsFile, error) {
	return nil, errNotUsed
}
func (m *memStore) String() string { return "mem://history" }

// memStore keeps no rejects: the status page finds none.
func (m *memStore) RejectsRuns(context.Context, string) ([]string, error) { return nil, nil }
func (m *memStore) OpenRejects(_ context.Context, sync, runID string) (io.ReadCloser, string, error) {
	return nil, "", fmt.Errorf("run %s of sync %s: %w", runID, sync, state.ErrNoRejects)
}

func (m *memStore) AppendHistory(_ context.Context, sync string, report []byte, keep int) error {
	m.mu.Lock()
	h := append([][]byte{bytes.Clone(report)}, m.hist[sync]...)
	if len(h) > keep {
		h = h[:keep]
	}
	m.hist[sync] = h
	m.mu.Unlock()
	m.appended <- sync
	return nil
}

func (m *memStore) History(_ context.Context, sync string) ([][]byte, error) {
	m.mu.Lock()
	defer m.mu.Unlock()
	out := make([][]byte, len(m.hist[sync]))
	for i, b := range m.hist[sync] {
		out[i] = bytes.Clone(b)
	}
	return out, nil
}

// waitAppended waits for n history appends.
func (m *memStore) waitAppended(t *testing.T, n int) {
	t.Helper()
	deadline := time.After(wait)
	for i := range n {
		select {
		case <-m.appended:
		case <-deadline:
			t.Fatalf("only %d of %d run reports reached the history", i, n)
		}
	}
}

// logRecorder captures a Server's JSON log lines and lets a test wait for one.
type logRecorder struct {
	mu      sync.Mutex
	raw     bytes.Buffer
	lines   []map[string]any
	changed chan struct{} // closed and replaced on every line
}

func newLogRecorder() *logRecorder { return &logRecorder{changed: make(chan struct{})} }

func (l *logRecorder) logger() *slog.Logger {
	return slog.New(slog.NewJSONHandler(l, &slog.HandlerOptions{Level: slog.LevelDebug}))
}

// Write receives one JSON line per call (slog's JSONHandler writes a record at once).
func (l *logRecorder) Write(p []byte) (int, error) {
	var m map[string]any
	if err := json.Unmarshal(p, &m); err != nil {
		return 0, err
	}
	l.mu.Lock()
	l.raw.Write(p)
	l.lines = append(l.lines, m)
	close(l.changed)
	l.changed = make(chan struct{})
	l.mu.Unlock()
	return len(p), nil
}

// waitFor returns the first line for which match is true, waiting for it if needed.
func (l *logRecorder) waitFor(t *testing.T, what string, match func(map[string]any) bool) map[string]any {
	t.Helper()
	deadline := time.After(wait)
	for seen := 0; ; {
		l.mu.Lock()
		lines, changed := l.lines, l.changed
		l.mu.Unlock()
		for ; seen < len(lines); seen++ {
			if match(lines[seen]) {
				return lines[seen]
			}
		}
		select {
		case <-changed:
		case <-deadline:
			t.Fatalf("no log line %s", what)
		}
	}
}

func (l *logRecorder) all() ([]map[string]any, string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]map[string]any(nil), l.lines...), l.raw.String()
}

func msgIs(msg string) func(map[string]any) bool {
	return func(m map[string]any) bool { return m["msg"] == msg }
}

// testServer is a Server running on a real loopback listener.
type testServer struct {
	*Server
	url    string
	cancel context.CancelFunc
	done   chan error

	once sync.Once
	err  error
}

func startServer(t *testing.T, opts Options) *testServer {
	t.Helper()
	s, err := NewServer(opts)
	if err != nil {
		t.Fatal(err)
	}
	ln, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	ctx, cancel := context.WithCancel(context.Background())
	ts := &testServer{Server: s, url: "http://" + ln.Addr().String(), cancel: cancel, done: make(chan error, 1)}
	go func() { ts.done <- s.Run(ctx, ln) }()
	t.Cleanup(func() { ts.stop(t) })
	return ts
}

// stop cancels Run's context and returns what Run returned.
func (ts *testServer) stop(t *testing.T) error {
	t.Helper()
	// A connection the client dialed but never used is "new" to the server, and
	// http.Server.Shutdown waits up to 5s for such connections: close them.
	http.DefaultClient.CloseIdleConnections()
	ts.cancel()
	return ts.result(t)
}

// result waits for Run to return.
func (ts *testServer) result(t *testing.T) error {
	t.Helper()
	ts.once.Do(func() {
		select {
		case ts.err = <-ts.done:
		case <-time.After(wait):
			ts.err = errors.New("Run did not return")
		}
	})
	if ts.err != nil && ts.err.Error() == "Run did not return" {
		t.Fatal(ts.err)
	}
	return ts.err
}

type response struct {
	code   int
	header http.Header
	body   []byte
}

func (r response) json(t *testing.T, v any) {
	t.Helper()
	if err := json.Unmarshal(r.body, v); err != nil {
		t.Fatalf("decoding %s: %v", r.body, err)
	}
}

func do(t *testing.T, method, url string) response {
	t.Helper()
	req, err := http.NewRequest(method, url, nil)
	if err != nil {
		t.Fatal(err)
	}
	res, err := http.DefaultClient.Do(req)
	if err != nil {
		t.Fatalf("%s %s: %v", method, url, err)
	}
	defer res.Body.Close()
	b, err := io.ReadAll(res.Body)
	if err != nil {
		t.Fatal(err)
	}
	return response{code: res.StatusCode, header: res.Header, body: b}
}

// scrape reads /metrics and parses the text format.
func scrape(t *testing.T, url string) map[string]*dto.MetricFamily {
	t.Helper()
	r := do(t, "GET", url+"/metrics")
	if r.code != http.StatusOK {
		t.Fatalf("GET /metrics: %d %s", r.code, r.body)
	}
	if ct := r.header.Get("Content-Type"); !strings.HasPrefix(ct, "text/plain") {
		t.Fatalf("GET /metrics Content-Type %q, want the text format", ct)
	}
	p := expfmt.NewTextParser(model.UTF8Validation)
	fams, err := p.TextToMetricFamilies(bytes.NewReader(r.body))
	if err != nil {
		t.Fatalf("parsing /metrics: %v", err)
	}
	return fams
}

// value returns the sample of name with exactly these label values (a histogram's
// sample count), failing when there is none.
func value(t *testing.T, fams map[string]*dto.MetricFamily, name string, labels ...string) float64 {
	t.Helper()
	f, ok := fams[name]
	if !ok {
		t.Fatalf("metric %s missing", name)
	}
	want := map[string]string{}
	for i := 0; i+1 < len(labels); i += 2 {
		want[labels[i]] = labels[i+1]
	}
next:
	for _, m := range f.GetMetric() {
		if len(m.GetLabel()) != len(want) {
			continue
		}
		for _, l := range m.GetLabel() {
			if want[l.GetName()] != l.GetValue() {
				continue next
			}
		}
		switch {
		case m.Counter != nil:
			return m.Counter.GetValue()
		case m.Gauge != nil:
			return m.Gauge.GetValue()
		case m.Histogram != nil:
			return float64(m.Histogram.GetSampleCount())
		case m.Untyped != nil:
			return m.Untyped.GetValue()
		}
	}
	t.Fatalf("metric %s%v missing", name, labels)
	return 0
}
