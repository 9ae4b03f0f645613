// Package kafka is the kafka destination: every message becomes one record of a topic,
// produced by franz-go's idempotent producer with acks=all. A Write returns nil only once
// every one of its records was acknowledged by all in-sync replicas.
//
// Sample config:
//
//	destinations:
//	  - type: kafka
//	    brokers: ["kafka-1:9092", "kafka-2:9092"]
//	    topic: warehouse.users
//	    key: userId                 # userId (default) | anonymousId | groupId | messageId
//	    compression: snappy         # none | gzip | snappy | lz4 | zstd
//	    sasl: { mechanism: SCRAM-SHA-512, username: backflow, password: ${KAFKA_PASSWORD} }
//	    tls: true
//	    batch_size: 1000            # records per Write
//	    max_in_flight: 1            # Writes at once; 1 keeps each key's records in order
//
// A record's value is the message exactly as the mapper encoded it (what `backflow
// preview --json` prints), its key the configured identifier, and its headers
// messageId and type.
package kafka

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"log/slog"
	"net"
	"net/http"
	"os"
	"strings"
	"sync"
	"sync/atomic"
	"time"

	"github.com/twmb/franz-go/pkg/kerr"
	"github.com/twmb/franz-go/pkg/kgo"
	"github.com/twmb/franz-go/pkg/kmsg"
	"github.com/twmb/franz-go/pkg/sasl"
	"github.com/twmb/franz-go/pkg/sasl/plain"
	"github.com/twmb/franz-go/pkg/sasl/scram"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*Kafka)(nil)
	_ destinations.Checker     = (*Kafka)(nil)
)

// MaxBatchBytes bounds one record batch before compression (franz-go's default, which
// mirrors the broker's default max.message.bytes of 1 MiB): a record larger than this
// alone is refused (a reject).
const MaxBatchBytes = 1_000_012

// checkTimeout bounds `backflow check`'s metadata request.
const checkTimeout = 15 * time.Second

// dialTimeout bounds Check's connection to one broker.
const dialTimeout = 5 * time.Second

// Kind is the kafka destination's kind: one Write of 1,000 records at a time. franz-go's
// idempotent producer already keeps up to 5 produce requests in flight per broker, in
// order, so a single Write spread over many partitions keeps every broker busy; a second
// concurrent Write would only let a later batch of a key land before an earlier one that
// failed and is retried.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: DefaultMaxInFlight, BatchSize: DefaultBatchSize, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// Kafka produces messages to one topic. Retries of whole Writes, rate limits and
// timeouts come from destinations.Wrap; franz-go retries each produce request itself,
// without duplicates, until the Write's context ends.
type Kafka struct {
	client  *kgo.Client
	topic   string
	seeds   []string
	brokers string // for messages
	key     string
	sasl    SASL

	// isolate is held shared by every Write while it produces, and exclusively while
	// records refused as a batch are produced again one by one (see isolate): a record
	// is then alone in its batch, so a refusal concerns it and nothing else.
	isolate sync.RWMutex
	closed  atomic.Bool
}

// New is the kafka destination's Factory. It connects to nothing: franz-go dials the
// brokers on the first Write or Check.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	return newKafka(cfg, o, env)
}

func newKafka(cfg config.Destination, o *Options, env destinations.Env) (*Kafka, error) {
	if len(o.Brokers) == 0 || o.Topic == "" {
		return nil, errors.New("kafka: brokers and topic are required")
	}
	codec, err := codecOf(o.Compression)
	if err != nil {
		return nil, err
	}
	batch := cfg.BatchSize
	if batch <= 0 {
		batch = DefaultBatchSize
	}
	inFlight := max(cfg.MaxInFlight, 1)
	logger := env.Logger
	if logger == nil {
		logger = slog.New(slog.DiscardHandler)
	}
	policy := destinations.NewPolicy(cfg.Retry)
	opts := []kgo.Opt{
		kgo.SeedBrokers(o.Brokers...),
		kgo.DefaultProduceTopic(o.Topic),
		kgo.ClientID("backflow"),
		kgo.SoftwareNameAndVersion("backflow", softwareVersion(env.Version)),
		kgo.WithLogger(kgoLogger{logger.With("destination", cfg.Name, "topic", o.Topic)}),
		// Acknowledged means written to every in-sync replica, which the idempotent
		// producer (franz-go's default, kept) requires anyway.
		kgo.RequiredAcks(kgo.AllISRAcks()),
		kgo.ProducerBatchCompression(codec),
		kgo.ProducerBatchMaxBytes(MaxBatchBytes),
		// A Write hands over all its records at once and waits for them: waiting for
		// more would only delay the last request of every Write.
		kgo.ProducerLinger(0),
		// Room for every Write in flight, and a batch left behind by a cancelled one.
		kgo.MaxBufferedRecords(max(2*batch*inFlight, 10_000)),
		// A transient refusal is tried again by franz-go (idempotently: no duplicate)
		// a few times, then the Write fails with it and destinations.Wrap retries the
		// Write with backoff, logging it.
		kgo.RecordRetries(5),
		// franz-go's waits between its own tries follow the destination's retry
		// settings, as Wrap's do: exponential backoff with full jitter from 100 ms,
		// capped at retry.max_backoff.
		kgo.RetryBackoffFn(func(tries int) time.Duration { return policy.Backoff(max(tries, 1), 0) }),
		// A topic that does not exist fails the Write after four metadata loads that do
		// not find it (about a second), instead of waiting for the whole timeout: long
		// enough for a topic just created to reach every broker.
		kgo.UnknownTopicRetries(4),
		// Metadata is loaded again at most every 250 ms (franz-go's default is 5 s):
		// a retry after a leader moved, or the look-up of a missing topic, waits no
		// longer than that.
		kgo.MetadataMinAge(250 * time.Millisecond),
	}
	// Topics are never created by backflow: kgo.AllowAutoTopicCreation is not set.
	if o.SASL.enabled() {
		m, err := mechanism(o.SASL)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.SASL(m))
	}
	if o.TLS || o.CAFile != "" {
		tc, err := tlsConfig(o.CAFile)
		if err != nil {
			return nil, err
		}
		opts = append(opts, kgo.DialTLSConfig(tc))
	}
	client, err := kgo.NewClient(opts...)
	if err != nil {
		return nil, fmt.Errorf("kafka client: %w", err)
	}
	return &Kafka{
		client:  client,
		topic:   o.Topic,
		seeds:   o.Brokers,
		brokers: strings.Join(o.Brokers, ","),
		key:     o.Key,
		sasl:    o.SASL,
	}, nil
}

// softwareVersion is backflow's version as Kafka accepts a client software version:
// [a-zA-Z0-9.-], starting and ending with a letter or digit (KIP-511); brokers refuse
// the connection's ApiVersions request otherwise.
func softwareVersion(v string) string {
	v = strings.Trim(strings.Map(softwareRune, v), ".-")
	if v == "" {
		return "dev"
	}
	return v
}

// softwareRune keeps what Kafka allows in a client software version, '-' for the rest.
func softwareRune(r rune) rune {
	if r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '-' {
		return r
	}
	return '-'
}

func codecOf(name string) (kgo.CompressionCodec, error) {
	switch name {
	case CompressionNone:
		return kgo.NoCompression(), nil
	case CompressionGzip:
		return kgo.GzipCompression(), nil
	case "", CompressionSnappy:
		return kgo.SnappyCompression(), nil
	case CompressionLZ4:
		return kgo.Lz4Compression(), nil
	case CompressionZstd:
		return kgo.ZstdCompression(), nil
	}
	return kgo.CompressionCodec{}, fmt.Errorf("kafka: unknown compression %q", name)
}

func mechanism(s SASL) (sasl.Mechanism, error) {
	switch strings.ToUpper(s.Mechanism) {
	case MechanismPlain:
		return plain.Auth{User: s.Username, Pass: s.Password}.AsMechanism(), nil
	case MechanismScramSHA256:
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha256Mechanism(), nil
	case MechanismScramSHA512:
		return scram.Auth{User: s.Username, Pass: s.Password}.AsSha512Mechanism(), nil
	}
	return nil, fmt.Errorf("kafka: unknown SASL mechanism %q (PLAIN, SCRAM-SHA-256 or SCRAM-SHA-512)", s.Mechanism)
}

func tlsConfig(caFile string) (*tls.Config, error) {
	tc := &tls.Config{MinVersion: tls.VersionTLS12}
	if caFile == "" {
		return tc, nil
	}
	pem, err := os.ReadFile(caFile)
	if err != nil {
		return nil, fmt.Errorf("kafka: reading ca_file: %w", err)
	}
	pool := x509.NewCertPool()
	if !pool.AppendCertsFromPEM(pem) {
		return nil, fmt.Errorf("kafka: ca_file %s holds no PEM certificate", caFile)
	}
	tc.RootCAs = pool
	return tc, nil
}

// Write produces one record per message and waits until each is acknowledged by all
// in-sync replicas or failed. nil: every record was acknowledged. A *BatchError: the
// records Kafka refused on their own (too large, invalid), each tried alone before it is
// given up; the others were acknowledged. A *RetryableError: a record failed
// transiently — nothing is claimed, and the Write is tried again as a whole, so records
// that did land are produced twice (with the same messageId header). A *PermanentError
// that Wrap does not split: the credentials may not write to the topic.
func (d *Kafka) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if d.closed.Load() {
		return destinations.ErrClosed
	}
	if len(msgs) == 0 {
		return nil
	}
	d.isolate.RLock()
	errs, err := d.produce(ctx, msgs)
	d.isolate.RUnlock()
	if err != nil {
		return err
	}
	var refused []int
	var worst error
	for i, e := range errs {
		switch {
		case e == nil:
		case refusesRecord(e):
			refused = append(refused, i)
		default:
			worst = d.moreSevere(ctx, worst, e, len(msgs))
		}
	}
	if worst != nil {
		return worst
	}
	if len(refused) == 0 {
		return nil
	}
	return d.isolateRefused(ctx, msgs, refused)
}

// produce hands every message to franz-go and waits for all of their results: the error
// of each record (nil: acknowledged). It returns early, with ctx's error, when ctx ends
// first: records still buffered are then failed by franz-go, and those already sent
// may still land.
func (d *Kafka) produce(ctx context.Context, msgs []mapper.Message) ([]error, error) {
	recs := make([]kgo.Record, len(msgs))
	w := &pending{errs: make([]error, len(msgs)), recs: recs, done: make(chan struct{})}
	w.left.Store(int64(len(msgs)))
	// The keys, ids and headers of all records in three allocations, not four a record.
	size := 0
	for i := range msgs {
		size += len(recordKey(d.key, &msgs[i])) + len(msgs[i].ID)
	}
	a := arena{bytes: make([]byte, 0, size), headers: make([]kgo.RecordHeader, 0, 2*len(msgs))}
	for i := range msgs {
		d.fill(&recs[i], &msgs[i], &a)
	}
	for i := range recs {
		d.client.Produce(ctx, &recs[i], w.promise)
	}
	select {
	case <-w.done:
		return w.errs, nil
	case <-ctx.Done():
		return nil, fmt.Errorf("producing %s to topic %q: %w", render.Plural(len(msgs), "record"), d.topic, ctx.Err())
	}
}

// pending collects the results of one Write's records. franz-go calls promise once per
// record, serially; errs is read only after done is closed.
type pending struct {
	recs []kgo.Record
	errs []error
	left atomic.Int64
	done chan struct{}
}

func (w *pending) promise(r *kgo.Record, err error) {
	if err != nil {
		// Failures are rare: finding the record's index beats a closure per record.
		for i := range w.recs {
			if &w.recs[i] == r {
				w.errs[i] = err
				break
			}
		}
	}
	if w.left.Add(-1) == 0 {
		close(w.done)
	}
}

// arena holds the bytes and headers of one Write's records.
type arena struct {
	bytes   []byte
	headers []kgo.RecordHeader
}

// take copies s into the arena, sized beforehand so that appending never reallocates
// (earlier records would keep the old array alive beside the new one).
func (a *arena) take(s string) []byte {
	start := len(a.bytes)
	a.bytes = append(a.bytes, s...)
	return a.bytes[start:len(a.bytes):len(a.bytes)]
}

// typeValues are the type header's values, shared by every record: franz-go only reads
// them.
var typeValues = map[string][]byte{"identify": []byte("identify"), "track": []byte("track"), "group": []byte("group")}

// fill fills r from m, its key, id and headers in a: the value is m's JSON as encoded,
// shared (franz-go only reads it).
func (d *Kafka) fill(r *kgo.Record, m *mapper.Message, a *arena) {
	r.Topic = d.topic
	r.Value = m.JSON
	if k := recordKey(d.key, m); k != "" {
		r.Key = a.take(k)
	}
	typ, ok := typeValues[m.Type]
	if !ok {
		typ = []byte(m.Type)
	}
	start := len(a.headers)
	a.headers = append(a.headers,
		kgo.RecordHeader{Key: "messageId", Value: a.take(m.ID)},
		kgo.RecordHeader{Key: "type", Value: typ})
	r.Headers = a.headers[start:len(a.headers):len(a.headers)]
}

// record fills r from m on its own.
func (d *Kafka) record(r *kgo.Record, m *mapper.Message) {
	k := recordKey(d.key, m)
	d.fill(r, m, &arena{bytes: make([]byte, 0, len(k)+len(m.ID)), headers: make([]kgo.RecordHeader, 0, 2)})
}

// recordKey is the configured field of m, else its userId, else its anonymousId.
func recordKey(key string, m *mapper.Message) string {
	var k string
	switch key {
	case KeyAnonymousID:
		k = m.AnonymousID
	case KeyGroupID:
		k = m.GroupID
	case KeyMessageID:
		k = m.ID
	}
	if k == "" {
		k = m.UserID
	}
	if k == "" {
		k = m.AnonymousID
	}
	return k
}

// refusesRecord reports whether Kafka refused a record's batch for what it holds: a
// record that is too large or invalid for the topic (a compacted topic wants keys, a
// timestamp out of the topic's range). The whole partition batch fails with it, so which
// records are at fault is found by producing them alone.
func refusesRecord(err error) bool {
	for _, e := range []*kerr.Error{kerr.MessageTooLarge, kerr.RecordListTooLarge, kerr.InvalidRecord,
		kerr.CorruptMessage, kerr.InvalidTimestamp} {
		if errors.Is(err, e) {
			return true
		}
	}
	return false
}

// classify turns a record's failure into the Write's error.
func (d *Kafka) classify(ctx context.Context, err error, n int) error {
	what := fmt.Sprintf("producing %s to topic %q", render.Plural(n, "record"), d.topic)
	switch {
	case ctx.Err() != nil:
		return fmt.Errorf("%s: %w", what, errors.Join(ctx.Err(), err))
	case errors.Is(err, kerr.UnknownTopicOrPartition), errors.Is(err, kerr.UnknownTopicID):
		// Not retried: backflow does not create topics, and nothing else will soon.
		return d.noTopic(err)
	case errors.Is(err, kerr.TopicAuthorizationFailed), errors.Is(err, kerr.ClusterAuthorizationFailed):
		// A refusal of the credentials, not of the records: 403 keeps Wrap from
		// splitting the batch into rejects; the destination fails instead.
		return &destinations.PermanentError{Status: http.StatusForbidden,
			Err: fmt.Errorf("%s: %s may not write to it (an ACL must allow WRITE on the topic, and IDEMPOTENT_WRITE on the cluster before Kafka 2.8): %w", what, d.principal(), err)}
	case isSASLFailure(err):
		return &destinations.PermanentError{Status: http.StatusUnauthorized,
			Err: fmt.Errorf("%s: brokers %s refused the SASL credentials of %s: %w", what, d.brokers, d.principal(), err)}
	case errors.Is(err, context.Canceled), errors.Is(err, context.DeadlineExceeded):
		// Another Write's cancellation fails every record buffered for its partitions,
		// ours too: they were not produced, and may be produced again.
		return &destinations.RetryableError{Err: fmt.Errorf("%s: %w", what, err)}
	case isCertificateError(err):
		// A misconfiguration (tls, ca_file): retrying cannot fix it.
		return fmt.Errorf("%s: verifying the certificate of brokers %s (see tls and ca_file): %w", what, d.brokers, err)
	case errors.Is(err, kgo.ErrClientClosed):
		return fmt.Errorf("%s: %w", what, destinations.ErrClosed)
	}
	var ke *kerr.Error
	if errors.As(err, &ke) && !ke.Retriable {
		return fmt.Errorf("%s: %w", what, err)
	}
	// Retriable broker errors, franz-go giving up after its retries, connection errors.
	return &destinations.RetryableError{Err: fmt.Errorf("%s: %w", what, err)}
}

// moreSevere keeps, of the Write's error so far and a record's failure, the one that
// decides: anything not retryable before a retryable one.
func (d *Kafka) moreSevere(ctx context.Context, worst, recErr error, n int) error {
	e := d.classify(ctx, recErr, n)
	if worst == nil || destinations.IsRetryable(worst) && !destinations.IsRetryable(e) {
		return e
	}
	return worst
}

func isCertificateError(err error) bool {
	var verify *tls.CertificateVerificationError
	var unknown x509.UnknownAuthorityError
	var host x509.HostnameError
	var invalid x509.CertificateInvalidError
	return errors.As(err, &verify) || errors.As(err, &unknown) || errors.As(err, &host) || errors.As(err, &invalid)
}

func isSASLFailure(err error) bool {
	return errors.Is(err, kerr.SaslAuthenticationFailed) || errors.Is(err, kerr.UnsupportedSaslMechanism) ||
		errors.Is(err, kerr.IllegalSaslState)
}

func (d *Kafka) principal() string {
	if d.sasl.enabled() {
		return fmt.Sprintf("user %q (%s)", d.sasl.Username, d.sasl.Mechanism)
	}
	return "this client (no SASL user)"
}

func (d *Kafka) noTopic(err error) error {
	return fmt.Errorf("topic %q does not exist on brokers %s; backflow does not create topics: create it, or fix the destination's topic: %w", d.topic, d.brokers, err)
}

// isolateRefused produces each refused record again alone — with every other Write
// held back and franz-go's buffer flushed first, so that no other record shares its
// batch — and returns the ones refused again as a *BatchError (nil when none was).
func (d *Kafka) isolateRefused(ctx context.Context, msgs []mapper.Message, refused []int) error {
	d.isolate.Lock()
	defer d.isolate.Unlock()
	if err := d.client.Flush(ctx); err != nil {
		return fmt.Errorf("flushing before producing %s alone: %w", render.Plural(len(refused), "refused record"), err)
	}
	var failed []destinations.Failure
	var rec kgo.Record
	for _, i := range refused {
		rec = kgo.Record{}
		d.record(&rec, &msgs[i])
		err := d.client.ProduceSync(ctx, &rec).FirstErr()
		switch {
		case err == nil:
		case refusesRecord(err):
			failed = append(failed, destinations.Failure{Index: i, Err: &destinations.PermanentError{
				Err: fmt.Errorf("message %s: topic %q refused its record of %d bytes: %w", msgs[i].ID, d.topic, len(msgs[i].JSON), err)}})
		default:
			return d.classify(ctx, err, len(msgs))
		}
	}
	if len(failed) == 0 {
		return nil
	}
	return &destinations.BatchError{Failed: failed}
}

// Close waits until every record handed to franz-go is acknowledged or failed (within
// ctx), then closes the client. Records still buffered when ctx ends are failed: their
// Writes return an error, and Close says so.
func (d *Kafka) Close(ctx context.Context) error {
	if d.closed.Swap(true) {
		return nil
	}
	err := d.client.Flush(ctx)
	d.client.Close()
	if err != nil {
		return fmt.Errorf("closing the kafka destination: records still in flight were not acknowledged: %w", err)
	}
	return nil
}

// Check asks the brokers for the topic's metadata (never creating it): it proves the
// brokers reachable, the credentials accepted, the topic present and, where the brokers
// say (Kafka 2.3 and later), that the credentials may write to it. It sends no record.
func (d *Kafka) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, checkTimeout)
	defer cancel()
	if err := d.dialAny(ctx); err != nil {
		return err
	}
	req := kmsg.NewPtrMetadataRequest()
	t := kmsg.NewMetadataRequestTopic()
	t.Topic = kmsg.StringPtr(d.topic)
	req.Topics = append(req.Topics, t)
	req.AllowAutoTopicCreation = false
	req.IncludeTopicAuthorizedOperations = true
	resp, err := req.RequestWith(ctx, d.client)
	if err != nil {
		if isSASLFailure(err) {
			return fmt.Errorf("brokers %s refused the SASL credentials of %s: %w", d.brokers, d.principal(), err)
		}
		return fmt.Errorf("reaching brokers %s: %w", d.brokers, err)
	}
	for _, rt := range resp.Topics {
		if rt.Topic == nil || *rt.Topic != d.topic {
			continue
		}
		if err := kerr.ErrorForCode(rt.ErrorCode); err != nil {
			switch {
			case errors.Is(err, kerr.UnknownTopicOrPartition):
				return d.noTopic(err)
			case errors.Is(err, kerr.TopicAuthorizationFailed):
				return fmt.Errorf("topic %q on brokers %s: %s may not describe it (an ACL must allow WRITE on it, which implies DESCRIBE): %w", d.topic, d.brokers, d.principal(), err)
			}
			return fmt.Errorf("topic %q on brokers %s: %w", d.topic, d.brokers, err)
		}
		if len(rt.Partitions) == 0 {
			return fmt.Errorf("topic %q on brokers %s has no partition", d.topic, d.brokers)
		}
		// -2147483648 is "not reported" (brokers before 2.3); the bits are ACL operations.
		if ops := rt.AuthorizedOperations; ops != -2147483648 && ops&(1<<int(kmsg.ACLOperationWrite)) == 0 && ops&(1<<int(kmsg.ACLOperationAll)) == 0 {
			return fmt.Errorf("topic %q on brokers %s: %s may not write to it (an ACL must allow WRITE on the topic)", d.topic, d.brokers, d.principal())
		}
		return nil
	}
	return d.noTopic(kerr.UnknownTopicOrPartition)
}

// dialAny opens a TCP connection to the seed brokers until one answers: franz-go would
// retry an unreachable broker until the deadline and say only that, where the dial's
// own error (connection refused, no such host) tells what is wrong.
func (d *Kafka) dialAny(ctx context.Context) error {
	var errs []error
	for _, b := range d.seeds {
		dctx, cancel := context.WithTimeout(ctx, dialTimeout)
		conn, err := (&net.Dialer{}).DialContext(dctx, "tcp", b)
		cancel()
		if err == nil {
			conn.Close()
			return nil
		}
		errs = append(errs, err)
	}
	return fmt.Errorf("cannot connect to any of brokers %s: %w", d.brokers, errors.Join(errs...))
}

// kgoLogger passes franz-go's warnings and errors (a broker unreachable, a batch
// refused) to the run's logger.
type kgoLogger struct{ l *slog.Logger }

func (kgoLogger) Level() kgo.LogLevel { return kgo.LogLevelWarn }

func (k kgoLogger) Log(level kgo.LogLevel, msg string, keyvals ...any) {
	lvl := slog.LevelWarn
	if level == kgo.LogLevelError {
		lvl = slog.LevelError
	}
	k.l.Log(context.Background(), lvl, "kafka: "+msg, keyvals...)
}
