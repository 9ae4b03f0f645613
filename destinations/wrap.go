package destinations

import (
	"context"
	"errors"
	"fmt"
	"log/slog"
	"slices"
	"time"

	"golang.org/x/time/rate"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/mapper"
)

// RequestManager is implemented by destinations whose Write calls do not map onto
// requests — the segment destination hands messages to analytics-go, which batches
// messages of several Writes into one request. Such a destination applies rate_limit,
// retry and timeout to each of its requests itself (with Policy and the helpers of this
// package) and isolates refused messages itself; Wrap adds no layer around it.
type RequestManager interface {
	ManagesRequests()
}

// ErrClosed is returned by a Write that comes after Close.
var ErrClosed = errors.New("destination is closed")

// Wrap adds the shared behaviour of every destination around d, as restic wraps its
// backends, so that adapters only move bytes. From the outside in:
//
//   - chunk: a Write of more than cfg.BatchSize messages is cut into batches of at most
//     that many (the pipeline already does; this keeps the limit true for any caller);
//   - split: a batch refused with a *PermanentError (see Splittable) is bisected and the
//     halves written again until the refused messages are isolated; the result is a
//     *BatchError listing exactly the refused indices of the original batch;
//   - retry: retryable failures are tried again, cfg.Retry.MaxAttempts attempts in all,
//     with exponential backoff and full jitter capped at cfg.Retry.MaxBackoff, honouring
//     RetryableError.After; never once ctx is done; the last error is returned;
//   - rate limit: at most cfg.RateLimit attempts per second (0: unlimited);
//   - timeout: each attempt gets its own deadline of cfg.Timeout.
//
// Close, and Check, WriteDeferred and Flush where d implements Checker or Deferred, go
// straight to d: a Deferred destination serializes its writes
// into its own requests (the s3 destination's part uploads), each with its own timeout
// and retries, so the layers above, made for one request a Write, do not apply.
// A RequestManager is returned as is.
func Wrap(d Destination, cfg config.Destination, logger *slog.Logger) Destination {
	return wrap(d, cfg, logger, nil)
}

// wrap is Wrap with the run's stop signal: retries end once stop is closed.
func wrap(d Destination, cfg config.Destination, logger *slog.Logger, stop <-chan struct{}) Destination {
	if _, ok := d.(RequestManager); ok {
		return d
	}
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	timeout := cfg.Timeout
	if timeout <= 0 {
		timeout = config.DefaultTimeout
	}
	var chain batchWriter = &timeoutLayer{next: d, timeout: timeout}
	if cfg.RateLimit > 0 {
		chain = &rateLayer{next: chain, limiter: rate.NewLimiter(rate.Limit(cfg.RateLimit), 1)}
	}
	policy := NewPolicy(cfg.Retry)
	policy.Stop = stop
	name := cfg.Name
	if name == "" {
		name = cfg.Type
	}
	chain = &retryLayer{next: chain, policy: policy, log: logger, name: name}
	chain = &splitLayer{next: chain}
	if cfg.BatchSize > 0 {
		chain = &chunkLayer{next: chain, size: cfg.BatchSize}
	}
	w := &wrapped{chain: chain, inner: d}
	checker, isChecker := d.(Checker)
	deferred, isDeferred := d.(Deferred)
	switch {
	case isChecker && isDeferred:
		return &checkDeferDest{w, checker, deferred}
	case isChecker:
		return &checkDest{w, checker}
	case isDeferred:
		return &deferDest{w, deferred}
	}
	return w
}

// batchWriter is one layer of Wrap: Write with Destination's contract.
type batchWriter interface {
	Write(ctx context.Context, msgs []mapper.Message) error
}

// wrapped is the result of Wrap: writes go through the layers, Close straight to the adapter.
type wrapped struct {
	chain batchWriter
	inner Destination
}

func (w *wrapped) Write(ctx context.Context, msgs []mapper.Message) error {
	return w.chain.Write(ctx, msgs)
}

func (w *wrapped) Close(ctx context.Context) error { return w.inner.Close(ctx) }

// Unwrap returns the adapter Wrap was given.
func (w *wrapped) Unwrap() Destination { return w.inner }

// The optional interfaces of the adapter stay visible through the wrapper (the pipeline
// asks `d.(destinations.Deferred)`, check `d.(destinations.Checker)`), as
// http.ResponseWriter wrappers keep Flusher: one type for each combination.
type (
	checkDest struct {
		*wrapped
		Checker
	}
	deferDest struct {
		*wrapped
		Deferred
	}
	checkDeferDest struct {
		*wrapped
		Checker
		Deferred
	}
)

// timeoutLayer gives each attempt its own deadline.
type timeoutLayer struct {
	next    batchWriter
	timeout time.Duration
}

func (l *timeoutLayer) Write(ctx context.Context, msgs []mapper.Message) error {
	actx, cancel := context.WithTimeout(ctx, l.timeout)
	defer cancel()
	err := l.next.Write(actx, msgs)
	if err != nil && ctx.Err() == nil && errors.Is(actx.Err(), context.DeadlineExceeded) && !isBatchError(err) {
		// Our deadline, not the caller's: a timeout of one request, worth another try.
		return &RetryableError{Err: fmt.Errorf("request timed out after %s: %w", l.timeout, err)}
	}
	return err
}

// rateLayer spaces attempts out.
type rateLayer struct {
	next    batchWriter
	limiter *rate.Limiter
}

func (l *rateLayer) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := l.limiter.Wait(ctx); err != nil {
		return fmt.Errorf("waiting for the rate limit: %w", err)
	}
	return l.next.Write(ctx, msgs)
}

// retryLayer tries retryable failures again.
type retryLayer struct {
	next   batchWriter
	policy Policy
	log    *slog.Logger
	name   string
}

func (l *retryLayer) Write(ctx context.Context, msgs []mapper.Message) error {
	p := l.policy
	p.OnRetry = func(attempt int, err error, wait time.Duration) {
		l.log.Warn("retrying a batch", "destination", l.name, "messages", len(msgs),
			"attempt", attempt, "max_attempts", p.MaxAttempts, "wait", wait, "error", err)
	}
	return p.Do(ctx, func(ctx context.Context) error { return l.next.Write(ctx, msgs) })
}

// splitLayer isolates the messages of a batch refused permanently by bisection: a poison
// message among n costs about 2·log2(n) extra writes.
type splitLayer struct {
	next batchWriter
}

func (l *splitLayer) Write(ctx context.Context, msgs []mapper.Message) error {
	var failed []Failure
	if err := l.write(ctx, msgs, 0, &failed); err != nil {
		return err
	}
	return batchResult(failed)
}

// write writes msgs (at offset within the original batch), appending refusals to failed.
// It returns an error when the whole original Write must fail (nothing may be taken as
// acknowledged): any failure but a refusal of messages, and a refusal Splittable rejects
// (401, 403, 407: the credentials, not the messages, are at fault) at any depth — such a
// refusal of a half says nothing about its messages, which must not become rejects.
func (l *splitLayer) write(ctx context.Context, msgs []mapper.Message, offset int, failed *[]Failure) error {
	err := l.next.Write(ctx, msgs)
	if err == nil {
		return nil
	}
	var be *BatchError
	if errors.As(err, &be) {
		for _, f := range be.Failed {
			*failed = append(*failed, Failure{Index: offset + f.Index, Err: f.Err})
		}
		return nil
	}
	var pe *PermanentError
	if !errors.As(err, &pe) {
		return err
	}
	if !Splittable(pe) {
		return err
	}
	if len(msgs) == 1 {
		*failed = append(*failed, Failure{Index: offset, Err: err})
		return nil
	}
	half := len(msgs) / 2
	if err := l.write(ctx, msgs[:half], offset, failed); err != nil {
		return err
	}
	return l.write(ctx, msgs[half:], offset+half, failed)
}

// chunkLayer keeps every Write within the batch size.
type chunkLayer struct {
	next batchWriter
	size int
}

func (l *chunkLayer) Write(ctx context.Context, msgs []mapper.Message) error {
	if len(msgs) <= l.size {
		return l.next.Write(ctx, msgs)
	}
	var failed []Failure
	for start := 0; start < len(msgs); start += l.size {
		end := min(start+l.size, len(msgs))
		err := l.next.Write(ctx, msgs[start:end])
		var be *BatchError
		switch {
		case err == nil:
		case errors.As(err, &be):
			for _, f := range be.Failed {
				failed = append(failed, Failure{Index: start + f.Index, Err: f.Err})
			}
		default:
			return err
		}
	}
	return batchResult(failed)
}

// batchResult is nil when nothing failed, else a *BatchError sorted by index.
func batchResult(failed []Failure) error {
	if len(failed) == 0 {
		return nil
	}
	slices.SortStableFunc(failed, func(a, b Failure) int { return a.Index - b.Index })
	failed = slices.CompactFunc(failed, func(a, b Failure) bool { return a.Index == b.Index })
	return &BatchError{Failed: failed}
}

func isBatchError(err error) bool {
	var be *BatchError
	return errors.As(err, &be)
}
