package pipeline

import (
	"context"
	"fmt"
	"strings"
	"sync"

	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/state"
)

// batch is what one Write of one destination carries: msgs, and the spans of rows they
// were cut from. Rows of the spans without a message in msgs need nothing from this
// destination (rejected by the mapper, unchanged, or handled by an earlier run): they
// are handled together with the batch.
type batch struct {
	dest  int
	spans []span
	// counts[i] is how many of msgs come from spans[i], in order: rows of different
	// files may share a batch, and a message's row alone does not name its file.
	counts []int
	msgs   []mapper.Message
}

// fileOf returns the key of the file message i came from.
func (b *batch) fileOf(i int) string {
	for j, n := range b.counts {
		if i < n {
			return b.spans[j].file.entry.Key
		}
		i -= n
	}
	return ""
}

// outbox cuts the rows selected for one destination into batches of its batch size,
// across record batches (and files), and hands them to its writers. Many readers add
// to it at once.
type outbox struct {
	dest  int
	size  int
	queue chan *batch
	// handled is told about spans with nothing to deliver when nothing waits before
	// them (so they need not ride with a later batch).
	handled func(d int, spans []span)

	mu    sync.Mutex
	spans []span
	n     []int // messages of each span in msgs
	msgs  []mapper.Message
	held  []*batch // full batches a stopped reader could not queue: flush sends them
}

// push appends rows [lo, hi) of a file with sel, their messages for this destination
// (ordered by row, within [lo, hi)), and returns the batches that are now full, for
// send. It never blocks on the destination: a reader hands a record batch to every
// destination before it waits for any, so a slow destination never starves a fast one
// of the rows already read.
func (o *outbox) push(of *openFile, lo, hi int64, sel []mapper.Message) []*batch {
	o.mu.Lock()
	if len(sel) == 0 && len(o.msgs) == 0 {
		o.mu.Unlock()
		o.handled(o.dest, []span{{file: of, start: lo, end: hi}})
		return nil
	}
	o.spans = append(o.spans, span{file: of, start: lo, end: hi})
	o.n = append(o.n, len(sel))
	o.msgs = append(o.msgs, sel...)
	var full []*batch
	for len(o.msgs) >= o.size {
		full = append(full, o.cutLocked(o.size))
	}
	if full != nil {
		o.compactLocked()
	}
	o.mu.Unlock()
	return full
}

// flush sends what is left as a last, partly filled batch.
func (o *outbox) flush(ctx context.Context) bool {
	o.mu.Lock()
	rest := o.held
	o.held = nil
	if len(o.msgs) > 0 {
		rest = append(rest, o.cutLocked(len(o.msgs)))
	}
	spans := o.spans
	o.spans, o.n = nil, nil
	o.mu.Unlock()
	if len(spans) > 0 {
		o.handled(o.dest, spans) // spans with nothing left to deliver
	}
	return o.send(ctx, rest)
}

// cutLocked takes the first k messages (k ≥ 1) and the spans they cover. A span that the
// cut divides is split at the row of the first message left behind.
func (o *outbox) cutLocked(k int) *batch {
	b := &batch{dest: o.dest, msgs: make([]mapper.Message, k)}
	copy(b.msgs, o.msgs[:k])
	rest := o.msgs[k:]
	taken := 0
	i := 0
	for ; i < len(o.spans) && taken+o.n[i] <= k; i++ {
		taken += o.n[i]
	}
	// Spans [0, i) are whole in the batch (with the empty spans that follow them).
	b.spans = append(b.spans, o.spans[:i]...)
	b.counts = append(b.counts, o.n[:i]...)
	if i < len(o.spans) && taken < k {
		// The cut falls inside span i: its first (k - taken) messages go.
		s := o.spans[i]
		cutRow := rest[0].Row
		b.spans = append(b.spans, span{file: s.file, start: s.start, end: cutRow})
		b.counts = append(b.counts, k-taken)
		o.spans[i].start = cutRow
		o.n[i] -= k - taken
	}
	// The rest stays in place (cutting a record batch into small batches must not copy
	// what is left at every cut); push compacts it once it has cut.
	o.spans, o.n, o.msgs = o.spans[i:], o.n[i:], rest
	return b
}

// compactLocked moves what is left to fresh arrays, so that the messages already cut
// (copied into their batches) are not kept alive by the outbox.
func (o *outbox) compactLocked() {
	o.spans = append([]span(nil), o.spans...)
	o.n = append([]int(nil), o.n...)
	o.msgs = append([]mapper.Message(nil), o.msgs...)
}

// send queues batches for the writers, waiting while they are busy (backpressure); it
// returns false when ctx ended first (the batches not queued are left for the next run).
func (o *outbox) send(ctx context.Context, batches []*batch) bool {
	for i, b := range batches {
		select {
		case o.queue <- b:
		case <-ctx.Done():
			o.mu.Lock()
			o.held = append(o.held, batches[i:]...)
			o.mu.Unlock()
			return false
		}
	}
	return true
}

// diffFilter is mode diff's judgement of which rows a destination already has: the
// row-hash store keeps, per identifier, the content last acknowledged and which
// destinations acknowledged it.
type diffFilter struct {
	store state.HashStore
	bits  []uint // per destination
	mu    sync.Mutex
}

// lookup returns the stored entries of msgs' keys.
func (f *diffFilter) lookup(ctx context.Context, msgs []mapper.Message) ([]state.HashEntry, error) {
	keys := make([]string, len(msgs))
	for i := range msgs {
		keys[i] = msgs[i].Key
	}
	entries, err := f.store.Get(ctx, keys)
	if err != nil {
		return nil, fmt.Errorf("reading row hashes: %w", err)
	}
	return entries, nil
}

// contentHash is what the row-hash store keeps of a messageId: its hex digest without
// the "bf-" prefix, which the store packs into half the bytes.
func contentHash(messageID string) string {
	return strings.TrimPrefix(messageID, "bf-")
}
