package main

import (
	"bufio"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"syscall"
	"time"

	"github.com/segmentio/analytics-go/v3"

	"github.com/backflowhq/backflow/mapper"
)

const benchWriteKey = "bench-write-key"

// segmentServerArg makes the bench binary a Segment-compatible server (see serveSegment).
const segmentServerArg = "-internal-segment-server"

// segmentServer is a minimal Segment-compatible tracking API on a loopback port, in a
// process of its own so that neither side's CPU time includes the server's work: it
// takes POST /v1/batch with the write key as basic-auth user, decodes the body's batch
// and counts its messages; GET /count reports the counts.
type segmentServer struct {
	url string
	cmd *exec.Cmd
}

type segmentCounts struct {
	Messages, Requests, Refused int64
}

func startSegmentServer() (*segmentServer, error) {
	exe, err := os.Executable()
	if err != nil {
		return nil, err
	}
	cmd := exec.Command(exe, segmentServerArg)
	stdout, err := cmd.StdoutPipe()
	if err != nil {
		return nil, err
	}
	cmd.Stderr = os.Stderr
	cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
	if err := cmd.Start(); err != nil {
		return nil, fmt.Errorf("starting the Segment server: %w", err)
	}
	line, err := bufio.NewReader(stdout).ReadString('\n')
	if err != nil {
		_ = cmd.Process.Kill()
		_ = cmd.Wait()
		return nil, fmt.Errorf("the Segment server did not start: %w", err)
	}
	return &segmentServer{url: strings.TrimSpace(line), cmd: cmd}, nil
}

func (s *segmentServer) counts() (segmentCounts, error) {
	var c segmentCounts
	resp, err := http.Get(s.url + "/count")
	if err != nil {
		return c, err
	}
	defer resp.Body.Close()
	return c, json.NewDecoder(resp.Body).Decode(&c)
}

func (s *segmentServer) messages() (int64, error) {
	c, err := s.counts()
	return c.Messages, err
}

func (s *segmentServer) close() {
	_ = s.cmd.Process.Kill()
	_ = s.cmd.Wait()
}

// serveSegment is the server process: it prints its URL on stdout and serves until killed.
func serveSegment() int {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		fmt.Fprintln(os.Stderr, "segment server:", err)
		return 1
	}
	var messages, requests, refused atomic.Int64
	mux := http.NewServeMux()
	mux.HandleFunc("GET /count", func(w http.ResponseWriter, _ *http.Request) {
		_ = json.NewEncoder(w).Encode(segmentCounts{messages.Load(), requests.Load(), refused.Load()})
	})
	mux.HandleFunc("POST /v1/batch", func(w http.ResponseWriter, r *http.Request) {
		if user, _, ok := r.BasicAuth(); !ok || user != benchWriteKey {
			refused.Add(1)
			http.Error(w, `{"error":"bad write key"}`, http.StatusUnauthorized)
			return
		}
		var body io.Reader = r.Body
		if r.Header.Get("Content-Encoding") == "gzip" {
			zr, err := gzip.NewReader(r.Body)
			if err != nil {
				http.Error(w, err.Error(), http.StatusBadRequest)
				return
			}
			defer zr.Close()
			body = zr
		}
		var b struct {
			Batch []json.RawMessage `json:"batch"`
		}
		if err := json.NewDecoder(body).Decode(&b); err != nil {
			refused.Add(1)
			http.Error(w, err.Error(), http.StatusBadRequest)
			return
		}
		requests.Add(1)
		messages.Add(int64(len(b.Batch)))
		w.Header().Set("Content-Type", "application/json")
		_, _ = io.WriteString(w, `{"success":true}`)
	})
	fmt.Printf("http://%s\n", l.Addr())
	srv := &http.Server{Handler: mux, ReadHeaderTimeout: 10 * time.Second}
	if err := srv.Serve(l); err != nil {
		fmt.Fprintln(os.Stderr, "segment server:", err)
		return 1
	}
	return 0
}

// analyticsAlone is analytics-go used directly, as its documentation shows, with
// ready-made messages and a callback that counts acknowledgements.
type analyticsAlone struct {
	msgs   []analytics.Identify
	done   atomic.Int64
	failed atomic.Int64
	target int64
	all    chan struct{}
	once   sync.Once
}

func (a *analyticsAlone) Success(analytics.Message) { a.tick() }
func (a *analyticsAlone) Failure(analytics.Message, error) {
	a.failed.Add(1)
	a.tick()
}

func (a *analyticsAlone) tick() {
	if a.done.Add(1) == a.target {
		a.once.Do(func() { close(a.all) })
	}
}

// run enqueues every message on a new client and waits for every callback.
func (a *analyticsAlone) run(ctx context.Context, endpoint string) error {
	a.done.Store(0)
	a.failed.Store(0)
	a.target = int64(len(a.msgs))
	a.all = make(chan struct{})
	a.once = sync.Once{}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = 4
	client, err := analytics.NewWithConfig(benchWriteKey, analytics.Config{
		// The batch size of backflow's segment destination by default, so that both sides
		// make requests of the same size.
		Endpoint: endpoint, BatchSize: 1000, Transport: tr, Callback: a,
		// backflow's segment destination flushes a batch that is not full after 10ms,
		// not analytics-go's default 5s; the same here, so neither waits on a timer.
		Interval: 10 * time.Millisecond,
		Logger:   discardLogger{},
	})
	if err != nil {
		return err
	}
	defer client.Close()
	for i := range a.msgs {
		if err := client.Enqueue(a.msgs[i]); err != nil {
			return fmt.Errorf("enqueue: %w", err)
		}
	}
	select {
	case <-a.all:
	case <-ctx.Done():
		return ctx.Err()
	}
	if n := a.failed.Load(); n > 0 {
		return fmt.Errorf("analytics-go reported %d failures", n)
	}
	return nil
}

type discardLogger struct{}

func (discardLogger) Logf(string, ...any)   {}
func (discardLogger) Errorf(string, ...any) {}

// identifyMessages turns backflow's messages into ready-made analytics.Identify values
// carrying the same ids, traits, timestamp and context.
func identifyMessages(msgs []mapper.Message) ([]analytics.Identify, error) {
	lib := &analytics.Context{Library: analytics.LibraryInfo{Name: "backflow", Version: "bench"}}
	out := make([]analytics.Identify, 0, len(msgs))
	for i := range msgs {
		m := &msgs[i]
		var traits analytics.Traits
		if err := json.Unmarshal(m.Body(), &traits); err != nil {
			return nil, fmt.Errorf("row %d: traits: %w", m.Row, err)
		}
		ts, err := time.Parse(time.RFC3339Nano, m.Timestamp())
		if err != nil {
			return nil, fmt.Errorf("row %d: timestamp: %w", m.Row, err)
		}
		out = append(out, analytics.Identify{MessageId: m.ID, UserId: m.UserID, AnonymousId: m.AnonymousID,
			Timestamp: ts, Context: lib, Traits: traits})
	}
	return out, nil
}

func scenarioSegment(ctx context.Context, e *env, res *results) error {
	rows := e.o.segmentRows
	d, err := e.dataset(1, rows, mapRowGroupRows)
	if err != nil {
		return err
	}
	srv, err := startSegmentServer()
	if err != nil {
		return err
	}
	defer srv.close()
	dir := filepath.Join(e.dir, "segment")

	// The ready-made messages for analytics-go: backflow's own, mapped in process.
	cfg, err := writeConfig(filepath.Join(dir, "messages"), syncConfig{source: d.dir, destination: "type: stdout"})
	if err != nil {
		return err
	}
	var mu sync.Mutex
	var all []mapper.Message
	if _, err := mapInProcess(ctx, cfg, "", e.o.threads, nil, func(msgs []mapper.Message) {
		mu.Lock()
		defer mu.Unlock()
		for _, m := range msgs {
			m.JSON = append([]byte(nil), m.JSON...) // msgs share a buffer reused by the next Map
			all = append(all, m)
		}
	}); err != nil {
		return err
	}
	alone := &analyticsAlone{}
	if alone.msgs, err = identifyMessages(all); err != nil {
		return err
	}
	all = nil

	cliDir := filepath.Join(dir, "cli")
	cliCfg, err := writeConfig(cliDir, syncConfig{source: d.dir,
		destination: "type: segment\n        write_key: ${BENCH_WRITE_KEY}\n        endpoint: " + srv.url})
	if err != nil {
		return err
	}
	cli := res.measure("segment", "backflow sync (segment)", rows, "msgs")
	cliSide := side{m: cli, run: func(ctx context.Context, _ int) error {
		_ = os.RemoveAll(filepath.Join(cliDir, "state"))
		before, err := srv.messages()
		if err != nil {
			return err
		}
		r, err := e.backflowSync(ctx, cliCfg, rows, "BENCH_WRITE_KEY="+benchWriteKey)
		if err != nil {
			return err
		}
		cli.add(r.wall, r.cpu, r.maxRSS)
		after, err := srv.messages()
		if err != nil {
			return err
		}
		if got := after - before; got != rows {
			return fmt.Errorf("the server counted %d messages, want %d", got, rows)
		}
		return nil
	}}
	ag := res.measure("segment", "analytics-go alone", rows, "msgs")
	agSide := side{m: ag, run: func(ctx context.Context, _ int) error {
		before, err := srv.messages()
		if err != nil {
			return err
		}
		c0, start := processCPU(), time.Now()
		if err := alone.run(ctx, srv.url); err != nil {
			return err
		}
		ag.add(time.Since(start), processCPU()-c0, 0)
		after, err := srv.messages()
		if err != nil {
			return err
		}
		if got := after - before; got != rows {
			return fmt.Errorf("the server counted %d messages, want %d", got, rows)
		}
		return nil
	}}
	res.comparisons = append(res.comparisons,
		comparison{"segment", "backflow sync ÷ analytics-go alone (msgs/s)", cli, ag, 1.0})
	if err := alternate(ctx, e.o.runs, e.o.verbose, []side{cliSide, agSide}); err != nil {
		return err
	}
	if c, err := srv.counts(); err != nil || c.Refused > 0 {
		return fmt.Errorf("the Segment server refused %d requests (%v)", c.Refused, err)
	}
	res.note("segment: backflow's time is the whole `backflow sync` process (start, list, read, map, deliver, checkpoint); analytics-go's is enqueueing ready-made Identify values and waiting for their callbacks. The server runs in a process of its own, on the same 2 CPUs; neither CPU figure includes it.")
	return nil
}
