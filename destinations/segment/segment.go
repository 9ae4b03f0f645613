// Package segment is the Segment destination: messages go to Segment's HTTP tracking API
// (or any Segment-compatible one: RudderStack, Jitsu, …) through analytics-go v3, the
// official client.
//
// analytics-go is asynchronous: Enqueue only queues. A message counts as acknowledged
// when analytics-go's Success callback reports it, never when Enqueue returns, so Write
// enqueues its batch and waits for the callback of every message (matched by messageId).
// A transport of ours under analytics-go (see transport) retries, rate-limits, times out
// and bisects refused batches per HTTP request, since analytics-go mixes the messages of
// concurrent Writes into one request; destinations.Wrap therefore adds no layer here.
//
// Sample config:
//
//	destinations:
//	  - type: segment
//	    write_key: ${SEGMENT_WRITE_KEY}
//	    endpoint: https://api.segment.io   # default; any Segment-compatible API
//	    batch_size: 1000                   # messages per request (and at most 500 KB)
//	    max_in_flight: 4                   # concurrent requests
//	    rate_limit: 50                     # requests per second; 0: unlimited
//	    timeout: 30s                       # one request
//	    retry: { max_attempts: 8, max_backoff: 30s }
package segment

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"log/slog"
	"net/http"
	"net/url"
	"slices"
	"strings"
	"sync"
	"time"

	"github.com/segmentio/analytics-go/v3"
	"golang.org/x/time/rate"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination    = (*Segment)(nil)
	_ destinations.Checker        = (*Segment)(nil)
	_ destinations.RequestManager = (*Segment)(nil)
)

// MaxMessageBytes is Segment's limit on one message, as analytics-go enforces it.
const MaxMessageBytes = 32_000

// flushInterval is how long analytics-go holds a batch that is not full before sending
// it. Write waits for its messages' callbacks, so a Write whose tail shares a batch that
// does not fill up waits this long; analytics-go's default (5s) would throttle every Write.
const flushInterval = 10 * time.Millisecond

const defaultBatchSize = 1000

// Segment delivers messages through one analytics-go client.
type Segment struct {
	client     analytics.Client
	tr         *transport
	base       *http.Transport
	endpoint   string
	writeKey   string
	cancelLife context.CancelFunc

	// mu orders Enqueue before Close: Writes enqueue under the read lock, Close takes the
	// write lock to stop them first (analytics-go panics, recovered, on a closed queue).
	mu     sync.RWMutex
	closed bool
	// enqueueMu keeps the messages of one Write contiguous in analytics-go's queue, so that
	// a Write of batch_size messages becomes one request of its own: interleaved, every
	// Write would wait for requests shared with the others, and concurrent Writes would
	// proceed in lockstep instead of overlapping. (analytics-go's single queue consumer is
	// the bottleneck anyway: holding the lock while enqueueing costs no throughput.)
	enqueueMu sync.Mutex

	// pending holds, per messageId, the messages enqueued and waiting for their callback,
	// oldest first. Several copies of one id may wait (the same content in two Writes, or
	// twice in one); a callback settles the oldest.
	pmu     sync.Mutex
	pending map[string]*slot
}

// slot is one enqueued message of a Write.
type slot struct {
	id     string
	w      *write
	index  int
	next   *slot
	queued bool // in pending
	// json is the message as the mapper encoded it, in the caller's buffer: the transport
	// copies it, under pmu, while the slot is queued (the Write is waiting, so the buffer
	// is untouched); stamp, when not zero, is the timestamp to add (it has none).
	json  []byte
	stamp time.Time
}

// appendMessages appends to dst, for every id, the message a Write is waiting for under
// that id (the oldest copy), and returns how many ids no Write waits for any more (their
// Write gave up: they are left out, and their callbacks will find no slot).
func (s *Segment) appendMessages(dst []byte, ids [][]byte, out []json.RawMessage) ([]byte, []json.RawMessage, int) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	size := len(dst)
	for _, id := range ids {
		if sl := s.pending[string(id)]; sl != nil {
			size += len(sl.json) + stampBytes
		}
	}
	dst = slices.Grow(dst, size-len(dst))
	missing := 0
	for _, id := range ids {
		sl := s.pending[string(id)]
		if sl == nil {
			missing++
			continue
		}
		start := len(dst)
		if sl.stamp.IsZero() {
			dst = append(dst, sl.json...)
		} else {
			dst = appendStamped(dst, sl.json, sl.stamp)
		}
		out = append(out, dst[start:len(dst):len(dst)])
	}
	return dst, out, missing
}

// write is the state of one Write call.
type write struct {
	mu        sync.Mutex
	remaining int
	failed    []destinations.Failure
	err       error                        // the first failure other than a message refusal
	refused   *destinations.PermanentError // a refusal of the request itself (401, 403)
	done      chan struct{}
}

// Type is the segment destination's type name in the configuration.
const Type = "segment"

// DefaultEndpoint is Segment's own tracking API.
const DefaultEndpoint = "https://api.segment.io"

// Options are the segment destination's own configuration keys.
type Options struct {
	WriteKey string `mapstructure:"write_key"` // secret
	// Endpoint is the Segment-compatible API (default DefaultEndpoint).
	Endpoint string `mapstructure:"endpoint"`
}

// Prepare defaults the endpoint and checks both keys.
func (o *Options) Prepare(c *config.OptionsCheck) {
	if o.Endpoint == "" {
		o.Endpoint = DefaultEndpoint
	}
	c.Required("write_key", Type, o.WriteKey)
	c.HTTPURL("endpoint", o.Endpoint)
}

// Secrets is the write key.
func (o *Options) Secrets() []string { return []string{o.WriteKey} }

// Kind is the segment destination's kind: 4 requests in flight, 1,000 messages each
// (requests are cut at 500 KB too).
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: defaultBatchSize, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// New is the segment destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	return newSegment(cfg, env, flushInterval)
}

// newSegment is New with analytics-go's flush interval as a parameter, for tests.
func newSegment(cfg config.Destination, env destinations.Env, interval time.Duration) (*Segment, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.WriteKey == "" {
		return nil, errors.New("write_key is required")
	}
	endpoint := strings.TrimRight(o.Endpoint, "/")
	if endpoint == "" {
		endpoint = DefaultEndpoint
	}
	if u, err := url.Parse(endpoint); err != nil || (u.Scheme != "http" && u.Scheme != "https") || u.Host == "" {
		return nil, fmt.Errorf("endpoint %s: want an http(s) URL", destinations.RedactURL(endpoint))
	}
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	batchSize := cfg.BatchSize
	if batchSize <= 0 {
		batchSize = defaultBatchSize
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = config.DefaultTimeout
	}

	base := http.DefaultTransport.(*http.Transport).Clone()
	base.MaxIdleConnsPerHost = max(cfg.MaxInFlight, 4)
	life, cancel := context.WithCancel(context.Background())
	policy := destinations.NewPolicy(cfg.Retry)
	policy.Stop = env.Stop
	s := &Segment{pending: map[string]*slot{}}
	tr := &transport{
		base:     base,
		policy:   policy,
		timeout:  timeout,
		maxBytes: MaxBatchBytes,
		life:     life,
		verdicts: &verdicts{},
		log:      logger,
		messages: s.appendMessages,
	}
	if cfg.RateLimit > 0 {
		tr.limiter = rate.NewLimiter(rate.Limit(cfg.RateLimit), 1)
	}
	if cfg.MaxInFlight > 0 {
		tr.slots = make(chan struct{}, cfg.MaxInFlight)
	}
	s.tr, s.base, s.endpoint, s.writeKey, s.cancelLife = tr, base, endpoint, o.WriteKey, cancel
	client, err := analytics.NewWithConfig(o.WriteKey, analytics.Config{
		Endpoint:  endpoint,
		Interval:  interval,
		BatchSize: batchSize,
		Transport: tr,
		Logger:    logAdapter{logger},
		Callback:  callback{s},
		// analytics-go overwrites the library of this context with its own; ours is set
		// on every message.
		DefaultContext: &analytics.Context{},
		// Used only if the transport fails to read a batch (it answers everything else).
		RetryAfter: func(i int) time.Duration { return policy.Backoff(i+1, 0) },
	})
	if err != nil {
		cancel()
		return nil, fmt.Errorf("creating the analytics-go client: %w", err)
	}
	s.client = client
	return s, nil
}

// ManagesRequests tells destinations.Wrap that retries, rate limits, timeouts and splitting
// happen per request, in the transport.
func (s *Segment) ManagesRequests() {}

// Write enqueues msgs and waits until analytics-go has reported on each of them. It
// returns nil when every message was accepted, a *destinations.BatchError listing the
// messages refused for good (a 400 or 413 isolated by bisection, a message over 32 KB,
// a message analytics-go finds invalid), a *destinations.PermanentError when Segment
// refused the requests themselves (401, 403: the write key), and otherwise an error
// claiming nothing (retries exhausted, ctx done, the destination closed).
func (s *Segment) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	w := &write{remaining: len(msgs), done: make(chan struct{})}
	standIns := make([]analytics.Message, len(msgs))
	slots := make([]slot, len(msgs))
	var now time.Time
	for i := range msgs {
		m, size, stamped, err := standIn(&msgs[i])
		if err == nil && size > MaxMessageBytes {
			err = fmt.Errorf("it is over Segment's %d-byte limit (%d bytes)", MaxMessageBytes, size)
		}
		if err != nil {
			w.settle(i, &destinations.PermanentError{Err: fmt.Errorf("message %s: %w", msgs[i].ID, err)})
			continue
		}
		standIns[i] = m
		slots[i].json = msgs[i].JSON
		if stamped {
			if now.IsZero() {
				now = time.Now()
			}
			slots[i].stamp = now
		}
	}

	s.mu.RLock()
	if s.closed {
		s.mu.RUnlock()
		return destinations.ErrClosed
	}
	s.register(w, slots, standIns, msgs)
	s.enqueueMu.Lock()
	for i, m := range standIns {
		if m == nil {
			continue
		}
		if ctx.Err() != nil {
			break // the select below gives up
		}
		if err := s.client.Enqueue(m); err != nil {
			if s.unregister(slots[i : i+1]) {
				w.settle(i, fmt.Errorf("enqueueing message %s: %w", msgs[i].ID, err))
			}
		}
	}
	s.enqueueMu.Unlock()
	s.mu.RUnlock()

	select {
	case <-w.done:
		return w.result(len(msgs))
	case <-ctx.Done():
		// Messages already enqueued may still be delivered; none is claimed.
		s.unregister(slots)
		return fmt.Errorf("segment: %d messages not acknowledged: %w", len(msgs), context.Cause(ctx))
	}
}

func (s *Segment) register(w *write, slots []slot, standIns []analytics.Message, msgs []mapper.Message) {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	for i, m := range standIns {
		if m == nil {
			continue
		}
		sl := &slots[i]
		sl.id, sl.w, sl.index, sl.queued = msgs[i].ID, w, i, true
		head, ok := s.pending[sl.id]
		if !ok {
			s.pending[sl.id] = sl
			continue
		}
		for head.next != nil {
			head = head.next
		}
		head.next = sl
	}
}

// unregister removes the slots still waiting; it reports whether it removed any.
func (s *Segment) unregister(slots []slot) bool {
	s.pmu.Lock()
	defer s.pmu.Unlock()
	removed := false
	for i := range slots {
		sl := &slots[i]
		if !sl.queued {
			continue
		}
		sl.queued, removed = false, true
		head := s.pending[sl.id]
		if head == sl {
			if sl.next == nil {
				delete(s.pending, sl.id)
			} else {
				s.pending[sl.id] = sl.next
			}
			continue
		}
		for p := head; p != nil; p = p.next {
			if p.next == sl {
				p.next = sl.next
				break
			}
		}
	}
	return removed
}

// settle hands the outcome of one copy of message id to the oldest Write waiting for it.
func (s *Segment) settle(id string, err error) {
	s.pmu.Lock()
	sl := s.pending[id]
	if sl == nil {
		s.pmu.Unlock()
		return // its Write gave up (ctx done)
	}
	if sl.next == nil {
		delete(s.pending, id)
	} else {
		s.pending[id] = sl.next
	}
	sl.queued = false
	s.pmu.Unlock()
	sl.w.settle(sl.index, err)
}

func (w *write) settle(i int, err error) {
	w.mu.Lock()
	defer w.mu.Unlock()
	if err != nil {
		var pe *destinations.PermanentError
		switch {
		case !errors.As(err, &pe):
			if w.err == nil {
				w.err = err
			}
		case destinations.Splittable(pe):
			w.failed = append(w.failed, destinations.Failure{Index: i, Err: err})
		case w.refused == nil:
			w.refused = pe
		}
	}
	w.remaining--
	if w.remaining == 0 {
		close(w.done)
	}
}

func (w *write) result(n int) error {
	w.mu.Lock()
	defer w.mu.Unlock()
	switch {
	case w.err != nil:
		return fmt.Errorf("segment: %d messages not acknowledged: %w", n, w.err)
	case w.refused != nil:
		return w.refused
	case len(w.failed) > 0:
		failed := slices.Clone(w.failed)
		slices.SortFunc(failed, func(a, b destinations.Failure) int { return a.Index - b.Index })
		return &destinations.BatchError{Failed: failed}
	}
	return nil
}

// callback receives analytics-go's acknowledgements.
type callback struct{ s *Segment }

// Success: analytics-go got a 2xx for the message's batch — from our transport, which
// answers 2xx for every batch and records the messages it could not deliver as verdicts.
func (c callback) Success(m analytics.Message) {
	id := messageID(m)
	c.s.settle(id, c.s.tr.verdicts.take(id))
}

// Failure: analytics-go gave up on the message before or instead of sending it.
func (c callback) Failure(m analytics.Message, err error) {
	c.s.settle(messageID(m), classify(m, err))
}

// classify turns an analytics-go failure into a permanent refusal of the message or a
// retryable error.
func classify(m analytics.Message, err error) error {
	id := messageID(m)
	var marshal *json.MarshalerError
	var unsupported *json.UnsupportedValueError
	switch {
	case errors.Is(err, analytics.ErrMessageTooBig):
		return &destinations.PermanentError{Err: fmt.Errorf("message %s is over Segment's %d-byte limit", id, MaxMessageBytes)}
	case errors.As(err, &marshal), errors.As(err, &unsupported):
		return &destinations.PermanentError{Err: fmt.Errorf("message %s cannot be encoded: %w", id, err)}
	}
	return &destinations.RetryableError{Err: fmt.Errorf("message %s: analytics-go: %w", id, err)}
}

// Close flushes analytics-go and waits for every callback. When ctx ends first, requests
// in flight are abandoned: their messages are reported as not acknowledged to the Writes
// waiting for them, and Close returns an error.
func (s *Segment) Close(ctx context.Context) error {
	s.mu.Lock()
	if s.closed {
		s.mu.Unlock()
		return nil
	}
	s.closed = true
	s.mu.Unlock()

	done := make(chan error, 1)
	go func() { done <- s.client.Close() }()
	var err error
	select {
	case err = <-done:
	case <-ctx.Done():
		s.cancelLife() // the transport gives up at once; analytics-go then finishes
		err = errors.Join(fmt.Errorf("segment: closed before every message was acknowledged: %w", context.Cause(ctx)), <-done)
	}
	s.cancelLife()
	s.base.CloseIdleConnections()
	return err
}

// Check verifies that a write key is set and that the endpoint answers, by posting an
// empty batch (no data): a connection error or a refused write key (401, 403) is an
// error, any other answer means reachable.
func (s *Segment) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, s.endpoint+"/v1/batch", bytes.NewReader([]byte(`{"batch":[]}`)))
	if err != nil {
		return fmt.Errorf("checking %s: %w", destinations.RedactURL(s.endpoint), err)
	}
	req.SetBasicAuth(s.writeKey, "")
	req.Header.Set("Content-Type", "application/json")
	resp, err := (&http.Client{Transport: s.base}).Do(req)
	if err != nil {
		return fmt.Errorf("cannot reach %s: %w", destinations.RedactURL(s.endpoint), destinations.RedactError(err))
	}
	resp.Body.Close()
	if resp.StatusCode == http.StatusUnauthorized || resp.StatusCode == http.StatusForbidden {
		return fmt.Errorf("%s refused the write key (HTTP %d)", destinations.RedactURL(s.endpoint), resp.StatusCode)
	}
	return nil
}

// logAdapter sends analytics-go's log lines to slog at debug level: every failure it logs
// also reaches a Write as an error, and its lines may quote whole messages.
type logAdapter struct{ log *slog.Logger }

func (l logAdapter) Logf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("analytics-go: " + fmt.Sprintf(format, args...))
	}
}

func (l logAdapter) Errorf(format string, args ...any) {
	if l.log.Enabled(context.Background(), slog.LevelDebug) {
		l.log.Debug("analytics-go error: " + fmt.Sprintf(format, args...))
	}
}
