package destinations

import (
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"time"

	"github.com/backflowhq/backflow/config"
)

// BaseBackoff is the ceiling of the first backoff; it doubles with every attempt up to
// the destination's retry.max_backoff.
const BaseBackoff = 100 * time.Millisecond

// Policy is how one request is retried. Wrap applies it to Write; destinations that
// manage their own requests (RequestManager) apply it to each request with Do.
type Policy struct {
	// MaxAttempts is how many times a request is tried in all (at least 1).
	MaxAttempts int
	// MaxBackoff caps every wait, Retry-After included.
	MaxBackoff time.Duration
	// Base is the first backoff ceiling; 0 means BaseBackoff.
	Base time.Duration

	// Sleep waits d or until ctx is done (then it returns ctx's error). nil: a real timer.
	// Tests replace it with a fake clock.
	Sleep func(ctx context.Context, d time.Duration) error
	// Rand returns a number in [0, 1) for the jitter. nil: math/rand/v2.
	Rand func() float64
	// OnRetry, when set, is told about every retry before its wait (for logging).
	OnRetry func(attempt int, err error, wait time.Duration)
	// Stop, when set, is closed when the run begins to stop: a failure after that is
	// not tried again (the batch is left for the next run), and a wait is cut short.
	Stop <-chan struct{}
}

// NewPolicy returns the policy of a destination's retry settings; values below their
// minimum (0 attempts, 0 backoff) take the config package's defaults.
func NewPolicy(r config.Retry) Policy {
	p := Policy{MaxAttempts: r.MaxAttempts, MaxBackoff: r.MaxBackoff}
	if p.MaxAttempts <= 0 {
		p.MaxAttempts = config.DefaultRetryMaxAttempts
	}
	if p.MaxBackoff <= 0 {
		p.MaxBackoff = config.DefaultRetryMaxBackoff
	}
	return p
}

// Backoff returns how long to wait after the attempt-th failed attempt (counting from 1)
// before the next one: exponential backoff with full jitter, uniform in
// [0, min(MaxBackoff, Base·2^(attempt-1))), but at least after (the receiver's
// Retry-After), and never more than MaxBackoff.
func (p Policy) Backoff(attempt int, after time.Duration) time.Duration {
	base := p.Base
	if base <= 0 {
		base = BaseBackoff
	}
	ceiling := base
	for i := 1; i < attempt && ceiling < p.MaxBackoff; i++ {
		ceiling *= 2
	}
	ceiling = min(ceiling, p.MaxBackoff)
	rnd := p.Rand
	if rnd == nil {
		rnd = rand.Float64
	}
	d := time.Duration(rnd() * float64(ceiling))
	d = max(d, after)
	return min(d, p.MaxBackoff)
}

// Do calls fn until it returns nil or an error IsRetryable refuses, MaxAttempts calls
// were made, or ctx is done; it never calls fn again once ctx is done. It returns fn's
// last error; when ctx ended the retries, that error is joined with ctx's cause so that
// errors.Is(err, context.Canceled) holds.
func (p Policy) Do(ctx context.Context, fn func(ctx context.Context) error) error {
	attempts := max(p.MaxAttempts, 1)
	sleep := p.Sleep
	if sleep == nil {
		sleep = sleepCtx
	}
	for attempt := 1; ; attempt++ {
		err := fn(ctx)
		if err == nil || !IsRetryable(err) {
			return err
		}
		if ctx.Err() != nil {
			return stopped(ctx, err)
		}
		if attempt >= attempts {
			return err
		}
		if p.stopping() {
			return fmt.Errorf("%w (not retried: the run is stopping)", err)
		}
		var after time.Duration
		if re := asRetryable(err); re != nil {
			after = re.After
		}
		wait := p.Backoff(attempt, after)
		if p.OnRetry != nil {
			p.OnRetry(attempt, err, wait)
		}
		if p.sleepUnlessStopped(ctx, sleep, wait) != nil {
			return stopped(ctx, err)
		}
		if p.stopping() {
			return fmt.Errorf("%w (not retried: the run is stopping)", err)
		}
	}
}

func (p Policy) stopping() bool {
	if p.Stop == nil {
		return false
	}
	select {
	case <-p.Stop:
		return true
	default:
		return false
	}
}

// sleepUnlessStopped waits like sleep, but returns early (nil) once Stop is closed.
func (p Policy) sleepUnlessStopped(ctx context.Context, sleep func(context.Context, time.Duration) error, d time.Duration) error {
	if p.Stop == nil {
		return sleep(ctx, d)
	}
	sctx, cancel := context.WithCancel(ctx)
	defer cancel()
	go func() {
		select {
		case <-p.Stop:
			cancel()
		case <-sctx.Done():
		}
	}()
	err := sleep(sctx, d)
	if err != nil && ctx.Err() == nil {
		return nil // cut short by Stop: the caller sees stopping()
	}
	return err
}

// stopped is last, marked as given up because ctx is done. It stays retryable (IsRetryable
// looks at the last error first), so a caller can tell a transient failure from a refusal.
func stopped(ctx context.Context, last error) error {
	return fmt.Errorf("%w (gave up: %w)", last, context.Cause(ctx))
}

func asRetryable(err error) *RetryableError {
	var re *RetryableError
	if errors.As(err, &re) {
		return re
	}
	return nil
}

func sleepCtx(ctx context.Context, d time.Duration) error {
	if d <= 0 {
		return ctx.Err()
	}
	t := time.NewTimer(d)
	defer t.Stop()
	select {
	case <-t.C:
		return nil
	case <-ctx.Done():
		return ctx.Err()
	}
}
