package kafka

import (
	"bytes"
	"context"
	"errors"
	"log/slog"
	"regexp"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/mapper"
)

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		k := newCluster(t)
		return k.dest(t, k.options()), k
	})
}

func ctxT(t *testing.T) context.Context {
	ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
	t.Cleanup(cancel)
	return ctx
}

// TestRecords: every message becomes one record whose value is the message's bytes,
// whose key is the configured identifier and whose headers are messageId and type.
func TestRecords(t *testing.T) {
	msgs := destinationstest.Messages("rec", 30)
	msgs[1].UserID, msgs[1].AnonymousID = "", "anon-1" // the key falls back to anonymousId
	for _, tc := range []struct {
		key  string
		want func(m mapper.Message) string
	}{
		{KeyUserID, func(m mapper.Message) string { return m.UserID + m.AnonymousID }},
		{KeyMessageID, func(m mapper.Message) string { return m.ID }},
		{KeyGroupID, func(m mapper.Message) string {
			if m.GroupID != "" {
				return m.GroupID
			}
			return m.UserID + m.AnonymousID
		}},
	} {
		t.Run(tc.key, func(t *testing.T) {
			k := newCluster(t)
			o := k.options()
			o.Key = tc.key
			d := k.dest(t, o)
			if err := d.Write(ctxT(t), msgs); err != nil {
				t.Fatal(err)
			}
			if err := d.Close(ctxT(t)); err != nil {
				t.Fatal(err)
			}
			recs := k.records()
			if len(recs) != len(msgs) {
				t.Fatalf("%d records, want %d", len(recs), len(msgs))
			}
			byID := map[string]*kgo.Record{}
			partitionOf := map[string]int32{}
			for _, r := range recs {
				byID[header(r, "messageId")] = r
			}
			for _, m := range msgs {
				r := byID[m.ID]
				if r == nil {
					t.Fatalf("no record with messageId %s", m.ID)
				}
				if string(r.Value) != string(m.JSON) {
					t.Errorf("%s: value %s, want the message's bytes %s", describe(r), r.Value, m.JSON)
				}
				if got, want := string(r.Key), tc.want(m); got != want {
					t.Errorf("%s: key %q, want %q", describe(r), got, want)
				}
				if got := header(r, "type"); got != m.Type {
					t.Errorf("%s: type header %q, want %q", describe(r), got, m.Type)
				}
				if len(r.Headers) != 2 {
					t.Errorf("%s: headers %v, want messageId and type", describe(r), r.Headers)
				}
				// One key, one partition: the order of an entity's records is kept.
				if p, seen := partitionOf[string(r.Key)]; seen && p != r.Partition {
					t.Errorf("key %q on partitions %d and %d", r.Key, p, r.Partition)
				}
				partitionOf[string(r.Key)] = r.Partition
			}
			parts := map[int32]bool{}
			for _, r := range recs {
				parts[r.Partition] = true
			}
			if tc.key == KeyMessageID && len(parts) < 2 {
				t.Error("keyed by messageId, 30 records are all on one partition")
			}
		})
	}
}

// TestOrderPerKey: records of one key arrive in the order they were written, across
// Writes.
func TestOrderPerKey(t *testing.T) {
	k := newCluster(t)
	d := k.dest(t, k.options())
	var all []mapper.Message
	for w := range 5 {
		msgs := destinationstest.Messages("order"+string(rune('a'+w)), 50)
		for i := range msgs {
			msgs[i].UserID = []string{"alice", "bob", "carol"}[i%3]
		}
		if err := d.Write(ctxT(t), msgs); err != nil {
			t.Fatal(err)
		}
		all = append(all, msgs...)
	}
	d.Close(ctxT(t))
	want := map[string][]string{}
	for _, m := range all {
		want[m.UserID] = append(want[m.UserID], m.ID)
	}
	got := map[string][]string{}
	recs := k.records()
	// Within a partition, offsets are the order.
	byPart := map[int32][]*kgo.Record{}
	for _, r := range recs {
		byPart[r.Partition] = append(byPart[r.Partition], r)
	}
	for _, rs := range byPart {
		for i := 1; i < len(rs); i++ {
			if rs[i].Offset < rs[i-1].Offset {
				t.Fatalf("records not in offset order")
			}
		}
		for _, r := range rs {
			got[string(r.Key)] = append(got[string(r.Key)], header(r, "messageId"))
		}
	}
	for user, ids := range want {
		if strings.Join(got[user], ",") != strings.Join(ids, ",") {
			t.Errorf("user %s: records in order %v, want %v", user, got[user], ids)
		}
	}
}

// TestBrokerFailsThenAccepts: a broker refusing produce requests transiently — more
// times than franz-go retries by itself, so that the Write fails and Wrap retries it —
// still gets every message exactly once.
func TestBrokerFailsThenAccepts(t *testing.T) {
	k := newCluster(t)
	cfg := testConfig(k.options())
	raw, err := New(context.Background(), cfg, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	// The broker refuses every produce request until Wrap says it retries the Write: by
	// then franz-go's own tries (1+5 for each record batch, however it groups them into
	// requests) have all failed, and the retried Write finds the broker accepting.
	var log bytes.Buffer
	stop := k.FailAll()
	var once sync.Once
	logger := slog.New(onMessage{Handler: slog.NewTextHandler(&log, nil), msg: "retrying a batch", do: func() { once.Do(stop) }})
	d := destinations.Wrap(raw, cfg, logger)
	msgs := destinationstest.Messages("flaky", 200)
	if err := d.Write(ctxT(t), msgs); err != nil {
		t.Fatalf("Write after refused produce requests: %v", err)
	}
	if !strings.Contains(log.String(), "retrying a batch") || !strings.Contains(log.String(), "NOT_ENOUGH_REPLICAS") {
		t.Errorf("the Write was not retried as a whole; log:\n%s", log.String())
	}
	d.Close(ctxT(t))
	c := counts(k.records())
	for _, m := range msgs {
		if c[m.ID] != 1 {
			t.Errorf("message %s received %d times, want 1", m.ID, c[m.ID])
		}
	}
}

// onMessage is a slog.Handler that calls do when a record with message msg is handled.
type onMessage struct {
	slog.Handler
	msg string
	do  func()
}

func (h onMessage) Handle(ctx context.Context, r slog.Record) error {
	if r.Message == h.msg {
		h.do()
	}
	return h.Handler.Handle(ctx, r)
}

func (h onMessage) WithAttrs(attrs []slog.Attr) slog.Handler {
	return onMessage{Handler: h.Handler.WithAttrs(attrs), msg: h.msg, do: h.do}
}

func (h onMessage) WithGroup(name string) slog.Handler {
	return onMessage{Handler: h.Handler.WithGroup(name), msg: h.msg, do: h.do}
}

// TestBrokerKeepsFailing: a broker that never accepts makes the Write fail with a
// retryable error naming the cause, claiming nothing.
func TestBrokerKeepsFailing(t *testing.T) {
	k := newCluster(t)
	o := k.options()
	cfg := testConfig(o)
	cfg.Retry.MaxAttempts = 1 // franz-go's own tries are enough to fail
	raw, err := New(context.Background(), cfg, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	d := destinations.Wrap(raw, cfg, nil)
	defer d.Close(ctxT(t))
	k.FailNext(1000)
	err = d.Write(ctxT(t), destinationstest.Messages("down", 10))
	if err == nil || !destinations.IsRetryable(err) || !strings.Contains(err.Error(), "NOT_ENOUGH_REPLICAS") {
		t.Fatalf("Write to a broker that keeps refusing = %v, want a retryable NOT_ENOUGH_REPLICAS", err)
	}
}

// TestMissingTopic: a topic that does not exist is a clear error from Check and from
// Write, soon, and is not created.
func TestMissingTopic(t *testing.T) {
	k := newCluster(t)
	o := k.options()
	o.Topic = "no.such.topic"
	d := k.dest(t, o)
	defer d.Close(ctxT(t))
	want := `topic "no.such.topic" does not exist on brokers ` + k.addrs[0]
	err := d.(destinations.Checker).Check(ctxT(t))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Check = %v, want %q", err, want)
	}
	start := time.Now()
	err = d.Write(ctxT(t), destinationstest.Messages("missing", 5))
	if err == nil || !strings.Contains(err.Error(), want) {
		t.Fatalf("Write = %v, want %q", err, want)
	}
	if destinations.IsRetryable(err) || isBatch(err) {
		t.Errorf("Write to a missing topic = %#v: want neither retryable nor rejects", err)
	}
	if el := time.Since(start); el > 8*time.Second {
		t.Errorf("Write to a missing topic took %s", el)
	}
	t.Logf("missing topic found in %s: %v", time.Since(start).Round(time.Millisecond), err)
	if err := d.(destinations.Checker).Check(ctxT(t)); err == nil {
		t.Error("the topic was created by the Write")
	}
}

func isBatch(err error) bool {
	var be *destinations.BatchError
	return errors.As(err, &be)
}

func TestCheck(t *testing.T) {
	k := newCluster(t)
	d := k.dest(t, k.options())
	defer d.Close(ctxT(t))
	if err := d.(destinations.Checker).Check(ctxT(t)); err != nil {
		t.Fatalf("Check of an existing topic: %v", err)
	}
	if n := len(k.records()); n != 0 {
		t.Errorf("Check produced %d records", n)
	}

	// Nothing listens: the error names the brokers.
	k.c.Close()
	start := time.Now()
	err := d.(destinations.Checker).Check(ctxT(t))
	t.Log(err)
	if err == nil || !strings.Contains(err.Error(), "cannot connect to any of brokers "+k.addrs[0]) || !strings.Contains(err.Error(), "connection refused") {
		t.Errorf("Check without brokers = %v", err)
	}
	if el := time.Since(start); el > time.Second {
		t.Errorf("Check without brokers took %s", el)
	}
}

// TestTooLarge: a message over the batch limit is refused alone (a reject); the others
// of its Write are delivered once.
func TestTooLarge(t *testing.T) {
	k := newCluster(t)
	d := k.dest(t, k.options())
	msgs := destinationstest.Messages("large", 10)
	msgs[4] = destinationstest.LargeMessages("huge", 1, MaxBatchBytes+100)[0]
	err := d.Write(ctxT(t), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 4 {
		t.Fatalf("Write with one message too large = %v, want a *BatchError for message 4", err)
	}
	if destinations.IsRetryable(be.Failed[0].Err) || !strings.Contains(be.Failed[0].Err.Error(), "MESSAGE_TOO_LARGE") {
		t.Errorf("refusal: %v", be.Failed[0].Err)
	}
	d.Close(ctxT(t))
	c := counts(k.records())
	for i, m := range msgs {
		if want := map[bool]int{true: 0, false: 1}[i == 4]; c[m.ID] != want {
			t.Errorf("message %d received %d times, want %d", i, c[m.ID], want)
		}
	}
}

// TestSASL: SCRAM and PLAIN credentials are accepted, wrong ones fail Check and Write
// as a refusal of the credentials, never as rejects.
func TestSASL(t *testing.T) {
	k := newCluster(t, kfake.EnableSASL(),
		kfake.Superuser(MechanismScramSHA512, "backflow", "s3cret"),
		kfake.Superuser(MechanismPlain, "plainuser", "p1ain"))
	k.client = []kgo.Opt{kgo.SASL(scram.Auth{User: "backflow", Pass: "s3cret"}.AsSha512Mechanism())}
	for _, s := range []SASL{
		{Mechanism: MechanismScramSHA512, Username: "backflow", Password: "s3cret"},
		{Mechanism: MechanismPlain, Username: "plainuser", Password: "p1ain"},
	} {
		o := k.options()
		o.SASL = s
		d := k.dest(t, o)
		if err := d.(destinations.Checker).Check(ctxT(t)); err != nil {
			t.Fatalf("%s: Check: %v", s.Mechanism, err)
		}
		if err := d.Write(ctxT(t), destinationstest.Messages("sasl"+s.Mechanism, 5)); err != nil {
			t.Fatalf("%s: Write: %v", s.Mechanism, err)
		}
		d.Close(ctxT(t))
	}
	if n := len(k.records()); n != 10 {
		t.Errorf("%d records, want 10", n)
	}

	// kfake drops the connection on a wrong password; a Kafka broker answers
	// SASL_AUTHENTICATION_FAILED first, as this control does for PLAIN.
	k.c.ControlKey(int16(kmsg.SASLAuthenticate), func(req kmsg.Request) (kmsg.Response, error, bool) {
		k.c.KeepControl()
		r := req.(*kmsg.SASLAuthenticateRequest)
		if parts := bytes.Split(r.SASLAuthBytes, []byte{0}); len(parts) != 3 || string(parts[2]) == "p1ain" {
			return nil, nil, false
		}
		resp := r.ResponseKind().(*kmsg.SASLAuthenticateResponse)
		resp.ErrorCode = kerr.SaslAuthenticationFailed.Code
		resp.ErrorMessage = kmsg.StringPtr("Authentication failed: Invalid username or password")
		return resp, nil, true
	})
	o := k.options()
	o.SASL = SASL{Mechanism: MechanismPlain, Username: "plainuser", Password: "wrong"}
	d := k.dest(t, o)
	defer d.Close(ctxT(t))
	start := time.Now()
	err := d.(destinations.Checker).Check(ctxT(t))
	t.Logf("Check with a wrong password: %s: %v", time.Since(start), err)
	if err == nil || !strings.Contains(err.Error(), `refused the SASL credentials of user "plainuser"`) {
		t.Errorf("Check with a wrong password = %v", err)
	}
	if err != nil && strings.Contains(err.Error(), "wrong") {
		t.Errorf("the password is in the error: %v", err)
	}
	start = time.Now()
	err = d.Write(ctxT(t), destinationstest.Messages("badsasl", 5))
	t.Logf("Write with a wrong password: %s: %v", time.Since(start), err)
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || destinations.Splittable(pe) {
		t.Errorf("Write with a wrong password = %v, want an unsplittable *PermanentError", err)
	}
}

// TestClosed: a Write after Close fails, claiming nothing; a second Close is harmless.
func TestClosed(t *testing.T) {
	k := newCluster(t)
	d := k.dest(t, k.options())
	if err := d.Close(ctxT(t)); err != nil {
		t.Fatal(err)
	}
	if err := d.Close(ctxT(t)); err != nil {
		t.Errorf("second Close: %v", err)
	}
	if err := d.Write(ctxT(t), destinationstest.Messages("closed", 1)); !errors.Is(err, destinations.ErrClosed) {
		t.Errorf("Write after Close = %v", err)
	}
}

// TestIdempotentRetries: a broker that appends a batch but answers
// NOT_ENOUGH_REPLICAS_AFTER_APPEND (the write reached too few replicas) gets the same
// batch again; the idempotent producer's sequence numbers make the broker keep one copy.
func TestIdempotentRetries(t *testing.T) {
	k := newCluster(t)
	d := k.dest(t, k.options())
	h := k.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Err: kerr.NotEnoughReplicasAfterAppend, Count: 3})
	msgs := destinationstest.Messages("idem", 100)
	if err := d.Write(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	d.Close(ctxT(t))
	if h.Hits() != 3 {
		t.Fatalf("%d produce requests answered NOT_ENOUGH_REPLICAS_AFTER_APPEND, want 3", h.Hits())
	}
	c := counts(k.records())
	for _, m := range msgs {
		if c[m.ID] != 1 {
			t.Errorf("message %s received %d times, want 1", m.ID, c[m.ID])
		}
	}
}

// TestBrokers: partitions led by three brokers; every message arrives once.
func TestBrokers(t *testing.T) {
	k := newCluster(t, kfake.NumBrokers(3))
	d := k.dest(t, k.options())
	msgs := destinationstest.Messages("brokers", 300)
	if err := d.Write(ctxT(t), msgs); err != nil {
		t.Fatal(err)
	}
	d.Close(ctxT(t))
	c := counts(k.records())
	for _, m := range msgs {
		if c[m.ID] != 1 {
			t.Errorf("message %s received %d times, want 1", m.ID, c[m.ID])
		}
	}
	leaders := map[int32]bool{}
	for p := range int32(testPartitions) {
		leaders[k.c.LeaderFor(testTopic, p)] = true
	}
	t.Logf("%d partitions led by %d brokers", testPartitions, len(leaders))
}

// TestSoftwareVersion: any backflow version becomes one Kafka accepts (KIP-511).
func TestSoftwareVersion(t *testing.T) {
	valid := regexp.MustCompile(`^[a-zA-Z0-9](?:[a-zA-Z0-9.-]*[a-zA-Z0-9])?$`)
	for v, want := range map[string]string{"": "dev", "v1.2.3+dirty": "v1.2.3-dirty", "(devel)": "devel", "1.0 beta/2": "1.0-beta-2", "-.": "dev"} {
		got := softwareVersion(v)
		if got != want || !valid.MatchString(got) {
			t.Errorf("softwareVersion(%q) = %q, want %q", v, got, want)
		}
	}
}

// TestReplay: a second run sending the same rows (a run killed before its checkpoint)
// produces the same records again — same key, so the same partition, and the same
// messageId header — which is what a consumer deduplicates by.
func TestReplay(t *testing.T) {
	k := newCluster(t)
	msgs := destinationstest.Messages("replay", 60)
	for range 2 {
		d := k.dest(t, k.options())
		if err := d.Write(ctxT(t), msgs); err != nil {
			t.Fatal(err)
		}
		d.Close(ctxT(t))
	}
	type placed struct {
		partition int32
		key       string
		value     string
	}
	seen := map[string][]placed{}
	for _, r := range k.records() {
		id := header(r, "messageId")
		seen[id] = append(seen[id], placed{r.Partition, string(r.Key), string(r.Value)})
	}
	for _, m := range msgs {
		p := seen[m.ID]
		if len(p) != 2 || p[0] != p[1] {
			t.Errorf("message %s replayed as %+v, want the same record twice", m.ID, p)
		}
	}
}

// TestConcurrentRefusals: Writes in flight together share partition batches, so a
// refused record fails other Writes' records too; each Write still rejects exactly its
// own refused messages, and every other message arrives once.
func TestConcurrentRefusals(t *testing.T) {
	k := newCluster(t)
	cfg := testConfig(k.options())
	cfg.MaxInFlight = 4
	raw, err := New(context.Background(), cfg, destinations.Env{})
	if err != nil {
		t.Fatal(err)
	}
	d := destinations.Wrap(raw, cfg, nil)
	const writers, per = 4, 80
	batches := make([][]mapper.Message, writers)
	poison := map[string]bool{}
	for w := range writers {
		batches[w] = destinationstest.Messages("conc"+string(rune('a'+w)), per)
		for i := w; i < per; i += 23 {
			poison[batches[w][i].ID] = true
			k.RefuseUsers(batches[w][i].UserID)
		}
	}
	errs := make([]error, writers)
	var wg sync.WaitGroup
	for w := range writers {
		wg.Go(func() { errs[w] = d.Write(ctxT(t), batches[w]) })
	}
	wg.Wait()
	d.Close(ctxT(t))
	c := counts(k.records())
	for w, err := range errs {
		var want []int
		for i, m := range batches[w] {
			if poison[m.ID] {
				want = append(want, i)
			}
		}
		var be *destinations.BatchError
		if !errors.As(err, &be) {
			t.Errorf("Write %d = %v, want a *BatchError", w, err)
			continue
		}
		var got []int
		for _, f := range be.Failed {
			got = append(got, f.Index)
		}
		if !slices.Equal(got, want) {
			t.Errorf("Write %d refused %v, want %v", w, got, want)
		}
		for _, m := range batches[w] {
			if want := map[bool]int{true: 0, false: 1}[poison[m.ID]]; c[m.ID] != want {
				t.Errorf("message %s received %d times, want %d", m.ID, c[m.ID], want)
			}
		}
	}
	k.mu.Lock()
	defer k.mu.Unlock()
	if k.refusedN == 0 {
		t.Error("the broker refused no batch")
	}
}
