package segment

import (
	"bytes"
	"context"
	"encoding/json"
	"net/http"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// TestOversizeBatchIsSplitBeforeSending lowers the batch limit below what analytics-go
// assembles, so the transport must split batches before sending them.
func TestOversizeBatchIsSplitBeforeSending(t *testing.T) {
	const limit = 20_000
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: "k", MaxBodyBytes: limit})
	d, err := New(context.Background(), config.Destination{
		Options: &Options{WriteKey: "k", Endpoint: srv.URL}, BatchSize: 100,
		Retry: config.Retry{MaxAttempts: 3, MaxBackoff: 10 * time.Millisecond}, Timeout: 5 * time.Second,
	}, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	s := d.(*Segment)
	s.tr.maxBytes = limit
	defer s.Close(context.Background())
	msgs := destinationstest.LargeMessages("split", 100, 1000)
	if err := s.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	for _, m := range msgs {
		if srv.Count(m.ID) != 1 {
			t.Errorf("message %s received %d times", m.ID, srv.Count(m.ID))
		}
	}
	if n := len(srv.Batches()); n < 6 {
		t.Errorf("%d requests for ~110 KB under a 20 KB limit", n)
	}
}

func TestVerdictsCountCopies(t *testing.T) {
	var v verdicts
	v.add("a", errTest("1"))
	v.add("a", errTest("2"))
	if v.take("b") != nil || v.take("a").Error() != "1" || v.take("a").Error() != "2" || v.take("a") != nil {
		t.Error("verdicts are not taken one per copy, oldest first")
	}
	if len(v.m) != 0 {
		t.Errorf("%d ids left behind", len(v.m))
	}
}

type errTest string

func (e errTest) Error() string { return string(e) }

// TestBatchesFillUpTo500KB: with a flush interval long enough that only the size limits
// cut batches, analytics-go's batches of large messages come close to Segment's 500 KB
// limit and never exceed it (the server fails the test over it).
func TestBatchesFillUpTo500KB(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: "k"})
	s, err := newSegment(config.Destination{
		Options: &Options{WriteKey: "k", Endpoint: srv.URL}, BatchSize: 100,
		Retry: config.Retry{MaxAttempts: 3, MaxBackoff: 10 * time.Millisecond}, Timeout: 5 * time.Second,
	}, destinations.Env{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	// About 53 messages of 9.4 KB fill a batch: 200 make 3 full batches, sent at once,
	// and a rest that waits for Close (the flush interval is an hour).
	msgs := destinationstest.LargeMessages("fill", 200, 9000)
	errs := make(chan error, 1)
	go func() { errs <- s.Write(context.Background(), msgs) }()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	if err := srv.WaitBatches(ctx, 3); err != nil {
		t.Fatal(err)
	}
	if err := s.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := <-errs; err != nil {
		t.Fatal(err)
	}
	var largest int
	for _, b := range srv.Batches() {
		largest = max(largest, b.Bytes)
	}
	if largest < 450_000 {
		t.Errorf("largest batch %d bytes, want close to 500 KB", largest)
	}
	for _, m := range msgs {
		if srv.Count(m.ID) != 1 {
			t.Errorf("message %s received %d times", m.ID, srv.Count(m.ID))
		}
	}
}

// TestAnalyticsClientTimeoutDoesNotCancelAttempts: analytics-go's http.Client gives up on a
// request after 10s by closing its Cancel channel (and ending its context); the transport's
// attempts, retries included, must not inherit either.
func TestAnalyticsClientTimeoutDoesNotCancelAttempts(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: "k"})
	srv.FailNext(1)
	d, err := newSegment(config.Destination{
		Options: &Options{WriteKey: "k", Endpoint: srv.URL},
		Retry:   config.Retry{MaxAttempts: 3, MaxBackoff: 10 * time.Millisecond}, Timeout: 5 * time.Second,
	}, destinations.Env{}, time.Hour)
	if err != nil {
		t.Fatal(err)
	}
	defer d.Close(context.Background())
	d.tr.messages = nil // the body below is sent as it is, not as stand-ins
	msgs := destinationstest.Messages("timeout", 2)
	body := []byte(`{"messageId":"b","batch":[` + string(compact(t, msgs[0].JSON)) + `]}`)
	cancelled := make(chan struct{})
	close(cancelled)
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	req, _ := http.NewRequestWithContext(ctx, http.MethodPost, srv.URL+"/v1/batch", bytes.NewReader(body))
	req.Cancel = cancelled
	req.SetBasicAuth("k", "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := d.tr.RoundTrip(req)
	if err != nil || resp.StatusCode != 200 {
		t.Fatalf("RoundTrip = %v, %v", resp, err)
	}
	if err := d.tr.verdicts.take(msgs[0].ID); err != nil {
		t.Errorf("the message failed: %v", err)
	}
	if srv.Count(msgs[0].ID) != 1 {
		t.Errorf("message received %d times, want 1 (after one injected 500)", srv.Count(msgs[0].ID))
	}
}

func compact(t *testing.T, b []byte) []byte {
	var buf bytes.Buffer
	if err := json.Compact(&buf, b); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}
