// Package destinations defines the Destination interface that every adapter implements,
// the shared wrappers that add batching limits, retries with backoff, rate limits and
// batch splitting around it, and the registry that builds adapters from config.
package destinations

import (
	"context"

	"github.com/backflowhq/backflow/mapper"
)

// Destination delivers messages to one place.
//
// Write may be called concurrently from several goroutines (at most the configured
// max_in_flight at once, enforced by the caller). It returns once every message of msgs is
// either acknowledged (durably accepted by the receiver: an HTTP 2xx, an fsync, a
// completed upload, a Segment Success callback) or known to be refused. ctx bounds the
// call; Write must return promptly once ctx is done, without acknowledging anything it
// is not sure of.
//
// Its result means:
//   - nil: every message was acknowledged.
//   - *BatchError: the messages at Failed indices were refused permanently (they go to
//     the rejects file); every other message was acknowledged.
//   - any other error: nothing of msgs may be taken as acknowledged. IsRetryable tells
//     whether trying again may help; an adapter wraps transient failures in *RetryableError
//     and whole-batch permanent refusals in *PermanentError.
//
// Close flushes and releases everything; messages still held are either delivered or
// Close returns an error. After Close no other method is called.
type Destination interface {
	Write(ctx context.Context, msgs []mapper.Message) error
	Close(ctx context.Context) error
}

// Checker is implemented by destinations that can check their configuration and
// reachability without sending data (`backflow check`).
type Checker interface {
	Check(ctx context.Context) error
}
