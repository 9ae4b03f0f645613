package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"runtime"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
	"github.com/backflowhq/backflow/state"
)

// Options configure one run of one sync.
type Options struct {
	Config *config.Config
	Sync   *config.Sync
	// Full forces a full sync (`sync --full`).
	Full bool
	// DryRun reads, maps and counts, but builds no destination and writes no state.
	DryRun   bool
	Registry *destinations.Registry
	// Store keeps checkpoints, row hashes and rejects. Required, also for dry runs (which
	// only read from it).
	Store    state.Store
	Logger   *slog.Logger
	Observer Observer
	// Stdout is where the stdout destination writes.
	Stdout  io.Writer
	Version string
	// RunID names the run; a new one is made when empty.
	RunID string
	// Workers is how many row groups are read and mapped at once (default GOMAXPROCS).
	Workers int
	// Prefetch is how many files are opened and checked ahead of the reader (default 8).
	Prefetch int
	// BatchRows is the number of rows per Arrow record batch (default 4096).
	BatchRows int64
	// BufferBytes is the read buffer per column stream (default 4 MiB: one GET per refill).
	BufferBytes int64
	// Grace bounds how long in-flight batches may take once ctx is done (default 30s).
	Grace time.Duration
	// CheckpointInterval is the least time between two checkpoint saves (default 100ms);
	// progress is saved as soon as it happens within that bound.
	CheckpointInterval time.Duration
	// Now tells the time (tests); default time.Now.
	Now func() time.Time
}

// ConfigError is a configuration problem found while starting a run (exit code 2):
// nothing was read or sent.
type ConfigError struct{ Err error }

func (e *ConfigError) Error() string { return e.Err.Error() }
func (e *ConfigError) Unwrap() error { return e.Err }

// NewRunID returns a run id: the UTC start time and a random suffix, safe in file names
// and object keys.
func NewRunID(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Run runs the sync once. It always returns a report (Status failed when err != nil).
func Run(ctx context.Context, opts Options) (*Report, error) {
	r := newRun(opts)
	err := r.run(ctx)
	r.finish(err)
	return r.report, err
}

type run struct {
	opts   Options
	sync   *config.Sync
	log    *slog.Logger
	obs    Observer
	report *Report
	start  time.Time

	// Set while planning, read-only afterwards.
	schema    *schema.Schema
	mapper    *mapper.Mapper
	destNames []string
	dests     []destinations.Destination
	isCommit  []bool
	batchSize []int
	hashes    state.HashStore
	hashMu    sync.Mutex // serializes Get against Put on the hash store
	rejects   *rejectsWriter

	// mu guards the working checkpoint, the trackers, the counters and the pending commits.
	mu         sync.Mutex
	cp         *state.Checkpoint
	dirty      bool
	pending    [][]*chunk // per destination: accepted by a Committer, not yet committed
	destErr    []error    // per destination: why it stopped delivering
	broken     []atomic.Bool
	fatal      error
	fileErrs   map[string]string
	wouldSend  int64
	unchanged  int64
	rejected   int64
	rowsRead   int64
	filesRead  int
	filesRej   int
	delivered  []int64
	failed     []int64
	deliverCtx context.Context
	cancelRead context.CancelCauseFunc
	// progressed is signalled (without blocking) when the checkpoint has news to save.
	progressed chan struct{}
}

// openFile is one source file being read.
type openFile struct {
	entry   *state.File
	f       *reader.File
	acked   []*rangeSet // per destination: acknowledged rows, live; guarded by run.mu
	resume  []*rangeSet // per destination: acknowledged when the run started; read-only
	refs    atomic.Int32
	failed  atomic.Bool
	onClose func()
}

func (of *openFile) release() {
	if of.refs.Add(-1) == 0 {
		of.f.Close()
		if of.onClose != nil {
			of.onClose()
		}
	}
}

// chunk is one batch for one destination: the messages of rows [start, end) of a file
// (rows of that range absent from msgs were rejected, unchanged or already delivered).
type chunk struct {
	dest    int
	refused int // messages the destination refused for good
	file    *openFile
	start   int64
	end     int64
	msgs    []mapper.Message
	unit    *unit
}

// unit is one mapped record batch; once every chunk cut from it is acknowledged by its
// destination, the row hashes of its messages are recorded (mode diff).
type unit struct {
	pending int // guarded by run.mu
	failed  bool
	refused map[string]bool // message ids refused by some destination
	msgs    []mapper.Message
}

type rowGroupJob struct {
	file  *openFile
	index int
	start int64
}

func newRun(opts Options) *run {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Observer == nil {
		opts.Observer = NopObserver{}
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.Workers <= 0 {
		opts.Workers = runtime.GOMAXPROCS(0)
	}
	if opts.Prefetch <= 0 {
		opts.Prefetch = 8
	}
	if opts.BatchRows <= 0 {
		opts.BatchRows = 4096
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = 4 << 20
	}
	if opts.Grace <= 0 {
		opts.Grace = 30 * time.Second
	}
	if opts.CheckpointInterval <= 0 {
		opts.CheckpointInterval = 100 * time.Millisecond
	}
	start := opts.Now().UTC()
	if opts.RunID == "" {
		opts.RunID = NewRunID(start)
	}
	r := &run{
		opts:       opts,
		sync:       opts.Sync,
		start:      start,
		obs:        opts.Observer,
		fileErrs:   map[string]string{},
		rejects:    &rejectsWriter{},
		progressed: make(chan struct{}, 1),
	}
	r.log = opts.Logger.With("sync", opts.Sync.Name, "run_id", opts.RunID)
	r.report = &Report{
		Sync:         opts.Sync.Name,
		RunID:        opts.RunID,
		Mode:         opts.Sync.Mode,
		DryRun:       opts.DryRun,
		StartedAt:    start,
		Destinations: map[string]*DestinationCount{},
	}
	return r
}

func (r *run) run(ctx context.Context) error {
	opts := r.opts
	src, err := reader.NewSource(ctx, r.sync.Source)
	if err != nil {
		return fmt.Errorf("opening source %s: %w", r.sync.Source.URL, err)
	}
	listing, err := src.List(ctx)
	if err != nil {
		return err
	}
	r.report.Files.Listed = len(listing.Objects) + len(listing.Skipped)
	r.report.Files.Skipped = len(listing.Skipped)
	for _, s := range listing.Skipped {
		r.log.Warn("skipping object", "key", s.Key, "reason", s.Reason)
	}

	prev, err := opts.Store.Load(ctx, r.sync.Name)
	if err != nil {
		return fmt.Errorf("loading checkpoint of sync %s: %w", r.sync.Name, err)
	}

	// The sync's schema is the first valid file's; files that fail are rejected.
	if err := r.inferSchema(ctx, src, listing.Objects); err != nil {
		return err
	}
	schemaFP := ""
	if r.schema != nil {
		schemaFP = r.schema.Fingerprint()
		m, err := mapper.New(mapper.Options{
			Sync:           r.sync.Name,
			Mapping:        r.sync.Mapping,
			Schema:         r.schema.Arrow,
			MaxRecordBytes: r.sync.Source.Limits.MaxRecordBytes,
			Version:        opts.Version,
			SkipKeys:       r.sync.Mode != ModeDiff,
		})
		if err != nil {
			return &ConfigError{Err: fmt.Errorf("sync %s: %w", r.sync.Name, err)}
		}
		r.mapper = m
	}

	mappingFP, sourceFP := MappingFingerprint(r.sync), SourceFingerprint(r.sync)
	reason := fullSyncReason(prev, r.sync, opts.Full, mappingFP, sourceFP, schemaFP)
	r.report.FullSync = reason != ""
	r.report.FullSyncReason = reason
	cp := &state.Checkpoint{Version: state.Version, Sync: r.sync.Name, Files: map[string]*state.File{}}
	if prev != nil {
		if reason == "" {
			cp = prev.Clone()
		} else {
			cp.Generation = prev.Generation
		}
	}
	cp.MappingFingerprint, cp.SourceFingerprint = mappingFP, sourceFP
	if schemaFP != "" {
		cp.SchemaFingerprint = schemaFP
	}
	cp.LastRunID = opts.RunID
	r.cp = cp

	for _, d := range r.sync.Destinations {
		r.destNames = append(r.destNames, d.Name)
		r.report.Destinations[d.Name] = &DestinationCount{}
	}
	// Files rejected while inferring the schema are planned like any other: a rejected
	// file is not acknowledged, so it is checked again next run.
	toRead, unchanged, deleted := planFiles(cp, listing.Objects, r.destNames, r.start)
	r.report.Files.Unchanged = unchanged
	r.report.Files.Deleted = deleted
	r.log.Info("planned run", "full_sync", reason != "", "reason", reason,
		"files_to_read", len(toRead), "files_unchanged", unchanged, "files_deleted", deleted)
	if deleted > 0 {
		r.markDirtyLocked()
	}

	if r.sync.Mode == ModeDiff && r.mapper != nil && !(opts.DryRun && reason != "") {
		open := opts.Store.Hashes
		if opts.DryRun {
			open = opts.Store.ReadHashes // a dry run writes no state
		}
		h, err := open(ctx, r.sync.Name)
		if err != nil {
			return fmt.Errorf("opening row-hash store of sync %s: %w", r.sync.Name, err)
		}
		if h != nil {
			r.hashes = h
		}
		if reason != "" && !opts.DryRun {
			if err := h.Clear(ctx); err != nil {
				return fmt.Errorf("clearing row-hash store of sync %s: %w", r.sync.Name, err)
			}
		}
	}
	defer r.closeHashes()

	if !opts.DryRun {
		if err := r.openDestinations(ctx); err != nil {
			return err
		}
		rf, err := opts.Store.Rejects(ctx, r.sync.Name, opts.RunID)
		if err != nil {
			return fmt.Errorf("opening rejects file: %w", err)
		}
		r.rejects.file = rf
	}
	r.recordInferenceRejects(toRead)

	if po, ok := r.obs.(ProgressObserver); ok {
		var bytes int64
		for _, f := range toRead {
			bytes += f.Size
		}
		po.Planned(r.sync.Name, len(toRead), bytes)
	}
	return r.execute(ctx, src, toRead)
}

// inferSchema opens files in key order until one passes the checks; it fixes the sync's
// schema. Each failing file is remembered as rejected.
func (r *run) inferSchema(ctx context.Context, src reader.Source, objects []reader.Object) error {
	for _, obj := range objects {
		if err := ctx.Err(); err != nil {
			return err
		}
		f, err := r.openFile(ctx, src, obj)
		if err != nil {
			if errors.Is(err, reader.ErrNotFound) || errors.Is(err, reader.ErrChanged) {
				continue
			}
			if !schema.IsInvalid(err) {
				return err // the source failed, not the file
			}
			r.fileErrs[obj.Key] = err.Error()
			continue
		}
		s, err := schema.Check(ctx, f, r.sync.Source.Limits, nil)
		f.Close()
		if err != nil {
			if !schema.IsInvalid(err) {
				return err
			}
			r.fileErrs[obj.Key] = err.Error()
			continue
		}
		r.schema = s
		return nil
	}
	return nil
}

// recordInferenceRejects reports files rejected while inferring the schema, where this
// run would have read them.
func (r *run) recordInferenceRejects(toRead []*state.File) {
	for _, f := range toRead {
		if msg, ok := r.fileErrs[f.Key]; ok {
			r.rejectFile(f.Key, msg)
		}
	}
}

func (r *run) rejectFile(key, msg string) {
	r.log.Error("rejected file", "key", key, "error", msg)
	r.report.FileErrors = append(r.report.FileErrors, FileError{Key: key, Error: msg})
	r.filesRej++
}

func (r *run) openFile(ctx context.Context, src reader.Source, obj reader.Object) (*reader.File, error) {
	blob, err := src.Open(ctx, obj)
	if err != nil {
		return nil, err
	}
	f, err := reader.OpenFile(ctx, blob, obj, reader.FileOptions{BatchSize: r.opts.BatchRows, BufferSize: r.opts.BufferBytes})
	if err != nil {
		blob.Close()
		return nil, err
	}
	return f, nil
}

func (r *run) openDestinations(ctx context.Context) error {
	env := destinations.Env{
		Sync:       r.sync.Name,
		RunID:      r.opts.RunID,
		RunStarted: r.start,
		Version:    r.opts.Version,
		Stdout:     r.opts.Stdout,
		Logger:     r.log,
	}
	for _, cfg := range r.sync.Destinations {
		d, err := r.opts.Registry.New(ctx, cfg, env)
		if err != nil {
			r.closeDestinations(ctx)
			return fmt.Errorf("destination %s: %w", cfg.Name, err)
		}
		_, committer := d.(destinations.Committer)
		r.dests = append(r.dests, d)
		r.isCommit = append(r.isCommit, committer)
		r.batchSize = append(r.batchSize, cfg.BatchSize)
	}
	n := len(r.dests)
	r.pending = make([][]*chunk, n)
	r.destErr = make([]error, n)
	r.broken = make([]atomic.Bool, n)
	r.delivered = make([]int64, n)
	r.failed = make([]int64, n)
	return nil
}

func (r *run) closeDestinations(ctx context.Context) error {
	var errs []error
	for i, d := range r.dests {
		if err := d.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing destination %s: %w", r.destNames[i], err))
		}
	}
	r.dests = nil
	return errors.Join(errs...)
}

func (r *run) closeHashes() {
	if r.hashes == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.hashes.Close(ctx); err != nil {
		r.log.Error("closing row-hash store", "error", err)
	}
	r.hashes = nil
}

// execute reads the planned files and delivers their rows.
func (r *run) execute(ctx context.Context, src reader.Source, toRead []*state.File) error {
	// readCtx stops reading at once on a signal or a fatal error; deliveries in flight
	// go on under deliverCtx for up to Grace after ctx is done.
	readCtx, cancelRead := context.WithCancelCause(ctx)
	defer cancelRead(nil)
	r.cancelRead = cancelRead
	deliverCtx, cancelDeliver := context.WithCancel(context.WithoutCancel(ctx))
	defer cancelDeliver()
	r.deliverCtx = deliverCtx
	finished := make(chan struct{})
	go func() {
		select {
		case <-ctx.Done():
			t := time.NewTimer(r.opts.Grace)
			defer t.Stop()
			select {
			case <-t.C:
				cancelDeliver()
			case <-finished:
			}
		case <-finished:
		}
	}()
	defer close(finished)

	queues := make([]chan *chunk, len(r.dests))
	var destWG sync.WaitGroup
	for i := range r.dests {
		queues[i] = make(chan *chunk, r.sync.Destinations[i].MaxInFlight)
		for w := 0; w < r.sync.Destinations[i].MaxInFlight; w++ {
			destWG.Add(1)
			go func() {
				defer destWG.Done()
				r.deliver(ctx, i, queues[i])
			}()
		}
	}

	// The checkpoint saver runs until the end; failures to save are fatal. It saves as
	// soon as something was acknowledged, so a killed run resends little more than the
	// batches in flight, but leaves at least CheckpointInterval and ten times the last
	// save's duration between saves, so saving never takes more than a tenth of the time.
	saverDone := make(chan struct{})
	stopSaver := make(chan struct{})
	go func() {
		defer close(saverDone)
		if r.opts.DryRun {
			return
		}
		for {
			select {
			case <-stopSaver:
				return
			case <-r.progressed:
			}
			began := time.Now()
			if err := r.save(deliverCtx, false); err != nil {
				r.setFatal(err)
				cancelRead(err)
				return
			}
			gap := max(r.opts.CheckpointInterval, 10*time.Since(began))
			t := time.NewTimer(gap)
			select {
			case <-stopSaver:
				t.Stop()
				return
			case <-t.C:
			}
		}
	}()

	jobs := make(chan rowGroupJob)
	g, gctx := errgroup.WithContext(readCtx)
	for w := 0; w < r.opts.Workers; w++ {
		g.Go(func() error {
			for job := range jobs {
				r.readRowGroup(gctx, job, queues)
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		r.produce(gctx, src, toRead, jobs)
		return nil
	})
	_ = g.Wait()
	for _, q := range queues {
		close(q)
	}
	destWG.Wait()

	// Committers acknowledge what they accepted only now.
	for i, d := range r.dests {
		if !r.isCommit[i] || r.broken[i].Load() {
			continue
		}
		c := d.(destinations.Committer)
		err := c.Commit(deliverCtx)
		r.mu.Lock()
		chunks := r.pending[i]
		r.pending[i] = nil
		for _, ch := range chunks {
			if err != nil {
				r.failChunkLocked(ch, err)
			} else {
				r.ackLocked(ch, len(ch.msgs)-ch.refused)
			}
		}
		if err != nil {
			r.destErr[i] = fmt.Errorf("destination %s: committing: %w", r.destNames[i], err)
		}
		r.mu.Unlock()
	}
	closeErr := r.closeDestinations(deliverCtx)
	close(stopSaver)
	<-saverDone

	var errs []error
	if !r.opts.DryRun {
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if err := r.save(saveCtx, true); err != nil {
			r.setFatal(err)
		}
		if r.rejects.file != nil {
			if err := r.rejects.file.Close(saveCtx); err != nil {
				errs = append(errs, fmt.Errorf("closing rejects file: %w", err))
			}
			r.report.RejectsFile = r.rejects.file.Location()
		}
	}
	r.mu.Lock()
	if r.fatal != nil {
		errs = append([]error{r.fatal}, errs...)
	}
	for _, e := range r.destErr {
		if e != nil {
			errs = append(errs, e)
		}
	}
	r.mu.Unlock()
	if closeErr != nil {
		errs = append(errs, closeErr)
	}
	if err := ctx.Err(); err != nil && !r.allDone(toRead) {
		errs = append([]error{fmt.Errorf("interrupted: %w", context.Cause(ctx))}, errs...)
	}
	return errors.Join(errs...)
}

// allDone tells whether every planned file was acknowledged by every destination (or
// rejected): a run stopped by a signal after that has nothing left to do.
func (r *run) allDone(files []*state.File) bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	for _, f := range files {
		if _, rejected := r.fileErrs[f.Key]; rejected {
			continue
		}
		if f.Rows < 0 || !f.Done(r.destNames) {
			return false
		}
	}
	return true
}

func (r *run) setFatal(err error) {
	r.mu.Lock()
	defer r.mu.Unlock()
	if r.fatal == nil {
		r.fatal = err
	}
}

// openedFile is a planned file opened and checked ahead of the reader.
type openedFile struct {
	f   *reader.File
	err error
}

// produce opens the planned files (a few ahead, concurrently) and hands their row groups
// to the workers, in key order. At most Prefetch files are open at once: a slot is taken
// before opening and given back when the file is closed (or failed to open).
func (r *run) produce(ctx context.Context, src reader.Source, files []*state.File, jobs chan<- rowGroupJob) {
	results := make([]chan openedFile, len(files))
	for i := range results {
		results[i] = make(chan openedFile, 1)
	}
	sem := make(chan struct{}, r.opts.Prefetch)
	// Files are opened with the read context itself, not one that ends with this
	// function: an S3 blob keeps its context for every ranged GET, and the row groups of
	// the last files are read after produce has queued them and returned.
	openCtx := ctx
	go func() {
		for i, entry := range files {
			if _, rejected := r.fileErrs[entry.Key]; rejected {
				results[i] <- openedFile{}
				continue
			}
			select {
			case sem <- struct{}{}:
			case <-openCtx.Done():
				for j := i; j < len(files); j++ {
					results[j] <- openedFile{err: openCtx.Err()}
				}
				return
			}
			go func() {
				obj := reader.Object{Key: entry.Key, Size: entry.Size, ETag: entry.ETag, VersionID: entry.VersionID}
				f, err := r.openFile(openCtx, src, obj)
				if err == nil {
					if _, cerr := schema.Check(openCtx, f, r.sync.Source.Limits, r.schema); cerr != nil {
						f.Close()
						f, err = nil, cerr
					}
				}
				if err != nil {
					<-sem
				}
				results[i] <- openedFile{f: f, err: err}
			}()
		}
	}()
	drain := func(rest []chan openedFile) {
		for _, ch := range rest {
			if res := <-ch; res.f != nil {
				res.f.Close()
				<-sem
			}
		}
	}

	for i, entry := range files {
		res := <-results[i]
		if res.f == nil && res.err == nil {
			continue // rejected while inferring the schema
		}
		if res.err != nil {
			if ctx.Err() != nil {
				drain(results[i+1:])
				return
			}
			r.mu.Lock()
			if errors.Is(res.err, reader.ErrNotFound) || errors.Is(res.err, reader.ErrChanged) {
				what := "vanished"
				if errors.Is(res.err, reader.ErrChanged) {
					what = "changed"
				}
				r.log.Warn("file "+what+" between listing and reading; the next run reads it", "key", entry.Key)
				r.report.FileErrors = append(r.report.FileErrors, FileError{Key: entry.Key, Error: what + " between listing and reading"})
				r.report.Files.Vanished++
				delete(r.cp.Files, entry.Key)
				r.markDirtyLocked()
			} else if schema.IsInvalid(res.err) {
				r.rejectFile(entry.Key, res.err.Error())
			} else {
				// Reading failed (network, permissions): the run fails; nothing of the file
				// was acknowledged, so the next run reads it again.
				r.mu.Unlock()
				r.setFatal(res.err)
				r.cancelRead(res.err)
				drain(results[i+1:])
				return
			}
			r.mu.Unlock()
			r.fileDone(entry.Key)
			continue
		}
		if !r.startFile(ctx, entry, res.f, jobs, func() { <-sem }) {
			drain(results[i+1:])
			return
		}
	}
}

func (r *run) fileDone(key string) {
	if po, ok := r.obs.(ProgressObserver); ok {
		po.FileRead(r.sync.Name, key)
	}
}

// startFile queues the row groups of an open file that some destination still needs.
// It returns false when ctx ended.
func (r *run) startFile(ctx context.Context, entry *state.File, f *reader.File, jobs chan<- rowGroupJob, onClose func()) bool {
	of := &openFile{entry: entry, f: f}
	rows := f.NumRows()
	r.mu.Lock()
	r.filesRead++
	entry.Rows = rows
	for _, name := range r.destNames {
		if r.opts.DryRun {
			break
		}
		lead, more := entry.Acked[name], entry.AckedRanges[name]
		if lead > rows || lead < 0 {
			// The checkpoint does not fit this file: send it again whole.
			lead, more = 0, nil
		}
		for _, rg := range more {
			if rg[0] < 0 || rg[1] > rows {
				lead, more = 0, nil
				break
			}
		}
		set := newRangeSet(lead, more)
		of.acked = append(of.acked, set)
		of.resume = append(of.resume, set.clone())
		entry.Acked[name] = set.leading()
	}
	r.markDirtyLocked()
	r.mu.Unlock()

	// needed tells whether some destination lacks a row of [start, end).
	needed := func(start, end int64) bool {
		if len(of.resume) == 0 {
			return true
		}
		for _, set := range of.resume {
			if !set.covers(start, end) {
				return true
			}
		}
		return false
	}

	key := entry.Key
	of.onClose = func() {
		onClose()
		r.fileDone(key)
	}
	of.refs.Store(1)
	var start int64
	ok := true
	for rg := 0; rg < f.NumRowGroups(); rg++ {
		n := f.RowGroupRows(rg)
		if n > 0 && needed(start, start+n) {
			of.refs.Add(1)
			select {
			case jobs <- rowGroupJob{file: of, index: rg, start: start}:
			case <-ctx.Done():
				of.refs.Add(-1)
				ok = false
			}
			if !ok {
				break
			}
		}
		start += n
	}
	of.release()
	return ok
}

// readRowGroup reads one row group, maps it and hands its batches to the destinations.
func (r *run) readRowGroup(ctx context.Context, job rowGroupJob, queues []chan *chunk) {
	defer job.file.release()
	defer func() {
		// Arrays decoded from a corrupt page can break the mapper's assumptions: the
		// file is rejected, the process goes on.
		if p := recover(); p != nil {
			r.readFailed(ctx, job, fmt.Errorf("unreadable data: %v", p))
		}
	}()
	rr, err := job.file.f.ReadRowGroup(ctx, job.index)
	if err != nil {
		r.readError(ctx, job, err)
		return
	}
	defer rr.Release()
	row := job.start
	var bytesRead int64
	if md := job.file.f.Metadata(); md != nil && job.index < md.NumRowGroups() {
		bytesRead = md.RowGroup(job.index).TotalCompressedSize()
	}
	for rr.Next() {
		if ctx.Err() != nil {
			return
		}
		rec := rr.RecordBatch()
		n := rec.NumRows()
		var msgs []mapper.Message
		var rejects []mapper.Reject
		if r.mapper != nil {
			msgs, rejects = r.mapper.Map(rec, row, make([]mapper.Message, 0, n), nil)
		}
		r.obs.RowsRead(r.sync.Name, n, 0)
		r.mu.Lock()
		r.rowsRead += n
		r.mu.Unlock()
		if !r.dispatch(ctx, job.file, row, row+n, msgs, rejects, queues) {
			return
		}
		row += n
	}
	if err := rr.Err(); err != nil {
		r.readError(ctx, job, err)
		return
	}
	r.obs.RowsRead(r.sync.Name, 0, bytesRead)
}

// readError handles a failure reading a row group: a bad file is rejected (the others go
// on, exit 3); a failure of the source itself (network, permissions) fails the run, and
// the file, not acknowledged, is read again by the next run.
func (r *run) readError(ctx context.Context, job rowGroupJob, err error) {
	if ctx.Err() != nil {
		return
	}
	if !schema.IsInvalid(err) {
		r.setFatal(fmt.Errorf("reading %s: %w", job.file.entry.Key, err))
		r.cancelRead(err)
		return
	}
	r.readFailed(ctx, job, err)
}

func (r *run) readFailed(ctx context.Context, job rowGroupJob, err error) {
	if ctx.Err() != nil {
		return
	}
	if job.file.failed.Swap(true) {
		return
	}
	r.mu.Lock()
	defer r.mu.Unlock()
	msg := err.Error()
	if !strings.Contains(msg, job.file.entry.Key) {
		msg = fmt.Sprintf("%s: row group %d: %s", job.file.entry.Key, job.index, msg)
	}
	r.rejectFile(job.file.entry.Key, msg)
}

// dispatch records the rejects of one mapped record batch (rows [lo, hi) of a file),
// drops the rows mode diff finds unchanged, and cuts the rest into one batch per
// destination batch size. It returns false when ctx ended.
func (r *run) dispatch(ctx context.Context, of *openFile, lo, hi int64, msgs []mapper.Message, rejects []mapper.Reject, queues []chan *chunk) bool {
	key := of.entry.Key
	for _, rej := range rejects {
		r.rejects.write(rejectLine{File: key, Row: rej.Row, Reason: rej.Reason, Message: rej.Message})
	}
	if len(rejects) > 0 {
		r.mu.Lock()
		r.rejected += int64(len(rejects))
		r.mu.Unlock()
	}
	if r.hashes != nil && len(msgs) > 0 {
		kept, err := r.dropUnchanged(ctx, msgs)
		if err != nil {
			r.setFatal(err)
			return false
		}
		msgs = kept
	}
	if r.opts.DryRun {
		r.mu.Lock()
		r.wouldSend += int64(len(msgs))
		r.mu.Unlock()
		return true
	}

	u := &unit{msgs: msgs}
	var chunks []*chunk
	var empties []*chunk
	for d := range r.dests {
		if of.resume[d].covers(lo, hi) {
			continue
		}
		sel := msgs
		if of.resume[d].intersects(lo, hi) {
			// Leave out the rows this destination acknowledged in an earlier run.
			sel = make([]mapper.Message, 0, len(msgs))
			for i := range msgs {
				if !of.resume[d].contains(msgs[i].Row) {
					sel = append(sel, msgs[i])
				}
			}
		}
		if len(sel) == 0 {
			empties = append(empties, &chunk{dest: d, file: of, start: lo, end: hi, unit: u})
			continue
		}
		size := r.batchSize[d]
		for i := 0; i < len(sel); i += size {
			j := min(i+size, len(sel))
			c := &chunk{dest: d, file: of, start: sel[i].Row, end: hi, msgs: sel[i:j], unit: u}
			if i == 0 {
				c.start = lo
			}
			if j < len(sel) {
				c.end = sel[j].Row
			}
			chunks = append(chunks, c)
		}
	}
	r.mu.Lock()
	u.pending = len(chunks)
	for _, c := range empties {
		r.ackLocked(c, 0)
	}
	if len(chunks) == 0 {
		r.unitDoneLocked(u)
	}
	r.mu.Unlock()
	for i, c := range chunks {
		select {
		case queues[c.dest] <- c:
		case <-ctx.Done():
			r.mu.Lock()
			for _, rest := range chunks[i:] {
				rest.unit.failed = true
			}
			r.mu.Unlock()
			return false
		}
	}
	return true
}

// dropUnchanged removes the messages whose content hash equals the one stored for
// their key (mode diff) and counts them.
func (r *run) dropUnchanged(ctx context.Context, msgs []mapper.Message) ([]mapper.Message, error) {
	keys := make([]string, len(msgs))
	for i := range msgs {
		keys[i] = msgs[i].Key
	}
	r.hashMu.Lock()
	stored, err := r.hashes.Get(ctx, keys)
	r.hashMu.Unlock()
	if err != nil {
		return nil, fmt.Errorf("reading row hashes: %w", err)
	}
	kept := msgs[:0:0]
	var same int64
	for i := range msgs {
		if stored[i] == contentHash(msgs[i].ID) {
			same++
			continue
		}
		kept = append(kept, msgs[i])
	}
	if same > 0 {
		r.mu.Lock()
		r.unchanged += same
		r.mu.Unlock()
	}
	return kept, nil
}

// contentHash is what the row-hash store keeps of a messageId: its hex digest without
// the "bf-" prefix, which the store packs into half the bytes.
func contentHash(messageID string) string {
	return strings.TrimPrefix(messageID, "bf-")
}

// deliver is one in-flight writer of destination d.
func (r *run) deliver(ctx context.Context, d int, queue <-chan *chunk) {
	dest := r.dests[d]
	name := r.destNames[d]
	for c := range queue {
		if ctx.Err() != nil {
			continue // stopping: batches not yet started are abandoned, not acknowledged
		}
		if r.broken[d].Load() {
			r.mu.Lock()
			r.failChunkLocked(c, nil)
			r.mu.Unlock()
			continue
		}
		r.obs.BatchStarted(r.sync.Name, name)
		err := dest.Write(r.deliverCtx, c.msgs)
		r.handleResult(c, err)
	}
}

func (r *run) handleResult(c *chunk, err error) {
	name := r.destNames[c.dest]
	var batchErr *destinations.BatchError
	switch {
	case err == nil:
		r.obs.BatchDone(r.sync.Name, name, int64(len(c.msgs)), 0)
		r.mu.Lock()
		if r.isCommit[c.dest] {
			r.pending[c.dest] = append(r.pending[c.dest], c)
		} else {
			r.ackLocked(c, len(c.msgs))
		}
		r.mu.Unlock()
	case errors.As(err, &batchErr):
		refused := map[int]bool{}
		for _, f := range batchErr.Failed {
			if f.Index < 0 || f.Index >= len(c.msgs) || refused[f.Index] {
				continue
			}
			refused[f.Index] = true
			m := &c.msgs[f.Index]
			r.rejects.write(rejectLine{File: c.file.entry.Key, Row: m.Row, Destination: name,
				Reason: fmt.Sprint(f.Err), Message: m.JSON})
		}
		r.obs.BatchDone(r.sync.Name, name, int64(len(c.msgs)-len(refused)), int64(len(refused)))
		r.mu.Lock()
		r.failed[c.dest] += int64(len(refused))
		r.rejected += int64(len(refused))
		if c.unit.refused == nil {
			c.unit.refused = map[string]bool{}
		}
		for i := range refused {
			c.unit.refused[c.msgs[i].ID] = true
		}
		c.refused = len(refused)
		if r.isCommit[c.dest] {
			r.pending[c.dest] = append(r.pending[c.dest], c)
		} else {
			r.ackLocked(c, len(c.msgs)-len(refused))
		}
		r.mu.Unlock()
	default:
		r.obs.BatchDone(r.sync.Name, name, 0, int64(len(c.msgs)))
		if r.deliverCtx.Err() != nil {
			// Stopping: the batch is abandoned, not refused; the next run sends it.
			r.mu.Lock()
			c.unit.failed = true
			r.mu.Unlock()
			return
		}
		r.mu.Lock()
		r.failChunkLocked(c, err)
		if r.destErr[c.dest] == nil {
			r.destErr[c.dest] = fmt.Errorf("destination %s: %w", name, err)
			r.log.Error("destination failed; its remaining batches are kept for the next run",
				"destination", name, "error", err)
		}
		r.broken[c.dest].Store(true)
		allBroken := true
		for i := range r.broken {
			allBroken = allBroken && r.broken[i].Load()
		}
		r.mu.Unlock()
		if allBroken {
			// Nothing can be delivered any more: stop reading; the next run resends.
			r.cancelRead(errors.New("every destination failed"))
		}
	}
}

// failChunkLocked counts a chunk that was not delivered. Its rows stay unacknowledged.
func (r *run) failChunkLocked(c *chunk, err error) {
	r.failed[c.dest] += int64(len(c.msgs))
	c.unit.failed = true
}

// ackLocked marks the chunk's rows acknowledged by its destination and advances the
// file's checkpoint entry.
func (r *run) ackLocked(c *chunk, delivered int) {
	if len(r.delivered) > c.dest {
		r.delivered[c.dest] += int64(delivered)
	}
	set := c.file.acked[c.dest]
	set.add(c.start, c.end)
	name := r.destNames[c.dest]
	c.file.entry.Acked[name] = set.leading()
	if more := set.beyond(); more != nil {
		if c.file.entry.AckedRanges == nil {
			c.file.entry.AckedRanges = map[string][][2]int64{}
		}
		c.file.entry.AckedRanges[name] = more
	} else {
		delete(c.file.entry.AckedRanges, name)
		if len(c.file.entry.AckedRanges) == 0 {
			c.file.entry.AckedRanges = nil
		}
	}
	r.markDirtyLocked()
	if len(c.msgs) > 0 {
		c.unit.pending--
		if c.unit.pending == 0 {
			r.unitDoneLocked(c.unit)
		}
	}
}

// markDirtyLocked notes that the checkpoint changed and wakes the saver.
func (r *run) markDirtyLocked() {
	r.dirty = true
	select {
	case r.progressed <- struct{}{}:
	default:
	}
}

// unitDoneLocked records the row hashes of a record batch every destination took.
func (r *run) unitDoneLocked(u *unit) {
	if r.hashes == nil || u.failed || len(u.msgs) == 0 {
		u.msgs = nil
		return
	}
	keys := make([]string, 0, len(u.msgs))
	ids := make([]string, 0, len(u.msgs))
	for i := range u.msgs {
		if u.refused[u.msgs[i].ID] {
			continue
		}
		keys = append(keys, u.msgs[i].Key)
		ids = append(ids, contentHash(u.msgs[i].ID))
	}
	u.msgs = nil
	r.hashMu.Lock()
	err := r.hashes.Put(r.deliverCtx, keys, ids)
	r.hashMu.Unlock()
	if err != nil && r.fatal == nil {
		r.fatal = fmt.Errorf("recording row hashes: %w", err)
	}
}

// save writes the working checkpoint when it changed (always when final). The rejects
// file is made durable first, so a checkpoint never counts a reject that was lost.
func (r *run) save(ctx context.Context, final bool) error {
	r.mu.Lock()
	if !r.dirty && !final {
		r.mu.Unlock()
		return nil
	}
	snap := r.cp.Clone()
	snap.UpdatedAt = r.opts.Now().UTC()
	for key, f := range snap.Files {
		if f.Rows < 0 {
			// Planned but not opened (rejected, or the run stopped first): absent from
			// the checkpoint, the file is read as new by the next run.
			delete(snap.Files, key)
		}
	}
	r.dirty = false
	r.mu.Unlock()
	if r.rejects.file != nil {
		if err := r.rejects.file.Flush(ctx); err != nil {
			return fmt.Errorf("writing rejects file: %w", err)
		}
	}
	if r.hashes != nil && final {
		if err := r.hashes.Commit(ctx); err != nil {
			return fmt.Errorf("saving row hashes: %w", err)
		}
	}
	if err := r.opts.Store.Save(ctx, snap); err != nil {
		if errors.Is(err, state.ErrConflict) {
			return fmt.Errorf("sync %s: this run stops: %w", r.sync.Name, err)
		}
		return fmt.Errorf("saving checkpoint of sync %s: %w", r.sync.Name, err)
	}
	r.mu.Lock()
	r.cp.Generation = snap.Generation
	r.mu.Unlock()
	return nil
}

// finish fills the report's counters and status.
func (r *run) finish(err error) {
	rep := r.report
	r.mu.Lock()
	defer r.mu.Unlock()
	rep.Files.Read = r.filesRead
	rep.Files.Rejected = r.filesRej
	rep.Rows.Read = r.rowsRead
	rep.Rows.Unchanged = r.unchanged
	rep.Rows.Rejected = r.rejected
	rep.Rows.WouldSend = r.wouldSend
	var sent int64
	for i, name := range r.destNames {
		if i < len(r.delivered) {
			dc := rep.Destinations[name]
			dc.Delivered = r.delivered[i]
			dc.Failed = r.failed[i]
			sent = max(sent, r.delivered[i])
		}
	}
	rep.Rows.Sent = sent
	rep.DurationMS = r.opts.Now().UTC().Sub(r.start).Milliseconds()
	switch {
	case err != nil:
		rep.Status = StatusFailed
		rep.Error = err.Error()
	case rep.Files.Rejected > 0 || rep.Rows.Rejected > 0:
		rep.Status = StatusPartial
	default:
		rep.Status = StatusOK
	}
}
