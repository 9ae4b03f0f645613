package discovery

import (
	"context"
	"errors"
	"fmt"
	"net/url"
	"strconv"
	"strings"
	"sync"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"
	"github.com/aws/smithy-go"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// callTimeout bounds one call to the queue (beyond a Receive's long polling): a queue
// that stops answering fails the call instead of holding a run forever.
const callTimeout = 30 * time.Second

// Limits SQS puts on its calls.
const (
	MaxReceive    = 10               // messages per ReceiveMessage
	MaxWait       = 20 * time.Second // long-polling wait of one ReceiveMessage
	MaxVisibility = 12 * time.Hour   // a message's visibility timeout
)

// Message is one message received from the queue.
type Message struct {
	ID string
	// ReceiptHandle names this delivery of the message for Delete and Extend; a message
	// received again has a new one.
	ReceiptHandle string
	Body          string
	Sent          time.Time // when the message was sent to the queue
	// Events are the objects the body names (none for S3's test event); Err is why the
	// body could not be parsed (it wraps ErrMalformed), and then Events is empty.
	Events []Event
	Err    error
}

// Queue receives, deletes and extends messages of one SQS queue. Its methods are safe
// for concurrent use.
type Queue struct {
	client *sqs.Client
	url    string
}

// ErrNotInFlight is wrapped by the errors of Delete and Extend when the receipt handle
// no longer names a delivery: the message was deleted, or became visible and was
// received again (by another run, or after its visibility timeout). Extending it again
// is useless.
var ErrNotInFlight = errors.New("the message is no longer in flight")

// NewQueue returns the queue of d (d.QueueURL, at d.Endpoint when set), reached with
// the region and credentials of the source's connection settings conn. Without a
// region in conn, the region is taken from an AWS queue URL
// (https://sqs.REGION.amazonaws.com/…), else us-east-1. It makes no call.
func NewQueue(ctx context.Context, d config.Discovery, conn config.S3Options) (*Queue, error) {
	if d.QueueURL == "" {
		return nil, errors.New("sqs discovery: no queue_url")
	}
	if conn.Region == "" {
		conn.Region = regionOf(d.QueueURL)
	}
	cfg, err := s3conn.AWSConfig(ctx, conn, 0)
	if err != nil {
		return nil, fmt.Errorf("queue %s: %w", d.QueueURL, err)
	}
	client := sqs.NewFromConfig(cfg, func(o *sqs.Options) {
		if d.Endpoint != "" {
			o.BaseEndpoint = aws.String(d.Endpoint)
		}
	})
	return &Queue{client: client, url: d.QueueURL}, nil
}

// regionOf reads the region of an AWS queue URL (sqs.us-east-1.amazonaws.com, or the
// legacy us-east-1.queue.amazonaws.com); "" for any other host.
func regionOf(queueURL string) string {
	u, err := url.Parse(queueURL)
	if err != nil {
		return ""
	}
	parts := strings.Split(u.Hostname(), ".")
	switch {
	case len(parts) >= 4 && parts[0] == "sqs" && parts[2] == "amazonaws":
		return parts[1]
	case len(parts) >= 4 && parts[1] == "queue" && parts[2] == "amazonaws":
		return parts[0]
	}
	return ""
}

// URL is the queue's URL.
func (q *Queue) URL() string { return q.url }

// VisibilityTimeout returns the queue's default visibility timeout: how long a received
// message stays hidden from other receivers unless extended.
func (q *Queue) VisibilityTimeout(ctx context.Context) (time.Duration, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	out, err := q.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(q.url),
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameVisibilityTimeout},
	})
	if err != nil {
		return 0, q.describe(err, "reading the visibility timeout of")
	}
	n, err := strconv.Atoi(out.Attributes[string(types.QueueAttributeNameVisibilityTimeout)])
	if err != nil {
		return 0, fmt.Errorf("queue %s: VisibilityTimeout %q: %w", q.url, out.Attributes[string(types.QueueAttributeNameVisibilityTimeout)], err)
	}
	return time.Duration(n) * time.Second, nil
}

// Pending returns about how many messages wait in the queue, visible to a receiver
// (SQS's ApproximateNumberOfMessages): `serve` starts a run when it is not zero.
func (q *Queue) Pending(ctx context.Context) (int, error) {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	out, err := q.client.GetQueueAttributes(ctx, &sqs.GetQueueAttributesInput{
		QueueUrl:       aws.String(q.url),
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages},
	})
	if err != nil {
		return 0, q.describe(err, "counting the messages of")
	}
	n, err := strconv.Atoi(out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessages)])
	if err != nil {
		return 0, fmt.Errorf("queue %s: ApproximateNumberOfMessages %q: %w", q.url, out.Attributes[string(types.QueueAttributeNameApproximateNumberOfMessages)], err)
	}
	return n, nil
}

// Receive waits up to wait (long polling; at most MaxWait) for up to n messages (at
// most MaxReceive) and returns them, none when wait ran out first. Each message is
// parsed: a body that is not a notification is reported in its Message.Err, never as an
// error of Receive. The messages stay invisible to other receivers for the queue's
// visibility timeout. A cancelled ctx returns its error.
func (q *Queue) Receive(ctx context.Context, n int, wait time.Duration) ([]Message, error) {
	n = min(max(n, 1), MaxReceive)
	wait = min(max(wait, 0), MaxWait)
	// Long polling holds the call for up to wait: the deadline leaves it that long more.
	ctx, cancel := context.WithTimeout(ctx, wait+callTimeout)
	defer cancel()
	out, err := q.client.ReceiveMessage(ctx, &sqs.ReceiveMessageInput{
		QueueUrl:                    aws.String(q.url),
		MaxNumberOfMessages:         int32(n),
		WaitTimeSeconds:             int32(wait / time.Second),
		MessageSystemAttributeNames: []types.MessageSystemAttributeName{types.MessageSystemAttributeNameSentTimestamp},
	})
	if err != nil {
		return nil, q.describe(err, "receiving")
	}
	msgs := make([]Message, 0, len(out.Messages))
	for _, m := range out.Messages {
		msg := Message{ID: aws.ToString(m.MessageId), ReceiptHandle: aws.ToString(m.ReceiptHandle), Body: aws.ToString(m.Body)}
		if ms, err := strconv.ParseInt(m.Attributes[string(types.MessageSystemAttributeNameSentTimestamp)], 10, 64); err == nil {
			msg.Sent = time.UnixMilli(ms).UTC()
		}
		msg.Events, msg.Err = Parse([]byte(msg.Body))
		if msg.Err != nil {
			msg.Err = fmt.Errorf("queue %s: message %s: %w", q.url, msg.ID, msg.Err)
		}
		msgs = append(msgs, msg)
	}
	return msgs, nil
}

// Delete removes the message received with receiptHandle from the queue, for good.
func (q *Queue) Delete(ctx context.Context, receiptHandle string) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := q.client.DeleteMessage(ctx, &sqs.DeleteMessageInput{QueueUrl: aws.String(q.url), ReceiptHandle: aws.String(receiptHandle)})
	return q.describe(err, "deleting a message")
}

// Extend makes the message received with receiptHandle invisible for visibility from
// now (rounded up to whole seconds, at most MaxVisibility); 0 makes it visible again at
// once, for another receiver.
func (q *Queue) Extend(ctx context.Context, receiptHandle string, visibility time.Duration) error {
	ctx, cancel := context.WithTimeout(ctx, callTimeout)
	defer cancel()
	_, err := q.client.ChangeMessageVisibility(ctx, &sqs.ChangeMessageVisibilityInput{
		QueueUrl: aws.String(q.url), ReceiptHandle: aws.String(receiptHandle), VisibilityTimeout: seconds(visibility),
	})
	return q.describe(err, "extending a message's visibility")
}

// seconds rounds d up to whole seconds within SQS's bounds.
func seconds(d time.Duration) int32 {
	d = min(max(d, 0), MaxVisibility)
	return int32((d + time.Second - 1) / time.Second)
}

// KeepVisible keeps msgs invisible to other receivers until stop is called: it extends
// their visibility to 2×every at once (the queue's own timeout may be shorter than
// every) and then every every, so one late extension loses nothing. A message whose
// receipt handle is no longer in flight is dropped from the set. stop ends the
// extensions, waits for the one in progress, and returns the first error of an
// extension, if any (then a message may be delivered again while it is worked on); it
// may be called more than once. The messages keep the visibility last given: stop does
// not make them visible. Cancelling ctx ends the extensions too.
func (q *Queue) KeepVisible(ctx context.Context, msgs []Message, every time.Duration) (stop func() error) {
	if every <= 0 {
		every = 30 * time.Second
	}
	handles := make([]string, 0, len(msgs))
	for _, m := range msgs {
		handles = append(handles, m.ReceiptHandle)
	}
	ctx, cancel := context.WithCancel(ctx)
	done := make(chan struct{})
	var firstErr error
	go func() {
		defer close(done)
		t := time.NewTicker(every)
		defer t.Stop()
		for {
			var err error
			handles, err = q.extendAll(ctx, handles, 2*every)
			if err != nil && firstErr == nil && ctx.Err() == nil {
				firstErr = err
			}
			if len(handles) == 0 {
				return
			}
			select {
			case <-ctx.Done():
				return
			case <-t.C:
			}
		}
	}()
	var once sync.Once
	return func() error {
		once.Do(func() {
			cancel()
			<-done
		})
		return firstErr
	}
}

// extendAll extends every handle in batches of ChangeMessageVisibilityBatch and returns
// the handles still in flight.
func (q *Queue) extendAll(ctx context.Context, handles []string, visibility time.Duration) ([]string, error) {
	var keep []string
	var firstErr error
	for start := 0; start < len(handles); start += MaxReceive {
		batch := handles[start:min(start+MaxReceive, len(handles))]
		entries := make([]types.ChangeMessageVisibilityBatchRequestEntry, len(batch))
		for i, h := range batch {
			entries[i] = types.ChangeMessageVisibilityBatchRequestEntry{
				Id: aws.String(strconv.Itoa(i)), ReceiptHandle: aws.String(h), VisibilityTimeout: seconds(visibility),
			}
		}
		cctx, cancel := context.WithTimeout(ctx, callTimeout)
		out, err := q.client.ChangeMessageVisibilityBatch(cctx, &sqs.ChangeMessageVisibilityBatchInput{QueueUrl: aws.String(q.url), Entries: entries})
		cancel()
		if err != nil {
			// The whole call failed: keep every handle and try again at the next tick.
			keep = append(keep, batch...)
			if firstErr == nil {
				firstErr = q.describe(err, "extending messages' visibility")
			}
			continue
		}
		failed := map[int]bool{}
		for _, f := range out.Failed {
			i, _ := strconv.Atoi(aws.ToString(f.Id))
			if code := aws.ToString(f.Code); notInFlight(code) {
				failed[i] = true // gone for good: stop extending it
				continue
			}
			if firstErr == nil {
				firstErr = fmt.Errorf("queue %s: extending a message's visibility: %s: %s", q.url, aws.ToString(f.Code), aws.ToString(f.Message))
			}
		}
		for i, h := range batch {
			if !failed[i] {
				keep = append(keep, h)
			}
		}
	}
	return keep, firstErr
}

// notInFlight tells whether an SQS error code says a receipt handle is stale.
func notInFlight(code string) bool {
	switch code {
	case "ReceiptHandleIsInvalid", "MessageNotInflight", "AWS.SimpleQueueService.MessageNotInflight", "InvalidParameterValue":
		return true
	}
	return false
}

// describe turns an SQS failure into one line naming the queue and what was being done.
// Neither receipt handles nor credentials appear in it.
func (q *Queue) describe(err error, doing string) error {
	if err == nil {
		return nil
	}
	if errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	where := "queue " + q.url
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) {
		switch code := apiErr.ErrorCode(); {
		case code == "AWS.SimpleQueueService.NonExistentQueue" || code == "QueueDoesNotExist":
			return &Error{Msg: fmt.Sprintf("%s: %s: no such queue (check queue_url and the region)", where, doing), Err: err}
		case code == "AccessDenied" || code == "AccessDeniedException":
			return &Error{Msg: fmt.Sprintf("%s: %s: access denied (the credentials need sqs:ReceiveMessage, sqs:DeleteMessage and sqs:ChangeMessageVisibility on the queue)", where, doing), Err: err}
		case notInFlight(code):
			return &Error{Msg: fmt.Sprintf("%s: %s: %s: %s", where, doing, ErrNotInFlight, apiErr.ErrorMessage()), Err: err, notInFlight: true}
		}
	}
	// The credential, connection and other failures read as they do for S3.
	return &Error{Msg: s3conn.DescribeAt(err, where+": "+doing).Error(), Err: err}
}

// Error is a failure of a queue call, in one line naming the queue; Err is the SDK's.
type Error struct {
	Msg         string
	Err         error
	notInFlight bool
}

func (e *Error) Error() string { return e.Msg }
func (e *Error) Unwrap() error { return e.Err }

// Is makes errors.Is(err, ErrNotInFlight) true for a stale receipt handle.
func (e *Error) Is(target error) bool { return target == ErrNotInFlight && e.notInFlight }
