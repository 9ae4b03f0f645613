package destinationstest

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// NewDestination returns a fresh destination, built and wrapped as the registry builds it
// (retries with at least 3 attempts and a max_backoff of well under a second), and the
// receiver at its far end. The suite closes the destination.
type NewDestination func(t *testing.T) (destinations.Destination, Receiver)

// wait bounds how long the suite waits for anything.
const wait = 20 * time.Second

// RunSuite checks the behaviour every destination promises (destinations.Destination's
// contract). Faults are only injected where the receiver's Capabilities allow.
//
// A destinations.Deferred destination is written with WriteDeferred, and its durable
// calls are checked throughout: exactly once for each accepted write, never for a write
// that failed, never after Close, only once the write's messages can be read back, and
// for every accepted write once Flush returns nil. Delivering, for it, is Flush then
// Close; Close alone aborts what is not durable.
func RunSuite(t *testing.T, newDest NewDestination) {
	t.Run("Deliver", func(t *testing.T) { testDeliver(t, newDest) })
	t.Run("DuplicateIDs", func(t *testing.T) { testDuplicateIDs(t, newDest) })
	t.Run("Empty", func(t *testing.T) { testEmpty(t, newDest) })
	t.Run("PartialFailure", func(t *testing.T) { testPartialFailure(t, newDest) })
	t.Run("Retry", func(t *testing.T) { testRetry(t, newDest) })
	t.Run("CancelBefore", func(t *testing.T) { testCancelBefore(t, newDest) })
	t.Run("CancelMidWrite", func(t *testing.T) { testCancelMidWrite(t, newDest) })
	t.Run("CloseInFlight", func(t *testing.T) { testCloseInFlight(t, newDest) })
	t.Run("Durable", func(t *testing.T) { testDurable(t, newDest) })
}

// subject is the destination under test, with the durable calls of a Deferred one.
type subject struct {
	destinations.Destination
	deferred destinations.Deferred // nil: not a Deferred destination
	tr       *tracker
}

func open(t *testing.T, newDest NewDestination) (*subject, Receiver) {
	d, r := newDest(t)
	s := &subject{Destination: d, tr: &tracker{}}
	s.deferred, _ = d.(destinations.Deferred)
	t.Cleanup(func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		d.Close(ctx) // a second Close must be harmless too
		s.tr.closed()
		s.tr.check(t)
	})
	return s, r
}

// writeCtx writes msgs with Write, or WriteDeferred for a Deferred destination.
func (s *subject) writeCtx(ctx context.Context, msgs []mapper.Message) error {
	if s.deferred == nil {
		return s.Write(ctx, msgs)
	}
	w := s.tr.start(msgs)
	err := s.deferred.WriteDeferred(ctx, msgs, w.durable)
	s.tr.returned(w, err)
	return err
}

func write(t *testing.T, s *subject, msgs []mapper.Message) error {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	return s.writeCtx(ctx, msgs)
}

// closeDest delivers what was accepted and closes: a Deferred destination is flushed
// first, and every write it accepted must then be durable.
func closeDest(t *testing.T, s *subject) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if s.deferred != nil {
		if err := s.deferred.Flush(ctx); err != nil {
			t.Fatalf("Flush: %v", err)
		}
		s.tr.checkAllDurable(t)
	}
	err := s.Close(ctx)
	s.tr.closed()
	if err != nil {
		t.Fatalf("Close: %v", err)
	}
}

// tracker records the WriteDeferred calls of a test and their durable calls.
type tracker struct {
	mu       sync.Mutex
	writes   []*tracked
	isClosed bool
	bad      []string // broken promises, reported by check
}

type tracked struct {
	tr       *tracker
	msgs     []mapper.Message
	done     bool         // WriteDeferred returned
	accepted bool         // … with nil or a *BatchError
	refused  map[int]bool // indices a *BatchError refused
	durables int
}

func (tr *tracker) start(msgs []mapper.Message) *tracked {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	w := &tracked{tr: tr, msgs: msgs, refused: map[int]bool{}}
	tr.writes = append(tr.writes, w)
	return w
}

// durable is the func given to WriteDeferred: it may run on any goroutine, before or
// after WriteDeferred returns.
func (w *tracked) durable() {
	tr := w.tr
	tr.mu.Lock()
	defer tr.mu.Unlock()
	w.durables++
	switch {
	case w.durables > 1:
		tr.bad = append(tr.bad, fmt.Sprintf("durable called %d times for a write of %d messages", w.durables, len(w.msgs)))
	case tr.isClosed:
		tr.bad = append(tr.bad, fmt.Sprintf("durable called after Close for a write of %d messages", len(w.msgs)))
	case w.done && !w.accepted:
		tr.bad = append(tr.bad, fmt.Sprintf("durable called for a write of %d messages that failed", len(w.msgs)))
	}
}

func (tr *tracker) returned(w *tracked, err error) {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	w.done = true
	var be *destinations.BatchError
	switch {
	case err == nil:
		w.accepted = true
	case errors.As(err, &be):
		w.accepted = true
		for _, f := range be.Failed {
			w.refused[f.Index] = true
		}
		if len(be.Failed) == len(w.msgs) && w.durables == 0 {
			tr.bad = append(tr.bad, fmt.Sprintf("a write of %d messages all refused returned before its durable call", len(w.msgs)))
		}
	case w.durables > 0:
		tr.bad = append(tr.bad, fmt.Sprintf("durable called for a write of %d messages that failed: %v", len(w.msgs), err))
	}
	if w.accepted && len(w.msgs) == 0 && w.durables == 0 {
		tr.bad = append(tr.bad, "an empty write returned before its durable call")
	}
}

func (tr *tracker) closed() {
	tr.mu.Lock()
	tr.isClosed = true
	tr.mu.Unlock()
}

// check reports the broken promises seen so far.
func (tr *tracker) check(t *testing.T) {
	t.Helper()
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, b := range tr.bad {
		t.Error(b)
	}
	tr.bad = nil
}

// checkAllDurable: after a Flush returned nil, every accepted write is durable.
func (tr *tracker) checkAllDurable(t *testing.T) {
	t.Helper()
	tr.check(t)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, w := range tr.writes {
		if w.accepted && w.durables != 1 {
			t.Errorf("an accepted write of %d messages had %d durable calls after Flush, want 1", len(w.msgs), w.durables)
		}
	}
}

// durableCount is how many writes had their durable call.
func (tr *tracker) durableCount() int {
	tr.mu.Lock()
	defer tr.mu.Unlock()
	n := 0
	for _, w := range tr.writes {
		if w.durables > 0 {
			n++
		}
	}
	return n
}

// checkDurableReceived: every accepted message of a write reported durable can be read
// back. Durability lasts, so checking after the call is as good as checking at it.
func (tr *tracker) checkDurableReceived(t *testing.T, r Receiver) {
	t.Helper()
	got, _ := counts(r)
	tr.mu.Lock()
	defer tr.mu.Unlock()
	for _, w := range tr.writes {
		if w.durables == 0 {
			continue
		}
		for i, m := range w.msgs {
			if !w.refused[i] && got[m.ID] == 0 {
				t.Errorf("message %s reported durable but not received", m.ID)
			}
		}
	}
}

// counts maps each received id to how many times it arrived.
func counts(r Receiver) (map[string]int, map[string][]byte) {
	c := map[string]int{}
	last := map[string][]byte{}
	for _, m := range r.Received() {
		c[m.ID]++
		last[m.ID] = m.JSON
	}
	return c, last
}

// testDeliver: concurrent Writes deliver every message exactly once, unchanged.
func testDeliver(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	const writers, per = 5, 60
	all := Messages("deliver", writers*per)
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { errs[w] = write(t, d, all[w*per:(w+1)*per]) })
	}
	wg.Wait()
	for w, err := range errs {
		if err != nil {
			t.Fatalf("Write %d: %v", w, err)
		}
	}
	d.tr.checkDurableReceived(t, r)
	closeDest(t, d)
	got, last := counts(r)
	if len(got) != len(all) {
		t.Errorf("received %d distinct messages, want %d", len(got), len(all))
	}
	for _, m := range all {
		if got[m.ID] != 1 {
			t.Errorf("message %s received %d times, want 1", m.ID, got[m.ID])
			continue
		}
		if r.Capabilities().NumbersByValue {
			CheckSameValues(t, m, last[m.ID])
		} else {
			CheckSame(t, m, last[m.ID])
		}
	}
}

// testDuplicateIDs: two messages with the same id, in one Write or in concurrent
// Writes, are both tracked and both acknowledged.
func testDuplicateIDs(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	msgs := Messages("dup", 3)
	if err := write(t, d, []mapper.Message{msgs[0], msgs[1], msgs[0]}); err != nil {
		t.Fatalf("Write with a repeated id: %v", err)
	}
	same := Messages("dupc", 20)
	var wg sync.WaitGroup
	errs := make([]error, 2)
	for i := range errs {
		wg.Go(func() { errs[i] = write(t, d, same) })
	}
	wg.Wait()
	for i, err := range errs {
		if err != nil {
			t.Fatalf("concurrent Write %d of the same messages: %v", i, err)
		}
	}
	closeDest(t, d)
	got, _ := counts(r)
	twice := 2
	if r.Capabilities().Idempotent {
		twice = 1
	}
	if got[msgs[0].ID] != twice || got[msgs[1].ID] != 1 {
		t.Errorf("repeated id received %d times (want %d), other %d times (want 1)", got[msgs[0].ID], twice, got[msgs[1].ID])
	}
	for _, m := range same {
		if got[m.ID] != twice {
			t.Errorf("message %s written twice concurrently, received %d times (want %d)", m.ID, got[m.ID], twice)
		}
	}
}

// testEmpty: an empty write is harmless (a Deferred destination calls durable at once).
func testEmpty(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	if err := write(t, d, nil); err != nil {
		t.Fatalf("Write(nil): %v", err)
	}
	closeDest(t, d)
	if n := len(r.Received()); n != 0 {
		t.Errorf("an empty Write delivered %d messages", n)
	}
}

// testPartialFailure: a receiver refusing some messages makes Write return a *BatchError
// listing exactly them; every other message arrives once.
func testPartialFailure(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	if !r.Capabilities().Refuse {
		t.Skip("receiver cannot refuse messages")
	}
	msgs := Messages("partial", 40)
	poison := []int{0, 13, 14, 39}
	for _, i := range poison {
		r.RefuseUsers(msgs[i].UserID)
	}
	err := write(t, d, msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("Write = %v, want a *BatchError", err)
	}
	var idx []int
	for _, f := range be.Failed {
		idx = append(idx, f.Index)
		if f.Err == nil || destinations.IsRetryable(f.Err) {
			t.Errorf("failure of message %d: %v, want a permanent error", f.Index, f.Err)
		}
	}
	if !slices.Equal(idx, poison) {
		t.Errorf("refused indices %v, want %v", idx, poison)
	}
	closeDest(t, d)
	got, _ := counts(r)
	for i, m := range msgs {
		want := 1
		if slices.Contains(poison, i) {
			want = 0
		}
		if got[m.ID] != want {
			t.Errorf("message %d received %d times, want %d", i, got[m.ID], want)
		}
	}
}

// testRetry: transient failures are retried until the batch is acknowledged.
func testRetry(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	if !r.Capabilities().Fail {
		t.Skip("receiver cannot fail requests")
	}
	r.FailNext(2)
	msgs := Messages("retry", 10)
	if err := write(t, d, msgs); err != nil {
		t.Fatalf("Write after 2 transient failures: %v", err)
	}
	closeDest(t, d)
	got, _ := counts(r)
	for _, m := range msgs {
		if got[m.ID] != 1 {
			t.Errorf("message %s received %d times, want 1", m.ID, got[m.ID])
		}
	}
}

// testCancelBefore: a Write with a done context fails at once and sends nothing.
func testCancelBefore(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	start := time.Now()
	err := d.writeCtx(ctx, Messages("cancelled", 10))
	if err == nil || isBatchError(err) {
		t.Fatalf("Write with a cancelled context = %v, want an error claiming nothing", err)
	}
	if !errors.Is(err, context.Canceled) {
		t.Errorf("Write with a cancelled context = %v, want it to wrap context.Canceled", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("Write with a cancelled context took %s", el)
	}
	closeDest(t, d)
	if n := len(r.Received()); n != 0 {
		t.Errorf("a cancelled Write delivered %d messages", n)
	}
}

// testCancelMidWrite: cancelling a Write whose request hangs returns promptly, claiming nothing.
func testCancelMidWrite(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	if !r.Capabilities().Stall {
		t.Skip("receiver cannot stall requests")
	}
	arrived, release := r.Stall()
	defer release()
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	done := make(chan error, 1)
	go func() { done <- d.writeCtx(ctx, Messages("midcancel", 10)) }()
	select {
	case <-arrived:
	case <-time.After(wait):
		t.Fatal("the request never reached the receiver")
	}
	cancel()
	select {
	case err := <-done:
		if err == nil || isBatchError(err) {
			t.Fatalf("cancelled Write = %v, want an error claiming nothing", err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write did not return within 5s of its context being cancelled")
	}
}

// testCloseInFlight: Close while Writes are in flight; every Write returns, and what was
// acknowledged arrived.
func testCloseInFlight(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	const writers, per = 4, 50
	release := func() {}
	var arrived <-chan struct{}
	if r.Capabilities().Stall {
		arrived, release = r.Stall()
	}
	defer release()
	results := make(chan writeResult, writers)
	for w := range writers {
		msgs := Messages(fmt.Sprintf("inflight%d", w), per)
		go func() {
			ctx, cancel := context.WithTimeout(context.Background(), wait)
			defer cancel()
			results <- writeResult{msgs, d.writeCtx(ctx, msgs)}
		}()
	}
	if arrived != nil {
		select {
		case <-arrived:
		case <-time.After(wait):
			t.Fatal("no request reached the receiver")
		}
	}
	closed := make(chan error, 1)
	durableAtClose := make(chan int, 1)
	go func() {
		ctx, cancel := context.WithTimeout(context.Background(), wait)
		defer cancel()
		err := d.Close(ctx)
		d.tr.closed()
		durableAtClose <- d.tr.durableCount()
		closed <- err
	}()
	release()
	var acked []writeResult
	for range writers {
		select {
		case res := <-results:
			acked = append(acked, res)
		case <-time.After(wait + 5*time.Second):
			t.Fatal("a Write did not return after Close")
		}
	}
	select {
	case err := <-closed:
		if err != nil {
			t.Logf("Close with work in flight: %v", err)
		}
	case <-time.After(wait + 5*time.Second):
		t.Fatal("Close did not return")
	}
	if d.deferred != nil {
		// Acknowledged means durable for a Deferred destination: what Close aborted
		// never gets its durable call (checked by the tracker), what was durable arrived.
		if n, final := <-durableAtClose, d.tr.durableCount(); n != final {
			t.Errorf("%d writes durable when Close returned, %d later", n, final)
		}
		d.tr.checkDurableReceived(t, r)
		return
	}
	got, _ := counts(r)
	for _, res := range acked {
		refused := map[int]bool{}
		var be *destinations.BatchError
		switch {
		case res.err == nil:
		case errors.As(res.err, &be):
			for _, f := range be.Failed {
				refused[f.Index] = true
			}
		default:
			continue // nothing claimed
		}
		for i, m := range res.msgs {
			if !refused[i] && got[m.ID] == 0 {
				t.Errorf("message %s acknowledged but never received", m.ID)
			}
		}
	}
}

type writeResult struct {
	msgs []mapper.Message
	err  error
}

func isBatchError(err error) bool {
	var be *destinations.BatchError
	return errors.As(err, &be)
}

// testDurable (Deferred destinations): writes of many sizes, one at a time. After each,
// what is reported durable can be read back; Flush makes every accepted write durable,
// exactly once; Close without Flush aborts the rest, whose durable is never called; and
// a write after Close fails without a durable call.
func testDurable(t *testing.T, newDest NewDestination) {
	d, r := open(t, newDest)
	if d.deferred == nil {
		t.Skip("not a Deferred destination")
	}
	all := Messages("durable", 400)
	sizes := []int{1, 30, 69, 2, 140, 7, 70, 5, 1}
	next := 0
	for _, n := range sizes {
		if err := write(t, d, all[next:next+n]); err != nil {
			t.Fatalf("WriteDeferred of %d messages: %v", n, err)
		}
		next += n
		d.tr.check(t)
		d.tr.checkDurableReceived(t, r)
	}
	ctx, cancel := context.WithTimeout(context.Background(), wait)
	defer cancel()
	if err := d.deferred.Flush(ctx); err != nil {
		t.Fatalf("Flush: %v", err)
	}
	d.tr.checkAllDurable(t)
	if err := d.deferred.Flush(ctx); err != nil {
		t.Fatalf("a second Flush: %v", err)
	}
	flushed := next
	got, _ := counts(r)
	for _, m := range all[:flushed] {
		if got[m.ID] != 1 {
			t.Errorf("message %s received %d times after Flush, want 1", m.ID, got[m.ID])
		}
	}

	// Left unflushed: Close may abort them, and then their durable never comes.
	for _, n := range []int{3, 11} {
		if err := write(t, d, all[next:next+n]); err != nil {
			t.Fatalf("WriteDeferred of %d messages: %v", n, err)
		}
		next += n
	}
	err := d.Close(ctx)
	d.tr.closed()
	t.Logf("Close without Flush: %v", err)
	d.tr.checkDurableReceived(t, r)
	if err := write(t, d, all[next:next+1]); err == nil || isBatchError(err) {
		t.Errorf("WriteDeferred after Close = %v, want an error claiming nothing", err)
	}
	d.tr.check(t) // a durable call after Close is one of the broken promises
}
