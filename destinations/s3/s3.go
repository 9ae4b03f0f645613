// Package s3 is the s3 destination: it writes a sync's messages as objects in a bucket
// (JSON lines, CSV or Parquet), for warehouses and lakes to load.
//
// Objects are streamed: the encoded (and compressed) bytes are cut into parts uploaded
// while the next part fills, so memory does not grow with the size of an object. An
// object is completed (made visible, atomically) when it reaches max_object_rows, when
// its columns must widen, and on Flush; until then nothing of it can be read, and an
// abort removes every trace of it.
//
// A message is durable once its object is completed (destinations.Deferred): each object
// keeps the durable funcs of the writes whose last accepted message it holds, and calls
// them when its upload is completed, so acknowledgements follow the objects through the
// run and a failure or a kill leaves at most the open object's messages to send again.
// Messages are encoded as they arrive and never kept: memory is one open object's
// buffers (part buffers, and a Parquet row group), whatever the size of the run.
package s3

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"errors"
	"fmt"
	"log/slog"
	"strings"
	"sync"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/keytemplate"
	"github.com/backflowhq/backflow/internal/s3conn"
	"github.com/backflowhq/backflow/mapper"
)

// Interface guards.
var (
	_ destinations.Destination = (*Destination)(nil)
	_ destinations.Deferred    = (*Destination)(nil)
	_ destinations.Checker     = (*Destination)(nil)
)

const (
	// defaultPartSize is the size of every part but the last; S3 needs at least 5 MiB.
	defaultPartSize = 5 << 20
	// defaultPartsInFlight is how many parts upload while the next one fills.
	defaultPartsInFlight = 2
	// maxKeyBytes is S3's limit on a key, prefix included.
	maxKeyBytes = 1024
)

// tuning are the knobs tests turn; New uses the defaults.
type tuning struct {
	mem           memory.Allocator
	partSize      int
	partsInFlight int
	rowGroupRows  int   // Parquet
	client        s3API // nil: built from the config
}

// Destination writes messages as objects under s3://bucket/prefix.
type Destination struct {
	name        string
	client      s3API
	bucket      string
	prefix      string // "" or ends with "/"
	template    string
	vars        keytemplate.Vars // Part and Extension are set per object
	format      string           // jsonl | csv | parquet
	gzip        bool
	delim       byte
	quoteAll    bool
	maxRows     int64 // 0: no limit
	verify      string
	timeout     time.Duration
	mem         memory.Allocator
	rowGroup    int // Parquet rows per row group
	createdBy   string
	contentType string
	log         *slog.Logger
	base        context.Context // outlives calls: part uploads and clean-up run under it

	// mu serializes Write, WriteDeferred, Flush and Close (max_in_flight may be > 1).
	// The durable funcs are called with it held, in the order the objects complete.
	mu     sync.Mutex
	pool   *partPool
	flat   flattener
	obj    *object  // the open object, nil between objects
	cols   *columns // CSV/Parquet: the columns of the last object, inherited by the next
	part   int      // the next object's {part}
	closed bool
	// pending counts the messages accepted by Write since the last successful Flush:
	// Write's callers learn that they are durable only from Flush.
	pending int64
	// lost counts accepted messages whose object was aborted: they can never be
	// committed, so every later Write, Flush and Close fails with lostErr.
	lost    int64
	lostErr error
}

// object is one object being written.
type object struct {
	key      string
	up       *objectUpload
	enc      encoder
	cols     *columns
	rows     int64 // rows encoded
	accepted int64 // rows of Writes that returned nil
	// durable holds the durable funcs of the WriteDeferred calls whose last accepted
	// message is in this object; they are called once it is completed, never when it is
	// aborted. waiting counts the messages those calls accepted (some may be in
	// completed objects: they are acknowledged with the rest of their call).
	durable []func()
	waiting int64
}

// discard aborts the upload of o and releases its encoder. The upload drops writes
// first, so what the encoder still holds (a Parquet row group, a gzip trailer, chunks
// queued for compression) is dropped, not uploaded; the rest of the abort waits until
// the encoder, and its gzip goroutine, stopped writing.
func (o *object) discard() error {
	o.up.stop()
	o.enc.release()
	return o.up.abort()
}

// Type is the s3 destination's type name in the configuration.
const Type = "s3"

// The values of format and compression.
const (
	FormatJSONL     = "jsonl"
	FormatCSV       = "csv"
	FormatParquet   = "parquet"
	CompressionNone = "none"
	CompressionGzip = "gzip"
)

// DefaultMaxObjectRows is the default of max_object_rows.
const DefaultMaxObjectRows = 1000000

// Options are the s3 destination's own configuration keys.
type Options struct {
	URL string `mapstructure:"url"` // s3://bucket/prefix
	// Region, Endpoint, PathStyle and Auth reach the bucket.
	config.S3Options `mapstructure:",squash"`
	// Key is the object key template below the prefix (internal/keytemplate).
	Key           string `mapstructure:"key"`
	Format        string `mapstructure:"format"`      // jsonl | csv | parquet
	Compression   string `mapstructure:"compression"` // none | gzip
	CSV           CSV    `mapstructure:"csv"`
	MaxObjectRows int64  `mapstructure:"max_object_rows"`
	// VerifyObject is the key (below the bucket) of an object Check reads, to prove
	// read access too.
	VerifyObject string `mapstructure:"verify_object"`
}

// CSV formats CSV objects.
type CSV struct {
	Delimiter string `mapstructure:"delimiter"` // "," | "|" | "tab"
	QuoteAll  bool   `mapstructure:"quote_all"`
}

// Prepare fills the defaults and checks every key.
func (o *Options) Prepare(c *config.OptionsCheck) {
	def := func(v *string, d string) {
		if *v == "" {
			*v = d
		}
	}
	def(&o.Auth.Mode, config.AuthDefault)
	def(&o.Format, FormatJSONL)
	def(&o.Compression, CompressionNone)
	def(&o.Key, keytemplate.Default)
	def(&o.CSV.Delimiter, ",")
	if o.MaxObjectRows == 0 && !c.IsSet("max_object_rows") {
		o.MaxObjectRows = DefaultMaxObjectRows
	}

	switch {
	case o.URL == "":
		c.Problem("url", "is required for type s3: s3://bucket/prefix")
	case !config.IsS3URL(o.URL):
		c.Problem("url", "must be s3://bucket/prefix")
	default:
		if _, _, ok := config.SplitS3URL(o.URL); !ok {
			c.Problem("url", "must be s3://bucket/prefix: the bucket is missing")
		}
	}
	c.S3(o.S3Options)
	formatOK := c.OneOf("format", o.Format, FormatJSONL, FormatCSV, FormatParquet)
	if c.OneOf("compression", o.Compression, CompressionNone, CompressionGzip) &&
		o.Compression == CompressionGzip && o.Format == FormatParquet {
		c.Problem("compression", "gzip is not used with format parquet (Parquet compresses inside, with snappy)")
	}
	if formatOK && o.Format != FormatCSV && c.IsSet("csv") {
		c.Problem("csv", "only used by format csv")
	}
	switch o.CSV.Delimiter {
	case ",", "|", "tab", "\t":
	default:
		c.Problem("csv.delimiter", fmt.Sprintf("%q is not one of \",\", \"|\", \"tab\"", o.CSV.Delimiter))
	}
	if o.MaxObjectRows < 1 {
		c.Problem("max_object_rows", "must be at least 1")
	}
	if err := keytemplate.Validate(o.Key); err != nil {
		c.Problem("key", err.Error())
	}
}

// Secrets are the credentials of Auth.
func (o *Options) Secrets() []string {
	return []string{o.Auth.SecretAccessKey, o.Auth.SessionToken, o.Auth.ExternalID}
}

// Kind is the s3 destination's kind: one writer (objects are written in order),
// batches of 10,000 messages.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 1, BatchSize: 1000, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// New builds an s3 destination from its validated config (the destinations.Factory
// signature). It makes no request but the lookup of the bucket's region when none is
// configured (s3conn.New); Check reaches the bucket.
func New(ctx context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	return newDestination(ctx, cfg, env, tuning{})
}

func newDestination(ctx context.Context, cfg config.Destination, env destinations.Env, opts tuning) (*Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	name := cfg.Name
	if name == "" {
		name = cfg.Type
	}
	if name == "" {
		name = "s3"
	}
	fail := func(format string, args ...any) error {
		return fmt.Errorf("destination %s: "+format, append([]any{name}, args...)...)
	}
	bucket, prefix, ok := s3conn.ParseURL(o.URL)
	if !ok {
		return nil, fail("url %q must be s3://bucket/prefix", o.URL)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	d := &Destination{
		name: name, bucket: bucket, prefix: prefix,
		template:  o.Key,
		format:    o.Format,
		maxRows:   o.MaxObjectRows,
		verify:    strings.TrimPrefix(o.VerifyObject, "/"),
		timeout:   cfg.Timeout,
		mem:       opts.mem,
		createdBy: "backflow",
		log:       env.Logger,
		base:      context.WithoutCancel(ctx),
		delim:     ',',
		quoteAll:  o.CSV.QuoteAll,
	}
	if env.Version != "" {
		d.createdBy = "backflow version " + env.Version
	}
	if d.template == "" {
		d.template = keytemplate.Default
	}
	if err := keytemplate.Validate(d.template); err != nil {
		return nil, fail("key %q: %w", d.template, err)
	}
	if d.format == "" {
		d.format = "jsonl"
	}
	switch o.Compression {
	case "", "none":
	case "gzip":
		d.gzip = true
	default:
		return nil, fail("compression %q is not one of none, gzip", o.Compression)
	}
	ext := d.format
	switch d.format {
	case "jsonl":
		d.contentType = "application/x-ndjson"
	case "csv":
		d.contentType = "text/csv"
		switch o.CSV.Delimiter {
		case "", ",":
		case "|":
			d.delim = '|'
		case "tab", "\t":
			d.delim = '\t'
		default:
			return nil, fail("csv.delimiter %q is not one of \",\", \"|\", \"tab\"", o.CSV.Delimiter)
		}
	case "parquet":
		if d.gzip {
			return nil, fail("compression gzip is not used with format parquet (Parquet compresses inside, with snappy)")
		}
		d.contentType = "application/vnd.apache.parquet"
	default:
		return nil, fail("format %q is not one of jsonl, csv, parquet", d.format)
	}
	if d.gzip {
		ext += ".gz"
		d.contentType = "application/gzip"
	}
	if d.maxRows < 0 {
		return nil, fail("max_object_rows must not be negative")
	}
	if d.timeout <= 0 {
		d.timeout = s3conn.DefaultTimeout
	}
	if d.mem == nil {
		d.mem = memory.DefaultAllocator
	}
	d.rowGroup = opts.rowGroupRows
	if d.rowGroup <= 0 {
		d.rowGroup = defaultRowGroupRows
	}
	if d.log == nil {
		d.log = slog.New(slog.DiscardHandler)
	}
	d.log = d.log.With("destination", name)
	d.vars = keytemplate.Vars{
		StreamName:   env.Sync,
		StreamID:     stableID("stream", env.Sync),
		ConnectionID: stableID("connection", env.Sync, name),
		RunID:        env.RunID,
		Time:         env.RunStarted.UTC(),
		Extension:    ext,
	}
	if d.vars.Time.IsZero() {
		d.vars.Time = time.Now().UTC()
	}
	// Expanding the first key now turns a run id or sync name the key cannot hold into
	// a configuration error instead of a failed run.
	if _, err := d.key(0); err != nil {
		return nil, fail("%w", err)
	}
	partSize, inFlight := opts.partSize, opts.partsInFlight
	if partSize <= 0 {
		partSize = defaultPartSize
	}
	if inFlight <= 0 {
		inFlight = defaultPartsInFlight
	}
	d.pool = newPartPool(partSize, inFlight)
	if opts.client != nil {
		d.client = opts.client
	} else {
		client, err := s3conn.New(ctx, o.S3Options, bucket, cfg.Retry.MaxAttempts)
		if err != nil {
			return nil, fail("%w", err)
		}
		d.client = client
	}
	return d, nil
}

// stableID is a short id that depends only on its parts: 16 hex digits of their SHA-256.
func stableID(kind string, parts ...string) string {
	h := sha256.New()
	h.Write([]byte("backflow/" + kind))
	for _, p := range parts {
		h.Write([]byte{0})
		h.Write([]byte(p))
	}
	return hex.EncodeToString(h.Sum(nil)[:8])
}

// key returns the full object key of part.
func (d *Destination) key(part int) (string, error) {
	v := d.vars
	v.Part = part
	k, err := keytemplate.Expand(d.template, v)
	if err != nil {
		return "", fmt.Errorf("key %q: %w", d.template, err)
	}
	k = d.prefix + k
	if len(k) > maxKeyBytes {
		return "", fmt.Errorf("the object key %q is %d bytes long, over S3's limit of %d", k, len(k), maxKeyBytes)
	}
	return k, nil
}

// Write encodes msgs into the open object, starting (and completing) objects as
// max_object_rows and the columns require. nil means the messages are accepted; Write's
// caller learns that they are durable when a later Flush returns nil. A
// *destinations.BatchError lists the messages whose traits/properties could not be read
// (CSV, Parquet); the others are accepted. On any other error none of msgs is accepted;
// when the failure cost the open object, the messages accepted into it earlier are lost
// and every later call fails (the run must end; the next run sends them again).
func (d *Destination) Write(ctx context.Context, msgs []mapper.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	res, err := d.write(ctx, msgs)
	if err == nil || isBatchError(err) {
		d.pending += res.written
	}
	return err
}

// WriteDeferred is Write for destinations.Deferred: durable is called once every
// accepted message of msgs is in a completed object — before WriteDeferred returns when
// the call itself completed the last object it wrote to, or at once when it accepted
// nothing. durable is called with the destination's lock held: it must not call the
// destination, and should only record the acknowledgement.
func (d *Destination) WriteDeferred(ctx context.Context, msgs []mapper.Message, durable func()) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	res, err := d.write(ctx, msgs)
	if err != nil && !isBatchError(err) {
		return err
	}
	if o := res.last; o != nil && o == d.obj {
		// Objects complete in order: once this one is, so are the earlier ones that
		// hold the rest of msgs.
		o.durable = append(o.durable, durable)
		o.waiting += res.written
		return err
	}
	// Nothing accepted, or the object of the last accepted message was completed
	// within this call.
	durable()
	return err
}

// writeResult says where the messages of one write went.
type writeResult struct {
	written int64   // messages accepted
	last    *object // the object holding the last accepted message; nil: none
}

// write is Write without the lock and the bookkeeping of what is acknowledged how.
func (d *Destination) write(ctx context.Context, msgs []mapper.Message) (writeResult, error) {
	var res writeResult
	if d.closed {
		return res, destinations.ErrClosed
	}
	if d.lostErr != nil {
		return res, d.lostErr
	}
	if err := context.Cause(ctx); err != nil {
		return res, err // nothing started: the open object stays intact
	}
	var (
		failed   []destinations.Failure
		offset   int // index in the caller's msgs of msgs[0]
		rejected int // rejected messages in the current encode call
	)
	reject := func(i int, err error) {
		rejected++
		failed = append(failed, destinations.Failure{Index: offset + i, Err: err})
	}
	for len(msgs) > 0 {
		if d.obj == nil {
			if err := d.open(msgs); err != nil {
				return res, err
			}
		}
		o := d.obj
		n := len(msgs)
		if d.maxRows > 0 {
			n = int(min(int64(n), d.maxRows-o.rows))
		}
		rejected = 0
		k, err := d.encode(ctx, o, msgs[:n], reject)
		if k > rejected {
			res.written += int64(k - rejected)
			o.rows += int64(k - rejected)
			res.last = o
		}
		if err != nil {
			return res, d.abortOnError(o, fmt.Errorf("writing s3://%s/%s: %w", d.bucket, o.key, err))
		}
		if k == 0 && o.rows == 0 {
			// Cannot happen: an object's columns are derived from its first messages.
			return res, d.abortOnError(o, fmt.Errorf("writing s3://%s/%s: message %d fits no columns", d.bucket, o.key, offset))
		}
		msgs = msgs[k:]
		offset += k
		full := d.maxRows > 0 && o.rows >= d.maxRows
		if full || k < n {
			// Full, or msgs[0] has a key or a type the object's columns cannot take:
			// complete it; the next object widens the columns with the rest of msgs.
			if err := d.completeObject(ctx, o); err != nil {
				return res, err
			}
		}
	}
	if d.obj != nil {
		d.obj.accepted = d.obj.rows
	}
	if len(failed) > 0 {
		return res, &destinations.BatchError{Failed: failed}
	}
	return res, nil
}

func isBatchError(err error) bool {
	var be *destinations.BatchError
	return errors.As(err, &be)
}

// encode runs enc.write under ctx: when ctx ends first, the upload's requests are
// cancelled and an error is returned.
func (d *Destination) encode(ctx context.Context, o *object, msgs []mapper.Message, reject func(int, error)) (int, error) {
	stop := o.up.bind(ctx)
	k, err := o.enc.write(msgs, reject)
	if !stop() {
		// ctx ended during the call: parts may have failed, the object is unusable.
		if err == nil {
			err = context.Cause(ctx)
		}
		return k, err
	}
	if err == nil {
		err = o.up.failed()
	}
	return k, err
}

// open starts the object of d.part, with columns derived from msgs (its first batch)
// added to those of the previous object.
func (d *Destination) open(msgs []mapper.Message) error {
	key, err := d.key(d.part)
	if err != nil {
		return fmt.Errorf("destination %s: %w", d.name, err)
	}
	o := &object{key: key}
	o.up = newObjectUpload(d.base, d.client, d.bucket, key, d.contentType, d.pool, d.timeout)
	if d.format != "jsonl" {
		cols := d.cols
		if cols == nil {
			cols = newColumns(d.format == "parquet")
		} else {
			cols = cols.clone()
		}
		cols.widenWith(&d.flat, msgs)
		cols.settle()
		o.cols = cols
	}
	switch d.format {
	case "jsonl":
		o.enc = &jsonlEncoder{s: newStream(o.up, d.gzip)}
	case "csv":
		o.enc, err = newCSVEncoder(newStream(o.up, d.gzip), o.cols, &d.flat, d.delim, d.quoteAll)
	case "parquet":
		o.enc, err = newParquetEncoder(o.up, o.cols, &d.flat, d.mem, d.createdBy, d.rowGroup)
	}
	if err != nil { // the constructor released what it had made
		_ = o.up.abort()
		return fmt.Errorf("destination %s: starting s3://%s/%s: %w", d.name, d.bucket, key, err)
	}
	d.obj = o
	d.cols = o.cols
	d.part++
	return nil
}

// completeObject finishes the encoding of o and makes it visible; an object without
// rows is dropped instead. On failure o is aborted and its messages are lost.
func (d *Destination) completeObject(ctx context.Context, o *object) error {
	d.obj = nil
	if o.rows == 0 {
		return o.discard()
	}
	stop := o.up.bind(ctx)
	err := o.enc.finish()
	if err == nil {
		err = o.up.complete()
	}
	stop()
	if err != nil {
		return d.abortOnError(o, fmt.Errorf("completing s3://%s/%s: %w", d.bucket, o.key, err))
	}
	d.log.Debug("s3 object completed", "key", o.key, "rows", o.rows, "bytes", o.up.size)
	for _, durable := range o.durable {
		durable()
	}
	o.durable, o.waiting = nil, 0
	return nil
}

// abortOnError aborts o after err and records the accepted messages it held as lost.
func (d *Destination) abortOnError(o *object, err error) error {
	if aerr := o.discard(); aerr != nil {
		err = errors.Join(err, aerr)
	}
	d.obj = nil
	o.durable = nil // never called: their messages are not all durable
	if o.accepted > 0 {
		d.lost += o.accepted
		d.lostErr = fmt.Errorf("destination %s: %d accepted messages were lost with the aborted upload of s3://%s/%s (they were not acknowledged; the next run sends them again): %v",
			d.name, d.lost, d.bucket, o.key, err)
		return d.lostErr
	}
	return err
}

// Flush completes the open object. It returns nil only when every accepted message is
// in a completed object, after the durable funcs of every WriteDeferred were called.
// An object with no message is not written.
// DurableUnit is max_object_rows: an object's rows become durable together.
func (d *Destination) DurableUnit() int { return int(min(d.maxRows, 1<<30)) }

func (d *Destination) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return destinations.ErrClosed
	}
	if d.lostErr != nil {
		return d.lostErr
	}
	if o := d.obj; o != nil {
		if err := d.completeObject(ctx, o); err != nil {
			return err
		}
	}
	d.pending = 0
	return nil
}

// Close releases the destination. The open upload is aborted (nothing of it becomes
// visible, and the durable funcs waiting for it are never called); Close says how many
// accepted messages are not durable: those of Write since the last Flush, and those of
// WriteDeferred in the open object.
func (d *Destination) Close(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.closed {
		return nil
	}
	d.closed = true
	var errs []error
	aborted := ""
	unacked := d.pending
	if o := d.obj; o != nil {
		if err := o.discard(); err != nil {
			errs = append(errs, err)
		}
		d.obj = nil
		unacked += o.waiting
		if o.rows > 0 {
			aborted = fmt.Sprintf("; the open upload of s3://%s/%s (%d of them) was aborted, nothing of it is visible", d.bucket, o.key, o.accepted)
		}
		o.durable = nil
	}
	if d.lostErr != nil {
		errs = append([]error{d.lostErr}, errs...)
	} else if unacked > 0 {
		errs = append([]error{fmt.Errorf("destination %s: closed without a flush: %d accepted messages are not acknowledged (the next run sends them again)%s",
			d.name, unacked, aborted)}, errs...)
	}
	d.pending = 0
	return errors.Join(errs...)
}

// Check reaches the bucket with the configured credentials (HeadBucket), makes sure
// they may write to it (a multipart upload is started and aborted: nothing becomes
// visible) and, with verify_object, that this object exists in the bucket.
func (d *Destination) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, d.timeout)
	defer cancel()
	if _, err := d.client.HeadBucket(ctx, &s3.HeadBucketInput{Bucket: aws.String(d.bucket)}); err != nil {
		err = s3conn.Describe(err, d.bucket, "")
		var se *s3conn.Error
		if errors.As(err, &se) && se.NotFound {
			// HeadBucket answers a bare 404, which Describe cannot tell from a missing object.
			return fmt.Errorf("destination %s: s3://%s: no such bucket", d.name, d.bucket)
		}
		if errors.As(err, &se) && se.Unexplained {
			// A bare 403 does not tell a wrong secret from a missing permission; a request
			// with an answer body does, so that one wrong secret gets the diagnosis the
			// source gives for it ("bad credentials"), not "access denied".
			if _, lerr := d.client.ListMultipartUploads(ctx, &s3.ListMultipartUploadsInput{Bucket: aws.String(d.bucket), MaxUploads: aws.Int32(1)}); lerr != nil {
				if le := s3conn.Describe(lerr, d.bucket, ""); !errors.As(le, &se) || !se.Unexplained {
					err = le
				}
			}
		}
		return fmt.Errorf("destination %s: %w", d.name, err)
	}
	if d.verify != "" {
		_, err := d.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(d.bucket), Key: aws.String(d.verify)})
		if err != nil {
			err = s3conn.Describe(err, d.bucket, d.verify)
			var se *s3conn.Error
			if errors.As(err, &se) && se.NotFound {
				return fmt.Errorf("destination %s: verify_object s3://%s/%s does not exist: create it to show the bucket is yours", d.name, d.bucket, d.verify)
			}
			return fmt.Errorf("destination %s: verify_object: %w", d.name, err)
		}
	}
	key := d.prefix + ".backflow-check-" + stableID("check", d.vars.RunID, d.name)
	out, err := d.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{Bucket: aws.String(d.bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Errorf("destination %s: cannot write: %w", d.name, s3conn.Describe(err, d.bucket, key))
	}
	_, err = d.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{Bucket: aws.String(d.bucket), Key: aws.String(key), UploadId: out.UploadId})
	if err != nil {
		return fmt.Errorf("destination %s: cannot abort a multipart upload (s3:AbortMultipartUpload is needed; upload %s stays until aborted): %w",
			d.name, aws.ToString(out.UploadId), s3conn.Describe(err, d.bucket, key))
	}
	return nil
}
