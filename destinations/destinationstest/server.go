package destinationstest

import (
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"math/rand/v2"
	"net/http"
	"net/http/httptest"
	"slices"
	"sync"
	"testing"
	"time"
)

// MaxBatchBytes is Segment's limit on one batch request (500 KB).
const MaxBatchBytes = 500_000

// SegmentServerOptions configure a SegmentServer. Every fault is decided per request by a
// PRNG seeded with Seed, so a run's mix of faults is reproducible (up to the order in
// which concurrent requests arrive).
type SegmentServerOptions struct {
	// WriteKey is the basic-auth user every request must carry (with an empty password);
	// "" accepts requests without authentication (a webhook receiver).
	WriteKey string
	// Headers must all be present with these values; otherwise the answer is 401.
	Headers map[string]string
	// Path is where batches are posted; default "/v1/batch".
	Path string

	Seed    uint64
	Fail500 float64 // fraction of requests answered 500
	Fail429 float64 // fraction answered 429 with a Retry-After header
	Drop    float64 // fraction whose connection is closed without an answer
	// RetryAfter is the Retry-After value of 429 answers; default "1" (second). Clients
	// cap it by their max_backoff, which keeps tests fast.
	RetryAfter string
	// Delay holds every request this long before answering (a slow endpoint).
	Delay time.Duration
	// PoisonUsers: a batch holding a message of one of these userIds is answered 400.
	PoisonUsers []string
	// MaxBodyBytes is the largest batch accepted (after gzip decoding); a larger one fails
	// the test and is answered 413. Default MaxBatchBytes.
	MaxBodyBytes int
	// CountOnly keeps counts but not message bodies (benchmarks).
	CountOnly bool
}

// Batch is one request the server answered.
type Batch struct {
	IDs    []string // messageIds, in order
	Bytes  int      // body size after gzip decoding
	Gzip   bool     // the body was gzip-encoded
	Status int      // the answer; 0 for a dropped connection
}

// SegmentServer is a Segment-compatible HTTP API (POST /v1/batch) on 127.0.0.1 that
// records every message it accepts. It also serves webhook tests: the webhook body has
// the same {"batch":[…]} shape. It implements Receiver.
type SegmentServer struct {
	URL string

	t    testing.TB
	opts SegmentServerOptions
	srv  *httptest.Server

	mu       sync.Mutex
	rnd      *rand.Rand
	received []Received
	counts   map[string]int
	batches  []Batch
	failNext int
	poison   map[string]bool
	stall    *stall
	answered chan struct{} // closed and replaced whenever a request is answered
}

type stall struct {
	arrived     chan struct{}
	arrivedOnce sync.Once
	release     chan struct{}
	releaseOnce sync.Once
}

// NewSegmentServer starts a server for the test; it stops when the test ends.
func NewSegmentServer(t testing.TB, opts SegmentServerOptions) *SegmentServer {
	t.Helper()
	if opts.Path == "" {
		opts.Path = "/v1/batch"
	}
	if opts.RetryAfter == "" {
		opts.RetryAfter = "1"
	}
	if opts.MaxBodyBytes == 0 {
		opts.MaxBodyBytes = MaxBatchBytes
	}
	s := &SegmentServer{
		t:        t,
		opts:     opts,
		rnd:      rand.New(rand.NewPCG(opts.Seed, opts.Seed^0x5eed)),
		counts:   map[string]int{},
		poison:   map[string]bool{},
		answered: make(chan struct{}),
	}
	for _, u := range opts.PoisonUsers {
		s.poison[u] = true
	}
	s.srv = httptest.NewServer(http.HandlerFunc(s.handle))
	s.URL = s.srv.URL
	t.Cleanup(s.srv.Close)
	// Registered after Close, so it runs first: held requests must end before Close waits for them.
	t.Cleanup(s.releaseStall)
	return s
}

// Close stops the server: later requests fail to connect.
func (s *SegmentServer) Close() {
	s.releaseStall()
	s.srv.Close()
}

func (s *SegmentServer) handle(w http.ResponseWriter, r *http.Request) {
	status, ids, size := s.serve(w, r)
	s.mu.Lock()
	s.batches = append(s.batches, Batch{IDs: ids, Bytes: size, Gzip: r.Header.Get("Content-Encoding") == "gzip", Status: status})
	close(s.answered)
	s.answered = make(chan struct{})
	s.mu.Unlock()
}

// WaitBatches waits until the server has answered at least n requests, or ctx is done.
func (s *SegmentServer) WaitBatches(ctx context.Context, n int) error {
	for {
		s.mu.Lock()
		got, ch := len(s.batches), s.answered
		s.mu.Unlock()
		if got >= n {
			return nil
		}
		select {
		case <-ch:
		case <-ctx.Done():
			return fmt.Errorf("%d requests answered, waiting for %d: %w", got, n, ctx.Err())
		}
	}
}

// serve answers one request and returns its status (0: dropped), its messageIds and its size.
func (s *SegmentServer) serve(w http.ResponseWriter, r *http.Request) (int, []string, int) {
	if r.URL.Path != s.opts.Path {
		return answer(w, http.StatusNotFound, "no such path"), nil, 0
	}
	if r.Method != http.MethodPost {
		return answer(w, http.StatusMethodNotAllowed, "POST only"), nil, 0
	}
	if s.opts.WriteKey != "" {
		user, pass, ok := r.BasicAuth()
		if !ok || user != s.opts.WriteKey || pass != "" {
			return answer(w, http.StatusUnauthorized, "invalid write key"), nil, 0
		}
	}
	for k, v := range s.opts.Headers {
		if r.Header.Get(k) != v {
			return answer(w, http.StatusUnauthorized, "missing header "+k), nil, 0
		}
	}
	var body io.Reader = r.Body
	if r.Header.Get("Content-Encoding") == "gzip" {
		zr, err := gzip.NewReader(r.Body)
		if err != nil {
			return answer(w, http.StatusBadRequest, "bad gzip"), nil, 0
		}
		body = zr
	}
	b, err := io.ReadAll(io.LimitReader(body, int64(s.opts.MaxBodyBytes)*4))
	if err != nil {
		return answer(w, http.StatusBadRequest, "reading body: "+err.Error()), nil, 0
	}
	if len(b) > s.opts.MaxBodyBytes {
		s.t.Errorf("SegmentServer: a batch of %d bytes, over the %d-byte limit", len(b), s.opts.MaxBodyBytes)
		return answer(w, http.StatusRequestEntityTooLarge, "batch too large"), nil, len(b)
	}
	if ct := r.Header.Get("Content-Type"); ct != "application/json" {
		return answer(w, http.StatusBadRequest, "content type "+ct), nil, len(b)
	}
	var env struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if err := json.Unmarshal(b, &env); err != nil {
		return answer(w, http.StatusBadRequest, "bad JSON: "+err.Error()), nil, len(b)
	}
	ids := make([]string, len(env.Batch))
	users := make([]string, len(env.Batch))
	for i, raw := range env.Batch {
		if ids[i], users[i], err = idAndUser(raw); err != nil || ids[i] == "" {
			return answer(w, http.StatusBadRequest, fmt.Sprintf("message %d: no messageId", i)), ids, len(b)
		}
	}
	if len(env.Batch) == 0 {
		return answer(w, http.StatusOK, `{"success":true}`), nil, len(b)
	}

	if st := s.currentStall(); st != nil {
		st.arrivedOnce.Do(func() { close(st.arrived) })
		select {
		case <-st.release:
		case <-r.Context().Done():
			return 0, ids, len(b)
		}
	}
	if s.opts.Delay > 0 {
		t := time.NewTimer(s.opts.Delay)
		select {
		case <-t.C:
		case <-r.Context().Done():
			t.Stop()
			return 0, ids, len(b)
		}
	}

	s.mu.Lock()
	fault := 0
	if s.failNext > 0 {
		s.failNext--
		fault = http.StatusInternalServerError
	} else if p := s.rnd.Float64(); p < s.opts.Fail500 {
		fault = http.StatusInternalServerError
	} else if p < s.opts.Fail500+s.opts.Fail429 {
		fault = http.StatusTooManyRequests
	} else if p < s.opts.Fail500+s.opts.Fail429+s.opts.Drop {
		fault = -1
	}
	poisoned := slices.ContainsFunc(users, func(u string) bool { return s.poison[u] })
	if fault == 0 && !poisoned {
		for i, raw := range env.Batch {
			s.counts[ids[i]]++
			rec := Received{ID: ids[i], UserID: users[i]}
			if !s.opts.CountOnly {
				rec.JSON = slices.Clone(raw)
				s.received = append(s.received, rec)
			}
		}
	}
	s.mu.Unlock()

	switch {
	case fault == -1:
		hj, ok := w.(http.Hijacker)
		if !ok {
			return answer(w, http.StatusInternalServerError, "cannot hijack"), ids, len(b)
		}
		conn, _, err := hj.Hijack()
		if err == nil {
			conn.Close()
		}
		return 0, ids, len(b)
	case fault == http.StatusTooManyRequests:
		w.Header().Set("Retry-After", s.opts.RetryAfter)
		return answer(w, fault, "slow down"), ids, len(b)
	case fault != 0:
		return answer(w, fault, "injected failure"), ids, len(b)
	case poisoned:
		return answer(w, http.StatusBadRequest, "poisoned message in batch"), ids, len(b)
	}
	return answer(w, http.StatusOK, `{"success":true}`), ids, len(b)
}

func answer(w http.ResponseWriter, status int, body string) int {
	w.Header().Set("Content-Type", "application/json")
	w.WriteHeader(status)
	if status == http.StatusOK {
		io.WriteString(w, body)
	} else {
		fmt.Fprintf(w, `{"error":%q}`, body)
	}
	return status
}

// Received returns every message accepted so far, in arrival order, duplicates included.
func (s *SegmentServer) Received() []Received {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.received)
}

// Count returns how many times the message id was accepted.
func (s *SegmentServer) Count(id string) int {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.counts[id]
}

// Counts returns how many times each message id was accepted.
func (s *SegmentServer) Counts() map[string]int {
	s.mu.Lock()
	defer s.mu.Unlock()
	out := make(map[string]int, len(s.counts))
	for k, v := range s.counts {
		out[k] = v
	}
	return out
}

// Batches returns every request answered so far, faults included.
func (s *SegmentServer) Batches() []Batch {
	s.mu.Lock()
	defer s.mu.Unlock()
	return slices.Clone(s.batches)
}

// Capabilities: the server can refuse, fail and stall.
func (s *SegmentServer) Capabilities() Capabilities {
	return Capabilities{Refuse: true, Fail: true, Stall: true}
}

// RefuseUsers answers 400 to every later batch holding a message of one of these users.
func (s *SegmentServer) RefuseUsers(userIDs ...string) {
	s.mu.Lock()
	defer s.mu.Unlock()
	for _, u := range userIDs {
		s.poison[u] = true
	}
}

// FailNext answers 500 to the next n requests that carry messages.
func (s *SegmentServer) FailNext(n int) {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.failNext += n
}

// Stall holds every later request carrying messages until release is called (or the
// client gives up); arrived is closed when the first one is held.
func (s *SegmentServer) Stall() (arrived <-chan struct{}, release func()) {
	st := &stall{arrived: make(chan struct{}), release: make(chan struct{})}
	s.mu.Lock()
	s.stall = st
	s.mu.Unlock()
	return st.arrived, func() {
		s.mu.Lock()
		if s.stall == st {
			s.stall = nil
		}
		s.mu.Unlock()
		st.releaseOnce.Do(func() { close(st.release) })
	}
}

func (s *SegmentServer) currentStall() *stall {
	s.mu.Lock()
	defer s.mu.Unlock()
	return s.stall
}

func (s *SegmentServer) releaseStall() {
	s.mu.Lock()
	st := s.stall
	s.stall = nil
	s.mu.Unlock()
	if st != nil {
		st.releaseOnce.Do(func() { close(st.release) })
	}
}
