package segment

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net/http"
	"net/url"
	"sync"
	"sync/atomic"
	"time"

	"golang.org/x/time/rate"

	"github.com/backflowhq/backflow/destinations"
)

// transport is the http.RoundTripper analytics-go sends its batches through. analytics-go
// would retry every failure, 400 included, up to 10 times with its own backoff, ignore
// Retry-After, and abandon (Failure callback) whatever is still being retried when it is
// closed. So the transport takes over the request entirely:
//
//   - analytics-go's batch holds stand-ins (see standIn): the transport reads their
//     messageIds and sends, in their place, the messages the Writes waiting for them
//     hold, as the mapper encoded them (see Segment.appendMessages);
//   - each attempt waits for the rate limiter and a max_in_flight slot, and has its own
//     timeout; retryable failures are retried with the destination's Policy (full-jitter
//     backoff, Retry-After honoured, capped by max_backoff);
//   - a batch refused with a non-retryable status (400, 413, …) is bisected and the halves
//     re-sent until the refused messages are isolated; a batch over MaxBatchBytes is split
//     before it is sent;
//   - it always answers analytics-go 200, so analytics-go never retries nor abandons a
//     batch; the messages that were not accepted are recorded in verdicts, and the
//     Success callback that follows turns into a failure for each of them.
//
// Its requests run under life, not under the request's context nor its Cancel channel:
// analytics-go's http.Client has a fixed 10s timeout, shorter than a request plus its
// retries may take.
// An answer given after that timeout still reaches analytics-go (net/http hands over a
// response the RoundTripper returned), and life ends only when Close gives up.
type transport struct {
	base         http.RoundTripper
	policy       destinations.Policy
	timeout      time.Duration
	limiter      *rate.Limiter // nil: unlimited
	slots        chan struct{} // max_in_flight; nil: unlimited
	nonRetryable []int
	maxBytes     int
	life         context.Context
	verdicts     *verdicts
	log          *slog.Logger
	// messages appends the messages that the stand-ins of a batch stand for (see
	// Segment.appendMessages); nil: analytics-go's messages are sent as they are.
	messages func(dst []byte, ids [][]byte, out []json.RawMessage) ([]byte, []json.RawMessage, int)
}

// MaxBatchBytes is Segment's limit on one batch request.
const MaxBatchBytes = 500_000

func (t *transport) RoundTrip(req *http.Request) (*http.Response, error) {
	body, err := readBody(req)
	if err != nil {
		return nil, fmt.Errorf("reading the batch: %w", err)
	}
	var b *batch
	if t.messages != nil {
		b, err = t.replace(body)
	} else {
		b, err = parseBatch(body)
	}
	if err != nil {
		// Cannot happen with analytics-go's own encoding. An error makes analytics-go
		// report a Failure for every message of the batch: nothing is lost silently.
		return nil, err
	}
	// Batches of at most maxBytes, filled in order: analytics-go counts the stand-ins'
	// bytes, not the messages', so one of its batches may make several requests.
	for msgs := b.Batch; len(msgs) > 0; {
		n, size := 1, b.size(msgs[:1])
		for n < len(msgs) && size+len(msgs[n])+1 <= t.maxBytes {
			size += len(msgs[n]) + 1
			n++
		}
		t.deliver(req, b, msgs[:n])
		msgs = msgs[n:]
	}
	return accepted(req), nil
}

// replace reads analytics-go's batch of stand-ins (see standIn) and returns it with the
// messages they stand for, as the mapper encoded them, in their place.
func (t *transport) replace(body []byte) (*batch, error) {
	var b batch
	var ids [][]byte
	_, err := eachMember(body, 0, func(key []byte, start, end int) error {
		switch string(key) {
		case "messageId":
			b.MessageID = json.RawMessage(body[start:end])
		case "sentAt":
			b.SentAt = json.RawMessage(body[start:end])
		case "context":
			b.Context = json.RawMessage(body[start:end])
		case "batch":
			return eachElement(body, start, func(start, end int) error {
				var id []byte
				_, err := eachMember(body[:end], start, func(key []byte, start, end int) error {
					if string(key) == "messageId" {
						var err error
						id, err = stringValue(body[start:end])
						return err
					}
					return nil
				})
				if err == nil && id == nil {
					err = errors.New("a message without messageId")
				}
				ids = append(ids, id)
				return err
			})
		}
		return nil
	})
	if err != nil {
		return nil, fmt.Errorf("reading analytics-go's batch: %w", err)
	}
	_, b.Batch, _ = t.messages(nil, ids, make([]json.RawMessage, 0, len(ids)))
	return &b, nil
}

// readBody reads and closes req's body, in one allocation when its length is known
// (analytics-go always sets it).
func readBody(req *http.Request) ([]byte, error) {
	defer req.Body.Close()
	if n := req.ContentLength; n > 0 && n <= 16*MaxBatchBytes {
		body := make([]byte, n)
		if _, err := io.ReadFull(req.Body, body); err != nil {
			return nil, err
		}
		return body, nil
	}
	return io.ReadAll(req.Body)
}

// deliver sends msgs (a part of batch b), splitting it while it is too large or refused
// for good, and records a verdict for every message that was not accepted.
func (t *transport) deliver(req *http.Request, b *batch, msgs []json.RawMessage) {
	if len(msgs) == 0 {
		return
	}
	body := b.encode(msgs)
	if len(body) > t.maxBytes && len(msgs) > 1 {
		half := len(msgs) / 2
		t.deliver(req, b, msgs[:half])
		t.deliver(req, b, msgs[half:])
		return
	}
	err := t.send(req, body)
	if err == nil {
		return
	}
	var pe *destinations.PermanentError
	if errors.As(err, &pe) && destinations.Splittable(pe) && len(msgs) > 1 {
		half := len(msgs) / 2
		t.deliver(req, b, msgs[:half])
		t.deliver(req, b, msgs[half:])
		return
	}
	for _, m := range msgs {
		t.verdicts.add(rawID(m), err)
	}
}

// send posts body, retrying retryable failures with the policy.
func (t *transport) send(req *http.Request, body []byte) error {
	p := t.policy
	p.OnRetry = func(attempt int, err error, wait time.Duration) {
		t.log.Debug("retrying a segment batch", "attempt", attempt, "wait", wait, "error", err)
	}
	return p.Do(t.life, func(ctx context.Context) error { return t.attempt(ctx, req, body) })
}

func (t *transport) attempt(ctx context.Context, req *http.Request, body []byte) error {
	if t.limiter != nil {
		if err := t.limiter.Wait(ctx); err != nil {
			return fmt.Errorf("waiting for the rate limit: %w", err)
		}
	}
	if t.slots != nil {
		select {
		case t.slots <- struct{}{}:
			defer func() { <-t.slots }()
		case <-ctx.Done():
			return ctx.Err()
		}
	}
	actx, cancel := context.WithTimeout(ctx, t.timeout)
	defer cancel()
	r := req.Clone(actx)
	// analytics-go's http.Client closes this legacy channel when its own 10s timeout
	// fires; our attempts are bounded by actx instead.
	r.Cancel = nil
	r.Body = io.NopCloser(bytes.NewReader(body))
	r.GetBody = func() (io.ReadCloser, error) { return io.NopCloser(bytes.NewReader(body)), nil }
	r.ContentLength = int64(len(body))
	r.Header.Del("Content-Length")
	resp, err := t.base.RoundTrip(r)
	if err != nil {
		// As http.Client reports it: a *url.Error, in which a bare io.EOF means a
		// connection closed before the answer (destinations.IsRetryable relies on it).
		err = &url.Error{Op: "Post", URL: destinations.RedactURL(req.URL.String()), Err: err}
		if ctx.Err() == nil && (errors.Is(actx.Err(), context.DeadlineExceeded) || destinations.IsRetryable(err)) {
			return &destinations.RetryableError{Err: err}
		}
		return err
	}
	if err := destinations.ResponseError(resp, t.nonRetryable); err != nil {
		return fmt.Errorf("segment answered: %w", err)
	}
	return nil
}

// accepted is the answer analytics-go gets for every batch: the real outcome of each of
// its messages is in the verdicts.
func accepted(req *http.Request) *http.Response {
	return &http.Response{
		Status: "200 OK", StatusCode: http.StatusOK,
		Proto: "HTTP/1.1", ProtoMajor: 1, ProtoMinor: 1,
		Header: http.Header{}, Body: http.NoBody, Request: req,
	}
}

// batch is analytics-go's request body, with its messages left encoded.
type batch struct {
	MessageID json.RawMessage   `json:"messageId,omitempty"`
	SentAt    json.RawMessage   `json:"sentAt,omitempty"`
	Batch     []json.RawMessage `json:"batch"`
	Context   json.RawMessage   `json:"context,omitempty"`
}

func parseBatch(body []byte) (*batch, error) {
	var b batch
	if err := json.Unmarshal(body, &b); err != nil {
		return nil, fmt.Errorf("reading analytics-go's batch: %w", err)
	}
	return &b, nil
}

// encode encodes b with msgs as its messages. The messages are valid JSON (analytics-go
// encoded them, or Write checked them) and are copied as they are.
func (b *batch) encode(msgs []json.RawMessage) []byte {
	out := make([]byte, 0, b.size(msgs))
	if len(b.MessageID) > 0 {
		out = append(out, `{"messageId":`...)
		out = append(out, b.MessageID...)
		out = append(out, ',')
	} else {
		out = append(out, '{')
	}
	if len(b.SentAt) > 0 {
		out = append(out, `"sentAt":`...)
		out = append(out, b.SentAt...)
		out = append(out, ',')
	}
	out = append(out, `"batch":[`...)
	for i, m := range msgs {
		if i > 0 {
			out = append(out, ',')
		}
		out = append(out, m...)
	}
	out = append(out, ']')
	if len(b.Context) > 0 {
		out = append(out, `,"context":`...)
		out = append(out, b.Context...)
	}
	return append(out, '}')
}

// size is the length of b.encode(msgs).
func (b *batch) size(msgs []json.RawMessage) int {
	n := len(`{"messageId":,"sentAt":,"batch":[],"context":}`) + len(b.MessageID) + len(b.SentAt) + len(b.Context)
	for _, m := range msgs {
		n += len(m) + 1
	}
	return n
}

// rawID reads the messageId of an encoded message.
func rawID(m json.RawMessage) string {
	var v struct {
		ID string `json:"messageId"`
	}
	_ = json.Unmarshal(m, &v) // analytics-go encoded it; an unreadable id matches no Write
	return v.ID
}

// verdicts are the failures the transport recorded, by messageId, for the Success
// callbacks that follow. Several copies of one id may be in flight (the same content
// written twice): each failed copy adds one verdict and each callback takes at most one,
// so the number of failures reported always equals the number of copies not accepted.
type verdicts struct {
	n  atomic.Int64 // how many verdicts m holds: take skips the lock while it is 0
	mu sync.Mutex
	m  map[string][]error
}

func (v *verdicts) add(id string, err error) {
	v.mu.Lock()
	defer v.mu.Unlock()
	if v.m == nil {
		v.m = map[string][]error{}
	}
	v.m[id] = append(v.m[id], err)
	v.n.Add(1)
}

// take removes and returns one verdict of id, or nil when it has none. A verdict is added
// before analytics-go calls back for its batch (same goroutine), so a take that may
// concern it always sees n > 0.
func (v *verdicts) take(id string) error {
	if v.n.Load() == 0 {
		return nil
	}
	v.mu.Lock()
	defer v.mu.Unlock()
	errs := v.m[id]
	if len(errs) == 0 {
		return nil
	}
	if len(errs) == 1 {
		delete(v.m, id)
	} else {
		v.m[id] = errs[1:]
	}
	v.n.Add(-1)
	return errs[0]
}
