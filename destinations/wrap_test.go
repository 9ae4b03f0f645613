package destinations

import (
	"context"
	"errors"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/mapper"
)

// scripted is an adapter whose answers a test scripts; it records every call.
type scripted struct {
	mu    sync.Mutex
	calls [][]string // the ids of each call's messages
	fn    func(ctx context.Context, call int, msgs []mapper.Message) error
}

func (s *scripted) Write(ctx context.Context, msgs []mapper.Message) error {
	s.mu.Lock()
	call := len(s.calls)
	ids := make([]string, len(msgs))
	for i := range msgs {
		ids[i] = msgs[i].ID
	}
	s.calls = append(s.calls, ids)
	s.mu.Unlock()
	return s.fn(ctx, call, msgs)
}

func (s *scripted) Close(context.Context) error { return nil }

func (s *scripted) count() int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return len(s.calls)
}

func msgs(n int) []mapper.Message {
	out := make([]mapper.Message, n)
	for i := range out {
		out[i] = mapper.Message{ID: fmt.Sprintf("m%03d", i), UserID: fmt.Sprintf("u%d", i), JSON: []byte(`{}`)}
	}
	return out
}

func cfg(attempts int, backoff time.Duration) config.Destination {
	return config.Destination{Type: "test", Name: "test", Retry: config.Retry{MaxAttempts: attempts, MaxBackoff: backoff}, Timeout: 5 * time.Second}
}

var errTransient = errors.New("transient")

func TestRetryCounts(t *testing.T) {
	for _, tc := range []struct {
		name      string
		failures  int // transient failures before success
		attempts  int
		wantCalls int
		wantErr   bool
	}{
		{"first try", 0, 4, 1, false},
		{"two failures", 2, 4, 3, false},
		{"last attempt", 3, 4, 4, false},
		{"exhausted", 10, 4, 4, true},
		{"one attempt", 10, 1, 1, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			d := &scripted{fn: func(_ context.Context, call int, _ []mapper.Message) error {
				if call < tc.failures {
					return &RetryableError{Err: fmt.Errorf("attempt %d: %w", call+1, errTransient)}
				}
				return nil
			}}
			err := Wrap(d, cfg(tc.attempts, time.Millisecond), nil).Write(context.Background(), msgs(3))
			if got := d.count(); got != tc.wantCalls {
				t.Errorf("%d calls, want %d", got, tc.wantCalls)
			}
			if (err != nil) != tc.wantErr {
				t.Fatalf("Write = %v, want error %v", err, tc.wantErr)
			}
			if tc.wantErr {
				want := fmt.Sprintf("attempt %d: transient", tc.wantCalls)
				if err.Error() != want || !IsRetryable(err) {
					t.Errorf("Write = %q, want the last error %q, retryable", err, want)
				}
			}
		})
	}
}

func TestNoRetryOfPermanentOrPlainErrors(t *testing.T) {
	for _, e := range []error{
		errors.New("plain"),
		&PermanentError{Err: errors.New("unauthorized"), Status: 401},
		&BatchError{Failed: []Failure{{Index: 0, Err: errors.New("no")}}},
		context.Canceled,
	} {
		d := &scripted{fn: func(context.Context, int, []mapper.Message) error { return e }}
		err := Wrap(d, cfg(5, time.Millisecond), nil).Write(context.Background(), msgs(1))
		var be *BatchError
		same := errors.Is(err, e) || (errors.As(e, &be) && errors.As(err, &be) && be.Failed[0].Index == 0)
		if d.count() != 1 || !same {
			t.Errorf("error %v: %d calls, Write = %v; want 1 call and the error", e, d.count(), err)
		}
	}
}

// fakeClock records the waits a policy asks for instead of sleeping.
type fakeClock struct {
	mu    sync.Mutex
	waits []time.Duration
}

func (c *fakeClock) sleep(ctx context.Context, d time.Duration) error {
	c.mu.Lock()
	c.waits = append(c.waits, d)
	c.mu.Unlock()
	return ctx.Err()
}

func TestRetryAfterHonouredFakeClock(t *testing.T) {
	afters := []time.Duration{2 * time.Second, 0, time.Hour}
	d := &scripted{fn: func(_ context.Context, call int, _ []mapper.Message) error {
		if call < len(afters) {
			return &RetryableError{Err: errTransient, After: afters[call]}
		}
		return nil
	}}
	clock := &fakeClock{}
	p := Policy{MaxAttempts: 5, MaxBackoff: 30 * time.Second, Sleep: clock.sleep, Rand: func() float64 { return 0.5 }}
	l := &retryLayer{next: d, policy: p, log: discard(), name: "test"}
	if err := l.Write(context.Background(), msgs(1)); err != nil {
		t.Fatal(err)
	}
	// 2s asked: 2s (over the jittered 50ms); none asked: jitter 0.5 × 200ms; an hour asked:
	// capped at max_backoff.
	want := []time.Duration{2 * time.Second, 100 * time.Millisecond, 30 * time.Second}
	if !slices.Equal(clock.waits, want) {
		t.Errorf("waits %v, want %v", clock.waits, want)
	}
}

func TestRetryAfterHonouredRealTime(t *testing.T) {
	const after = 60 * time.Millisecond
	d := &scripted{fn: func(_ context.Context, call int, _ []mapper.Message) error {
		if call < 2 {
			return &RetryableError{Err: errTransient, After: after}
		}
		return nil
	}}
	start := time.Now()
	if err := Wrap(d, cfg(3, time.Second), nil).Write(context.Background(), msgs(1)); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 2*after {
		t.Errorf("two retries asked to wait %s each took %s in all", after, el)
	}
}

func TestBackoffFullJitterBounds(t *testing.T) {
	p := Policy{MaxBackoff: time.Second}
	for attempt := 1; attempt < 100; attempt++ {
		ceiling := min(time.Second, BaseBackoff<<min(attempt-1, 20))
		for _, r := range []float64{0, 0.5, 0.999999} {
			p.Rand = func() float64 { return r }
			got := p.Backoff(attempt, 0)
			if want := time.Duration(r * float64(ceiling)); got != want {
				t.Fatalf("attempt %d rand %v: backoff %s, want %s", attempt, r, got, want)
			}
		}
	}
	p.Rand = func() float64 { return 0 }
	if got := p.Backoff(3, 5*time.Second); got != time.Second {
		t.Errorf("Retry-After 5s with max_backoff 1s waits %s, want 1s", got)
	}
}

func TestNoRetryOnceContextDone(t *testing.T) {
	ctx, cancel := context.WithCancel(context.Background())
	d := &scripted{fn: func(context.Context, int, []mapper.Message) error {
		cancel() // the caller gives up while the attempt fails
		return &RetryableError{Err: errTransient, After: 10 * time.Second}
	}}
	start := time.Now()
	err := Wrap(d, cfg(5, time.Minute), nil).Write(ctx, msgs(1))
	if d.count() != 1 {
		t.Errorf("%d attempts after the context was cancelled, want 1", d.count())
	}
	if !errors.Is(err, context.Canceled) || !errors.Is(err, errTransient) {
		t.Errorf("Write = %v, want the last error and context.Canceled", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("Write took %s after cancellation", el)
	}

	// Cancelled during the backoff wait.
	ctx, cancel = context.WithCancel(context.Background())
	defer cancel()
	d = &scripted{fn: func(context.Context, int, []mapper.Message) error {
		return &RetryableError{Err: errTransient, After: 10 * time.Second}
	}}
	done := make(chan error, 1)
	go func() { done <- Wrap(d, cfg(5, time.Minute), nil).Write(ctx, msgs(1)) }()
	for d.count() == 0 {
		time.Sleep(time.Millisecond) // polling for the first call, not racing it
	}
	cancel()
	select {
	case err := <-done:
		if d.count() != 1 || !errors.Is(err, context.Canceled) {
			t.Errorf("%d calls, Write = %v; want 1 call and context.Canceled", d.count(), err)
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write kept waiting its backoff after cancellation")
	}
}

// poisoned refuses (400) any batch holding a poison user, and records accepted ids.
func poisoned(poison map[string]bool, accepted map[string]int, mu *sync.Mutex) func(context.Context, int, []mapper.Message) error {
	return func(_ context.Context, _ int, msgs []mapper.Message) error {
		for _, m := range msgs {
			if poison[m.UserID] {
				return &PermanentError{Err: errors.New("HTTP 400 Bad Request"), Status: 400}
			}
		}
		mu.Lock()
		for _, m := range msgs {
			accepted[m.ID]++
		}
		mu.Unlock()
		return nil
	}
}

func TestSplitIsolatesPoison(t *testing.T) {
	for _, tc := range []struct {
		n      int
		poison []int
	}{
		{1, nil}, {1, []int{0}},
		{2, []int{0}}, {2, []int{1}}, {2, []int{0, 1}},
		{7, []int{0}}, {7, []int{3}}, {7, []int{6}}, {7, []int{1, 5}}, {7, []int{0, 1, 2, 3, 4, 5, 6}},
		{100, []int{0}}, {100, []int{49, 50}}, {100, []int{99}}, {100, []int{7, 33, 34, 61, 98}},
	} {
		t.Run(fmt.Sprintf("%d-%v", tc.n, tc.poison), func(t *testing.T) {
			batch := msgs(tc.n)
			poison := map[string]bool{}
			for _, i := range tc.poison {
				poison[batch[i].UserID] = true
			}
			var mu sync.Mutex
			accepted := map[string]int{}
			d := &scripted{fn: poisoned(poison, accepted, &mu)}
			err := Wrap(d, cfg(3, time.Millisecond), nil).Write(context.Background(), batch)
			if len(tc.poison) == 0 {
				if err != nil {
					t.Fatalf("Write = %v", err)
				}
			} else {
				var be *BatchError
				if !errors.As(err, &be) {
					t.Fatalf("Write = %v, want *BatchError", err)
				}
				var idx []int
				for _, f := range be.Failed {
					idx = append(idx, f.Index)
					var pe *PermanentError
					if !errors.As(f.Err, &pe) || pe.Status != 400 {
						t.Errorf("failure %d: %v, want the 400", f.Index, f.Err)
					}
				}
				if !slices.Equal(idx, tc.poison) {
					t.Errorf("refused %v, want %v", idx, tc.poison)
				}
			}
			for i, m := range batch {
				want := 1
				if slices.Contains(tc.poison, i) {
					want = 0
				}
				if accepted[m.ID] != want {
					t.Errorf("message %d accepted %d times, want %d", i, accepted[m.ID], want)
				}
			}
			// One poison message costs at most 2·ceil(log2 n)+1 writes.
			if len(tc.poison) == 1 {
				bound := 1
				for k := 1; k < tc.n; k *= 2 {
					bound += 2
				}
				if d.count() > bound {
					t.Errorf("%d writes to isolate one message among %d, want at most %d", d.count(), tc.n, bound)
				}
			}
		})
	}
}

func TestSplitDoesNotSplitAuthRefusals(t *testing.T) {
	d := &scripted{fn: func(context.Context, int, []mapper.Message) error {
		return &PermanentError{Err: errors.New("HTTP 401 Unauthorized"), Status: 401}
	}}
	err := Wrap(d, cfg(3, time.Millisecond), nil).Write(context.Background(), msgs(8))
	var pe *PermanentError
	if !errors.As(err, &pe) || pe.Status != 401 || isBatchError(err) || d.count() != 1 {
		t.Errorf("Write = %v after %d calls, want the 401 after 1 call", err, d.count())
	}
}

// An auth refusal of a half (the first answer was a 400, then the credentials stopped
// working) says nothing about its messages: the whole Write fails, nothing is refused.
func TestSplitAuthRefusalOfAHalfFailsTheWrite(t *testing.T) {
	for _, status := range []int{401, 403, 407} {
		d := &scripted{fn: func(_ context.Context, call int, m []mapper.Message) error {
			if call == 0 {
				return &PermanentError{Err: errors.New("HTTP 400 Bad Request"), Status: 400}
			}
			return &PermanentError{Err: fmt.Errorf("HTTP %d", status), Status: status}
		}}
		err := Wrap(d, cfg(1, time.Millisecond), nil).Write(context.Background(), msgs(8))
		var pe *PermanentError
		if !errors.As(err, &pe) || pe.Status != status || isBatchError(err) || d.count() != 2 {
			t.Errorf("status %d on a half: Write = %v, want the %d itself (no message refused)", status, err, status)
		}
	}
}

// Once the run begins to stop, a failed request is not tried again.
func TestRetryEndsWhenTheRunStops(t *testing.T) {
	stop := make(chan struct{})
	d := &scripted{fn: func(_ context.Context, call int, m []mapper.Message) error {
		if call == 1 {
			close(stop)
		}
		return &RetryableError{Err: errors.New("HTTP 503")}
	}}
	c := cfg(10, time.Millisecond)
	w := wrap(d, c, nil, stop)
	err := w.Write(context.Background(), msgs(3))
	if err == nil || !IsRetryable(err) || d.count() != 2 {
		t.Fatalf("Write = %v after %d calls; want the 503 after 2 calls (the stop came during the second)", err, d.count())
	}
}

func TestSplitRetriesTransientFailuresOfHalves(t *testing.T) {
	batch := msgs(10)
	var mu sync.Mutex
	accepted := map[string]int{}
	refuse := poisoned(map[string]bool{batch[8].UserID: true}, accepted, &mu)
	d := &scripted{fn: func(ctx context.Context, call int, m []mapper.Message) error {
		if call%2 == 1 { // every other call fails transiently
			return &RetryableError{Err: errTransient}
		}
		return refuse(ctx, call, m)
	}}
	err := Wrap(d, cfg(3, time.Millisecond), nil).Write(context.Background(), batch)
	var be *BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 8 {
		t.Fatalf("Write = %v, want message 8 refused", err)
	}
	if len(accepted) != 9 {
		t.Errorf("%d messages accepted, want 9", len(accepted))
	}
}

func TestChunkKeepsBatchSizeAndMapsIndices(t *testing.T) {
	batch := msgs(35)
	var mu sync.Mutex
	accepted := map[string]int{}
	d := &scripted{fn: poisoned(map[string]bool{batch[3].UserID: true, batch[27].UserID: true}, accepted, &mu)}
	c := cfg(3, time.Millisecond)
	c.BatchSize = 10
	err := Wrap(d, c, nil).Write(context.Background(), batch)
	var be *BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 3 || be.Failed[1].Index != 27 {
		t.Fatalf("Write = %v, want messages 3 and 27 refused", err)
	}
	for _, call := range d.calls {
		if len(call) > 10 {
			t.Errorf("a write of %d messages, over batch_size 10", len(call))
		}
	}
	if len(accepted) != 33 {
		t.Errorf("%d accepted, want 33", len(accepted))
	}
}

func TestTimeoutPerAttempt(t *testing.T) {
	d := &scripted{fn: func(ctx context.Context, _ int, _ []mapper.Message) error {
		<-ctx.Done() // a request that hangs
		return ctx.Err()
	}}
	c := cfg(2, time.Millisecond)
	c.Timeout = 40 * time.Millisecond
	start := time.Now()
	err := Wrap(d, c, nil).Write(context.Background(), msgs(1))
	if d.count() != 2 || !IsRetryable(err) || !errors.Is(err, context.DeadlineExceeded) {
		t.Errorf("%d calls, Write = %v; want 2 timed-out attempts", d.count(), err)
	}
	if el := time.Since(start); el < 80*time.Millisecond {
		t.Errorf("two attempts of 40ms took %s", el)
	}
}

func TestRateLimit(t *testing.T) {
	d := &scripted{fn: func(context.Context, int, []mapper.Message) error { return nil }}
	c := cfg(1, time.Millisecond)
	c.RateLimit = 20 // one every 50ms
	w := Wrap(d, c, nil)
	start := time.Now()
	for range 5 {
		if err := w.Write(context.Background(), msgs(1)); err != nil {
			t.Fatal(err)
		}
	}
	if el := time.Since(start); el < 190*time.Millisecond {
		t.Errorf("5 writes at 20/s took %s, want at least 200ms", el)
	}
}

type checkerDest struct{ scripted }

func (*checkerDest) Check(context.Context) error { return errors.New("checked") }

type managing struct{ scripted }

func (*managing) ManagesRequests() {}

func TestWrapKeepsOptionalInterfaces(t *testing.T) {
	w := Wrap(&scripted{}, cfg(1, time.Millisecond), nil)
	if _, ok := w.(Checker); ok {
		t.Error("a plain adapter became a Checker")
	}
	if _, ok := w.(Deferred); ok {
		t.Error("a plain adapter became Deferred")
	}
	w = Wrap(&checkerDest{}, cfg(1, time.Millisecond), nil)
	if c, ok := w.(Checker); !ok || c.Check(context.Background()).Error() != "checked" {
		t.Error("Check did not reach the adapter")
	}
	if _, ok := w.(Deferred); ok {
		t.Error("a Checker became Deferred")
	}
	if u, ok := w.(interface{ Unwrap() Destination }); !ok || u.Unwrap() == nil {
		t.Error("no Unwrap")
	}
	m := &managing{}
	if Wrap(m, cfg(1, time.Millisecond), nil) != Destination(m) {
		t.Error("a RequestManager was wrapped")
	}
}

// Method sets to compose adapters with any combination of the optional interfaces.
type (
	checks struct{}
	defers struct{ calls *[]int } // the length of each WriteDeferred's batch
)

func (checks) Check(context.Context) error { return errors.New("checked") }
func (d defers) WriteDeferred(_ context.Context, msgs []mapper.Message, durable func()) error {
	*d.calls = append(*d.calls, len(msgs))
	durable()
	return errors.New("deferred")
}
func (defers) Flush(context.Context) error { return errors.New("flushed") }
func (defers) DurableUnit() int            { return 0 }

// TestWrapKeepsEveryCombination: each optional interface the adapter implements, and
// only those, is visible through the wrapper and reaches the adapter; WriteDeferred
// bypasses the layers (no chunking to batch_size, no retry).
func TestWrapKeepsEveryCombination(t *testing.T) {
	var calls []int
	s := &scripted{fn: func(context.Context, int, []mapper.Message) error { return nil }}
	d := defers{&calls}
	for _, tc := range []struct {
		name                 string
		adapter              Destination
		check, writeDeferred bool
	}{
		{"plain", s, false, false},
		{"check", &struct {
			*scripted
			checks
		}{s, checks{}}, true, false},
		{"deferred", &struct {
			*scripted
			defers
		}{s, d}, false, true},
		{"check+deferred", &struct {
			*scripted
			checks
			defers
		}{s, checks{}, d}, true, true},
	} {
		t.Run(tc.name, func(t *testing.T) {
			c := cfg(3, time.Millisecond)
			c.BatchSize = 1
			w := Wrap(tc.adapter, c, nil)
			if u, ok := w.(interface{ Unwrap() Destination }); !ok || u.Unwrap() != tc.adapter {
				t.Error("Unwrap does not return the adapter")
			}
			ch, ok := w.(Checker)
			if ok != tc.check || ok && ch.Check(context.Background()).Error() != "checked" {
				t.Errorf("Checker visible %t, want %t, or Check did not reach the adapter", ok, tc.check)
			}
			de, ok := w.(Deferred)
			if ok != tc.writeDeferred {
				t.Fatalf("Deferred visible %t, want %t", ok, tc.writeDeferred)
			}
			if !ok {
				return
			}
			calls = calls[:0]
			durable := 0
			err := de.WriteDeferred(context.Background(), msgs(3), func() { durable++ })
			if err == nil || err.Error() != "deferred" || durable != 1 {
				t.Errorf("WriteDeferred = %v with %d durable calls, want the adapter's error and 1", err, durable)
			}
			if !slices.Equal(calls, []int{3}) {
				t.Errorf("the adapter's WriteDeferred calls had %v messages, want one call of 3 (no chunking, no retry)", calls)
			}
			if err := de.Flush(context.Background()); err == nil || err.Error() != "flushed" {
				t.Errorf("Flush = %v, want the adapter's", err)
			}
		})
	}
}
