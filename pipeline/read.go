package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync"
	"sync/atomic"

	"golang.org/x/sync/errgroup"
	"golang.org/x/sync/semaphore"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
	"github.com/backflowhq/backflow/state"
)

// openFile is one source file being read.
type openFile struct {
	entry   *state.File
	f       *reader.File
	resume  []*rangeSet // per destination: handled when the run started; read-only
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

type rowGroupJob struct {
	file  *openFile
	index int
	start int64
}

// read reads the planned files until done, stopped or failed. Decoding and mapping are
// apart: decoders (decoderCount) each read a row group into record batches, and Workers
// mappers map and dispatch the batches, whichever row group they come from. How many
// row groups are decoded at once is bounded by bytes as well (ReadBytes, against each row
// group's estimated reading memory): a decoder's buffers, pages and dictionaries are
// what sets a sync's memory, and a large row group of a wide table is then read alone
// while the mappers keep every CPU busy with its batches.
func (r *run) read(src reader.Source, toRead []*state.File) {
	jobs := make(chan rowGroupJob)
	recs := make(chan decoded, r.opts.Workers)
	budget := semaphore.NewWeighted(r.opts.ReadBytes)
	g, gctx := errgroup.WithContext(r.readCtx)
	var decoders sync.WaitGroup
	for range decoderCount(r.opts.Workers) {
		decoders.Add(1)
		g.Go(func() error {
			defer decoders.Done()
			for job := range jobs {
				r.readRowGroup(gctx, job, recs, budget)
			}
			return nil
		})
	}
	for range r.opts.Workers {
		g.Go(func() error {
			for d := range recs {
				r.mapBatch(gctx, d)
			}
			return nil
		})
	}
	g.Go(func() error {
		defer close(jobs)
		r.produce(gctx, src, toRead, jobs)
		return nil
	})
	g.Go(func() error {
		decoders.Wait()
		close(recs)
		return nil
	})
	_ = g.Wait()
}

// decoderCount is how many row groups may be decoded at once for workers mappers: one
// per two, as decoding a batch costs about half of mapping it (arrow-go's decoding is a
// quarter of a sync's CPU time, the mapper half), and a decoder running ahead only holds
// more batches in memory.
func decoderCount(workers int) int {
	return max(1, (workers+1)/2)
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
			if r.isRejected(entry.Key) {
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
					if s, cerr := schema.Check(openCtx, f, r.sync.Source.Limits, r.schema); cerr != nil {
						f.Close()
						f, err = nil, cerr
					} else if len(s.FirstRowNulls) > 0 {
						r.log.Warn("null in the first row, read anyway (first_row_nulls: warn)", "key", entry.Key, "columns", s.FirstRowNulls)
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
			switch {
			case errors.Is(res.err, reader.ErrNotFound) || errors.Is(res.err, reader.ErrChanged):
				what := "vanished"
				if errors.Is(res.err, reader.ErrChanged) {
					what = "changed"
				}
				r.log.Warn("file "+what+" between listing and reading; the next run reads it", "key", entry.Key)
				r.mu.Lock()
				r.report.FileErrors = append(r.report.FileErrors, FileError{Key: entry.Key, Error: what + " between listing and reading"})
				r.report.Files.Vanished++
				r.mu.Unlock()
				r.ledger.remove(entry)
			case schema.IsInvalid(res.err):
				r.rejectFile(entry.Key, res.err.Error())
			default:
				// Reading failed (network, permissions): the run fails; nothing of the file
				// was acknowledged, so the next run reads it again.
				r.fail(res.err)
				drain(results[i+1:])
				return
			}
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
	r.mu.Unlock()
	of.resume = r.ledger.open(entry, rows)

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
	r.log.Debug("reading file", "key", key, "rows", rows, "row_groups", f.NumRowGroups())
	of.onClose = func() {
		onClose()
		r.fileDone(key)
	}
	of.refs.Store(1)
	var start int64
	ok := true
	for rg := 0; rg < f.NumRowGroups() && ok; rg++ {
		n := f.RowGroupRows(rg)
		if n > 0 && !needed(start, start+n) {
			r.log.Debug("row group already delivered everywhere", "key", key, "row_group", rg, "rows", n)
		}
		if n > 0 && needed(start, start+n) {
			of.refs.Add(1)
			select {
			case jobs <- rowGroupJob{file: of, index: rg, start: start}:
			case <-ctx.Done():
				of.refs.Add(-1)
				ok = false
			}
		}
		start += n
	}
	of.release()
	return ok
}

// mapped is one record batch of a row group, mapped: rows [lo, hi) of its file.
type mapped struct {
	lo, hi  int64
	msgs    []mapper.Message
	rejects []mapper.Reject
}

// rowGroupRead is one row group being decoded: its batches are mapped by the mappers.
type rowGroupRead struct {
	job rowGroupJob
	// pending counts the batches handed to the mappers and not yet mapped and
	// dispatched: the decoder waits for them before it lets go of the row group.
	pending sync.WaitGroup
	// stop tells the decoder to read no further: a batch failed to map or could not
	// be dispatched (the run is stopping).
	stop atomic.Bool
}

// decoded is one record batch of a row group, for a mapper: rows [lo, lo+NumRows).
type decoded struct {
	rg  *rowGroupRead
	rec arrow.RecordBatch
	lo  int64
}

// readRowGroup decodes one row group, once the read budget has room for it, and hands
// its record batches to the mappers; it returns when they have all been dispatched.
func (r *run) readRowGroup(ctx context.Context, job rowGroupJob, recs chan<- decoded, budget *semaphore.Weighted) {
	defer job.file.release()
	// A row group larger than the whole budget is read alone.
	cost := min(max(job.file.f.RowGroupMemory(job.index), 1), r.opts.ReadBytes)
	if err := budget.Acquire(ctx, cost); err != nil {
		return
	}
	defer budget.Release(cost)
	rr, err := job.file.f.ReadRowGroup(ctx, job.index)
	if err != nil {
		r.readError(ctx, job, err)
		return
	}
	defer rr.Release()
	rg := &rowGroupRead{job: job}
	// However decoding ends, the batches handed out are mapped (or dropped, the run
	// stopping) before the row group is let go.
	defer rg.pending.Wait()
	row := job.start
	var bytesRead int64
	if md := job.file.f.Metadata(); md != nil && job.index < md.NumRowGroups() {
		bytesRead = md.RowGroup(job.index).TotalCompressedSize()
	}
	for {
		if ctx.Err() != nil || rg.stop.Load() {
			return
		}
		rec, err := r.decode(rr)
		if err != nil {
			r.readFailed(ctx, job, err)
			return
		}
		if rec == nil {
			break
		}
		n := rec.NumRows()
		rg.pending.Add(1)
		select {
		case recs <- decoded{rg: rg, rec: rec, lo: row}:
		case <-ctx.Done():
			rec.Release()
			rg.pending.Done()
			return
		}
		row += n
	}
	if err := rr.Err(); err != nil {
		r.readError(ctx, job, err)
		return
	}
	rg.pending.Wait()
	if rg.stop.Load() {
		return
	}
	r.obs.RowsRead(r.sync.Name, 0, bytesRead)
	r.log.Debug("read row group", "key", job.file.entry.Key, "row_group", job.index, "rows", row-job.start, "compressed_bytes", bytesRead)
}

// mapBatch maps one decoded record batch and dispatches it.
func (r *run) mapBatch(ctx context.Context, d decoded) {
	defer d.rg.pending.Done()
	defer d.rec.Release()
	if ctx.Err() != nil || d.rg.stop.Load() {
		d.rg.stop.Store(true)
		return
	}
	m, err := r.mapRecords(d.rec, d.lo)
	if err != nil {
		d.rg.stop.Store(true)
		r.readFailed(ctx, d.rg.job, err)
		return
	}
	r.obs.RowsRead(r.sync.Name, m.hi-m.lo, 0)
	r.rowsRead.Add(m.hi - m.lo)
	if !r.dispatch(ctx, d.rg.job.file, m) {
		d.rg.stop.Store(true)
	}
}

// recordReader is what readRowGroup reads: reader.File's row-group reader.
type recordReader interface {
	Next() bool
	RecordBatch() arrow.RecordBatch
}

// decode reads the next record batch (retained: the caller releases it), or nil at the
// end of the row group. Arrays decoded from a corrupt page can break arrow-go's
// assumptions: a panic while reading is the file's fault, returned as an error (the file
// is rejected, the process goes on).
func (r *run) decode(rr recordReader) (rec arrow.RecordBatch, err error) {
	defer func() {
		if p := recover(); p != nil {
			rec, err = nil, fmt.Errorf("unreadable data: %v", p)
		}
	}()
	if !rr.Next() {
		return nil, nil
	}
	rec = rr.RecordBatch()
	rec.Retain()
	return rec, nil
}

// mapRecords maps a record batch starting at row. Arrays decoded from a corrupt page can
// break the mapper's assumptions: a panic while mapping is the file's fault, returned as
// an error. Only reading and mapping run under a recover: dispatch and delivery never do.
func (r *run) mapRecords(rec arrow.RecordBatch, row int64) (m mapped, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("unreadable data: %v", p)
		}
	}()
	n := rec.NumRows()
	m = mapped{lo: row, hi: row + n}
	if r.mapper != nil {
		m.msgs, m.rejects = r.mapper.Map(rec, row, make([]mapper.Message, 0, n), nil)
	}
	return m, nil
}

// readError handles a failure reading a row group: a bad file is rejected (the others go
// on, exit 3); a failure of the source itself (network, permissions) fails the run, and
// the file, not acknowledged, is read again by the next run.
func (r *run) readError(ctx context.Context, job rowGroupJob, err error) {
	if ctx.Err() != nil {
		return
	}
	if !schema.IsInvalid(err) {
		r.fail(fmt.Errorf("reading %s: %w", job.file.entry.Key, err))
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
	msg := err.Error()
	if !strings.Contains(msg, job.file.entry.Key) {
		msg = fmt.Sprintf("%s: row group %d: %s", job.file.entry.Key, job.index, msg)
	}
	r.rejectFile(job.file.entry.Key, msg)
}

// dispatch writes the mapper's rejects of one mapped record batch, then gives every
// destination its own selection: the rows it did not handle in an earlier run and, in
// mode diff, whose content it did not acknowledge. It returns false when ctx ended.
func (r *run) dispatch(ctx context.Context, of *openFile, m mapped) bool {
	key := of.entry.Key
	if shard := r.opts.Shard; shard.Sharded() && r.sync.Mode == ModeDiff {
		// Mode diff: this shard keeps the identifiers that hash to it; the other rows
		// are another shard's (handled here with nothing to send). A row without
		// identifiers has no key: its reject is written by the shard that owns its file.
		kept := m.msgs[:0:0]
		for i := range m.msgs {
			if shard.OwnsKey(m.msgs[i].Key) {
				kept = append(kept, m.msgs[i])
			}
		}
		m.msgs = kept
		if !shard.OwnsFile(key) {
			m.rejects = nil
		}
	}
	// Rejects are handed to the rejects writer before any destination's span covering
	// them can be handled (the ledger's contract).
	for _, rej := range m.rejects {
		r.rejects.write(rejectLine{File: key, Row: rej.Row, Reason: rej.Reason, Message: rej.Message})
	}
	r.rejected.Add(int64(len(m.rejects)))

	var entries []state.HashEntry
	if r.diff != nil && len(m.msgs) > 0 {
		var err error
		if entries, err = r.diff.lookup(ctx, m.msgs); err != nil {
			r.fail(err)
			return false
		}
	}
	n := len(r.destNames)
	var needed []bool // per message: some destination needs it (dry runs count them)
	if r.opts.DryRun {
		needed = make([]bool, len(m.msgs))
	}
	var unchangedFor []int // mode diff, per message: the destinations that have it
	if entries != nil {
		unchangedFor = make([]int, len(m.msgs))
	}
	sels := make([][]mapper.Message, n)
	for d := range n {
		resume := of.resume[d]
		sel := m.msgs
		filter := resume.intersects(m.lo, m.hi) || entries != nil
		if resume.covers(m.lo, m.hi) {
			sel = nil
			filter = false
		}
		if filter {
			sel = make([]mapper.Message, 0, len(m.msgs))
			same := 0
			for i := range m.msgs {
				msg := &m.msgs[i]
				if resume.contains(msg.Row) {
					continue
				}
				if entries != nil && entries[i].Acked(r.diff.bits[d], contentHash(msg.ID)) {
					same++
					unchangedFor[i]++
					continue
				}
				sel = append(sel, *msg)
			}
			if same > 0 {
				r.ledger.sameContent(d, same)
			}
		}
		sels[d] = sel
		if needed != nil {
			for i := range m.msgs {
				if !resume.contains(m.msgs[i].Row) && (entries == nil || !entries[i].Acked(r.diff.bits[d], contentHash(m.msgs[i].ID))) {
					needed[i] = true
				}
			}
		}
	}
	if entries != nil {
		var same int64
		for i := range m.msgs {
			if unchangedFor[i] > 0 && unchangedFor[i] == n {
				same++
			}
		}
		r.unchanged.Add(same)
	}
	if r.opts.DryRun {
		var would int64
		for _, ok := range needed {
			if ok {
				would++
			}
		}
		r.wouldSend.Add(would)
		return true
	}
	full := make([][]*batch, len(r.outboxes))
	for d, o := range r.outboxes {
		if of.resume[d].covers(m.lo, m.hi) {
			continue // handled by an earlier run: nothing to add
		}
		full[d] = o.push(of, m.lo, m.hi, sels[d])
	}
	ok := true
	for d, o := range r.outboxes {
		// After a stop, the rest is held for the flush (sent within the grace).
		if ok {
			ok = o.send(ctx, full[d])
		} else if len(full[d]) > 0 {
			o.send(ctx, full[d])
		}
	}
	return ok
}
