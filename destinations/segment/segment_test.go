package segment_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"net"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/mapper"
)

const writeKey = "wk_test"

func cfgFor(endpoint string) config.Destination {
	return config.Destination{
		Type: segment.Type, Name: "segment", Options: &segment.Options{WriteKey: writeKey, Endpoint: endpoint},
		BatchSize: 100, MaxInFlight: 4,
		Retry: config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, segment.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
		return build(t, cfgFor(srv.URL)), srv
	})
}

// TestFaults: 30% 500s, 10% 429s, dropped connections and a slow endpoint: every message
// arrives at least once and Write reports it acknowledged, but for the poison rows,
// answered 400, which end as *BatchError failures exactly for them. Half the messages are
// large, so that batches of 100 would exceed Segment's 500 KB limit, which the server
// enforces (TestBatchesFillUpTo500KB checks that the limit is reached, not just kept).
func TestFaults(t *testing.T) {
	msgs := destinationstest.Messages("faults", 1000)
	large := destinationstest.LargeMessages("faults-large", 500, 9000)
	for i := range large {
		msgs[i*2] = large[i] // every other message is large: 100 of them exceed 500 KB
	}
	poison := map[int]bool{0: true, 7: true, 500: true, 501: true, 999: true}
	var users []string
	for i := range poison {
		users = append(users, msgs[i].UserID)
	}
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		WriteKey: writeKey, Seed: 7, Fail500: 0.3, Fail429: 0.1, Drop: 0.05,
		Delay: 2 * time.Millisecond, PoisonUsers: users,
	})
	cfg := cfgFor(srv.URL)
	cfg.Retry.MaxAttempts = 20
	d := build(t, cfg)

	// max_in_flight 4: four writers take batches of 100 in turn.
	next := make(chan int)
	go func() {
		for start := 0; start < len(msgs); start += 100 {
			next <- start
		}
		close(next)
	}()
	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := map[int]bool{}
	for range 4 {
		wg.Go(func() {
			for start := range next {
				err := d.Write(context.Background(), msgs[start:start+100])
				var be *destinations.BatchError
				if err != nil && !errors.As(err, &be) {
					t.Errorf("Write of messages %d…: %v", start, err)
					continue
				}
				if be != nil {
					mu.Lock()
					for _, f := range be.Failed {
						refused[start+f.Index] = true
					}
					mu.Unlock()
				}
			}
		})
	}
	wg.Wait()
	counts := srv.Counts()
	for i, m := range msgs {
		if poison[i] != refused[i] {
			t.Errorf("message %d: refused %v, want %v", i, refused[i], poison[i])
		}
		if !poison[i] && counts[m.ID] < 1 {
			t.Errorf("message %d acknowledged but never received", i)
		}
		if poison[i] && counts[m.ID] != 0 {
			t.Errorf("poison message %d received", i)
		}
	}
	statuses := map[int]int{}
	var largest int
	for _, b := range srv.Batches() {
		statuses[b.Status]++
		largest = max(largest, b.Bytes) // the server fails the test over 500 KB
	}
	if statuses[500] == 0 || statuses[429] == 0 || statuses[0] == 0 || statuses[400] == 0 {
		t.Errorf("faults not all injected: %v", statuses)
	}
	t.Logf("%d requests by status %v, largest %d bytes", len(srv.Batches()), statuses, largest)
}

// TestPoisonIsNotRetried: a 400 is never retried (analytics-go would retry it 10 times).
func TestPoisonIsNotRetried(t *testing.T) {
	msgs := destinationstest.Messages("poison", 1)
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		WriteKey: writeKey, PoisonUsers: []string{msgs[0].UserID}})
	err := build(t, cfgFor(srv.URL)).Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 0 {
		t.Fatalf("Write = %v, want message 0 refused", err)
	}
	var pe *destinations.PermanentError
	if !errors.As(be.Failed[0].Err, &pe) || pe.Status != 400 {
		t.Errorf("refusal %v, want the 400", be.Failed[0].Err)
	}
	if n := len(srv.Batches()); n != 1 {
		t.Errorf("%d requests for a message refused with 400, want 1", n)
	}
}

func TestMessageOver32KBIsRefused(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	msgs := destinationstest.Messages("size", 5)
	big := destinationstest.LargeMessages("size-big", 1, 40_000)[0]
	msgs[2] = big
	err := build(t, cfgFor(srv.URL)).Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 2 || destinations.IsRetryable(be.Failed[0].Err) {
		t.Fatalf("Write = %v, want message 2 refused for good", err)
	}
	if !strings.Contains(be.Failed[0].Err.Error(), "32000") {
		t.Errorf("refusal %q does not name the limit", be.Failed[0].Err)
	}
	for i, m := range msgs {
		if want := map[bool]int{true: 0, false: 1}[i == 2]; srv.Count(m.ID) != want {
			t.Errorf("message %d received %d times, want %d", i, srv.Count(m.ID), want)
		}
	}
}

func TestInvalidMessagesAreRefused(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	ok := destinationstest.Messages("valid", 1)[0]
	noEvent := destinationstest.NewMessage("track", "no-event", "u1", `{}`, "")
	noEvent.Event = ""
	badType := destinationstest.NewMessage("page", "page", "u1", `{}`, "")
	badTS := destinationstest.NewMessage("identify", "bad-ts", "u1", `{}`, "yesterday")
	badBody := destinationstest.NewMessage("identify", "bad-body", "u1", `{"a":}`, "")
	noUser := destinationstest.NewMessage("identify", "no-user", "", `{}`, "")
	msgs := []mapper.Message{noEvent, ok, badType, badTS, badBody, noUser}
	err := build(t, cfgFor(srv.URL)).Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) {
		t.Fatalf("Write = %v, want a *BatchError", err)
	}
	var idx []int
	for _, f := range be.Failed {
		idx = append(idx, f.Index)
		if destinations.IsRetryable(f.Err) {
			t.Errorf("message %d: retryable %v", f.Index, f.Err)
		}
	}
	if !slices.Equal(idx, []int{0, 2, 3, 4, 5}) {
		t.Errorf("refused %v (%v)", idx, be)
	}
	if srv.Count(ok.ID) != 1 {
		t.Errorf("the valid message was received %d times", srv.Count(ok.ID))
	}
}

// TestMessagesAreSentAsMapped: each message reaches the server as the mapper encoded it,
// byte for byte, with the context (library backflow and its version) the mapper wrote;
// a message without a timestamp gets the time it was written, as analytics-go gave it.
func TestMessagesAreSentAsMapped(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	msgs := destinationstest.Messages("lib", 3)
	noTS := destinationstest.NewMessage("identify", "lib-no-ts", "u1", `{"a":1}`, "")
	msgs = append(msgs, noTS)
	before := time.Now().UTC().Truncate(time.Microsecond)
	if err := build(t, cfgFor(srv.URL)).Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	sent := map[string][]byte{}
	for _, m := range msgs {
		sent[m.ID] = m.JSON
	}
	got := srv.Received()
	if len(got) != len(msgs) {
		t.Fatalf("%d messages received, want %d", len(got), len(msgs))
	}
	for _, r := range got {
		var m struct {
			Timestamp string
			Context   struct {
				Library struct{ Name, Version string }
			}
		}
		if err := json.Unmarshal(r.JSON, &m); err != nil || m.Context.Library.Name != "backflow" || m.Context.Library.Version != "test" {
			t.Errorf("message %s context %+v (%v)", r.ID, m.Context, err)
		}
		if r.ID != noTS.ID {
			if !bytes.Equal(r.JSON, sent[r.ID]) {
				t.Errorf("message %s received as\n%s\nwant\n%s", r.ID, r.JSON, sent[r.ID])
			}
			continue
		}
		ts, err := time.Parse(time.RFC3339Nano, m.Timestamp)
		if err != nil || ts.Before(before) || ts.After(time.Now()) {
			t.Errorf("message without a timestamp got %q (%v)", m.Timestamp, err)
		}
		destinationstest.CheckSame(t, noTS, r.JSON)
	}
}

func TestWrongWriteKey(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: "another"})
	d := build(t, cfgFor(srv.URL))
	err := d.Write(context.Background(), destinationstest.Messages("key", 10))
	var pe *destinations.PermanentError
	var be *destinations.BatchError
	if !errors.As(err, &pe) || pe.Status != 401 || errors.As(err, &be) {
		t.Errorf("Write = %v, want the 401 for the whole batch", err)
	}
	if err := d.(destinations.Checker).Check(context.Background()); err == nil || !strings.Contains(err.Error(), "write key") {
		t.Errorf("Check = %v, want the write key refused", err)
	}
	if strings.Contains(err.Error(), writeKey) {
		t.Errorf("error shows the write key: %v", err)
	}
}

func TestCheck(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	d := build(t, cfgFor(srv.URL))
	if err := d.(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("Check: %v", err)
	}
	if len(srv.Received()) != 0 {
		t.Error("Check sent messages")
	}
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	d = build(t, cfgFor("http://"+addr))
	if err := d.(destinations.Checker).Check(context.Background()); err == nil {
		t.Error("Check of a closed port succeeded")
	}
	noKey := cfgFor(srv.URL)
	noKey.Options = &segment.Options{Endpoint: srv.URL}
	if _, err := segment.New(context.Background(), noKey, destinations.Env{}); err == nil {
		t.Error("New without a write key succeeded")
	}
	badURL := cfgFor("ftp://x")
	if _, err := segment.New(context.Background(), badURL, destinations.Env{}); err == nil {
		t.Error("New with an ftp endpoint succeeded")
	}
}

func TestRetryAfterIsHonoured(t *testing.T) {
	var mu sync.Mutex
	var calls []time.Time
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(calls)
		calls = append(calls, time.Now())
		mu.Unlock()
		if n < 2 {
			w.Header().Set("Retry-After", "1")
			w.WriteHeader(http.StatusTooManyRequests)
		}
	}))
	defer srv.Close()
	cfg := cfgFor(srv.URL)
	cfg.Retry.MaxBackoff = 150 * time.Millisecond // caps Retry-After: 1
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("ra", 1)); err != nil {
		t.Fatal(err)
	}
	mu.Lock()
	defer mu.Unlock()
	if len(calls) != 3 {
		t.Fatalf("%d calls, want 3", len(calls))
	}
	for i := 1; i < 3; i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < 150*time.Millisecond {
			t.Errorf("retry %d came %s after a 429 with Retry-After, want at least the capped 150ms", i, gap)
		}
	}
}

// TestExhaustedRetriesClaimNothing: a receiver that keeps failing makes Write fail with a
// retryable error, not a silent success.
func TestExhaustedRetriesClaimNothing(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey, Fail500: 1})
	cfg := cfgFor(srv.URL)
	cfg.Retry.MaxAttempts = 3
	err := build(t, cfg).Write(context.Background(), destinationstest.Messages("down", 5))
	var be *destinations.BatchError
	if err == nil || errors.As(err, &be) || !destinations.IsRetryable(err) {
		t.Errorf("Write = %v, want a retryable error", err)
	}
	if n := len(srv.Batches()); n != 3 {
		t.Errorf("%d requests, want 3 attempts", n)
	}
}

// TestCloseGivesUpOnStalledRequests: Close bounded by its context abandons a hanging
// request; the Write waiting for it fails rather than claiming its messages.
func TestCloseGivesUpOnStalledRequests(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	arrived, release := srv.Stall()
	defer release()
	d := build(t, cfgFor(srv.URL))
	done := make(chan error, 1)
	go func() { done <- d.Write(context.Background(), destinationstest.Messages("stalled", 5)) }()
	<-arrived
	ctx, cancel := context.WithTimeout(context.Background(), 100*time.Millisecond)
	defer cancel()
	start := time.Now()
	if err := d.Close(ctx); err == nil {
		t.Error("Close gave up on a request but returned nil")
	}
	if el := time.Since(start); el > 3*time.Second {
		t.Errorf("Close took %s with a 100ms context", el)
	}
	select {
	case err := <-done:
		if err == nil {
			t.Error("the Write whose request was abandoned returned nil")
		}
	case <-time.After(5 * time.Second):
		t.Fatal("Write did not return after Close")
	}
}
