package e2e

// Crash safety of `backflow sync`, against the real binary.
//
// SPEC.md (State): "A run that is killed at any moment loses nothing: the next run sends
// every row that was not acknowledged, and resends at most the batches that were in
// flight", and the checkpoint "is written atomically (a crash leaves the old or the new
// checkpoint, never a broken one)". The pipeline saves acknowledged progress every
// second and at the end of a run, so a SIGKILL also loses the acknowledgements made since
// the last save: those rows are sent again too. The tests below kill the binary at random
// moments (SIGKILL) or stop it (SIGTERM, SIGINT twice) against receivers that record
// every message, and check after every kill that
//
//   - the checkpoint loads (`backflow state show --json` exits 0),
//   - it never counts a row the receiver did not get (nothing is lost),
//   - it never forgets an acknowledged row, and the next run resends nothing it counts,
//   - the rows the next run will send again are at most those of the batches in flight
//     at the kill plus those acknowledged since the last save,
//   - a file destination is left with whole lines only.
//
// Every identifier here starts with "crash": other files of the package are written by
// other people.

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/state"
)

const (
	crashSyncName = "users"
	// crashCheckpointInterval is how often `backflow sync` saves acknowledged progress
	// (pipeline.Options.CheckpointInterval's default, which the command uses).
	crashCheckpointInterval = time.Second
	// crashSaveLate is how much later than the interval a save may come on a loaded
	// 2-core machine (a late ticker, a slow fsync): the tests judge the cadence loosely
	// and count on a checkpoint being at most interval+late old at a kill.
	crashSaveLate = time.Second
	// crashProcs is GOMAXPROCS in the binary's environment, hence the pipeline's number
	// of row-group readers: fixed so that the bounds below do not depend on the machine.
	crashProcs = 2
	// crashRunTimeout bounds one invocation of the binary.
	crashRunTimeout = 60 * time.Second
)

// crashSeed is the seed of the kill schedule: BACKFLOW_CRASH_SEED, else a fixed one, so
// that a failure can be replayed with the same schedule (timing still varies).
func crashSeed(t *testing.T) uint64 {
	t.Helper()
	seed := uint64(20250414)
	if s := os.Getenv("BACKFLOW_CRASH_SEED"); s != "" {
		v, err := strconv.ParseUint(s, 10, 64)
		if err != nil {
			t.Fatalf("BACKFLOW_CRASH_SEED=%q: %v", s, err)
		}
		seed = v
	}
	t.Logf("kill schedule seed %d (set BACKFLOW_CRASH_SEED to change it)", seed)
	return seed
}

// ---- the export ----

// crashFile is one source file of the example table: customer_ids first … first+rows-1,
// in row order.
type crashFile struct {
	key   string
	first int64
	rows  int64
}

// crashLayout tells which file and row a customer_id comes from.
type crashLayout struct {
	files []crashFile // by first id
}

func (l *crashLayout) add(f crashFile) {
	l.files = append(l.files, f)
	sort.Slice(l.files, func(i, j int) bool { return l.files[i].first < l.files[j].first })
}

func (l *crashLayout) total() int64 {
	var n int64
	for _, f := range l.files {
		n += f.rows
	}
	return n
}

// locate returns the file and row of customer_id id.
func (l *crashLayout) locate(id int64) (crashFile, int64, bool) {
	i := sort.Search(len(l.files), func(i int) bool { return l.files[i].first+l.files[i].rows > id })
	if i == len(l.files) || id < l.files[i].first {
		return crashFile{}, 0, false
	}
	return l.files[i], id - l.files[i].first, true
}

// crashWriteExport writes files of the example table into dir and records them.
func crashWriteExport(t *testing.T, l *crashLayout, dir string, o exampledata.Options) {
	t.Helper()
	paths, err := exampledata.Write(dir, o)
	if err != nil {
		t.Fatal(err)
	}
	for i, p := range paths {
		l.add(crashFile{key: filepath.Base(p), first: o.FirstID + int64(i)*o.RowsPerFile, rows: o.RowsPerFile})
	}
}

// ---- the workspace and the binary ----

// crashSpace is a directory with backflow.yaml, its data/ folder and .backflow state.
type crashSpace struct {
	t      *testing.T
	dir    string
	layout crashLayout
}

func newCrashSpace(t *testing.T) *crashSpace {
	t.Helper()
	return &crashSpace{t: t, dir: t.TempDir()}
}

func (s *crashSpace) path(rel string) string { return filepath.Join(s.dir, rel) }

// writeConfig writes one identify sync of data/ to the destination given as YAML lines
// (indented for a list item under "destinations:").
func (s *crashSpace) writeConfig(dest string) {
	s.t.Helper()
	cfg := `state:
  url: .backflow
syncs:
  - name: ` + crashSyncName + `
    source:
      url: data
    mapping:
      type: identify
      user_id: customer_id
      anonymous_id: anon_id
    destinations:
` + dest
	if err := os.WriteFile(s.path("backflow.yaml"), []byte(cfg), 0o644); err != nil {
		s.t.Fatal(err)
	}
}

// crashProc is one running invocation of the binary.
type crashProc struct {
	t       *testing.T
	args    []string
	cmd     *exec.Cmd
	cancel  context.CancelFunc
	started time.Time
	done    chan struct{} // closed when the process was waited for
	err     error         // cmd.Wait's error, set before done is closed
	ended   time.Time     // when cmd.Wait returned, set before done is closed
	stdout  crashLines
	stderr  crashLines
}

// crashLines collects a process's output, readable while it runs, and tells waiters when
// some text appears, so that a test waits for what the process says rather than sleeping.
type crashLines struct {
	mu   sync.Mutex
	buf  bytes.Buffer
	wake chan struct{} // closed and replaced on every write
}

func (c *crashLines) Write(p []byte) (int, error) {
	c.mu.Lock()
	defer c.mu.Unlock()
	c.buf.Write(p)
	if c.wake != nil {
		close(c.wake)
	}
	c.wake = make(chan struct{})
	return len(p), nil
}

func (c *crashLines) String() string {
	c.mu.Lock()
	defer c.mu.Unlock()
	return c.buf.String()
}

// waitFor waits until the output contains text, or ctx ends.
func (c *crashLines) waitFor(ctx context.Context, text string) error {
	for {
		c.mu.Lock()
		found := strings.Contains(c.buf.String(), text)
		if c.wake == nil {
			c.wake = make(chan struct{})
		}
		wake := c.wake
		c.mu.Unlock()
		if found {
			return nil
		}
		select {
		case <-wake:
		case <-ctx.Done():
			return fmt.Errorf("waiting for %q on stderr: %w", text, ctx.Err())
		}
	}
}

// start runs backflow with args (and -c backflow.yaml) in the workspace.
func (s *crashSpace) start(args ...string) *crashProc {
	s.t.Helper()
	args = append(args, "-c", s.path("backflow.yaml"))
	ctx, cancel := context.WithTimeout(context.Background(), crashRunTimeout)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = s.dir
	cmd.Env = []string{"GOMAXPROCS=" + strconv.Itoa(crashProcs)}
	for _, k := range []string{"PATH", "HOME", "TMPDIR", "LANG"} {
		if v, ok := os.LookupEnv(k); ok {
			cmd.Env = append(cmd.Env, k+"="+v)
		}
	}
	cmd.WaitDelay = 5 * time.Second
	p := &crashProc{t: s.t, args: args, cmd: cmd, cancel: cancel, done: make(chan struct{})}
	cmd.Stdout, cmd.Stderr = &p.stdout, &p.stderr
	if err := cmd.Start(); err != nil {
		cancel()
		s.t.Fatalf("starting backflow: %v", err)
	}
	p.started = time.Now()
	go func() {
		p.err = cmd.Wait()
		p.ended = time.Now()
		cancel()
		close(p.done)
	}()
	s.t.Cleanup(func() {
		// Only when the test ended without waiting for it: never leave it running.
		select {
		case <-p.done:
		default:
			_ = cmd.Process.Kill()
			<-p.done
		}
	})
	return p
}

// crashExit is how an invocation ended.
type crashExit struct {
	code   int // -1: killed by a signal
	signal syscall.Signal
	at     time.Time // when the test saw it end
}

// wait waits for the process to end. Whatever happened, its output must never show a
// panic or a goroutine dump.
func (p *crashProc) wait() crashExit {
	p.t.Helper()
	<-p.done
	return p.exit()
}

func (p *crashProc) exit() crashExit {
	p.t.Helper()
	e := crashExit{at: p.ended}
	var ee *exec.ExitError
	switch {
	case p.err == nil:
	case errors.As(p.err, &ee):
		e.code = ee.ExitCode()
		if ws, ok := ee.Sys().(syscall.WaitStatus); ok && ws.Signaled() {
			e.signal = ws.Signal()
		}
	default:
		p.t.Fatalf("backflow %s: %v\n%s", strings.Join(p.args, " "), p.err, p.output())
	}
	for _, out := range []string{p.stdout.String(), p.stderr.String()} {
		if strings.Contains(out, "panic") || strings.Contains(out, "goroutine ") {
			p.t.Errorf("backflow %s shows a panic or a goroutine dump:\n%s", strings.Join(p.args, " "), p.output())
		}
	}
	return e
}

func (p *crashProc) output() string {
	return fmt.Sprintf("stdout:\n%s\nstderr:\n%s", p.stdout.String(), p.stderr.String())
}

// killAfter SIGKILLs the process after d unless it ended before. It returns when the
// process ended, whether it was killed, and when the kill was sent.
func (p *crashProc) killAfter(d time.Duration) (killed bool, at time.Time, e crashExit) {
	p.t.Helper()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case <-p.done:
		return false, time.Time{}, p.exit()
	case <-timer.C:
	}
	at = time.Now()
	if err := p.cmd.Process.Kill(); err != nil && !errors.Is(err, os.ErrProcessDone) {
		p.t.Fatalf("killing backflow: %v", err)
	}
	e = p.wait()
	return e.signal == syscall.SIGKILL, at, e
}

// run runs backflow to its end.
func (s *crashSpace) run(args ...string) (crashExit, *crashProc) {
	s.t.Helper()
	p := s.start(args...)
	return p.wait(), p
}

// checkpoint runs `backflow state show --json`, which must exit 0 with a checkpoint
// that decodes; nil when there is none yet.
func (s *crashSpace) checkpoint(when string) *state.Checkpoint {
	s.t.Helper()
	e, p := s.run("state", "show", "--json")
	if e.code != 0 {
		s.t.Fatalf("%s: state show --json exited %d: the checkpoint does not load\n%s", when, e.code, p.output())
	}
	out := []byte(p.stdout.String())
	// One shape: the checkpoint, or null when there is none.
	if string(bytes.TrimSpace(out)) == "null" {
		return nil
	}
	var cp state.Checkpoint
	if err := json.Unmarshal(out, &cp); err != nil {
		s.t.Fatalf("%s: the checkpoint does not decode: %v\n%s", when, err, out)
	}
	// Format 1 while the checkpoint has no segments, 2 once it has.
	if cp.Version < 1 || cp.Version > state.Version || cp.Sync != crashSyncName {
		s.t.Fatalf("%s: checkpoint of version %d for sync %q:\n%s", when, cp.Version, cp.Sync, out)
	}
	return &cp
}

// crashMarks are, per file key, the row ranges [start, end) the checkpoint counts as
// acknowledged by one destination: its leading rows (acked) and the ranges beyond them
// it acknowledged out of order (acked_ranges), sorted and merged. The next run sends
// every row outside them.
type crashMarks map[string][][2]int64

func crashWatermarks(cp *state.Checkpoint, dest string) crashMarks {
	m := crashMarks{}
	if cp == nil {
		return m
	}
	for k, f := range cp.Files {
		var rs [][2]int64
		if n := f.Acked[dest]; n > 0 {
			rs = append(rs, [2]int64{0, n})
		}
		rs = append(rs, f.AckedRanges[dest]...)
		sort.Slice(rs, func(i, j int) bool { return rs[i][0] < rs[j][0] })
		var merged [][2]int64
		for _, r := range rs {
			if r[1] <= r[0] {
				continue
			}
			if n := len(merged); n > 0 && r[0] <= merged[n-1][1] {
				merged[n-1][1] = max(merged[n-1][1], r[1])
				continue
			}
			merged = append(merged, r)
		}
		m[filepath.Base(k)] = merged
	}
	return m
}

// covers tells whether the checkpoint counts row of file key.
func (m crashMarks) covers(key string, row int64) bool {
	for _, r := range m[key] {
		if row >= r[0] && row < r[1] {
			return true
		}
	}
	return false
}

// count is how many rows of file key the checkpoint counts.
func (m crashMarks) count(key string) int64 {
	var n int64
	for _, r := range m[key] {
		n += r[1] - r[0]
	}
	return n
}

// leading is how many leading rows of file key the checkpoint counts.
func (m crashMarks) leading(key string) int64 {
	if rs := m[key]; len(rs) > 0 && rs[0][0] == 0 {
		return rs[0][1]
	}
	return 0
}

func (m crashMarks) String() string {
	keys := make([]string, 0, len(m))
	for k := range m {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	var b strings.Builder
	for _, k := range keys {
		fmt.Fprintf(&b, "%s:%v ", k, m[k])
	}
	return strings.TrimSpace(b.String())
}

// crashCheckMonotonic fails when the checkpoint forgot an acknowledged row: the
// checkpoint of incremental runs of one unchanged sync only ever grows.
func crashCheckMonotonic(t *testing.T, when string, prev, cur crashMarks) {
	t.Helper()
	for k, rs := range prev {
		for _, r := range rs {
			for row := r[0]; row < r[1]; row++ {
				if !cur.covers(k, row) {
					t.Errorf("%s: the checkpoint forgot that row %d of %s was acknowledged (before: %v; now: %v)", when, row, k, rs, cur[k])
					return
				}
			}
		}
	}
}

// ---- the webhook receiver ----

// crashPost is one POST the receiver got.
type crashPost struct {
	ids      []int64  // customer_ids (userId), in order
	msgIDs   []string // messageIds
	received time.Time
	answered time.Time // when the 200 was written; zero: never answered
}

// crashHook is a webhook receiver on 127.0.0.1 recording every batch. It answers each
// POST after delay() — the latency that keeps batches in flight — or, with block set,
// only when block is closed.
type crashHook struct {
	t     *testing.T
	srv   *httptest.Server
	delay func() time.Duration
	block chan struct{}

	mu      sync.Mutex
	posts   []*crashPost
	active  int           // POSTs being handled
	maxAct  int           // the most POSTs handled at once
	conns   int           // open connections
	changed chan struct{} // closed and replaced whenever active or conns changes
	arrived chan int      // number of POSTs so far, sent (without blocking) on each arrival
	bad     []string
}

// changedLocked wakes quiesce.
func (h *crashHook) changedLocked() {
	close(h.changed)
	h.changed = make(chan struct{})
}

// connState counts open connections: a request a dead process sent before its kill may
// still sit unread in one.
func (h *crashHook) connState(_ net.Conn, cs http.ConnState) {
	h.mu.Lock()
	defer h.mu.Unlock()
	switch cs {
	case http.StateNew:
		h.conns++
	case http.StateClosed, http.StateHijacked:
		h.conns--
	default:
		return
	}
	h.changedLocked()
}

func newCrashHook(t *testing.T, delay func() time.Duration) *crashHook {
	t.Helper()
	h := &crashHook{t: t, delay: delay, changed: make(chan struct{}), arrived: make(chan int, 1024)}
	h.srv = httptest.NewUnstartedServer(h)
	h.srv.Config.ConnState = h.connState
	h.srv.Start()
	t.Cleanup(func() {
		if h.block != nil {
			select {
			case <-h.block:
			default:
				close(h.block)
			}
		}
		h.srv.Close()
		h.mu.Lock()
		defer h.mu.Unlock()
		for _, b := range h.bad {
			t.Errorf("receiver: %s", b)
		}
	})
	return h
}

func (h *crashHook) url() string { return h.srv.URL + "/hook" }

func (h *crashHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	body, err := io.ReadAll(r.Body)
	if err != nil {
		return // the sender died mid-body: nothing arrived
	}
	var b struct {
		Batch []struct {
			Type      string `json:"type"`
			UserID    string `json:"userId"`
			MessageID string `json:"messageId"`
		} `json:"batch"`
	}
	p := &crashPost{received: time.Now()}
	if err := json.Unmarshal(body, &b); err != nil || len(b.Batch) == 0 {
		h.mu.Lock()
		h.bad = append(h.bad, fmt.Sprintf("a POST is not a non-empty {\"batch\":[…]}: %v: %.200s", err, body))
		h.mu.Unlock()
		http.Error(w, "bad batch", http.StatusBadRequest)
		return
	}
	for _, m := range b.Batch {
		id, err := strconv.ParseInt(m.UserID, 10, 64)
		if err != nil || m.MessageID == "" || m.Type != "identify" {
			h.mu.Lock()
			h.bad = append(h.bad, fmt.Sprintf("a message has type %q, userId %q, messageId %q", m.Type, m.UserID, m.MessageID))
			h.mu.Unlock()
			continue
		}
		p.ids = append(p.ids, id)
		p.msgIDs = append(p.msgIDs, m.MessageID)
	}
	h.mu.Lock()
	h.posts = append(h.posts, p)
	n := len(h.posts)
	h.active++
	h.changedLocked()
	h.maxAct = max(h.maxAct, h.active)
	var d time.Duration
	if h.delay != nil {
		d = h.delay() // under mu: the PRNG behind it is not safe for concurrent use
	}
	h.mu.Unlock()
	select {
	case h.arrived <- n:
	default:
	}
	defer func() {
		h.mu.Lock()
		h.active--
		h.changedLocked()
		h.mu.Unlock()
	}()

	var wait <-chan time.Time
	if h.block == nil {
		timer := time.NewTimer(d)
		defer timer.Stop()
		wait = timer.C
	}
	select {
	case <-wait:
	case <-h.block: // nil unless blocking: never ready
		return
	case <-r.Context().Done():
		return // the sender is gone: never answered
	}
	h.mu.Lock()
	p.answered = time.Now()
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

// quiesce waits, once the process that posted has ended, until the receiver has no
// connection open and handles no POST: the server reads every request the process sent
// before it died, the handlers notice the closed connections and return. Only then do
// the posts so far belong to the runs that ended.
func (h *crashHook) quiesce(when string) {
	h.t.Helper()
	timeout := time.NewTimer(10 * time.Second)
	defer timeout.Stop()
	for {
		h.mu.Lock()
		quiet, changed, conns, active := h.conns == 0 && h.active == 0, h.changed, h.conns, h.active
		h.mu.Unlock()
		if quiet {
			return
		}
		select {
		case <-changed:
		case <-timeout.C:
			h.t.Fatalf("%s: 10s after the process ended, the receiver still has %d connections open and handles %d POSTs", when, conns, active)
		}
	}
}

// snapshot returns a copy of the posts so far and the highest concurrency seen.
func (h *crashHook) snapshot() ([]crashPost, int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	out := make([]crashPost, len(h.posts))
	for i, p := range h.posts {
		out[i] = *p
	}
	return out, h.maxAct
}

// resetMaxActive starts measuring the concurrency of a new run.
func (h *crashHook) resetMaxActive() {
	h.mu.Lock()
	defer h.mu.Unlock()
	h.maxAct = h.active
}

// ---- accounting ----

// crashLedger is what a receiver has got: per customer_id, how often and under which
// messageId.
type crashLedger struct {
	count map[int64]int
	msgID map[int64]string
}

func newCrashLedger() *crashLedger {
	return &crashLedger{count: map[int64]int{}, msgID: map[int64]string{}}
}

// add records one delivery of customer_id id; a row must always carry one messageId.
func (l *crashLedger) add(t *testing.T, id int64, msgID string) {
	t.Helper()
	if prev, ok := l.msgID[id]; ok && prev != msgID {
		t.Errorf("customer_id %d arrived with messageId %s and later %s: messageId must be deterministic", id, prev, msgID)
	}
	l.msgID[id] = msgID
	l.count[id]++
}

func (l *crashLedger) deliveries() int {
	n := 0
	for _, c := range l.count {
		n += c
	}
	return n
}

// crashCheckCovered fails for every row the checkpoint counts that the receiver never
// got: a checkpoint that runs ahead of the deliveries loses those rows for good.
func crashCheckCovered(t *testing.T, when string, layout *crashLayout, marks crashMarks, got map[int64]int) {
	t.Helper()
	for _, f := range layout.files {
		var missing []int64
		for _, r := range marks[f.key] {
			if r[0] < 0 || r[1] > f.rows {
				t.Errorf("%s: the checkpoint counts rows [%d, %d) of %s, which has %d", when, r[0], r[1], f.key, f.rows)
			}
			for row := max(r[0], 0); row < min(r[1], f.rows); row++ {
				if got[f.first+row] == 0 {
					missing = append(missing, row)
				}
			}
		}
		if len(missing) > 0 {
			t.Errorf("%s: the checkpoint counts rows %v of %s acknowledged, but %d of them never arrived (rows %v…): they are lost",
				when, marks[f.key], f.key, len(missing), missing[:min(len(missing), 10)])
		}
	}
}

// crashResent counts the rows among ids that the next run will send again: those the
// checkpoint does not count.
func crashResent(layout *crashLayout, marks crashMarks, ids map[int64]bool) int {
	n := 0
	for id := range ids {
		f, row, ok := layout.locate(id)
		if ok && !marks.covers(f.key, row) {
			n++
		}
	}
	return n
}

// ---- 1. SIGKILL at random moments against a webhook ----

func TestCrashKill9LosesNothing(t *testing.T) {
	const (
		files        = 4
		rowsPerFile  = 5000
		rowGroupRows = 1000
		batchSize    = 100
		maxInFlight  = 4
		minDelay     = 100 * time.Millisecond
		maxDelay     = 220 * time.Millisecond
		kills        = 10 // runs killed in the middle of their work
		minKill      = 50 * time.Millisecond
		maxKill      = 3 * time.Second
		// ackLag is how long after the receiver answers the pipeline may record the
		// acknowledgement (a loaded machine's scheduling): an answer this close before
		// a save may miss it legitimately.
		ackLag = 200 * time.Millisecond
		// startLag is how long a run may take before its first chance to save (start,
		// listing, schema inference, planning), on top of the interval.
		startLag = 700 * time.Millisecond
	)
	seed := crashSeed(t)
	killRNG := rand.New(rand.NewPCG(seed, 1))
	delayRNG := rand.New(rand.NewPCG(seed, 2))

	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
		Files: files, RowsPerFile: rowsPerFile, RowGroupRows: rowGroupRows, Seed: seed})
	total := s.layout.total()
	hook := newCrashHook(t, func() time.Duration {
		return minDelay + time.Duration(delayRNG.Int64N(int64(maxDelay-minDelay)))
	})
	s.writeConfig(fmt.Sprintf(`      - type: webhook
        url: %q
        batch_size: %d
        max_in_flight: %d
        timeout: 10s
        retry: { max_attempts: 3, max_backoff: 100ms }
`, hook.url(), batchSize, maxInFlight))

	// The static bound, from the config and the receiver's latency alone: the batches in
	// flight, plus what maxInFlight connections can have acknowledged (one batch per
	// minDelay each) since a save that happened up to interval+late before the kill.
	window := crashCheckpointInterval + crashSaveLate
	inFlightRows := maxInFlight * batchSize
	staticBound := inFlightRows + int(window/minDelay+1)*maxInFlight*batchSize
	t.Logf("%d rows in %d files (row groups of %d); batches of %d, %d in flight, %v-%v per POST; static bound on rows resent per kill: %d in flight + %d acknowledged in %v = %d",
		total, files, rowGroupRows, batchSize, maxInFlight, minDelay, maxDelay, inFlightRows, staticBound-inFlightRows, window, staticBound)

	ledger := newCrashLedger()
	seen := 0 // posts accounted for
	prev := crashMarks{}
	var resentPerKill, boundPerKill []int
	sumResent, killed, completed, lostAcks := 0, 0, 0, 0
	deadline := time.Now().Add(45 * time.Second)
	for i := 0; killed < kills && i < 2*kills && time.Now().Before(deadline); i++ {
		when := fmt.Sprintf("run %d", i+1)
		hook.resetMaxActive()
		delay := minKill + time.Duration(killRNG.Int64N(int64(maxKill-minKill)))
		p := s.start("sync")
		ok, killAt, e := p.killAfter(delay)
		hook.quiesce(when)
		posts, maxAct := hook.snapshot()
		if maxAct > maxInFlight {
			t.Errorf("%s: %d POSTs were in flight at once; max_in_flight is %d", when, maxAct, maxInFlight)
		}
		cp := s.checkpoint("after " + when)
		marks := crashWatermarks(cp, "webhook")
		crashCheckMonotonic(t, when, prev, marks)

		// The last save this run made, or its start when it made none: what the
		// receiver acknowledged after it is what a kill may lose.
		lastSave, saved := p.started, false
		if cp != nil && cp.UpdatedAt.After(p.started) {
			lastSave, saved = cp.UpdatedAt, true
		}
		// What this run sent, and when the receiver answered it.
		runRows := map[int64]bool{}
		answered := map[int64]time.Time{} // zero: in flight at the kill
		sinceSave := 0                    // rows answered since the last save
		var firstPost time.Time
		for _, post := range posts[seen:] {
			if firstPost.IsZero() {
				firstPost = post.received
			}
			inFlight := post.answered.IsZero() || ok && post.answered.After(killAt)
			if !inFlight && !post.answered.Before(lastSave.Add(-ackLag)) {
				sinceSave += len(post.ids)
			}
			for j, id := range post.ids {
				f, row, found := s.layout.locate(id)
				if !found {
					t.Errorf("%s: the receiver got customer_id %d, which is in no file", when, id)
					continue
				}
				if prev.covers(f.key, row) {
					t.Errorf("%s: resent row %d of %s, which the checkpoint counted (%v)", when, row, f.key, prev[f.key])
				}
				ledger.add(t, id, post.msgIDs[j])
				if runRows[id] {
					t.Errorf("%s: sent row %d of %s twice", when, row, f.key)
				}
				runRows[id] = true
				if inFlight {
					answered[id] = time.Time{}
				} else {
					answered[id] = post.answered
				}
			}
		}
		seen = len(posts)
		crashCheckCovered(t, "after "+when, &s.layout, marks, ledger.count)
		prev = marks

		if !ok {
			if e.code != 0 {
				t.Fatalf("%s ended by itself with exit %d before the kill\n%s", when, e.code, p.output())
			}
			completed++
			t.Logf("%s: completed in %v, before the kill at %v (%d rows sent); a new export file arrives", when, e.at.Sub(p.started).Round(time.Millisecond), delay, len(runRows))
			// A new export lands, so that the next runs have work to be killed in.
			crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
				Files: 1, RowsPerFile: rowsPerFile, RowGroupRows: rowGroupRows, Seed: seed + uint64(completed),
				FirstID: int64(completed) * 1_000_000, Prefix: fmt.Sprintf("more-%02d-", completed)})
			continue
		}
		killed++
		// The pipeline saves every interval once it runs.
		if gap := killAt.Sub(lastSave); saved && gap > window || !saved && gap > window+startLag {
			t.Errorf("%s: killed %v after its start; the last checkpoint it saved is %v older than the kill, more than the %v interval allows",
				when, killAt.Sub(p.started).Round(time.Millisecond), gap.Round(time.Millisecond), crashCheckpointInterval)
		}
		// The rows of this run the next one sends again: in flight at the kill,
		// acknowledged since the last save, or acknowledged before it but not counted by
		// it (lost acknowledgements).
		resent, inFlight, lost := 0, 0, 0
		var lostExample string
		for id := range runRows {
			f, row, _ := s.layout.locate(id)
			if marks.covers(f.key, row) {
				continue
			}
			resent++
			at := answered[id]
			switch {
			case at.IsZero():
				inFlight++
			case at.Before(lastSave.Add(-ackLag)):
				lost++
				if lostExample == "" {
					lostExample = fmt.Sprintf("e.g. row %d of %s, acknowledged %v before the save, which counts %v of that file",
						row, f.key, lastSave.Sub(at).Round(time.Millisecond), marks[f.key])
				}
			}
		}
		if inFlight > inFlightRows {
			t.Errorf("%s: %d rows were in flight at the kill; at most %d can be", when, inFlight, inFlightRows)
		}
		bound := inFlightRows + sinceSave
		desc := "no save by this run"
		if saved {
			desc = fmt.Sprintf("last save %v before the kill", killAt.Sub(lastSave).Round(time.Millisecond))
		}
		firstAfter := "no POST"
		if !firstPost.IsZero() {
			firstAfter = "first POST after " + firstPost.Sub(p.started).Round(time.Millisecond).String()
		}
		t.Logf("%s: killed after %v (%s, %s): %d rows sent, %d to resend: %d in flight, %d acknowledged since the save, %d acknowledged before it; bound %d",
			when, delay.Round(time.Millisecond), firstAfter, desc, len(runRows), resent, inFlight, resent-inFlight-lost, lost, bound)
		if resent > bound {
			t.Errorf("%s: %d rows will be sent again, over the %d that may be (%d of batches in flight + %d acknowledged since the last save): %d acknowledged before the last save are not counted by it; %s",
				when, resent, bound, inFlightRows, sinceSave, lost, lostExample)
		}
		if resent > staticBound {
			t.Errorf("%s: %d rows will be resent, over the static bound %d", when, resent, staticBound)
		}
		lostAcks += lost
		resentPerKill = append(resentPerKill, resent)
		boundPerKill = append(boundPerKill, bound)
		sumResent += resent
	}
	if killed < kills {
		t.Errorf("only %d runs were killed in their work within the time budget; want %d", killed, kills)
	}

	// The last run goes to the end.
	e, p := s.run("sync")
	if e.code != 0 {
		t.Fatalf("the final run exited %d\n%s", e.code, p.output())
	}
	hook.quiesce("final run")
	posts, _ := hook.snapshot()
	finalRows := map[int64]bool{}
	for _, post := range posts[seen:] {
		for j, id := range post.ids {
			f, row, _ := s.layout.locate(id)
			if prev.covers(f.key, row) {
				t.Errorf("final run: resent row %d of %s, which the checkpoint counted (%v)", row, f.key, prev[f.key])
			}
			if finalRows[id] {
				t.Errorf("final run: sent row %d of %s twice", row, f.key)
			}
			finalRows[id] = true
			ledger.add(t, id, post.msgIDs[j])
		}
	}
	cp := s.checkpoint("after the final run")
	marks := crashWatermarks(cp, "webhook")
	for _, f := range s.layout.files {
		if marks.leading(f.key) != f.rows {
			t.Errorf("after the final run the checkpoint counts %v of the %d rows of %s", marks[f.key], f.rows, f.key)
		}
	}

	// Every row arrived, each under one messageId, distinct across rows.
	total = s.layout.total()
	var missing []int64
	for _, f := range s.layout.files {
		for id := f.first; id < f.first+f.rows; id++ {
			if ledger.count[id] == 0 {
				missing = append(missing, id)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d rows never arrived: customer_ids %v…", len(missing), total, missing[:min(len(missing), 10)])
	}
	distinct := map[string]bool{}
	for _, m := range ledger.msgID {
		distinct[m] = true
	}
	if int64(len(distinct)) != total || int64(len(ledger.count)) != total {
		t.Errorf("%d distinct messageIds and %d distinct userIds arrived; want %d of each", len(distinct), len(ledger.count), total)
	}
	dups := ledger.deliveries() - len(ledger.count)
	t.Logf("%d kills, %d runs completed before their kill; rows resent per kill %v (bounds %v), %d of them acknowledged before the last save; %d deliveries of %d rows: %d duplicates (predicted at most %d)",
		killed, completed, resentPerKill, boundPerKill, lostAcks, ledger.deliveries(), total, dups, sumResent)
	if dups > sumResent {
		t.Errorf("%d duplicates arrived, more than the %d rows the checkpoints left to resend", dups, sumResent)
	}
}

// ---- 2. SIGKILL early and often against a file destination ----

// crashFileLines reads the output file: per customer_id the messageId and how many lines
// hold it, and whether the file ends inside a line (a torn write).
func crashFileLines(t *testing.T, path string, from int64) (ids map[int64]int, msgIDs map[int64]string, size int64, torn bool) {
	t.Helper()
	b, err := os.ReadFile(path)
	if errors.Is(err, os.ErrNotExist) {
		return map[int64]int{}, map[int64]string{}, 0, false
	}
	if err != nil {
		t.Fatal(err)
	}
	size = int64(len(b))
	if from > size {
		t.Fatalf("the output file shrank from %d to %d bytes", from, size)
	}
	b = b[from:]
	if len(b) > 0 && b[len(b)-1] != '\n' {
		// A kill in the middle of a write (the kernel stops a long write between pages)
		// leaves part of a line: that batch was not acknowledged, and the next run cuts
		// the part before it appends. Only the whole lines count; size is where they end,
		// which is where the next run must append.
		torn = true
		b = b[:bytes.LastIndexByte(b, '\n')+1]
		size = from + int64(len(b))
	}
	ids, msgIDs = map[int64]int{}, map[int64]string{}
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 1<<20)
	line := 0
	for sc.Scan() {
		line++
		var m struct {
			UserID    string `json:"userId"`
			MessageID string `json:"messageId"`
		}
		err := json.Unmarshal(sc.Bytes(), &m)
		id, perr := strconv.ParseInt(m.UserID, 10, 64)
		if err != nil || perr != nil || m.MessageID == "" {
			t.Errorf("output line %d after byte %d is not a whole message (%v): %.200q", line, from, err, sc.Bytes())
			continue
		}
		ids[id]++
		msgIDs[id] = m.MessageID
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return ids, msgIDs, size, torn
}

func TestCrashDuringCheckpointWrites(t *testing.T) {
	const (
		kills     = 30
		maxKill   = 200 * time.Millisecond
		batchSize = 100
		addRows   = 200 // a new file of this many rows before every run
	)
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 3))
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
		Files: 2, RowsPerFile: 500, RowGroupRows: 250, Seed: seed, FirstID: 0})
	out := s.path("out/users.jsonl")
	s.writeConfig(fmt.Sprintf(`      - type: file
        path: %q
        batch_size: %d
`, out, batchSize))

	ledger := newCrashLedger()
	var offset int64
	prev := crashMarks{}
	var resentPerKill []int
	sumResent, killed, saves, torn := 0, 0, 0, 0
	var lastUpdate time.Time
	// Kills are drawn below a horizon of at most maxKill that follows how long a run
	// lasts, so that they land around its end, where it saves: a run that completed sets
	// it to a little over its duration; a killed one leaves more work to the next, which
	// lasts longer, so the horizon grows.
	horizon := maxKill
	tmpLeft, tmpSeen := 0, map[string]bool{}
	for i := 0; i < kills; i++ {
		when := fmt.Sprintf("run %d", i+1)
		// New rows every run, so that most runs have something to deliver and checkpoint.
		crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
			Files: 1, RowsPerFile: addRows, RowGroupRows: addRows, Seed: seed + uint64(i),
			FirstID: 100000 + int64(i)*addRows, Prefix: fmt.Sprintf("add-%02d-", i)})
		delay := time.Duration(rng.Int64N(int64(horizon)))
		p := s.start("sync")
		ok, _, e := p.killAfter(delay)
		if !ok && e.code != 0 {
			t.Fatalf("%s ended by itself with exit %d before the kill\n%s", when, e.code, p.output())
		}
		if ok {
			horizon = min(maxKill, horizon*5/4)
		} else {
			horizon = min(maxKill, e.at.Sub(p.started)*5/4)
		}
		// A temporary checkpoint file that was not there before: killed in the middle of
		// writing one (the next save removes it).
		tmps, _ := filepath.Glob(s.path(".backflow/checkpoints/*.tmp-*"))
		for _, tmp := range tmps {
			if !tmpSeen[tmp] {
				tmpSeen[tmp] = true
				tmpLeft++
				t.Logf("%s: killed after %v while writing a checkpoint (%s left behind)", when, delay.Round(time.Millisecond), filepath.Base(tmp))
			}
		}
		cp := s.checkpoint("after " + when)
		marks := crashWatermarks(cp, "file")
		crashCheckMonotonic(t, when, prev, marks)
		if cp != nil && !cp.UpdatedAt.Equal(lastUpdate) {
			saves++
			lastUpdate = cp.UpdatedAt
		}

		ids, msgIDs, size, isTorn := crashFileLines(t, out, offset)
		if isTorn {
			// Allowed: the next run must cut it — if it appended to it instead, the next
			// read (from the end of the whole lines) would find a glued, invalid line.
			torn++
			t.Logf("%s: killed after %v in the middle of a write: the output file ends inside a line", when, delay)
		}
		runRows := map[int64]bool{}
		for id, n := range ids {
			f, row, found := s.layout.locate(id)
			if !found {
				t.Errorf("%s: customer_id %d is in no file", when, id)
				continue
			}
			if prev.covers(f.key, row) {
				t.Errorf("%s: rewrote row %d of %s, which the checkpoint counted (%v)", when, row, f.key, prev[f.key])
			}
			for range n {
				ledger.add(t, id, msgIDs[id])
			}
			runRows[id] = true
		}
		offset = size
		crashCheckCovered(t, "after "+when, &s.layout, marks, ledger.count)
		prev = marks
		if ok {
			killed++
			resent := crashResent(&s.layout, marks, runRows)
			resentPerKill = append(resentPerKill, resent)
			sumResent += resent
			// Nothing is saved before the first interval but at the end: a run killed
			// before both resends all it wrote, and no more.
			if resent > len(runRows) {
				t.Errorf("%s: %d rows to resend, but the run wrote %d", when, resent, len(runRows))
			}
		}
	}
	t.Logf("%d of %d runs killed (0-%v after start), %d of them while writing a checkpoint; %d checkpoints written in between; %d torn output files; rows resent per kill %v",
		killed, kills, maxKill, tmpLeft, saves, torn, resentPerKill)

	e, p := s.run("sync")
	if e.code != 0 {
		t.Fatalf("the final run exited %d\n%s", e.code, p.output())
	}
	ids, msgIDs, _, finalTorn := crashFileLines(t, out, offset)
	if finalTorn {
		t.Errorf("after the final run, which nothing killed, the output file ends inside a line")
	}
	for id, n := range ids {
		f, row, _ := s.layout.locate(id)
		if prev.covers(f.key, row) {
			t.Errorf("final run: rewrote row %d of %s, which the checkpoint counted (%v)", row, f.key, prev[f.key])
		}
		for range n {
			ledger.add(t, id, msgIDs[id])
		}
	}
	marks := crashWatermarks(s.checkpoint("after the final run"), "file")
	// What a reader of the whole file finds: a line torn by a kill and continued by the
	// next run holds no message, whole lines do.
	whole, _, _, _ := crashFileLines(t, out, 0)
	var missing []int64
	for _, f := range s.layout.files {
		if marks.leading(f.key) != f.rows {
			t.Errorf("after the final run the checkpoint counts %v of the %d rows of %s", marks[f.key], f.rows, f.key)
		}
		for r := int64(0); r < f.rows; r++ {
			if whole[f.first+r] == 0 {
				missing = append(missing, f.first+r)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d rows are not in a whole line of the output file: customer_ids %v…", len(missing), s.layout.total(), missing[:min(len(missing), 10)])
	}
	dups := ledger.deliveries() - len(ledger.count)
	t.Logf("output: %d lines for %d rows: %d duplicates (predicted at most %d)", ledger.deliveries(), s.layout.total(), dups, sumResent)
	if dups > sumResent {
		t.Errorf("%d duplicate lines, more than the %d rows the checkpoints left to resend", dups, sumResent)
	}
}

// A SIGKILL in the middle of the file destination's write can leave the file ending
// inside a line: Linux stops a large write() between pages when a fatal signal is
// pending (TestCrashDuringCheckpointWrites's random kills catch it in about one run in
// five). That batch was never acknowledged, so the next run writes it again; it must not
// glue its first line onto the torn one, which would leave a line that is no JSON and
// lose the message it holds for every reader of the file. This test makes that state
// directly: a completed run, then half a line as a kill leaves it, then a run with new
// rows. The torn bytes were never acknowledged: the destination may drop them.
func TestCrashFileTornTail(t *testing.T) {
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 1, RowsPerFile: 300, Seed: 5})
	out := s.path("out/users.jsonl")
	s.writeConfig(fmt.Sprintf(`      - type: file
        path: %q
        batch_size: 100
`, out))
	if e, p := s.run("sync"); e.code != 0 {
		t.Fatalf("the first run exited %d\n%s", e.code, p.output())
	}
	b, err := os.ReadFile(out)
	if err != nil {
		t.Fatal(err)
	}
	line := b[:bytes.IndexByte(b, '\n')+1]
	f, err := os.OpenFile(out, os.O_WRONLY|os.O_APPEND, 0)
	if err != nil {
		t.Fatal(err)
	}
	if _, err := f.Write(line[:len(line)/2]); err != nil {
		t.Fatal(err)
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 1, RowsPerFile: 300, Seed: 6, FirstID: 1000, Prefix: "next-"})
	if e, p := s.run("sync"); e.code != 0 {
		t.Fatalf("the second run exited %d\n%s", e.code, p.output())
	}
	whole, _, _, torn := crashFileLines(t, out, 0)
	if torn {
		t.Errorf("the output file ends inside a line")
	}
	var missing []int64
	for _, f := range s.layout.files {
		for id := f.first; id < f.first+f.rows; id++ {
			if whole[id] == 0 {
				missing = append(missing, id)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d rows are in no whole line of the output file after a torn line: customer_ids %v (the run appended to the torn line instead of cutting it off)",
			len(missing), s.layout.total(), missing[:min(len(missing), 10)])
	}
}

// ---- 3. SIGTERM: a graceful stop ----

func TestSigtermGracefulStop(t *testing.T) {
	const (
		batchSize   = 100
		maxInFlight = 4
		perPost     = 200 * time.Millisecond
		grace       = 5 * time.Second
		stopAfter   = 6 // POSTs arrived: with 4 in flight, at least 2 were answered
	)
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
		Files: 2, RowsPerFile: 2000, RowGroupRows: 500, Seed: 7})
	var slow sync.Mutex
	latency := perPost
	hook := newCrashHook(t, func() time.Duration {
		slow.Lock()
		defer slow.Unlock()
		return latency
	})
	s.writeConfig(fmt.Sprintf(`      - type: webhook
        url: %q
        batch_size: %d
        max_in_flight: %d
        timeout: 30s
`, hook.url(), batchSize, maxInFlight))

	p := s.start("sync", "--grace", grace.String())
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	for n := 0; n < stopAfter; {
		select {
		case n = <-hook.arrived:
		case <-p.done:
			t.Fatalf("the sync ended before %d POSTs arrived\n%s", stopAfter, p.output())
		case <-ctx.Done():
			t.Fatalf("%d POSTs did not arrive in time\n%s", stopAfter, p.output())
		}
	}
	signalled := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGTERM); err != nil {
		t.Fatal(err)
	}
	e := p.wait()
	took := e.at.Sub(signalled)
	if e.code != 1 {
		t.Errorf("exit %d after SIGTERM, want 1 (the run did not complete)\n%s", e.code, p.output())
	}
	if took > grace {
		t.Errorf("the process took %v to exit after SIGTERM, over the %v grace", took, grace)
	}
	stderr := p.stderr.String()
	if !strings.Contains(stderr, "stopping") || !strings.Contains(stderr, "terminated") && !strings.Contains(stderr, "SIGTERM") {
		t.Errorf("stderr does not say the run was stopped by SIGTERM:\n%s", stderr)
	}
	hook.quiesce("after SIGTERM")
	posts, maxAct := hook.snapshot()
	if maxAct > maxInFlight {
		t.Errorf("%d POSTs were in flight at once; max_in_flight is %d", maxAct, maxInFlight)
	}

	// The receiver answered every POST that arrived: the in-flight ones finished within the grace.
	ledger := newCrashLedger()
	acked := map[int64]bool{}
	afterSignal := 0
	for _, post := range posts {
		if post.answered.IsZero() {
			t.Errorf("a POST that arrived %v before SIGTERM was never answered: the stop cut it instead of letting it finish",
				signalled.Sub(post.received).Round(time.Millisecond))
		}
		if post.received.After(signalled) {
			afterSignal++
		}
		for j, id := range post.ids {
			ledger.add(t, id, post.msgIDs[j])
			if !post.answered.IsZero() {
				acked[id] = true
			}
		}
	}
	cp := s.checkpoint("after SIGTERM")
	marks := crashWatermarks(cp, "webhook")
	crashCheckCovered(t, "after SIGTERM", &s.layout, marks, ledger.count)
	// The stop let the batches in flight finish and then saved: the checkpoint counts
	// every row the receiver acknowledged, and no other.
	var counted int64
	for _, f := range s.layout.files {
		counted += marks.count(f.key)
	}
	var uncounted []int64
	for id := range acked {
		if f, row, ok := s.layout.locate(id); ok && !marks.covers(f.key, row) {
			uncounted = append(uncounted, id)
		}
	}
	sort.Slice(uncounted, func(i, j int) bool { return uncounted[i] < uncounted[j] })
	t.Logf("SIGTERM after %d POSTs: exit %d in %v; %d POSTs arrived (%d after the signal), %d rows acknowledged, %d counted by the checkpoint (%v)",
		stopAfter, e.code, took.Round(time.Millisecond), len(posts), afterSignal, len(acked), counted, marks)
	if len(uncounted) > 0 {
		t.Errorf("after SIGTERM the checkpoint does not count %d of the %d rows the receiver acknowledged (customer_ids %v…): the next run sends them again",
			len(uncounted), len(acked), uncounted[:min(len(uncounted), 10)])
	}
	if min := int64(stopAfter-maxInFlight) * batchSize; counted < min {
		t.Errorf("the checkpoint counts %d rows; at least %d were acknowledged before the stop", counted, min)
	}

	// A rerun delivers the rest, resending at most the batches that were in flight.
	slow.Lock()
	latency = 0
	slow.Unlock()
	seen := len(posts)
	e2, p2 := s.run("sync")
	if e2.code != 0 {
		t.Fatalf("the rerun exited %d\n%s", e2.code, p2.output())
	}
	hook.quiesce("rerun")
	posts, _ = hook.snapshot()
	for _, post := range posts[seen:] {
		for j, id := range post.ids {
			ledger.add(t, id, post.msgIDs[j])
		}
	}
	for id := range s.layout.total() {
		if ledger.count[id] == 0 {
			t.Errorf("customer_id %d never arrived", id)
		}
	}
	dups := ledger.deliveries() - len(ledger.count)
	t.Logf("rerun: %d duplicates", dups)
	if dups > maxInFlight*batchSize {
		t.Errorf("the rerun resent %d rows; at most the %d rows of the batches in flight may be", dups, maxInFlight*batchSize)
	}
}

// ---- 4. a second signal exits at once ----

func TestSecondSignalExitsAtOnce(t *testing.T) {
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 1, RowsPerFile: 1000, Seed: 9})
	hook := newCrashHook(t, nil)
	hook.block = make(chan struct{}) // never answers until the test ends
	s.writeConfig(fmt.Sprintf(`      - type: webhook
        url: %q
        batch_size: 100
        max_in_flight: 2
        timeout: 5m
`, hook.url()))

	p := s.start("sync", "--grace", "1m")
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	select {
	case <-hook.arrived:
	case <-p.done:
		t.Fatalf("the sync ended before a POST arrived\n%s", p.output())
	case <-ctx.Done():
		t.Fatalf("no POST arrived\n%s", p.output())
	}
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	// The first signal is taken: the process says it is stopping, and waits (up to the
	// minute of grace) for the POSTs that will never be answered.
	if err := p.stderr.waitFor(ctx, "stopping"); err != nil {
		t.Fatalf("%v\n%s", err, p.output())
	}
	select {
	case <-p.done:
		t.Fatalf("the process exited on the first SIGINT although its batches are still in flight within the grace\n%s", p.output())
	default:
	}
	second := time.Now()
	if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
		t.Fatal(err)
	}
	select {
	case <-p.done:
	case <-time.After(5 * time.Second):
		t.Fatalf("the process did not exit within 5s of the second SIGINT\n%s", p.output())
	}
	e := p.exit()
	t.Logf("exited %v after the second SIGINT with code %d", e.at.Sub(second).Round(time.Millisecond), e.code)
	if e.code != 1 {
		t.Errorf("exit code %d (signal %v) after the second SIGINT; want 1", e.code, e.signal)
	}
	if !strings.Contains(p.stderr.String(), "second signal") {
		t.Errorf("stderr does not say the second signal made it exit:\n%s", p.stderr.String())
	}
	s.checkpoint("after the second SIGINT")
}
