package pipeline

import (
	"context"
	"encoding/json"
	"fmt"
	"slices"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/reader/discovery"
)

// DiscoveryCounts says what a run of a sync discovered by S3 event notifications (SQS)
// received from its queue.
type DiscoveryCounts struct {
	// Messages received; each names one or more objects.
	Received int `json:"received"`
	// Deleted messages: every file they name was handled (done or rejected) and the
	// checkpoint saying so was saved, or they named nothing of the source.
	Deleted int `json:"deleted"`
	// Ignored events: objects outside the source's prefix or include, or another bucket.
	Ignored int `json:"ignored"`
	// Malformed messages: not a notification; left for the queue's redrive policy.
	Malformed int `json:"malformed"`
	// LagSeconds is the age of the oldest message received, when the run received it.
	LagSeconds float64 `json:"lag_seconds"`
	// Listed tells that the run also listed the prefix (reconcile): a missed or expired
	// event is found that way.
	Listed bool `json:"listed"`
}

// Limits of one run's draining of the queue: what it does not receive now stays in the
// queue for the next run.
const (
	maxMessagesPerRun = 10000
	receiveWait       = time.Second
	keepVisibleEvery  = 30 * time.Second
)

// events is what a run received from its sync's queue: the objects created and removed
// under the source, and the messages that named them, kept invisible to other receivers
// while the run lasts and deleted once what they name is handled and saved.
type events struct {
	queue   *discovery.Queue
	created map[string]discovery.Event
	removed map[string]discovery.Event
	pending []pendingMessage
	stop    func() error
	counts  DiscoveryCounts
}

// pendingMessage is a received message that names files of the source.
type pendingMessage struct {
	msg  discovery.Message
	keys []string
}

// receive drains the sync's queue (up to maxMessagesPerRun messages). A message that is
// not a notification is logged and left alone: its visibility lapses, the queue
// redelivers it and, past its redrive policy, moves it aside. A message naming nothing
// of the source (another prefix, a test event) is deleted at once.
func (r *run) receive(ctx context.Context) (*events, error) {
	d := r.sync.Source.Discovery
	q, err := discovery.NewQueue(ctx, d, r.sync.Source.S3)
	if err != nil {
		return nil, err
	}
	bucket, prefix, _ := config.SplitS3URL(r.sync.Source.URL)
	filter, err := discovery.NewFilter(bucket, prefix, r.sync.Source.Include)
	if err != nil {
		return nil, err
	}
	ev := &events{queue: q, created: map[string]discovery.Event{}, removed: map[string]discovery.Event{}}
	now := time.Now()
	for wait := receiveWait; ev.counts.Received < maxMessagesPerRun; wait = 0 {
		// The first call waits a moment for messages (long polling); the next ones take
		// what is there: what a short poll misses waits for the next run.
		msgs, err := q.Receive(ctx, discovery.MaxReceive, wait)
		if err != nil {
			ev.close()
			return nil, fmt.Errorf("discovering new objects: %w", err)
		}
		if len(msgs) == 0 {
			break
		}
		for _, m := range msgs {
			ev.counts.Received++
			if !m.Sent.IsZero() {
				ev.counts.LagSeconds = max(ev.counts.LagSeconds, now.Sub(m.Sent).Seconds())
			}
			if m.Err != nil {
				ev.counts.Malformed++
				r.log.Warn("a queue message is not an S3 event notification; it is left to the queue's redrive policy",
					"message_id", m.ID, "error", m.Err)
				continue
			}
			var keys []string
			for _, e := range m.Events {
				if ok, why := filter.Match(e); !ok {
					ev.counts.Ignored++
					r.log.Debug("ignoring an event", "message_id", m.ID, "key", e.Key, "reason", why)
					continue
				}
				keys = append(keys, e.Key)
				ev.add(e)
			}
			if len(keys) == 0 {
				if err := q.Delete(ctx, m.ReceiptHandle); err != nil {
					r.log.Warn("deleting a message that names nothing of the source", "message_id", m.ID, "error", err)
				} else {
					ev.counts.Deleted++
				}
				continue
			}
			ev.pending = append(ev.pending, pendingMessage{msg: m, keys: keys})
		}
	}
	msgs := make([]discovery.Message, len(ev.pending))
	for i, p := range ev.pending {
		msgs[i] = p.msg
	}
	// The run may take longer than the queue's visibility timeout: its messages stay
	// invisible until it ends, extended by that timeout every half of it (a run killed
	// stops extending, and they come back within the queue's own timeout).
	every := keepVisibleEvery
	if vt, err := q.VisibilityTimeout(ctx); err == nil && vt > 0 {
		every = min(max(vt/2, time.Second), keepVisibleEvery)
	} else if err != nil {
		r.log.Warn("reading the queue's visibility timeout; extending every 30s", "error", err)
	}
	ev.stop = q.KeepVisible(context.WithoutCancel(ctx), msgs, every)
	r.log.Info("received S3 event notifications", "queue", q.URL(), "messages", ev.counts.Received,
		"objects_created", len(ev.created), "objects_removed", len(ev.removed),
		"ignored", ev.counts.Ignored, "malformed", ev.counts.Malformed)
	return ev, nil
}

// add records an event about a key of the source; of several about one key, the newest
// wins.
func (ev *events) add(e discovery.Event) {
	newer := func(old discovery.Event, ok bool) bool { return !ok || !e.Time.Before(old.Time) }
	if e.Removed {
		if c, ok := ev.created[e.Key]; ok && !newer(c, true) {
			return
		}
		if old, ok := ev.removed[e.Key]; newer(old, ok) {
			ev.removed[e.Key] = e
			delete(ev.created, e.Key)
		}
		return
	}
	if rm, ok := ev.removed[e.Key]; ok && !newer(rm, true) {
		return
	}
	if old, ok := ev.created[e.Key]; newer(old, ok) {
		ev.created[e.Key] = e
		delete(ev.removed, e.Key)
	}
}

// listing is the objects the events created, as a listing gives them (sorted by key),
// and the keys they removed.
func (ev *events) listing() (reader.Listing, map[string]bool) {
	var l reader.Listing
	for _, e := range ev.created {
		o := e.Object()
		// A listing gives no version id (reads are guarded by the ETag): the same object
		// found by a listing and by an event must look the same to the checkpoint.
		o.VersionID = ""
		l.Objects = append(l.Objects, o)
	}
	slices.SortFunc(l.Objects, func(a, b reader.Object) int { return strings.Compare(a.Key, b.Key) })
	removed := make(map[string]bool, len(ev.removed))
	for key := range ev.removed {
		removed[key] = true
	}
	return l, removed
}

// settle deletes the messages all of whose files are handled (handled tells, from the
// checkpoint just saved); the others stay, and come back once the run stops keeping
// them invisible.
func (ev *events) settle(ctx context.Context, r *run, handled func(key string) bool) {
	for _, p := range ev.pending {
		done := true
		for _, key := range p.keys {
			if _, gone := ev.removed[key]; gone {
				continue // a removal is handled once the checkpoint without the file is saved
			}
			if !handled(key) {
				done = false
				break
			}
		}
		if !done {
			continue
		}
		if err := ev.queue.Delete(ctx, p.msg.ReceiptHandle); err != nil {
			r.log.Warn("deleting a handled message; it comes back and is handled as done", "message_id", p.msg.ID, "error", err)
			continue
		}
		ev.counts.Deleted++
	}
}

// close stops keeping the messages invisible.
func (ev *events) close() {
	if ev == nil || ev.stop == nil {
		return
	}
	_ = ev.stop()
	ev.stop = nil
}

// reconcileDue tells whether a run of an SQS-discovered sync must also list the prefix:
// when no run of it listed within discovery.reconcile (judged from the run history).
func (r *run) reconcileDue(ctx context.Context) (bool, error) {
	every := r.sync.Source.Discovery.Reconcile
	if every <= 0 {
		every = config.DefaultReconcile
	}
	reports, err := r.opts.Store.History(ctx, r.state)
	if err != nil {
		return false, fmt.Errorf("reading the run history of sync %s: %w", r.state, err)
	}
	for _, b := range reports {
		var rep struct {
			Status    string           `json:"status"`
			StartedAt time.Time        `json:"started_at"`
			Discovery *DiscoveryCounts `json:"discovery"`
			DryRun    bool             `json:"dry_run"`
		}
		if json.Unmarshal(b, &rep) != nil || rep.DryRun || rep.Status == StatusFailed {
			continue
		}
		if rep.Discovery == nil || rep.Discovery.Listed {
			return time.Since(rep.StartedAt) >= every, nil
		}
	}
	return true, nil // never listed: the first run lists the whole prefix
}

// handledFile tells whether the file of key is done for every destination in the
// working checkpoint, or was rejected by this run.
func (r *run) handledFile(key string) bool {
	if r.isRejected(key) {
		return true
	}
	r.mu.Lock()
	for _, fe := range r.report.FileErrors {
		if fe.Key == key && !strings.HasSuffix(fe.Error, "between listing and reading") {
			r.mu.Unlock()
			return true
		}
	}
	r.mu.Unlock()
	return r.ledger.fileDone(key)
}
