package pipeline

import (
	"context"
	"errors"
	"fmt"
	"sync"
	"time"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/state"
)

// writer is one of destination d's max_in_flight writers.
func (r *run) writer(d int, queue <-chan *batch) {
	name := r.destNames[d]
	for b := range queue {
		if r.broken[d].Load() {
			r.ledger.notDelivered(d, len(b.msgs))
			continue
		}
		if r.deliverCtx.Err() != nil || r.cutShort[d].Load() {
			// The grace is over, or the destination was failing when the run began to
			// stop: the batch is abandoned, not refused; the next run sends it.
			continue
		}
		r.obs.BatchStarted(r.sync.Name, name)
		if def := r.deferred[d]; def != nil {
			r.writeDeferred(d, def, b)
			continue
		}
		began := time.Now()
		err := r.dests[d].Write(r.deliverCtx, b.msgs)
		took := time.Since(began)
		refused, ok := r.result(d, b, err)
		if !ok {
			continue
		}
		v := r.ledger.handled(d, b.spans, len(b.msgs)-len(refused), len(refused))
		r.recordHashes(d, b.msgs, refused)
		// The next batch waits until this one is saved, when that is cheap next to a
		// batch: a kill then resends at most one batch per writer (saver.waitSaved).
		if r.saver.worthWaiting(took) {
			r.saver.waitSaved(v)
		}
	}
}

// writeDeferred writes a batch to a destination whose writes become durable later: its
// rows are handled when the destination says they are durable — which may happen before
// WriteDeferred returns, but is acted on only after the refusals were handled. Nothing of
// the messages is kept meanwhile but the spans (and, in mode diff, their keys and hashes).
func (r *run) writeDeferred(d int, def destinations.Deferred, b *batch) {
	var (
		mu       sync.Mutex
		returned bool
		durable  bool
		acked    int
		refused  int
		keys     []string
		hashes   []string
		spans    = b.spans
		accepted = true
		version  uint64 // the ledger's version once the batch is handled (0: not yet)
	)
	finish := func() { // with mu held, once both happened
		version = r.ledger.handled(d, spans, acked, refused)
		if keys != nil {
			r.hashRec.put(r.diff.bits[d], keys, hashes)
		}
	}
	began := time.Now()
	err := def.WriteDeferred(r.deliverCtx, b.msgs, func() {
		mu.Lock()
		defer mu.Unlock()
		durable = true
		if returned && accepted {
			finish()
		}
	})
	took := time.Since(began)
	refusedIdx, ok := r.result(d, b, err)
	mu.Lock()
	returned = true
	if !ok {
		accepted = false
		mu.Unlock()
		return
	}
	refused = len(refusedIdx)
	acked = len(b.msgs) - refused
	if r.hashRec != nil {
		keys, hashes = hashPairs(b.msgs, refusedIdx)
	}
	if durable {
		finish()
	}
	v := version
	mu.Unlock()
	// A write that completed an object waits for the save that counts it, when that is
	// cheap next to the write (see saver.worthWaiting): a kill then writes no completed
	// object again.
	if v > 0 && r.saver.worthWaiting(took) {
		r.saver.waitSaved(v)
	}
}

// result handles what a Write returned: refused messages are written to the rejects
// file (before their rows can be counted); a failure stops the destination for the rest
// of the run. ok is false when nothing of the batch was acknowledged.
func (r *run) result(d int, b *batch, err error) (refused map[int]bool, ok bool) {
	name := r.destNames[d]
	var batchErr *destinations.BatchError
	switch {
	case err == nil:
		r.obs.BatchDone(r.sync.Name, name, int64(len(b.msgs)), 0)
		return nil, true
	case errors.As(err, &batchErr):
		refused = map[int]bool{}
		for _, f := range batchErr.Failed {
			if f.Index < 0 || f.Index >= len(b.msgs) || refused[f.Index] {
				continue
			}
			refused[f.Index] = true
			m := &b.msgs[f.Index]
			r.rejects.write(rejectLine{File: b.fileOf(f.Index), Row: m.Row, Destination: name,
				Reason: fmt.Sprint(f.Err), Message: m.JSON})
		}
		r.rejected.Add(int64(len(refused)))
		r.obs.BatchDone(r.sync.Name, name, int64(len(b.msgs)-len(refused)), int64(len(refused)))
		return refused, true
	default:
		r.obs.BatchDone(r.sync.Name, name, 0, int64(len(b.msgs)))
		if r.deliverCtx.Err() != nil {
			// The grace ran out: the batch is abandoned, not refused; the next run sends it.
			return nil, false
		}
		if r.readCtx.Err() != nil && destinations.IsRetryable(err) {
			// The run is stopping, and a failure that could have been retried was not:
			// the batch is left for the next run, the destination did not fail.
			r.cutShort[d].Store(true)
			return nil, false
		}
		r.ledger.notDelivered(d, len(b.msgs))
		r.destFailed(d, fmt.Errorf("destination %s: %w", name, err))
		return nil, false
	}
}

// destFailed stops destination d for the rest of the run: its remaining batches are
// kept (not handled) for the next run. When every destination failed, reading stops.
func (r *run) destFailed(d int, err error) {
	r.mu.Lock()
	first := r.destErr[d] == nil
	if first {
		r.destErr[d] = err
	}
	r.mu.Unlock()
	if first {
		r.log.Error("destination failed; its remaining batches are kept for the next run",
			"destination", r.destNames[d], "error", err)
	}
	r.broken[d].Store(true)
	for i := range r.broken {
		if !r.broken[i].Load() {
			return
		}
	}
	// Nothing can be delivered any more: stop reading; the next run resends.
	r.cancelRead(errors.New("every destination failed"))
}

// handledEmpty handles spans that carry nothing for destination d.
func (r *run) handledEmpty(d int, spans []span) {
	r.ledger.handled(d, spans, 0, 0)
}

// recordHashes records, in mode diff, the content destination d acknowledged.
func (r *run) recordHashes(d int, msgs []mapper.Message, refused map[int]bool) {
	if r.hashRec == nil || len(msgs) == 0 {
		return
	}
	keys, hashes := hashPairs(msgs, refused)
	r.hashRec.put(r.diff.bits[d], keys, hashes)
}

func hashPairs(msgs []mapper.Message, refused map[int]bool) (keys, hashes []string) {
	keys = make([]string, 0, len(msgs))
	hashes = make([]string, 0, len(msgs))
	for i := range msgs {
		if refused[i] {
			continue
		}
		// Copies: the messages' memory is let go as soon as the batch is written.
		keys = append(keys, string([]byte(msgs[i].Key)))
		hashes = append(hashes, string([]byte(contentHash(msgs[i].ID))))
	}
	return keys, hashes
}

// hashRecorder writes the row hashes destinations acknowledged, in its own goroutine:
// the row-hash store flushes to disk (fsync) now and then, and that must never stall
// acknowledgements, dispatch or the saver.
type hashRecorder struct {
	store state.HashStore
	ctx   context.Context
	fail  func(error)
	ch    chan hashRecord
	done  chan struct{}
}

type hashRecord struct {
	bit          uint
	keys, hashes []string
}

func newHashRecorder(store state.HashStore, ctx context.Context, fail func(error)) *hashRecorder {
	h := &hashRecorder{store: store, ctx: ctx, fail: fail, ch: make(chan hashRecord, 64), done: make(chan struct{})}
	go h.loop()
	return h
}

func (h *hashRecorder) put(bit uint, keys, hashes []string) {
	if len(keys) == 0 {
		return
	}
	h.ch <- hashRecord{bit: bit, keys: keys, hashes: hashes}
}

func (h *hashRecorder) loop() {
	defer close(h.done)
	failed := false
	for rec := range h.ch {
		if failed {
			continue // drain: senders must never block on a dead recorder
		}
		if err := h.store.Put(h.ctx, rec.bit, rec.keys, rec.hashes); err != nil {
			h.fail(fmt.Errorf("recording row hashes: %w", err))
			failed = true
		}
	}
}

// close waits until everything put was handed to the store.
func (h *hashRecorder) close() {
	close(h.ch)
	<-h.done
}
