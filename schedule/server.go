package schedule

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"slices"
	"sync"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// Defaults for the Options left at zero: the configuration's, one value each.
const (
	DefaultMaxConcurrentRuns = config.DefaultMaxConcurrentRuns
	DefaultHistory           = config.DefaultHistory
	DefaultShutdownGrace     = config.DefaultShutdownGrace
	// DefaultHistoryRefresh keeps pages and /syncs within half a second of the runs of
	// other replicas, without one store read per request when many are made.
	DefaultHistoryRefresh = 500 * time.Millisecond
)

const (
	// historyTimeout bounds writing one report to the history store.
	historyTimeout = 30 * time.Second
	// httpShutdownTimeout bounds how long open HTTP requests may take once the runs
	// are done (or abandoned).
	httpShutdownTimeout = 5 * time.Second
)

// Triggers, as logged and shown in GET /syncs.
const (
	TriggerSchedule = "schedule"
	TriggerAPI      = "api"
	TriggerQueue    = "queue" // messages arrived in the sync's queue (event-driven discovery)
)

var (
	// ErrRunning is returned by Trigger when the sync has a run executing or waiting
	// for a slot: a sync never runs twice at once, and a run is never queued behind
	// another of the same sync.
	ErrRunning = errors.New("sync is already running")
	// ErrUnknownSync is returned by Trigger for a name that is not in the config.
	ErrUnknownSync = errors.New("unknown sync")
	// ErrStopping is returned by Trigger once shutdown has begun.
	ErrStopping = errors.New("server is shutting down")
)

// RunFunc runs one sync once: the pipeline run of `backflow sync` (full: --full). It
// must return when ctx is cancelled, after checkpointing what the destinations have
// acknowledged. It returns a report whenever it can, failed runs included; a nil report
// with an error is recorded as a failed run with that error. The run's id is
// RunID(ctx): use it as the report's run_id so logs, history and rejects agree.
type RunFunc func(ctx context.Context, sync string, full bool) (*pipeline.Report, error)

// Options configure a Server. Zero values take the defaults above.
type Options struct {
	// Syncs are the config's syncs; those with a schedule run on it, every one can be
	// started with POST /syncs/{name}/run. Only Name, Schedule and the destinations'
	// Name/Type are read: nothing that can hold a secret.
	Syncs []config.Sync
	// Run runs one sync (required).
	Run RunFunc
	// Store keeps the run history (state.Store.AppendHistory/History). Nil keeps the
	// history in memory only.
	Store state.Store
	// MaxConcurrentRuns bounds how many different syncs run at once.
	MaxConcurrentRuns int
	// History is how many reports are kept per sync.
	History int
	// ShutdownGrace is how long Run waits for in-flight runs after shutdown begins.
	ShutdownGrace time.Duration
	// Logger receives the server's logs; nil discards them.
	Logger *slog.Logger
	// Now is the clock (tests); nil is time.Now.
	Now func() time.Time
	// Notifier is told when each run starts and ends (nil: no notifications). It sends
	// in the background: the scheduler never waits for a receiver.
	Notifier *notify.Notifier
	// AuthToken, when set, is required by every endpoint but /healthz (see auth.go).
	AuthToken string
	// HistoryRefresh is how long the history read from the store is shown before a
	// request reads it again (default DefaultHistoryRefresh): other replicas append to it.
	HistoryRefresh time.Duration
}

// Server runs syncs on their schedules and serves serve's HTTP endpoints. Build it
// with NewServer, hand Observer() to the pipeline, then call Run once.
type Server struct {
	run     RunFunc
	store   state.Store
	sem     chan struct{} // one token per executing run
	history int
	refresh time.Duration // Options.HistoryRefresh
	grace   time.Duration
	log     *slog.Logger
	now     func() time.Time
	metrics *metrics
	live    map[string]*liveRun // by sync name; what the status page shows of a run in progress
	handler http.Handler
	notify  *notify.Notifier

	syncs  []*syncState // config order
	byName map[string]*syncState

	// runCtx is the parent of every run's context; it is cancelled as soon as shutdown
	// begins, so the pipeline stops reading and checkpoints what was acknowledged.
	runCtx     context.Context
	cancelRuns context.CancelFunc
	// hardCtx bounds what a run's goroutine does after the run returns (writing the
	// history); it ends when the grace period does.
	hardCtx    context.Context
	cancelHard context.CancelFunc

	force     chan struct{}
	forceOnce sync.Once

	mu       sync.Mutex // guards the fields below and every syncState's mutable fields
	started  bool
	stopping bool
	runs     sync.WaitGroup // one per triggered run, until its report is in the store
}

type syncState struct {
	name  string
	sched Schedule
	// histMu serialises the sync's AppendHistory calls.
	histMu sync.Mutex

	// Guarded by Server.mu.
	next    time.Time      // zero: none scheduled
	cur     *current       // nil: idle
	history []historyEntry // newest first
	// pending are reports of this process not yet in the store (being written, or the
	// write failed): shown beside the stored history until the store has them.
	pending []historyEntry
	// historyRead is when history was last read from the store (zero: never).
	historyRead time.Time
	// appended counts this process's reports the store took: a read of the store that
	// began before one of them may lack it, and is not shown.
	appended int
	// holder is who held the sync's lease when history was last read: a replica's run
	// shows on every replica's page.
	holder *state.Holder
	// settled is closed once the sync's last run here has stored its report and
	// released its lease (nil before the first run).
	settled chan struct{}
}

// current is a run that was triggered and has not finished.
type current struct {
	id        string
	trigger   string
	full      bool
	queuedAt  time.Time
	startedAt time.Time // zero while waiting for a slot
	// slot is the due time a scheduled run was started for (zero: started by hand).
	slot time.Time
}

type historyEntry struct {
	runID   string
	started time.Time // the report's started_at: histories of replicas merge by it
	report  json.RawMessage
}

// NewServer checks opts and parses every sync's schedule. Schedules given as `every`
// without `start` are anchored at the Unix epoch, so that every replica (and every
// restart) has the same due times: the first run is the first multiple of the interval
// since the epoch after start-up.
func NewServer(opts Options) (*Server, error) {
	if opts.Run == nil {
		return nil, errors.New("schedule: Options.Run is required")
	}
	if opts.MaxConcurrentRuns < 0 || opts.History < 0 || opts.ShutdownGrace < 0 || opts.HistoryRefresh < 0 {
		return nil, errors.New("serve: max_concurrent_runs, history, shutdown_grace and the history refresh may not be negative")
	}
	s := &Server{
		run:     opts.Run,
		store:   opts.Store,
		history: opts.History,
		grace:   opts.ShutdownGrace,
		log:     opts.Logger,
		now:     opts.Now,
		byName:  make(map[string]*syncState, len(opts.Syncs)),
		force:   make(chan struct{}),
		notify:  opts.Notifier,
	}
	if opts.MaxConcurrentRuns == 0 {
		opts.MaxConcurrentRuns = DefaultMaxConcurrentRuns
	}
	s.sem = make(chan struct{}, opts.MaxConcurrentRuns)
	if s.history == 0 {
		s.history = DefaultHistory
	}
	if s.grace == 0 {
		s.grace = DefaultShutdownGrace
	}
	s.refresh = cmp.Or(opts.HistoryRefresh, DefaultHistoryRefresh)
	if s.log == nil {
		s.log = slog.New(slog.DiscardHandler)
	}
	if s.now == nil {
		s.now = time.Now
	}
	start := s.now()
	for i, sc := range opts.Syncs {
		if !config.ValidName(sc.Name) {
			return nil, fmt.Errorf("syncs[%d].name: %q must match [a-z0-9_-]+", i, sc.Name)
		}
		if _, dup := s.byName[sc.Name]; dup {
			return nil, fmt.Errorf("syncs[%d].name: %q is used twice", i, sc.Name)
		}
		sched, err := Parse(sc.Schedule)
		if err != nil {
			return nil, fmt.Errorf("syncs[%d].schedule: %w", i, err)
		}
		st := &syncState{name: sc.Name, sched: sched, next: sched.Next(start)}
		s.syncs = append(s.syncs, st)
		s.byName[sc.Name] = st
	}
	s.runCtx, s.cancelRuns = context.WithCancel(context.Background())
	s.hardCtx, s.cancelHard = context.WithCancel(context.Background())
	s.metrics = newMetrics(opts.Syncs)
	for _, st := range s.syncs {
		s.metrics.nextRun.WithLabelValues(st.name).Set(unixSeconds(st.next))
	}
	s.live = newLiveRuns(opts.Syncs)
	s.handler = protect(s.newHandler(), opts.AuthToken, s.log)
	return s, nil
}

// Observer is the metrics side of the server: pass it to the pipeline so that rows read
// and batches in flight show in /metrics while runs progress.
func (s *Server) Observer() pipeline.Observer { return observer{s.metrics, s.live} }

// Handler serves /healthz, /metrics, /syncs, /syncs/{name}, POST /syncs/{name}/run and
// the status page (/, /ui/...), behind the token when there is one (auth.go).
// Run serves it on its listener; it is exported for embedding and tests.
func (s *Server) Handler() http.Handler { return s.handler }

// Trigger starts a run of the named sync now, as POST /syncs/{name}/run does, and
// returns its id. queued is true when every slot (MaxConcurrentRuns) is taken and the
// run is waiting for one; a waiting run counts as running: a second Trigger returns
// ErrRunning (wrapped, naming the running run's id).
func (s *Server) Trigger(name string, full bool) (runID string, queued bool, err error) {
	st, ok := s.byName[name]
	if !ok {
		return "", false, fmt.Errorf("%w %q", ErrUnknownSync, name)
	}
	return s.trigger(st, full, TriggerAPI, time.Time{})
}

// trigger starts a run of st; due is the due time of a scheduled run (zero otherwise).
func (s *Server) trigger(st *syncState, full bool, how string, due time.Time) (string, bool, error) {
	s.mu.Lock()
	defer s.mu.Unlock()
	if s.stopping {
		return "", false, ErrStopping
	}
	if st.cur != nil {
		return st.cur.id, false, fmt.Errorf("%s: %w (run %s)", st.name, ErrRunning, st.cur.id)
	}
	now := s.now()
	cur := &current{id: pipeline.NewRunID(now), trigger: how, full: full, queuedAt: now, slot: due}
	slot := false
	select {
	case s.sem <- struct{}{}:
		slot = true
		cur.startedAt = now
	default:
	}
	st.cur = cur
	prev, done := st.settled, make(chan struct{})
	st.settled = done
	s.runs.Add(1)
	go s.execute(st, cur, slot, prev, done)
	return cur.id, !slot, nil
}

// execute is one run's goroutine: wait for a slot if needed, run, record.
// prev is closed once the sync's previous run in this process has settled (its report
// stored and its lease released; nil: none); execute closes done when this one has.
func (s *Server) execute(st *syncState, cur *current, haveSlot bool, prev <-chan struct{}, done chan<- struct{}) {
	defer s.runs.Done()
	defer close(done) // after every other deferred call: the lease is released by then
	log := s.log.With("sync", st.name, "run_id", cur.id)
	if prev != nil {
		// The sync is idle once its run returned, but that run keeps the lease until
		// its report is stored: wait, or this run would find the lease held by this
		// very process and take it for another replica's.
		select {
		case <-prev:
		case <-s.runCtx.Done():
			if haveSlot {
				<-s.sem
			}
			log.Info("run not started: shutting down")
			s.mu.Lock()
			st.cur = nil
			s.mu.Unlock()
			return
		}
	}
	if !haveSlot {
		log.Info("run waiting for a free slot", "trigger", cur.trigger, "max_concurrent_runs", cap(s.sem))
		got := false
		select {
		case s.sem <- struct{}{}:
			got = true
		case <-s.runCtx.Done():
		}
		if s.runCtx.Err() != nil { // shutdown began while it waited: never start it
			if got {
				<-s.sem
			}
			log.Info("run not started: shutting down")
			s.mu.Lock()
			st.cur = nil
			s.mu.Unlock()
			return
		}
		s.mu.Lock()
		cur.startedAt = s.now()
		s.mu.Unlock()
	}

	s.metrics.inProgress.WithLabelValues(st.name).Inc()
	s.live[st.name].begin(cur.id, time.Now())
	// "run started" is logged and run.started sent once the run holds the sync's
	// lease (runControl.start), not before: a replica that finds it held starts nothing.
	ctl := &runControl{s: s, st: st, cur: cur}
	began := time.Now()
	rep, err := s.call(withRunControl(withRunID(s.runCtx, cur.id), ctl), st.name, cur.full)
	elapsed := time.Since(began)
	<-s.sem
	s.metrics.inProgress.WithLabelValues(st.name).Dec()
	// The lease outlives the run until its report is stored (deferred calls run last):
	// the next replica to take it finds this run's slot in the history.
	defer ctl.release(context.Background())

	if ctl.elsewhere(err) {
		s.mu.Lock()
		st.cur = nil
		s.mu.Unlock()
		return
	}
	// A RunFunc that took no lease through RunStore: the run did start.
	ctl.start()

	r, status := s.complete(rep, err, st.name, cur, elapsed)
	s.metrics.observeRun(st.name, r, status, elapsed, s.now())
	s.logFinished(log, cur.id, r, status, elapsed)

	entry := historyEntry{runID: r.RunID}
	b, mErr := json.Marshal(r)
	if mErr != nil { // a report is plain data; this would be a bug, but never lose the run
		log.Error("encoding run report", "error", mErr)
		b, _ = json.Marshal(map[string]string{"sync": r.Sync, "run_id": r.RunID, "status": status})
	}
	entry.report = b

	// histMu is taken before the sync becomes idle, so the next run's append waits
	// for this one: a sync's history is appended in run order, one writer at a time.
	st.histMu.Lock()
	defer st.histMu.Unlock()
	entry.started = r.StartedAt
	s.mu.Lock()
	st.history = trimHistory(append([]historyEntry{entry}, st.history...), s.history)
	if s.store != nil {
		st.pending = trimHistory(append([]historyEntry{entry}, st.pending...), s.history)
	}
	st.cur = nil
	s.mu.Unlock()

	// Judged against the stored history before this report joins it (under histMu).
	s.notify.Finished(s.hardCtx, r)
	if s.store != nil {
		ctx, cancel := context.WithTimeout(s.hardCtx, historyTimeout)
		if err := s.store.AppendHistory(ctx, st.name, b, s.history); err != nil {
			log.Error("run history not saved", "store", s.store.String(), "error", err)
		} else {
			s.mu.Lock()
			st.pending = slices.DeleteFunc(st.pending, func(e historyEntry) bool { return e.runID == entry.runID })
			st.appended++
			s.mu.Unlock()
		}
		cancel()
	}
}

// call runs the RunFunc, turning a panic into a failed run: one broken sync must not
// take the other syncs down with the process.
func (s *Server) call(ctx context.Context, name string, full bool) (rep *pipeline.Report, err error) {
	defer func() {
		if p := recover(); p != nil {
			rep, err = nil, fmt.Errorf("run of %s panicked: %v", name, p)
		}
	}()
	return s.run(ctx, name, full)
}

// complete fills what the RunFunc left out and returns a copy of the report (the
// pipeline may still hold the original) with the status label to count it under.
func (s *Server) complete(rep *pipeline.Report, err error, name string, cur *current, elapsed time.Duration) (*pipeline.Report, string) {
	var r pipeline.Report
	if rep != nil {
		r = *rep
	} else {
		s.mu.Lock()
		r.StartedAt = cur.startedAt.UTC()
		s.mu.Unlock()
		r.DurationMS = elapsed.Milliseconds()
	}
	if r.Sync == "" {
		r.Sync = name
	}
	if r.RunID == "" {
		r.RunID = cur.id
	}
	if r.ScheduledFor.IsZero() && !cur.slot.IsZero() {
		r.ScheduledFor = cur.slot.UTC()
	}
	if rep == nil && cur.full {
		r.FullSync, r.FullSyncReason = true, "requested"
	}
	if err != nil {
		if r.Error == "" {
			r.Error = err.Error()
		}
		if r.Status == "" || r.Status == pipeline.StatusOK {
			r.Status = pipeline.StatusFailed
		}
	}
	if r.Status == "" {
		r.Status = pipeline.StatusOK
	}
	status := r.Status
	switch status {
	case pipeline.StatusOK, pipeline.StatusPartial, pipeline.StatusFailed:
	default: // keep the label's values bounded whatever a pipeline reports
		status = pipeline.StatusFailed
	}
	return &r, status
}

func (s *Server) logFinished(log *slog.Logger, runID string, r *pipeline.Report, status string, elapsed time.Duration) {
	attrs := []any{
		"status", r.Status,
		"duration", elapsed.Round(time.Millisecond).String(),
		"files_read", r.Files.Read, "files_rejected", r.Files.Rejected,
		"rows_read", r.Rows.Read, "rows_sent", r.Rows.Sent,
		"rows_unchanged", r.Rows.Unchanged, "rows_rejected", r.Rows.Rejected,
	}
	if r.RunID != runID { // the pipeline chose its own id: log both
		attrs = append(attrs, "pipeline_run_id", r.RunID)
	}
	interrupted := s.runCtx.Err() != nil
	if interrupted {
		attrs = append(attrs, "interrupted", true)
	}
	if r.RejectsFile != "" {
		attrs = append(attrs, "rejects_file", r.RejectsFile)
	}
	if r.Error != "" {
		attrs = append(attrs, "error", r.Error)
	}
	switch {
	case status == pipeline.StatusOK:
		log.Info("run finished", attrs...)
	case status == pipeline.StatusPartial:
		log.Warn("run finished with rejects", attrs...)
	case interrupted: // expected on shutdown: the next run resumes from the checkpoint
		log.Warn("run interrupted by shutdown", attrs...)
	default:
		log.Error("run failed", attrs...)
	}
}

// Run serves the HTTP endpoints on listener and runs every scheduled sync on its
// schedule until ctx is done (or ForceStop). Then it stops starting runs, cancels the
// context of the runs in flight — the pipeline stops reading and checkpoints what
// the destinations acknowledged — and waits up to ShutdownGrace for them to return;
// runs still going after that are abandoned (logged). Finally it shuts the HTTP server
// down gracefully and returns nil. It returns an error only when serving HTTP fails.
// Run may be called once.
func (s *Server) Run(ctx context.Context, listener net.Listener) error {
	s.mu.Lock()
	if s.started || s.stopping {
		s.mu.Unlock()
		return errors.New("schedule: Server.Run may be called only once")
	}
	s.started = true
	s.mu.Unlock()
	defer s.cancelHard()

	hs := newHTTPServer(s.handler, s.log)
	serveErr := make(chan error, 1)
	go func() { serveErr <- hs.Serve(listener) }()
	s.log.Info("serving", "addr", listener.Addr().String(), "syncs", len(s.syncs),
		"max_concurrent_runs", cap(s.sem), "shutdown_grace", s.grace.String())

	s.loadHistory(ctx)

	loopCtx, stopLoops := context.WithCancel(context.Background())
	var loops sync.WaitGroup
	for _, st := range s.syncs {
		if _, manual := st.sched.(Manual); manual {
			continue
		}
		loops.Go(func() { s.loop(loopCtx, st) })
	}

	var result error
	forced := false
	select {
	case <-ctx.Done():
		s.log.Info("shutting down", "cause", context.Cause(ctx).Error())
	case <-s.force:
		forced = true
		s.log.Warn("stopping now (forced)")
	case err := <-serveErr:
		result = fmt.Errorf("serving HTTP on %s: %w", listener.Addr(), err)
		s.log.Error("HTTP server failed; shutting down", "error", err)
	}

	s.mu.Lock()
	s.stopping = true
	s.mu.Unlock()
	stopLoops()
	s.cancelRuns()
	loops.Wait()
	if !s.drain() {
		forced = true
	}

	sctx, cancel := context.WithTimeout(context.Background(), httpShutdownTimeout)
	if forced {
		cancel()
	}
	if err := hs.Shutdown(sctx); err != nil {
		hs.Close()
	}
	cancel()
	s.log.Info("stopped")
	return result
}

// drain waits up to the grace period for the runs in flight; false when it was cut
// short by ForceStop.
func (s *Server) drain() bool {
	s.mu.Lock()
	n := 0
	for _, st := range s.syncs {
		if st.cur != nil {
			n++
		}
	}
	s.mu.Unlock()
	if n > 0 {
		s.log.Info("waiting for runs in flight to checkpoint", "runs", n, "grace", s.grace.String())
	}
	// Wait even when no sync is running: a run that just ended may still be writing
	// its report to the history.
	done := make(chan struct{})
	go func() { s.runs.Wait(); close(done) }()
	t := time.NewTimer(s.grace)
	defer t.Stop()
	reason := ""
	select {
	case <-done:
		if n > 0 {
			s.log.Info("every run in flight has returned")
		}
		return true
	case <-t.C:
		reason = "did not return within the shutdown grace"
	case <-s.force:
		reason = "forced stop"
	}
	s.mu.Lock()
	for _, st := range s.syncs {
		if st.cur != nil {
			s.log.Warn("run abandoned: "+reason, "sync", st.name, "run_id", st.cur.id)
		}
	}
	s.mu.Unlock()
	return reason != "forced stop"
}

// ForceStop makes Run return at once: runs in flight are abandoned without waiting for
// the grace period and open HTTP connections are closed. The command calls it on a
// second SIGINT/SIGTERM. It may be called any number of times, from any goroutine.
func (s *Server) ForceStop() {
	s.forceOnce.Do(func() { close(s.force) })
}

// loop starts the sync's runs on its schedule: one timer, re-armed for each next run.
// A run that comes due while the previous one is still going is skipped, not queued.
func (s *Server) loop(ctx context.Context, st *syncState) {
	t := time.NewTimer(time.Hour)
	defer t.Stop()
	next := st.sched.Next(s.now())
	for {
		s.setNext(st, next)
		if next.IsZero() {
			s.log.Warn("schedule never fires again", "sync", st.name, "schedule", st.sched.String())
			return
		}
		t.Reset(next.Sub(s.now()))
		select {
		case <-ctx.Done():
			s.setNext(st, time.Time{})
			return
		case <-t.C:
		}
		id, _, err := s.trigger(st, false, TriggerSchedule, next)
		switch {
		case errors.Is(err, ErrRunning):
			s.metrics.skipped.WithLabelValues(st.name).Inc()
			s.log.Warn("scheduled run skipped: the previous run is still going", "sync", st.name, "run_id", id, "due", next.UTC())
		case errors.Is(err, ErrStopping):
			return
		}
		// Compute from the later of the due time and now, so that a late wake-up skips
		// the missed slots instead of firing them in a burst.
		base := next
		if now := s.now(); now.After(base) {
			base = now
		}
		n := st.sched.Next(base)
		if !n.IsZero() && !n.After(base) {
			s.log.Error("schedule did not move forward; not scheduling it again", "sync", st.name, "schedule", st.sched.String())
			n = time.Time{}
		}
		next = n
	}
}

func (s *Server) setNext(st *syncState, t time.Time) {
	s.mu.Lock()
	st.next = t
	s.mu.Unlock()
	s.metrics.nextRun.WithLabelValues(st.name).Set(unixSeconds(t))
}

// loadHistory reads each sync's history from the store (the reports of every replica
// and earlier process) and who holds its lease, unless read less than Options.HistoryRefresh
// ago, and merges this process's reports that the store does not have yet. A store
// error is logged and leaves what was shown; it is tried again at the next request.
func (s *Server) loadHistory(ctx context.Context) {
	if s.store == nil {
		return
	}
	for _, st := range s.syncs {
		s.mu.Lock()
		fresh := !st.historyRead.IsZero() && time.Since(st.historyRead) < s.refresh
		appended := st.appended
		s.mu.Unlock()
		if fresh {
			continue
		}
		raw, err := s.store.History(ctx, st.name)
		if err != nil {
			s.log.Warn("reading run history", "sync", st.name, "store", s.store.String(), "error", err)
			continue
		}
		holder := s.leaseHolder(ctx, st.name)
		stored := make([]historyEntry, 0, len(raw))
		for i, b := range raw {
			var head struct {
				RunID     string    `json:"run_id"`
				StartedAt time.Time `json:"started_at"`
			}
			if !json.Valid(b) || json.Unmarshal(b, &head) != nil {
				s.log.Warn("skipping an unreadable run report in the history", "sync", st.name, "index", i)
				continue
			}
			stored = append(stored, historyEntry{runID: head.RunID, started: head.StartedAt, report: json.RawMessage(b)})
		}
		s.mu.Lock()
		if st.appended == appended { // else the next request reads it again
			st.history = trimHistory(mergeHistory(st.pending, stored), s.history)
			st.historyRead = time.Now()
			st.holder = holder
		}
		s.mu.Unlock()
	}
}

// mergeHistory puts this process's reports that the store does not have yet (mine)
// among the stored ones, newest first by start time, dropping those it has already.
func mergeHistory(mine, stored []historyEntry) []historyEntry {
	seen := make(map[string]bool, len(stored))
	key := func(e historyEntry) string {
		if e.runID != "" {
			return "id:" + e.runID
		}
		return "raw:" + string(e.report)
	}
	out := make([]historyEntry, 0, len(mine)+len(stored))
	for _, e := range stored {
		if !seen[key(e)] {
			seen[key(e)] = true
			out = append(out, e)
		}
	}
	for _, e := range mine {
		if !seen[key(e)] {
			seen[key(e)] = true
			out = append(out, e)
		}
	}
	// Stable: the store's order stands between reports that started at the same time.
	slices.SortStableFunc(out, func(a, b historyEntry) int { return b.started.Compare(a.started) })
	return out
}

func trimHistory(h []historyEntry, keep int) []historyEntry {
	if len(h) > keep {
		return h[:keep]
	}
	return h
}

type runIDKey struct{}

func withRunID(ctx context.Context, id string) context.Context {
	return context.WithValue(ctx, runIDKey{}, id)
}

// RunID returns the id the server gave the run whose context ctx is ("" outside one).
// The RunFunc should use it as the report's run_id (and the rejects file's name).
func RunID(ctx context.Context) string {
	id, _ := ctx.Value(runIDKey{}).(string)
	return id
}

func unixSeconds(t time.Time) float64 {
	if t.IsZero() {
		return 0
	}
	return float64(t.UnixNano()) / 1e9
}
