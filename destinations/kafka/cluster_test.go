package kafka

import (
	"context"
	"encoding/binary"
	"encoding/json"
	"fmt"
	"slices"
	"sync"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kfake"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// testTopic is the topic every test cluster has, with testPartitions partitions.
const (
	testTopic      = "backflow.test"
	testPartitions = 3
)

// cluster is an in-process Kafka (kfake, on 127.0.0.1) holding testTopic, and a
// destinationstest.Receiver that consumes the topic back. Its faults are the broker's
// own answers: INVALID_RECORD for a partition batch holding a refused user's record,
// NOT_ENOUGH_REPLICAS (retriable, nothing appended) for the next produce requests, and
// produce requests held until released.
type cluster struct {
	t      testing.TB
	c      *kfake.Cluster
	addrs  []string
	client []kgo.Opt // what a consumer needs besides the brokers (SASL)

	mu        sync.Mutex
	refused   map[string]bool
	refusing  bool
	refusedN  int // partition batches answered INVALID_RECORD
	decompres kgo.Decompressor
}

func newCluster(t testing.TB, opts ...kfake.Opt) *cluster {
	t.Helper()
	opts = append([]kfake.Opt{kfake.NumBrokers(1), kfake.SeedTopics(testPartitions, testTopic)}, opts...)
	c, err := kfake.NewCluster(opts...)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(c.Close)
	return &cluster{t: t, c: c, addrs: c.ListenAddrs(), refused: map[string]bool{}, decompres: kgo.DefaultDecompressor()}
}

// options are a destination's options for this cluster.
func (k *cluster) options() *Options {
	return &Options{Brokers: k.addrs, Topic: testTopic, Key: KeyUserID, Compression: CompressionSnappy}
}

// dest builds a destination as the registry does (wrapped), with fast retries.
func (k *cluster) dest(t testing.TB, o *Options) destinations.Destination {
	t.Helper()
	cfg := testConfig(o)
	d, err := New(context.Background(), cfg, destinations.Env{Sync: "test", Version: "test"})
	if err != nil {
		t.Fatal(err)
	}
	return destinations.Wrap(d, cfg, nil)
}

func testConfig(o *Options) config.Destination {
	return config.Destination{Type: Type, Name: Type, MaxInFlight: DefaultMaxInFlight, BatchSize: DefaultBatchSize,
		Timeout: 10 * time.Second, Retry: config.Retry{MaxAttempts: 5, MaxBackoff: 200 * time.Millisecond}, Options: o}
}

// records consumes testTopic from its start to its end, every partition.
func (k *cluster) records() []*kgo.Record {
	k.t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), 20*time.Second)
	defer cancel()
	ends := k.endOffsets(ctx)
	want := int64(0)
	for _, e := range ends {
		want += e
	}
	if want == 0 {
		return nil
	}
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.addrs...),
		kgo.ConsumeTopics(testTopic), kgo.ConsumeResetOffset(kgo.NewOffset().AtStart())}, k.client...)...)
	if err != nil {
		k.t.Fatal(err)
	}
	defer cl.Close()
	var out []*kgo.Record
	for int64(len(out)) < want {
		fs := cl.PollFetches(ctx)
		if err := ctx.Err(); err != nil {
			k.t.Fatalf("consumed %d of %d records: %v", len(out), want, err)
		}
		fs.EachError(func(topic string, p int32, err error) { k.t.Fatalf("consuming %s/%d: %v", topic, p, err) })
		fs.EachRecord(func(r *kgo.Record) {
			if r.Offset < ends[r.Partition] {
				out = append(out, r)
			}
		})
	}
	// Arrival order within a partition is offset order; across partitions by time.
	slices.SortStableFunc(out, func(a, b *kgo.Record) int { return a.Timestamp.Compare(b.Timestamp) })
	return out
}

// endOffsets returns every partition's high watermark.
func (k *cluster) endOffsets(ctx context.Context) map[int32]int64 {
	cl, err := kgo.NewClient(append([]kgo.Opt{kgo.SeedBrokers(k.addrs...)}, k.client...)...)
	if err != nil {
		k.t.Fatal(err)
	}
	defer cl.Close()
	req := kmsg.NewPtrListOffsetsRequest()
	rt := kmsg.NewListOffsetsRequestTopic()
	rt.Topic = testTopic
	for p := range int32(testPartitions) {
		rp := kmsg.NewListOffsetsRequestTopicPartition()
		rp.Partition, rp.Timestamp = p, -1 // latest
		rt.Partitions = append(rt.Partitions, rp)
	}
	req.Topics = append(req.Topics, rt)
	resp, err := req.RequestWith(ctx, cl)
	if err != nil {
		k.t.Fatalf("listing end offsets: %v", err)
	}
	ends := map[int32]int64{}
	for _, t := range resp.Topics {
		for _, p := range t.Partitions {
			if err := kerr.ErrorForCode(p.ErrorCode); err != nil {
				k.t.Fatalf("end offset of %s/%d: %v", t.Topic, p.Partition, err)
			}
			ends[p.Partition] = p.Offset
		}
	}
	return ends
}

// Received returns every record of the topic as a received message.
func (k *cluster) Received() []destinationstest.Received {
	var out []destinationstest.Received
	for _, r := range k.records() {
		var v struct {
			User string `json:"userId"`
		}
		_ = json.Unmarshal(r.Value, &v)
		out = append(out, destinationstest.Received{ID: header(r, "messageId"), UserID: v.User, JSON: r.Value})
	}
	return out
}

func header(r *kgo.Record, key string) string {
	for _, h := range r.Headers {
		if h.Key == key {
			return string(h.Value)
		}
	}
	return ""
}

func (k *cluster) Capabilities() destinationstest.Capabilities {
	return destinationstest.Capabilities{Refuse: true, Fail: true, Stall: true}
}

// RefuseUsers makes the broker answer INVALID_RECORD for every partition batch that
// holds a record keyed by one of these users (the destination keys by userId), as a
// broker refuses a whole batch for one bad record.
func (k *cluster) RefuseUsers(users ...string) {
	k.mu.Lock()
	defer k.mu.Unlock()
	for _, u := range users {
		k.refused[u] = true
	}
	if k.refusing {
		return
	}
	k.refusing = true
	for p := range int32(testPartitions) {
		k.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Partitions: []int32{p},
			Err: kerr.InvalidRecord, Count: -1, When: func(req kmsg.Request) bool { return k.holdsRefused(req, p) }})
	}
}

// holdsRefused reports whether the produce request's batch for partition p holds a
// record keyed by a refused user. It runs on the cluster's goroutine.
func (k *cluster) holdsRefused(req kmsg.Request, p int32) bool {
	pr, ok := req.(*kmsg.ProduceRequest)
	if !ok {
		return false
	}
	for _, t := range pr.Topics {
		for _, part := range t.Partitions {
			if part.Partition != p {
				continue
			}
			for _, key := range k.keys(part.Records) {
				k.mu.Lock()
				bad := k.refused[key]
				if bad {
					k.refusedN++
				}
				k.mu.Unlock()
				if bad {
					return true
				}
			}
		}
	}
	return false
}

// keys decodes the record keys of one partition's record batches.
func (k *cluster) keys(raw []byte) []string {
	var out []string
	for len(raw) > 0 {
		var b kmsg.RecordBatch
		if err := b.ReadFrom(raw); err != nil {
			k.t.Errorf("decoding a record batch: %v", err)
			return out
		}
		raw = raw[12+int(b.Length):] // base offset (8) and length (4) precede Length bytes
		recs := b.Records
		if codec := kgo.CompressionCodecType(b.Attributes & 0x7); codec != kgo.CodecNone {
			var err error
			if recs, err = k.decompres.Decompress(recs, codec); err != nil {
				k.t.Errorf("decompressing a record batch: %v", err)
				return out
			}
		}
		for range b.NumRecords {
			n, size := binary.Varint(recs)
			var r kmsg.Record
			if size <= 0 || r.ReadFrom(recs) != nil {
				k.t.Errorf("decoding a record")
				return out
			}
			out = append(out, string(r.Key))
			recs = recs[size+int(n):]
		}
	}
	return out
}

// FailNext makes the broker answer the next n produce requests NOT_ENOUGH_REPLICAS:
// retriable, and nothing of them is appended.
func (k *cluster) FailNext(n int) {
	k.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Err: kerr.NotEnoughReplicas, Count: n})
}

// FailAll makes the broker answer every produce request NOT_ENOUGH_REPLICAS until the
// returned func is called.
func (k *cluster) FailAll() (stop func()) {
	h := k.c.Fault(kfake.Fault{Keys: []kmsg.Key{kmsg.Produce}, Topic: testTopic, Err: kerr.NotEnoughReplicas, Count: -1})
	return h.Remove
}

// Stall holds every later produce request until release (or the cluster closes).
func (k *cluster) Stall() (<-chan struct{}, func()) {
	arrived, release := make(chan struct{}), make(chan struct{})
	var arrivedOnce, releaseOnce sync.Once
	k.c.ControlKey(int16(kmsg.Produce), func(kmsg.Request) (kmsg.Response, error, bool) {
		select {
		case <-release:
			k.c.DropControl()
			return nil, nil, false
		default:
		}
		arrivedOnce.Do(func() { close(arrived) })
		k.c.SleepControl(func() { <-release })
		return nil, nil, false // then the broker handles it as usual
	})
	return arrived, func() { releaseOnce.Do(func() { close(release) }) }
}

// counts maps each messageId header to how many records carry it.
func counts(recs []*kgo.Record) map[string]int {
	c := map[string]int{}
	for _, r := range recs {
		c[header(r, "messageId")]++
	}
	return c
}

func describe(r *kgo.Record) string {
	return fmt.Sprintf("%s/%d@%d key=%q", r.Topic, r.Partition, r.Offset, r.Key)
}
