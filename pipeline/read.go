package pipeline

import (
	"context"
	"errors"
	"fmt"
	"strings"
	"sync/atomic"

	"golang.org/x/sync/errgroup"

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

// read reads the planned files with Workers readers until done, stopped or failed.
func (r *run) read(src reader.Source, toRead []*state.File) {
	jobs := make(chan rowGroupJob)
	g, gctx := errgroup.WithContext(r.readCtx)
	for range r.opts.Workers {
		g.Go(func() error {
			for job := range jobs {
				r.readRowGroup(gctx, job)
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

// readRowGroup reads one row group, maps it and hands its batches to the dispatcher.
func (r *run) readRowGroup(ctx context.Context, job rowGroupJob) {
	defer job.file.release()
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
	for {
		if ctx.Err() != nil {
			return
		}
		m, more, err := r.next(rr, row)
		if err != nil {
			r.readFailed(ctx, job, err)
			return
		}
		if !more {
			break
		}
		r.obs.RowsRead(r.sync.Name, m.hi-m.lo, 0)
		r.rowsRead.Add(m.hi - m.lo)
		if !r.dispatch(ctx, job.file, m) {
			return
		}
		row = m.hi
	}
	if err := rr.Err(); err != nil {
		r.readError(ctx, job, err)
		return
	}
	r.obs.RowsRead(r.sync.Name, 0, bytesRead)
	r.log.Debug("read row group", "key", job.file.entry.Key, "row_group", job.index, "rows", row-job.start, "compressed_bytes", bytesRead)
}

// recordReader is what readRowGroup reads: reader.File's row-group reader.
type recordReader interface {
	Next() bool
	RecordBatch() arrow.RecordBatch
}

// next reads and maps the next record batch starting at row. Arrays decoded from a
// corrupt page can break the mapper's assumptions: a panic while reading or mapping is
// the file's fault, returned as an error (the file is rejected, the process goes on).
// Only reading and mapping run under this recover: dispatch and delivery never do.
func (r *run) next(rr recordReader, row int64) (m mapped, more bool, err error) {
	defer func() {
		if p := recover(); p != nil {
			err = fmt.Errorf("unreadable data: %v", p)
		}
	}()
	if !rr.Next() {
		return m, false, nil
	}
	rec := rr.RecordBatch()
	n := rec.NumRows()
	m = mapped{lo: row, hi: row + n}
	if r.mapper != nil {
		m.msgs, m.rejects = r.mapper.Map(rec, row, make([]mapper.Message, 0, n), nil)
	}
	return m, true, nil
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
