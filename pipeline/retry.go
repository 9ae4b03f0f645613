package pipeline

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"os"
	"sort"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
	"github.com/backflowhq/backflow/state"
)

// RetryOptions configure a retry of the rejected rows of one run (`backflow rejects
// retry`).
type RetryOptions struct {
	Config *config.Config
	Sync   *config.Sync
	// Of is the id of the run whose rejected rows are sent again.
	Of       string
	Registry *destinations.Registry
	// Store holds the rejects file of run Of; the retry writes its own rejects file and
	// its report to the run history there.
	Store  state.Store
	Logger *slog.Logger
	// Stdout is where the stdout destination writes.
	Stdout  io.Writer
	Version string
	// RunID names the retry's own run; a new one is made when empty.
	RunID string
	// BatchRows is the number of rows per Arrow record batch (default 4096).
	BatchRows int64
	// BufferBytes is the read buffer per column stream (default 4 MiB).
	BufferBytes int64
	// Wait is how long to wait for the sync's lease when another run holds it.
	Wait time.Duration
	// Shard is the shard whose rejected rows are retried (its rejects, checkpoint, lease
	// and history are its own); the zero Shard is the whole sync.
	Shard Shard
	// Now tells the time (tests); default time.Now.
	Now func() time.Time
}

// Retry sends the rejected rows of run opts.Of again, each to the destination that
// refused it (a row refused before delivery — without identifiers, too large — to every
// destination of the sync, if it now maps). Each row is read back from its file by its
// row number, reading only the row groups that hold such rows, and mapped with the
// current mapping. A row whose file changed or vanished since run Of is reported (in the
// report's file_errors) and not sent.
//
// The retry is a run of its own: a new run id, a report whose retry_of names run Of,
// appended to the sync's run history, and its own rejects file holding every row of run
// Of it did not deliver (refused again, not mappable, not retried, or not delivered
// because a destination failed), so that the newest run with rejects is always the one
// to retry next. The checkpoint is not changed: rows refused by a destination were
// already settled for it.
//
// Like a sync, a retry holds the sync's lease while it runs: it never runs alongside
// another run of the sync.
//
// It always returns a report (Status failed when err != nil), except when run Of wrote no
// rejects file — then the error matches state.ErrNoRejects — or when another run holds
// the lease (state.ErrLeaseHeld): then nothing is recorded.
func Retry(ctx context.Context, opts RetryOptions) (*Report, error) {
	rt := newRetryRun(opts)
	ttl := config.DefaultLeaseTTL
	if opts.Config != nil && opts.Config.State.LeaseTTL > 0 {
		ttl = opts.Config.State.LeaseTTL
	}
	host, _ := os.Hostname()
	lease, err := state.AcquireWait(ctx, opts.Store, opts.Shard.StateName(opts.Sync.Name),
		state.Holder{Host: host, PID: os.Getpid(), RunID: rt.report.RunID, Since: rt.start},
		ttl, opts.Wait, min(max(ttl/10, 200*time.Millisecond), 2*time.Second), nil)
	if err != nil {
		if errors.Is(err, state.ErrLeaseHeld) {
			return nil, err
		}
		return nil, fmt.Errorf("taking the lease of sync %s: %w", opts.Sync.Name, err)
	}
	defer func() {
		rctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), 30*time.Second)
		defer cancel()
		if err := lease.Release(rctx); err != nil {
			rt.log.Warn("releasing the sync's lease; it expires by itself", "error", err)
		}
	}()
	go func() {
		select {
		case <-lease.Lost():
			rt.log.Error("the sync's lease was lost during the retry", "error", lease.Err())
		case <-ctx.Done():
		}
	}()
	rej, err := ReadRejects(ctx, opts.Store, opts.Shard.StateName(opts.Sync.Name), opts.Of)
	if err != nil {
		if errors.Is(err, state.ErrNoRejects) {
			return nil, err
		}
		err = fmt.Errorf("reading the rejects of run %s: %w", opts.Of, err)
	} else {
		err = rt.run(ctx, rej)
	}
	rt.finish(err)
	var cfgErr *ConfigError
	if !errors.As(err, &cfgErr) {
		rt.record(ctx)
	}
	return rt.report, err
}

type retryRun struct {
	opts   RetryOptions
	log    *slog.Logger
	report *Report
	start  time.Time
	// ofStart is when run Of started, from its id (zero when the id does not say).
	ofStart time.Time

	rejects   *rejectsWriter
	destIndex map[string]int
	queues    [][]retryMsg // per destination of the sync
	staged    []stagedRow  // of the file being read
	delivered []int64
	failed    []int64

	rowsRead   int64
	rejected   int64
	notRetried int64
}

// retryMsg is one row to send again to one destination.
type retryMsg struct {
	file string
	msg  mapper.Message
}

func newRetryRun(opts RetryOptions) *retryRun {
	if opts.Logger == nil {
		opts.Logger = slog.New(slog.DiscardHandler)
	}
	if opts.Now == nil {
		opts.Now = time.Now
	}
	if opts.BatchRows <= 0 {
		opts.BatchRows = 4096
	}
	if opts.BufferBytes <= 0 {
		opts.BufferBytes = 4 << 20
	}
	start := opts.Now().UTC()
	if opts.RunID == "" {
		opts.RunID = NewRunID(start)
	}
	rt := &retryRun{
		opts:      opts,
		start:     start,
		rejects:   &rejectsWriter{},
		destIndex: map[string]int{},
	}
	rt.log = opts.Logger.With("sync", opts.Sync.Name, "run_id", opts.RunID, "retry_of", opts.Of)
	if t, err := time.Parse("20060102T150405Z", strings.SplitN(opts.Of, "-", 2)[0]); err == nil {
		rt.ofStart = t
	}
	rt.report = &Report{
		Sync:         opts.Sync.Name,
		Shard:        opts.Shard.String(),
		RunID:        opts.RunID,
		RetryOf:      opts.Of,
		Mode:         opts.Sync.Mode,
		StartedAt:    start,
		Destinations: map[string]*DestinationCount{},
	}
	for i, d := range opts.Sync.Destinations {
		rt.destIndex[d.Name] = i
		rt.report.Destinations[d.Name] = &DestinationCount{}
	}
	n := len(opts.Sync.Destinations)
	rt.queues = make([][]retryMsg, n)
	rt.delivered = make([]int64, n)
	rt.failed = make([]int64, n)
	return rt
}

func (rt *retryRun) run(ctx context.Context, rej *Rejects) (err error) {
	opts := rt.opts
	if rej.Unreadable > 0 {
		rt.log.Warn("rejects file has lines that are not rejected rows; they are left out",
			"rejects_file", rej.Location, "lines", rej.Unreadable)
	}
	rf, err := opts.Store.Rejects(ctx, opts.Shard.StateName(opts.Sync.Name), opts.RunID)
	if err != nil {
		return fmt.Errorf("opening rejects file: %w", err)
	}
	rt.rejects.file = rf
	defer func() {
		cctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		cerr := rf.Close(cctx)
		if cerr == nil {
			cerr = rt.rejects.err
		}
		if cerr != nil {
			err = errors.Join(err, fmt.Errorf("writing rejects file: %w", cerr))
		}
		rt.report.RejectsFile = rf.Location()
	}()

	// The rows of each file, each with the rejects lines that name it.
	byFile := map[string]map[int64][]RejectedRow{}
	type rowDest struct {
		file string
		row  int64
		dest string
	}
	seen := map[rowDest]bool{}
	for _, row := range rej.Rows {
		if _, ok := rt.destIndex[row.Destination]; row.Destination != "" && !ok {
			rt.notRetry(row, fmt.Sprintf("destination %s is no longer in sync %s", row.Destination, opts.Sync.Name))
			continue
		}
		k := rowDest{row.File, row.Row, row.Destination}
		if seen[k] {
			continue
		}
		seen[k] = true
		if byFile[row.File] == nil {
			byFile[row.File] = map[int64][]RejectedRow{}
		}
		byFile[row.File][row.Row] = append(byFile[row.File][row.Row], row)
	}
	keys := make([]string, 0, len(byFile))
	for k := range byFile {
		keys = append(keys, k)
	}
	sort.Strings(keys)
	rt.report.Files.Listed = len(keys)
	if len(keys) == 0 {
		return nil
	}

	src, err := reader.NewSource(ctx, opts.Sync.Source)
	if err != nil {
		return fmt.Errorf("opening source %s: %w", opts.Sync.Source.URL, err)
	}
	listing, err := src.List(ctx)
	if err != nil {
		return err
	}
	listed := make(map[string]reader.Object, len(listing.Objects))
	for _, o := range listing.Objects {
		listed[o.Key] = o
	}
	cp, err := opts.Store.Load(ctx, opts.Shard.StateName(opts.Sync.Name))
	if err != nil {
		return fmt.Errorf("loading checkpoint of sync %s: %w", opts.Sync.Name, err)
	}

	mappers := map[string]*mapper.Mapper{} // by schema fingerprint
	for _, key := range keys {
		rows := byFile[key]
		obj, ok := listed[key]
		if !ok {
			rt.report.Files.Vanished++
			rt.fileNotRetried(key, rows, "vanished")
			continue
		}
		if rt.changed(cp, obj) {
			rt.report.Files.Changed++
			rt.fileNotRetried(key, rows, "changed")
			continue
		}
		if err := rt.readBack(ctx, src, obj, rows, mappers); err != nil {
			return err
		}
	}
	return rt.deliver(ctx)
}

// changed tells whether obj is no longer the file run Of read: it differs from the
// checkpoint's entry (size, ETag, version id), or it was written after run Of started
// (the entry may have been updated by a later run). The rejects file names only the key.
func (rt *retryRun) changed(cp *state.Checkpoint, obj reader.Object) bool {
	if cp != nil {
		if f := cp.Files[obj.Key]; f != nil && !sameObject(f, obj) {
			return true
		}
	}
	// Run ids tell the start to the second: a second of margin, so that a file written
	// in the second the run started is not taken for a newer one.
	return !rt.ofStart.IsZero() && !obj.LastModified.IsZero() && obj.LastModified.After(rt.ofStart.Add(time.Second))
}

// fileNotRetried reports a file whose rows are not sent again, and why ("changed",
// "vanished", or why it cannot be read).
func (rt *retryRun) fileNotRetried(key string, rows map[int64][]RejectedRow, why string) {
	n := len(rows)
	what := "rows"
	if n == 1 {
		what = "row"
	}
	msg := fmt.Sprintf("%s since run %s: %d rejected %s not retried", why, rt.opts.Of, n, what)
	rt.log.Warn("file "+why+" since the run; its rejected rows are not retried", "key", key, "rows", n)
	rt.report.FileErrors = append(rt.report.FileErrors, FileError{Key: key, Error: msg})
	for _, r := range sortedRows(rows) {
		for _, line := range rows[r] {
			rt.notRetry(line, fmt.Sprintf("file %s %s since run %s", key, why, rt.opts.Of))
		}
	}
}

// notRetry writes a row that is not sent again to the retry's rejects file.
func (rt *retryRun) notRetry(row RejectedRow, why string) {
	rt.notRetried++
	rt.rejects.write(rejectLine{File: row.File, Row: row.Row, Destination: row.Destination,
		Reason: "not retried: " + why + " (was: " + row.Reason + ")", Message: row.Message})
}

func sortedRows(rows map[int64][]RejectedRow) []int64 {
	out := make([]int64, 0, len(rows))
	for r := range rows {
		out = append(out, r)
	}
	sort.Slice(out, func(i, j int) bool { return out[i] < out[j] })
	return out
}

// readBack reads the rejected rows of one file, maps them with the current mapping and
// queues each for the destinations it goes to. A file that vanished, changed or can no
// longer be read is reported; a failure of the source fails the retry.
func (rt *retryRun) readBack(ctx context.Context, src reader.Source, obj reader.Object, rows map[int64][]RejectedRow, mappers map[string]*mapper.Mapper) (err error) {
	key := obj.Key
	blob, err := src.Open(ctx, obj)
	if err == nil {
		var f *reader.File
		f, err = reader.OpenFile(ctx, blob, obj, reader.FileOptions{BatchSize: rt.opts.BatchRows, BufferSize: rt.opts.BufferBytes})
		if err != nil {
			blob.Close()
		} else {
			defer f.Close()
			err = rt.readRows(ctx, f, rows, mappers)
		}
	}
	staged := rt.staged
	rt.staged = nil
	switch {
	case err == nil:
		rt.report.Files.Read++
		for _, s := range staged {
			rt.queue(key, s)
		}
		return nil
	case errors.Is(err, reader.ErrNotFound):
		rt.report.Files.Vanished++
		rt.fileNotRetried(key, rows, "vanished")
		return nil
	case errors.Is(err, reader.ErrChanged) || errors.Is(err, errRowsBeyondEnd):
		rt.report.Files.Changed++
		rt.fileNotRetried(key, rows, "changed")
		return nil
	case schema.IsInvalid(err):
		rt.report.Files.Rejected++
		rt.fileNotRetried(key, rows, "unreadable ("+err.Error()+")")
		return nil
	}
	var cfgErr *ConfigError
	if errors.As(err, &cfgErr) || ctx.Err() != nil {
		return err
	}
	if !strings.Contains(err.Error(), key) {
		err = fmt.Errorf("reading %s: %w", key, err)
	}
	return err
}

// errRowsBeyondEnd: the file has fewer rows than a rejected row's number, so it is not
// the file that was read.
var errRowsBeyondEnd = errors.New("the file has fewer rows than the rejected rows name")

// readRows reads the row groups of f that hold rejected rows, and maps those rows only.
func (rt *retryRun) readRows(ctx context.Context, f *reader.File, rows map[int64][]RejectedRow, mappers map[string]*mapper.Mapper) (err error) {
	wanted := sortedRows(rows)
	if last := wanted[len(wanted)-1]; last >= f.NumRows() {
		return fmt.Errorf("%s: row %d: %w (%d)", f.Object().Key, last, errRowsBeyondEnd, f.NumRows())
	}
	as, _ := f.ArrowSchema()
	fp := as.String()
	m := mappers[fp]
	if m == nil {
		m, err = mapper.New(mapper.Options{
			Sync:           rt.opts.Sync.Name,
			Mapping:        rt.opts.Sync.Mapping,
			Schema:         as,
			MaxRecordBytes: rt.opts.Sync.Source.Limits.MaxRecordBytes,
			Version:        rt.opts.Version,
			SkipKeys:       true,
		})
		if err != nil {
			return newConfigError(fmt.Errorf("sync %s: %s: %w", rt.opts.Sync.Name, f.Object().Key, err))
		}
		mappers[fp] = m
	}
	defer func() {
		// Arrays decoded from a corrupt page can break the mapper's assumptions: the
		// file's rows are not retried, the process goes on.
		if p := recover(); p != nil {
			err = &reader.ParquetError{Key: f.Object().Key, RowGroup: -1, Err: fmt.Errorf("unreadable data: %v", p)}
		}
	}()
	next := 0 // index in wanted of the next row to read
	var start int64
	for rg := 0; rg < f.NumRowGroups() && next < len(wanted); rg++ {
		n := f.RowGroupRows(rg)
		if wanted[next] >= start+n {
			start += n
			continue // no rejected row in this row group: not read
		}
		if err := rt.readRowGroup(ctx, f, rg, start, wanted, &next, rows, m); err != nil {
			return err
		}
		start += n
	}
	return nil
}

func (rt *retryRun) readRowGroup(ctx context.Context, f *reader.File, rg int, start int64, wanted []int64, next *int, rows map[int64][]RejectedRow, m *mapper.Mapper) error {
	rr, err := f.ReadRowGroup(ctx, rg)
	if err != nil {
		return err
	}
	defer rr.Release()
	end := start + f.RowGroupRows(rg)
	row := start
	for *next < len(wanted) && wanted[*next] < end && rr.Next() {
		rec := rr.RecordBatch()
		n := rec.NumRows()
		for *next < len(wanted) && wanted[*next] < row+n {
			r := wanted[*next]
			one := rec.NewSlice(r-row, r-row+1)
			msgs, rejects := m.Map(one, r, nil, nil)
			one.Release()
			rt.mapped(rows[r], msgs, rejects)
			*next++
		}
		row += n
	}
	if err := rr.Err(); err != nil {
		return err
	}
	if *next < len(wanted) && wanted[*next] < end {
		return fmt.Errorf("%s: row group %d: %w", f.Object().Key, rg, errRowsBeyondEnd)
	}
	return nil
}

// stagedRow is a row read back and mapped, queued once the whole file was read.
type stagedRow struct {
	lines   []RejectedRow
	msgs    []mapper.Message
	rejects []mapper.Reject
}

// mapped stages a row read back: a file that cannot be read to its last rejected row
// sends none of its rows.
func (rt *retryRun) mapped(lines []RejectedRow, msgs []mapper.Message, rejects []mapper.Reject) {
	rt.staged = append(rt.staged, stagedRow{lines: lines, msgs: msgs, rejects: rejects})
}

// queue queues a row read back: to the destination of each of its rejects lines, or to
// every destination for a row refused before delivery. A row that still cannot be
// mapped is rejected again.
func (rt *retryRun) queue(key string, s stagedRow) {
	rt.rowsRead++
	if len(s.msgs) == 0 {
		for _, rej := range s.rejects {
			rt.rejected++
			rt.rejects.write(rejectLine{File: key, Row: rej.Row, Reason: rej.Reason, Message: rej.Message})
		}
		return
	}
	msg := s.msgs[0]
	to := map[int]bool{}
	for _, l := range s.lines {
		if l.Destination == "" {
			for i := range rt.queues {
				to[i] = true
			}
		} else {
			to[rt.destIndex[l.Destination]] = true
		}
	}
	for i := range rt.queues {
		if to[i] {
			rt.queues[i] = append(rt.queues[i], retryMsg{file: key, msg: msg})
		}
	}
}

// deliver sends each destination its queued rows, one destination after the other.
func (rt *retryRun) deliver(ctx context.Context) error {
	env := destinations.Env{
		Sync:       rt.opts.Sync.Name,
		RunID:      rt.opts.RunID,
		RunStarted: rt.start,
		Version:    rt.opts.Version,
		Stdout:     rt.opts.Stdout,
		Logger:     rt.log,
	}
	var errs []error
	for i, cfg := range rt.opts.Sync.Destinations {
		if len(rt.queues[i]) == 0 {
			continue
		}
		d, err := rt.opts.Registry.New(ctx, cfg, env)
		if err != nil {
			err = fmt.Errorf("destination %s: %w", cfg.Name, err)
			rt.undelivered(i, rt.queues[i], err)
			errs = append(errs, err)
			continue
		}
		if err := rt.deliverTo(ctx, i, d); err != nil {
			errs = append(errs, err)
		}
		if err := d.Close(ctx); err != nil {
			errs = append(errs, fmt.Errorf("closing destination %s: %w", cfg.Name, err))
		}
		rt.queues[i] = nil
	}
	return errors.Join(errs...)
}

func (rt *retryRun) deliverTo(ctx context.Context, i int, d destinations.Destination) error {
	cfg := rt.opts.Sync.Destinations[i]
	name := cfg.Name
	size := cfg.BatchSize
	if size <= 0 {
		size = 500
	}
	queue := rt.queues[i]
	// A Deferred destination (s3) makes what it accepted durable on Flush: the rows
	// count as delivered only then.
	deferred, isDeferred := d.(destinations.Deferred)
	var pending []retryMsg // accepted by a Deferred destination, not yet durable
	for at := 0; at < len(queue); at += size {
		batch := queue[at:min(at+size, len(queue))]
		msgs := make([]mapper.Message, len(batch))
		for j := range batch {
			msgs[j] = batch[j].msg
		}
		var err error
		if isDeferred {
			err = deferred.WriteDeferred(ctx, msgs, func() {})
		} else {
			err = d.Write(ctx, msgs)
		}
		var batchErr *destinations.BatchError
		switch {
		case err == nil:
		case errors.As(err, &batchErr):
			refused := map[int]bool{}
			for _, f := range batchErr.Failed {
				if f.Index < 0 || f.Index >= len(batch) || refused[f.Index] {
					continue
				}
				refused[f.Index] = true
				m := batch[f.Index]
				rt.rejected++
				rt.failed[i]++
				rt.rejects.write(rejectLine{File: m.file, Row: m.msg.Row, Destination: name,
					Reason: fmt.Sprint(f.Err), Message: m.msg.JSON})
			}
			kept := make([]retryMsg, 0, len(batch)-len(refused))
			for j := range batch {
				if !refused[j] {
					kept = append(kept, batch[j])
				}
			}
			batch = kept
		default:
			err = fmt.Errorf("destination %s: %w", name, err)
			rt.log.Error("destination failed; the rows it did not take are written to the rejects file again",
				"destination", name, "error", err)
			rt.undelivered(i, append(pending, queue[at:]...), err)
			return err
		}
		if isDeferred {
			pending = append(pending, batch...)
		} else {
			rt.delivered[i] += int64(len(batch))
		}
	}
	if isDeferred && len(pending) > 0 {
		if err := deferred.Flush(ctx); err != nil {
			err = fmt.Errorf("destination %s: completing what it accepted: %w", name, err)
			rt.undelivered(i, pending, err)
			return err
		}
		rt.delivered[i] += int64(len(pending))
	}
	return nil
}

// undelivered writes rows a failing destination did not take to the rejects file, so
// that retrying this run sends them again.
func (rt *retryRun) undelivered(i int, rows []retryMsg, err error) {
	name := rt.opts.Sync.Destinations[i].Name
	for _, m := range rows {
		rt.failed[i]++
		rt.rejects.write(rejectLine{File: m.file, Row: m.msg.Row, Destination: name,
			Reason: "not delivered: " + err.Error(), Message: m.msg.JSON})
	}
}

func (rt *retryRun) finish(err error) {
	rep := rt.report
	rep.Rows.Read = rt.rowsRead
	rep.Rows.Rejected = rt.rejected
	rep.Rows.NotRetried = rt.notRetried
	var sent int64
	for i, d := range rt.opts.Sync.Destinations {
		dc := rep.Destinations[d.Name]
		dc.Delivered = rt.delivered[i]
		dc.Failed = rt.failed[i]
		sent = max(sent, rt.delivered[i])
	}
	rep.Rows.Sent = sent
	rep.DurationMS = rt.opts.Now().UTC().Sub(rt.start).Milliseconds()
	switch {
	case err != nil:
		rep.Status = StatusFailed
		rep.Error = err.Error()
	case rep.Rows.Rejected > 0 || rep.Rows.NotRetried > 0 || len(rep.FileErrors) > 0:
		rep.Status = StatusPartial
	default:
		rep.Status = StatusOK
	}
}

// record appends the report to the sync's run history; a failure to do so is logged.
func (rt *retryRun) record(ctx context.Context) {
	keep := config.DefaultHistory
	if rt.opts.Config != nil && rt.opts.Config.Serve.History > 0 {
		keep = rt.opts.Config.Serve.History
	}
	b, err := json.Marshal(rt.report)
	if err == nil {
		hctx, cancel := context.WithTimeout(context.WithoutCancel(ctx), time.Minute)
		defer cancel()
		err = rt.opts.Store.AppendHistory(hctx, rt.opts.Shard.StateName(rt.opts.Sync.Name), b, keep)
	}
	if err != nil {
		rt.log.Warn("recording the retry in the run history", "error", err)
	}
}
