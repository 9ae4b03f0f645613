package pipeline

import (
	"context"
	"crypto/rand"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"runtime"
	"slices"
	"sync"
	"sync/atomic"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/arrowmem"
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
	// Store keeps checkpoints, row hashes, rejects and leases. Required, also for dry
	// runs (which only read from it).
	Store    state.Store
	Logger   *slog.Logger
	Observer Observer
	// Stdout is where the stdout destination writes.
	Stdout  io.Writer
	Version string
	// RunID names the run; a new one is made when empty.
	RunID string
	// Started, when set, is called once the run holds the sync's lease, before it lists
	// anything (a dry run, which takes no lease, calls it at once).
	Started func()
	// Shard is the part of the sync this run does (`sync --shard I/N`); the zero Shard
	// is all of it.
	Shard Shard
	// Wait is how long to wait for the sync's lease when another run holds it (0: fail
	// at once, naming the holder).
	Wait time.Duration
	// LeaseTTL is how long an s3:// lease lasts unrenewed (default the config's
	// state.lease_ttl).
	LeaseTTL time.Duration
	// Workers is how many record batches are mapped at once (default GOMAXPROCS); half as
	// many row groups, at most, are decoded at once (ReadBytes may allow fewer).
	Workers int
	// Prefetch is how many files are opened and checked ahead of the reader (default 8).
	Prefetch int
	// BatchRows is the number of rows per Arrow record batch (default 4096).
	BatchRows int64
	// BufferBytes is the most read buffer per column stream (default 4 MiB: one GET per
	// refill); a file with many columns gets less (ReadBytes).
	BufferBytes int64
	// ReadBytes bounds the memory of the row groups decoded at once (default
	// DefaultReadBytes), by the reader's estimate of each (reader.File.RowGroupMemory); a
	// row group estimated above it is read alone. It also sizes each file's column
	// buffers (reader.FileOptions.MemoryBudget).
	ReadBytes int64
	// Grace bounds how long in-flight batches may take once ctx is done (default 30s).
	Grace time.Duration
	// Now tells the time (tests); default time.Now.
	Now func() time.Time
}

// DefaultReadBytes is Options.ReadBytes's default: the row groups decoded at once are
// estimated to take at most 32 MiB (a 512 Ki-row row group of a 10-column table is read
// alone, eight of 64 Ki rows at once), so that a sync's peak memory stays under 200 MiB
// however wide the table or large its row groups, without a soft memory limit.
const DefaultReadBytes int64 = 32 << 20

// ConfigError is a configuration problem found while starting a run (exit code 2):
// nothing was read or sent. It is the configuration's own error type: one type for
// every configuration problem, whoever finds it.
type ConfigError = config.Error

// newConfigError wraps err, a problem of the configuration found at run time.
func newConfigError(err error) *ConfigError {
	return &ConfigError{Errors: []config.FieldError{{Msg: err.Error(), Err: err}}}
}

// NewRunID returns a run id: the UTC start time and a random suffix, safe in file names
// and object keys.
func NewRunID(t time.Time) string {
	var b [4]byte
	_, _ = rand.Read(b[:])
	return t.UTC().Format("20060102T150405Z") + "-" + hex.EncodeToString(b[:])
}

// Run runs the sync once. It always returns a report (Status failed when err != nil).
//
// One run is a few parts, each owning one thing: the lease (no other run of the sync
// meanwhile), the plan (which files, and whether this is a full sync), the readers (row
// groups → mapped batches), the dispatcher (each destination's own selection: rows it
// has not handled, and in mode diff rows whose content it has not acknowledged, cut
// into its batches), the writers (max_in_flight per destination), the ledger (what is
// handled, per destination and file) and the saver (group commit of the ledger). A
// fatal error takes one path, fail: it is recorded once and stops the reading.
func Run(ctx context.Context, opts Options) (*Report, error) {
	r := newRun(opts)
	err := r.run(ctx)
	r.finish(err)
	return r.report, err
}

type run struct {
	opts   Options
	sync   *config.Sync
	state  string // the name its state is kept under (the sync's, or its shard's)
	log    *slog.Logger
	obs    Observer
	report *Report
	start  time.Time

	// Set while planning, read-only afterwards.
	schema    *schema.Schema
	mapper    *mapper.Mapper
	destNames []string
	dests     []destinations.Destination
	deferred  []destinations.Deferred // per destination; nil unless it is Deferred
	outboxes  []*outbox
	diff      *diffFilter
	fileErrs  map[string]string // files rejected while inferring the schema
	ledger    *ledger
	rejects   *rejectsWriter
	hashRec   *hashRecorder
	saver     *saver
	events    *events        // what the sync's queue told (event-driven discovery), else nil
	buffers   *arrowmem.Pool // Arrow buffers, reused from file to file

	// readCtx ends reading: a signal, or fail. deliverCtx bounds writes: it outlives a
	// signal by Grace.
	readCtx    context.Context
	cancelRead context.CancelCauseFunc
	deliverCtx context.Context

	broken []atomic.Bool // per destination: failed for good in this run
	// cutShort, per destination: a write was still being retried when the run began to
	// stop. Its writers start no other batch: each would be one more request to a
	// destination that is failing, after the user asked the run to stop.
	cutShort []atomic.Bool

	mu        sync.Mutex // guards the fields below and the report's file errors
	fatal     error
	destErr   []error
	filesRead int
	filesRej  int

	rowsRead  atomic.Int64
	rejected  atomic.Int64 // rows refused by the mapper or a destination
	wouldSend atomic.Int64
	unchanged atomic.Int64 // rows no destination needed because their content is unchanged
	saves     atomic.Int64
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
	if opts.ReadBytes <= 0 {
		opts.ReadBytes = DefaultReadBytes
	}
	if opts.Grace <= 0 {
		opts.Grace = 30 * time.Second
	}
	if opts.LeaseTTL <= 0 && opts.Config != nil {
		opts.LeaseTTL = opts.Config.State.LeaseTTL
	}
	if opts.LeaseTTL <= 0 {
		opts.LeaseTTL = config.DefaultLeaseTTL
	}
	start := opts.Now().UTC()
	if opts.RunID == "" {
		opts.RunID = NewRunID(start)
	}
	r := &run{
		opts:     opts,
		sync:     opts.Sync,
		state:    opts.Shard.StateName(opts.Sync.Name),
		start:    start,
		obs:      opts.Observer,
		fileErrs: map[string]string{},
		rejects:  &rejectsWriter{},
		buffers:  arrowmem.NewPool(0),
	}
	r.log = opts.Logger.With("sync", opts.Sync.Name, "run_id", opts.RunID)
	if opts.Shard.Sharded() {
		r.log = r.log.With("shard", opts.Shard.String())
	}
	r.report = &Report{
		Sync:         opts.Sync.Name,
		RunID:        opts.RunID,
		Mode:         opts.Sync.Mode,
		Shard:        opts.Shard.String(),
		DryRun:       opts.DryRun,
		StartedAt:    start,
		Destinations: map[string]*DestinationCount{},
	}
	return r
}

// fail records the run's fatal error (the first one wins) and stops the reading;
// batches in flight finish, and what they acknowledged is saved.
func (r *run) fail(err error) {
	r.mu.Lock()
	if r.fatal == nil {
		r.fatal = err
	}
	r.mu.Unlock()
	if r.cancelRead != nil {
		r.cancelRead(err)
	}
}

func (r *run) run(ctx context.Context) error {
	opts := r.opts
	r.readCtx, r.cancelRead = context.WithCancelCause(ctx)
	defer r.cancelRead(nil)

	if !opts.DryRun {
		// The lease comes first: nothing is listed or sent while another run of the
		// sync is active.
		lease, err := r.acquire(ctx)
		if err != nil {
			return err
		}
		defer r.release(lease)
		go func() {
			select {
			case <-lease.Lost():
				r.fail(fmt.Errorf("sync %s: %w; this run stops sending", r.sync.Name, lease.Err()))
			case <-r.readCtx.Done():
			}
		}()
	}

	if opts.Started != nil {
		opts.Started()
	}
	src, err := reader.NewSource(ctx, r.sync.Source)
	if err != nil {
		return fmt.Errorf("opening source %s: %w", r.sync.Source.URL, err)
	}
	// The objects to consider: the listing of the prefix, or — a sync discovered by S3
	// event notifications — the objects its queue's messages name, plus a listing when
	// the last one is older than discovery.reconcile (a missed or expired event is found
	// then). A dry run never receives from the queue (that would hide the messages from
	// the next run for their visibility timeout): it lists.
	var listing reader.Listing
	var removed map[string]bool
	listPrefix := true
	if r.sync.Source.Discovery.Type == config.DiscoverySQS && !opts.DryRun {
		ev, err := r.receive(ctx)
		if err != nil {
			return err
		}
		r.events = ev
		defer ev.close()
		r.report.Discovery = &ev.counts
		if listPrefix, err = r.reconcileDue(ctx); err != nil {
			return err
		}
		ev.counts.Listed = listPrefix
		if !listPrefix {
			listing, removed = ev.listing()
		}
	}
	if listPrefix {
		if listing, err = src.List(ctx); err != nil {
			return err
		}
	}
	r.report.Files.Listed = len(listing.Objects) + len(listing.Skipped)
	r.report.Files.Skipped = len(listing.Skipped)
	for _, s := range listing.Skipped {
		if s.Expected {
			r.log.Info("skipping object", "key", s.Key, "reason", s.Reason)
		} else {
			r.log.Warn("skipping object", "key", s.Key, "reason", s.Reason)
		}
	}
	if len(listing.Objects) == 0 && listPrefix {
		// Not an error (an export may not have run yet), but never silent: a typo in the
		// url or include looks exactly like this.
		r.log.Warn("no Parquet file to read", "source", r.sync.Source.URL, "include", r.sync.Source.Include,
			"skipped", len(listing.Skipped))
	}

	prev, err := opts.Store.Load(ctx, r.state)
	if err != nil {
		return fmt.Errorf("loading checkpoint of sync %s: %w", r.state, err)
	}
	shardsChanged, err := r.shardsChanged(ctx)
	if err != nil {
		return err
	}
	// shardObjects keeps the files of this shard: in modes incremental and full each file
	// is read by the one shard it belongs to (mode diff reads every file and keeps the
	// identifiers of this shard: dispatch).
	shardObjects := func(all []reader.Object) []reader.Object {
		if !opts.Shard.Sharded() || r.sync.Mode == ModeDiff {
			return all
		}
		own := all[:0:0]
		for _, o := range all {
			if opts.Shard.OwnsFile(o.Key) {
				own = append(own, o)
			}
		}
		r.report.Files.Listed = len(own)
		return own
	}
	objects := shardObjects(listing.Objects)
	relist := func() error {
		var err error
		if listing, err = src.List(ctx); err != nil {
			return err
		}
		r.events.counts.Listed, listPrefix = true, true
		r.report.Files.Listed = len(listing.Objects) + len(listing.Skipped)
		r.report.Files.Skipped = len(listing.Skipped)
		objects, removed = shardObjects(listing.Objects), nil
		return nil
	}
	mappingFP, sourceFP := MappingFingerprint(r.sync), SourceFingerprint(r.sync)
	if !listPrefix && fullSyncReason(prev, r.sync, opts.Full, mappingFP, sourceFP, "") != "" {
		// A full sync sends every file again, not only those the queue named: it lists
		// (before the schema is inferred, from the whole prefix).
		if err := relist(); err != nil {
			return err
		}
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
			return newConfigError(fmt.Errorf("sync %s, whose schema is from %s: %w", r.sync.Name, r.schema.Origin, err))
		}
		r.mapper = m
	}

	reason := fullSyncReason(prev, r.sync, opts.Full, mappingFP, sourceFP, schemaFP)
	if shardsChanged && (reason == "" || reason == ReasonFirstSync) {
		reason = ReasonShardsChanged
	}
	r.report.FullSync = reason != ""
	r.report.FullSyncReason = reason
	if reason != "" && !listPrefix {
		// The schema of a file the queue named changed (the other reasons listed above).
		if err := relist(); err != nil {
			return err
		}
	}
	cp := &state.Checkpoint{Version: state.Version, Sync: r.state, Files: map[string]*state.File{}}
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

	for _, d := range r.sync.Destinations {
		r.destNames = append(r.destNames, d.Name)
		r.report.Destinations[d.Name] = &DestinationCount{}
	}
	r.ledger = newLedger(cp, r.destNames)
	// Files rejected while inferring the schema are planned like any other: a rejected
	// file is not acknowledged, so it is checked again next run.
	toRead, unchanged, deleted := planFiles(cp, objects, r.destNames, removed)
	r.report.Files.Unchanged = unchanged
	r.report.Files.Deleted = deleted
	r.log.Info("planned run", "full_sync", reason != "", "reason", reason,
		"files_to_read", len(toRead), "files_unchanged", unchanged, "files_deleted", deleted)
	if deleted > 0 {
		r.ledger.touch()
	}

	if r.sync.Mode == ModeDiff && r.mapper != nil && !(opts.DryRun && reason != "") {
		if err := r.openHashes(ctx, prev, reason != ""); err != nil {
			return err
		}
	}
	defer r.closeHashes()

	if !opts.DryRun {
		if err := r.openDestinations(ctx); err != nil {
			return err
		}
		rf, err := opts.Store.Rejects(ctx, r.state, opts.RunID)
		if err != nil {
			return fmt.Errorf("opening rejects file: %w", err)
		}
		r.rejects.file = rf
	}
	for _, f := range toRead {
		if msg, ok := r.fileErrs[f.Key]; ok {
			r.rejectFile(f.Key, msg)
		}
	}

	if po, ok := r.obs.(ProgressObserver); ok {
		var bytes int64
		for _, f := range toRead {
			bytes += f.Size
		}
		po.Planned(r.sync.Name, len(toRead), bytes)
	}
	return r.execute(ctx, src, toRead)
}

// shardsChanged tells whether the sync was last run with another number of shards (or
// sharded, and now not, or the reverse): its newest stored state is another shard
// count's than this run's. Every shard then sends everything (reason "shards changed").
func (r *run) shardsChanged(ctx context.Context) (bool, error) {
	states, err := r.opts.Store.States(ctx, r.sync.Name)
	if err != nil {
		return false, err
	}
	var own, other time.Time
	for _, st := range states {
		_, shard, err := ParseStateName(st.Name)
		if err != nil {
			continue
		}
		if shard.Count == r.opts.Shard.Count || (!shard.Sharded() && !r.opts.Shard.Sharded()) {
			if st.Name == r.state {
				own = st.Updated
			}
			continue
		}
		if st.Updated.After(other) {
			other = st.Updated
		}
	}
	return !other.IsZero() && other.After(own), nil
}

// acquire takes the sync's lease, waiting up to opts.Wait for it.
func (r *run) acquire(ctx context.Context) (state.Lease, error) {
	host, _ := os.Hostname()
	holder := state.Holder{Host: host, PID: os.Getpid(), RunID: r.opts.RunID, Since: r.start}
	poll := min(max(r.opts.LeaseTTL/10, 200*time.Millisecond), 2*time.Second)
	lease, err := state.AcquireWait(ctx, r.opts.Store, r.state, holder, r.opts.LeaseTTL, r.opts.Wait, poll,
		func(held *state.LeaseHeldError) {
			r.log.Info("waiting for the sync's lease", "holder", held.Error(), "wait", r.opts.Wait)
		})
	if err != nil {
		if errors.Is(err, state.ErrLeaseHeld) {
			return nil, err
		}
		return nil, fmt.Errorf("taking the lease of sync %s: %w", r.state, err)
	}
	return lease, nil
}

func (r *run) release(lease state.Lease) {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	defer cancel()
	if err := lease.Release(ctx); err != nil {
		r.log.Warn("releasing the sync's lease; it expires by itself", "error", err)
	}
}

// openHashes opens the row-hash store of mode diff and finds each destination's bit.
func (r *run) openHashes(ctx context.Context, prev *state.Checkpoint, full bool) error {
	open := r.opts.Store.Hashes
	if r.opts.DryRun {
		open = r.opts.Store.ReadHashes // a dry run writes no state
	}
	h, err := open(ctx, r.state)
	if err != nil {
		return fmt.Errorf("opening row-hash store of sync %s: %w", r.state, err)
	}
	if h == nil {
		return nil // a dry run before any run: every row is new
	}
	r.diff = &diffFilter{store: h}
	if full && !r.opts.DryRun {
		if err := h.Clear(ctx); err != nil {
			return fmt.Errorf("clearing row-hash store of sync %s: %w", r.state, err)
		}
	}
	// A store written before it kept destinations stands for those that the checkpoint
	// says acknowledged something.
	var legacy []string
	if prev != nil {
		seen := map[string]bool{}
		for _, f := range prev.Files {
			for name := range f.Acked {
				seen[name] = true
			}
		}
		for name := range seen {
			legacy = append(legacy, name)
		}
		slices.Sort(legacy)
	}
	bits, err := h.Bits(ctx, r.destNames, legacy)
	if err != nil {
		return fmt.Errorf("row-hash store of sync %s: %w", r.state, err)
	}
	r.diff.bits = bits
	return nil
}

func (r *run) closeHashes() {
	if r.diff == nil {
		return
	}
	ctx, cancel := context.WithTimeout(context.Background(), time.Minute)
	defer cancel()
	if err := r.diff.store.Close(ctx); err != nil {
		r.log.Error("closing row-hash store", "error", err)
	}
	r.diff = nil
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

// rejectFile records a rejected file; the caller holds no lock.
func (r *run) rejectFile(key, msg string) {
	r.log.Error("rejected file", "key", key, "error", msg)
	r.mu.Lock()
	defer r.mu.Unlock()
	r.report.FileErrors = append(r.report.FileErrors, FileError{Key: key, Error: msg})
	r.filesRej++
}

func (r *run) openFile(ctx context.Context, src reader.Source, obj reader.Object) (*reader.File, error) {
	blob, err := src.Open(ctx, obj)
	if err != nil {
		return nil, err
	}
	f, err := reader.OpenFile(ctx, blob, obj, reader.FileOptions{BatchSize: r.opts.BatchRows, BufferSize: r.opts.BufferBytes, MemoryBudget: r.opts.ReadBytes, Allocator: r.buffers})
	if err != nil {
		blob.Close()
		return nil, err
	}
	return f, nil
}

// openDestinations builds the sync's destinations. Their Env.Stop is the end of reading
// (a signal, or a failure): they stop retrying then.
func (r *run) openDestinations(ctx context.Context) error {
	env := destinations.Env{
		Sync:       r.sync.Name,
		RunID:      r.opts.RunID,
		RunStarted: r.start,
		Version:    r.opts.Version,
		Stdout:     r.opts.Stdout,
		Logger:     r.log,
		Stop:       r.readCtx.Done(),
	}
	for _, cfg := range r.sync.Destinations {
		d, err := r.opts.Registry.New(ctx, cfg, env)
		if err != nil {
			r.closeDestinations(ctx)
			return fmt.Errorf("destination %s: %w", cfg.Name, err)
		}
		def, _ := d.(destinations.Deferred)
		r.dests = append(r.dests, d)
		r.deferred = append(r.deferred, def)
	}
	n := len(r.dests)
	r.destErr = make([]error, n)
	r.broken = make([]atomic.Bool, n)
	r.cutShort = make([]atomic.Bool, n)
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

// execute reads the planned files and delivers their rows.
func (r *run) execute(ctx context.Context, src reader.Source, toRead []*state.File) error {
	// Deliveries in flight go on under deliverCtx for up to Grace after ctx is done.
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

	// The saver first: writers wait on it.
	sv := &saver{ledger: r.ledger, rejects: r.rejects, store: r.opts.Store, sync: r.state, saves: &r.saves, now: r.opts.Now}
	if !r.opts.DryRun {
		sv.start(deliverCtx, r.fail)
	}
	r.saver = sv

	// Writers: max_in_flight per destination, each taking batches from its outbox.
	var writers sync.WaitGroup
	r.outboxes = make([]*outbox, len(r.dests)) // none in a dry run
	for d := range r.dests {
		cfg := r.sync.Destinations[d]
		size := cfg.BatchSize
		if size <= 0 {
			size = 500
		}
		if def := r.deferred[d]; def != nil && def.DurableUnit() > 0 {
			// A batch that spans units would be counted only when its last unit is
			// durable: a kill could then resend units that were complete.
			size = min(size, def.DurableUnit())
		}
		r.outboxes[d] = &outbox{dest: d, size: size, queue: make(chan *batch, cfg.MaxInFlight), handled: r.handledEmpty}
		for range cfg.MaxInFlight {
			writers.Add(1)
			go func() {
				defer writers.Done()
				r.writer(d, r.outboxes[d].queue)
			}()
		}
	}
	if r.diff != nil && !r.opts.DryRun {
		r.hashRec = newHashRecorder(r.diff.store, r.deliverCtx, r.fail)
	}

	r.read(src, toRead)

	// Reading ended (done, stopped or failed): what sits in the outboxes is sent — on
	// a stop too, within the grace — and the writers drain.
	// Each destination's flush waits for its own writers only: a slow destination never
	// holds back another's last batches.
	for _, o := range r.outboxes {
		go func() {
			o.flush(deliverCtx)
			close(o.queue)
		}()
	}
	writers.Wait()

	// Deferred destinations make what they accepted durable now.
	for d, def := range r.deferred {
		if def == nil || r.broken[d].Load() {
			continue
		}
		if err := def.Flush(deliverCtx); err != nil {
			r.destFailed(d, fmt.Errorf("destination %s: completing what it accepted: %w", r.destNames[d], err))
		}
	}
	closeErr := r.closeDestinations(deliverCtx)
	if r.hashRec != nil {
		r.hashRec.close()
	}
	sv.stop()

	var errs []error
	if !r.opts.DryRun {
		saveCtx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		if r.diff != nil && !r.failed() {
			if err := r.diff.store.Commit(saveCtx); err != nil {
				r.fail(fmt.Errorf("saving row hashes: %w", err))
			}
		}
		if err := sv.save(saveCtx); err != nil {
			r.fail(err)
		} else if r.events != nil {
			// The checkpoint that counts the files is saved: the messages that named
			// only handled files are done with.
			r.events.settle(saveCtx, r, r.handledFile)
		}
		if err := r.rejects.close(saveCtx); err != nil {
			errs = append(errs, fmt.Errorf("closing rejects file: %w", err))
		}
		r.report.RejectsFile = r.rejects.location()
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
	if err := ctx.Err(); err != nil && !r.ledger.done(toRead, r.isRejected) {
		errs = append([]error{fmt.Errorf("interrupted: %w", context.Cause(ctx))}, errs...)
	}
	return errors.Join(errs...)
}

func (r *run) failed() bool {
	r.mu.Lock()
	defer r.mu.Unlock()
	return r.fatal != nil
}

func (r *run) isRejected(key string) bool {
	_, ok := r.fileErrs[key]
	return ok
}

// finish fills the report's counters and status.
func (r *run) finish(err error) {
	rep := r.report
	r.mu.Lock()
	rep.Files.Read = r.filesRead
	rep.Files.Rejected = r.filesRej
	r.mu.Unlock()
	rep.Rows.Read = r.rowsRead.Load()
	rep.Rows.Unchanged = r.unchanged.Load()
	rep.Rows.Rejected = r.rejected.Load()
	rep.Rows.WouldSend = r.wouldSend.Load()
	rep.CheckpointSaves = r.saves.Load()
	if r.ledger != nil {
		delivered, failed, unchanged := r.ledger.counts()
		var sent int64
		for i, name := range r.destNames {
			dc := rep.Destinations[name]
			dc.Delivered, dc.Failed, dc.Unchanged = delivered[i], failed[i], unchanged[i]
			sent = max(sent, delivered[i])
		}
		rep.Rows.Sent = sent
	}
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
