package discovery

import (
	"context"
	"errors"
	"strings"
	"testing"
	"time"

	"github.com/aws/smithy-go"

	"github.com/backflowhq/backflow/internal/testutil"
)

// receiveAll receives until n messages came or wait ran out.
func receiveAll(t *testing.T, q *Queue, n int, wait time.Duration) []Message {
	t.Helper()
	var out []Message
	deadline := time.Now().Add(wait)
	for len(out) < n && time.Now().Before(deadline) {
		msgs, err := q.Receive(context.Background(), n-len(out), time.Second)
		if err != nil {
			t.Fatal(err)
		}
		out = append(out, msgs...)
	}
	return out
}

func TestQueue(t *testing.T) {
	emu := testutil.StartSQS(t)
	ctx := context.Background()
	newQueue := func(t *testing.T, visibility time.Duration) *Queue {
		url := emu.CreateQueue(t, visibility)
		q, err := NewQueue(ctx, emu.Discovery(url), emu.Options())
		if err != nil {
			t.Fatal(err)
		}
		return q
	}
	put := Event{Bucket: "acme-exports", Key: "users/dt=2025-01-01/part 0.parquet", Size: 1234, ETag: "9b2cf535f27731c974343645a3985328",
		VersionID: "v1", Time: time.Date(2025, 1, 1, 3, 4, 5, 0, time.UTC)}
	del := Event{Bucket: "acme-exports", Key: "users/old.parquet", Removed: true, Time: time.Date(2025, 1, 1, 3, 4, 6, 0, time.UTC)}

	t.Run("each shape", func(t *testing.T) {
		q := newQueue(t, 30*time.Second)
		bridgeDel := del
		bridgeDel.ETag = "d41d8cd98f00b204e9800998ecf8427e"
		bodies := map[string][]Event{
			s3Body(put, del):                                  {put, del},
			snsBody(s3Body(put)):                              {put},
			bridgeBody(put):                                   {put},
			bridgeBody(bridgeDel):                             {bridgeDel},
			string(readSample(t, "s3-test-event.json")):       nil,
			"not a notification":                              nil,
			`{"Records":[{"eventName":"ObjectCreated:Put"}]}`: nil,
		}
		before := time.Now().Add(-time.Second)
		for body := range bodies {
			emu.Send(t, q.URL(), body)
		}
		msgs := receiveAll(t, q, len(bodies), 20*time.Second)
		if len(msgs) != len(bodies) {
			t.Fatalf("received %d messages, want %d", len(msgs), len(bodies))
		}
		malformed := 0
		for _, m := range msgs {
			want, ok := bodies[m.Body]
			if !ok {
				t.Fatalf("unknown body %q", m.Body)
			}
			if m.ID == "" || m.ReceiptHandle == "" {
				t.Errorf("message without id or receipt handle: %+v", m)
			}
			if m.Sent.Before(before) || m.Sent.After(time.Now().Add(time.Second)) {
				t.Errorf("sent %v, want about now", m.Sent)
			}
			if m.Err != nil {
				malformed++
				if !errors.Is(m.Err, ErrMalformed) || !strings.Contains(m.Err.Error(), q.URL()) || !strings.Contains(m.Err.Error(), m.ID) {
					t.Errorf("malformed message error %q: want ErrMalformed naming the queue and the message", m.Err)
				}
				if len(m.Events) != 0 {
					t.Errorf("events %+v beside an error", m.Events)
				}
			} else if !sameEvents(m.Events, want) {
				t.Errorf("body %s:\ngot  %+v\nwant %+v", m.Body, m.Events, want)
			}
			if err := q.Delete(ctx, m.ReceiptHandle); err != nil {
				t.Fatal(err)
			}
		}
		if malformed != 2 {
			t.Errorf("%d malformed messages, want 2", malformed)
		}
		// Deleted messages are gone for good.
		if msgs, err := q.Receive(ctx, 10, time.Second); err != nil || len(msgs) != 0 {
			t.Fatalf("after deleting: %d messages, %v", len(msgs), err)
		}
	})

	// SNS's own delivery: the envelope it writes, and raw message delivery.
	t.Run("through SNS", func(t *testing.T) {
		for _, raw := range []bool{false, true} {
			q := newQueue(t, 30*time.Second)
			publish := emu.Topic(t, q.URL(), raw)
			publish(s3Body(put, del))
			publish(string(readSample(t, "s3-test-event.json")))
			msgs := receiveAll(t, q, 2, 20*time.Second)
			if len(msgs) != 2 {
				t.Fatalf("raw %v: received %d messages, want 2", raw, len(msgs))
			}
			var got []Event
			for _, m := range msgs {
				if m.Err != nil {
					t.Fatalf("raw %v: %v", raw, m.Err)
				}
				if raw == strings.Contains(m.Body, `"Type":"Notification"`) {
					t.Fatalf("raw %v: body %s", raw, m.Body)
				}
				got = append(got, m.Events...)
			}
			if !sameEvents(got, []Event{put, del}) {
				t.Fatalf("raw %v: got %+v", raw, got)
			}
		}
	})

	t.Run("visibility", func(t *testing.T) {
		q := newQueue(t, 2*time.Second)
		emu.Send(t, q.URL(), s3Body(put))
		emu.Send(t, q.URL(), bridgeBody(put))
		msgs := receiveAll(t, q, 2, 20*time.Second)
		if len(msgs) != 2 {
			t.Fatalf("received %d messages, want 2", len(msgs))
		}
		kept, left := msgs[0], msgs[1]
		// kept stays invisible for 5s (extended to 3s every 1.5s), past the queue's 2s
		// timeout; left comes back.
		stop := q.KeepVisible(ctx, []Message{kept}, 1500*time.Millisecond)
		var again []Message
		deadline := time.Now().Add(5 * time.Second)
		for time.Now().Before(deadline) {
			got, err := q.Receive(ctx, 10, time.Second)
			if err != nil {
				t.Fatal(err)
			}
			again = append(again, got...)
		}
		if err := stop(); err != nil {
			t.Fatalf("keeping visible: %v", err)
		}
		if len(again) == 0 {
			t.Fatalf("%s, not extended, did not come back after the queue's 2s visibility timeout", left.ID)
		}
		for _, m := range again {
			if m.ID != left.ID {
				t.Fatalf("redelivered %s while it was kept visible", m.ID)
			}
		}
		again = again[len(again)-1:] // its latest delivery
		// The kept message's handle is still valid: it can be deleted.
		if err := q.Delete(ctx, kept.ReceiptHandle); err != nil {
			t.Fatal(err)
		}
		// Extend by hand: the redelivered message stays away for 4s, then returns.
		if err := q.Extend(ctx, again[0].ReceiptHandle, 4*time.Second); err != nil {
			t.Fatal(err)
		}
		start := time.Now()
		back := receiveAll(t, q, 1, 15*time.Second)
		if len(back) != 1 || back[0].ID != left.ID {
			t.Fatalf("after its visibility ran out: %+v, want %s", back, left.ID)
		}
		if took := time.Since(start); took < 3*time.Second {
			t.Fatalf("redelivered after %v, before the 4s extension ran out", took)
		}
		// Visibility 0 gives the message back at once.
		if err := q.Extend(ctx, back[0].ReceiptHandle, 0); err != nil {
			t.Fatal(err)
		}
		if got := receiveAll(t, q, 1, 3*time.Second); len(got) != 1 {
			t.Fatalf("after visibility 0: %d messages, want 1", len(got))
		}
	})

	t.Run("errors name the queue", func(t *testing.T) {
		q := newQueue(t, 0)
		missing, err := NewQueue(ctx, emu.Discovery(q.URL()+"-missing"), emu.Options())
		if err != nil {
			t.Fatal(err)
		}
		_, err = missing.Receive(ctx, 1, 0)
		if err == nil || !strings.Contains(err.Error(), q.URL()+"-missing") {
			t.Fatalf("receiving from a missing queue: %v, want an error naming it", err)
		}
		if strings.Contains(err.Error(), emu.Options().Auth.SecretAccessKey) {
			t.Fatalf("the error shows the secret: %v", err)
		}
		t.Logf("missing queue: %v", err)
		cctx, cancel := context.WithCancel(ctx)
		cancel()
		if _, err := q.Receive(cctx, 1, time.Second); !errors.Is(err, context.Canceled) {
			t.Fatalf("receive with a cancelled context: %v", err)
		}
	})
}

func TestRegionOf(t *testing.T) {
	for u, want := range map[string]string{
		"https://sqs.eu-west-1.amazonaws.com/123456789012/exports": "eu-west-1",
		"https://us-west-2.queue.amazonaws.com/123456789012/q":     "us-west-2",
		"https://sqs.cn-north-1.amazonaws.com.cn/123456789012/q":   "cn-north-1",
		"http://127.0.0.1:4566/000000000000/q":                     "",
		"::":                                                       "",
	} {
		if got := regionOf(u); got != want {
			t.Errorf("regionOf(%q) = %q, want %q", u, got, want)
		}
	}
}

func TestSeconds(t *testing.T) {
	for d, want := range map[time.Duration]int32{-time.Second: 0, 0: 0, time.Millisecond: 1, time.Second: 1, 1500 * time.Millisecond: 2, 24 * time.Hour: 43200} {
		if got := seconds(d); got != want {
			t.Errorf("seconds(%v) = %d, want %d", d, got, want)
		}
	}
}

// TestDescribe checks the words of SQS's refusals (the emulator accepts any receipt
// handle, AWS does not).
func TestDescribe(t *testing.T) {
	q := &Queue{url: "https://sqs.us-east-1.amazonaws.com/123456789012/exports"}
	for code, want := range map[string]string{
		"ReceiptHandleIsInvalid":                  "no longer in flight",
		"AWS.SimpleQueueService.NonExistentQueue": "no such queue",
		"AccessDenied":                            "access denied (the credentials need sqs:ReceiveMessage",
		"Throttling":                              "Throttling: slow down",
	} {
		inner := &smithy.GenericAPIError{Code: code, Message: "slow down"}
		err := q.describe(&smithy.OperationError{ServiceID: "SQS", OperationName: "DeleteMessage", Err: inner}, "deleting a message")
		if !strings.HasPrefix(err.Error(), "queue "+q.url+": deleting a message") || !strings.Contains(err.Error(), want) {
			t.Errorf("%s: %q, want the queue, what was done and %q", code, err, want)
		}
		if !errors.Is(err, inner) {
			t.Errorf("%s: the SDK's error is lost", code)
		}
		if got := errors.Is(err, ErrNotInFlight); got != (code == "ReceiptHandleIsInvalid") {
			t.Errorf("%s: errors.Is(ErrNotInFlight) = %v", code, got)
		}
	}
}
