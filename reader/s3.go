package reader

import (
	"context"
	"errors"
	"fmt"
	"io"
	"os"
	"strconv"
	"strings"
	"sync"
	"sync/atomic"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// TailSize is how much of an object's end one GET fetches and keeps when a read first
// falls in it: a Parquet footer (its metadata, length and magic) almost always fits, so
// opening a file costs one request instead of two.
const TailSize = 64 << 10

// listPageSize is ListObjectsV2's MaxKeys: the most S3 returns in one page.
const listPageSize = 1000

// maxBodyAttempts bounds how often a ranged GET whose body broke off is resumed. The SDK
// retries failed requests itself, but not a response body cut short.
const maxBodyAttempts = 3

// S3Source reads Parquet objects below an S3 (or S3-compatible) prefix. The prefix is a
// folder: s3://bucket/users and s3://bucket/users/ both list the keys under "users/".
type S3Source struct {
	client *s3.Client
	bucket string
	prefix string // "" or ending in "/"
	url    string
	filter Filter

	lists, gets, bytes atomic.Int64
}

var _ Source = (*S3Source)(nil)

// Stats counts the requests a source has made since it was created. A request is one
// API call; the SDK's own retries of it are not counted again.
type Stats struct {
	ListRequests int64 // ListObjectsV2 pages
	GetRequests  int64 // ranged GETs
	BytesRead    int64 // bytes of GET response bodies
}

// NewS3Source returns the source of cfg.URL (s3://bucket/prefix), with a client from
// s3conn.New (region found from the bucket when absent, custom endpoint, path style,
// auth). maxAttempts bounds the SDK's retries of one request (0: the default).
func NewS3Source(ctx context.Context, cfg config.Source, maxAttempts int) (*S3Source, error) {
	bucket, prefix, ok := s3conn.ParseURL(cfg.URL)
	if !ok {
		return nil, fmt.Errorf("source url %q: want s3://bucket/prefix", cfg.URL)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	url := "s3://" + bucket + "/" + prefix
	f, err := NewFilter(cfg.Include, cfg.Partition)
	if err != nil {
		return nil, fmt.Errorf("source %s: %w", url, err)
	}
	client, err := s3conn.New(ctx, cfg.S3, bucket, maxAttempts)
	if err != nil {
		return nil, &SourceError{URL: url, Err: fmt.Errorf("source %s: %w", url, err)}
	}
	return &S3Source{client: client, bucket: bucket, prefix: prefix, url: url, filter: f}, nil
}

// String is s3://bucket/prefix/.
func (s *S3Source) String() string { return s.url }

// Stats returns the source's request counters so far.
func (s *S3Source) Stats() Stats {
	return Stats{ListRequests: s.lists.Load(), GetRequests: s.gets.Load(), BytesRead: s.bytes.Load()}
}

// List pages through ListObjectsV2 below the prefix. ListObjectsV2 has no version ids,
// so VersionID stays empty: reads then get the current version, guarded by its ETag.
func (s *S3Source) List(ctx context.Context) (Listing, error) {
	var objs []Object
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{
		Bucket:  aws.String(s.bucket),
		Prefix:  aws.String(s.prefix),
		MaxKeys: aws.Int32(listPageSize),
	})
	for p.HasMorePages() {
		s.lists.Add(1)
		page, err := p.NextPage(ctx)
		if err != nil {
			if ctx.Err() != nil {
				return Listing{}, fmt.Errorf("listing %s: %w", s.url, ctx.Err())
			}
			return Listing{}, &SourceError{URL: s.url, Err: s3conn.Describe(err, s.bucket, s.prefix)}
		}
		for _, o := range page.Contents {
			objs = append(objs, Object{
				Key:          aws.ToString(o.Key),
				Size:         aws.ToInt64(o.Size),
				ETag:         strings.Trim(aws.ToString(o.ETag), `"`),
				LastModified: aws.ToTime(o.LastModified).UTC(),
			})
		}
	}
	return s.filter.Apply(s.prefix, objs), nil
}

// Open returns random access to obj over ranged GETs; it makes no request itself. The
// blob's reads run under ctx, so ctx must live as long as the blob is read.
func (s *S3Source) Open(ctx context.Context, obj Object) (Blob, error) {
	if obj.Size < 0 {
		return nil, fmt.Errorf("s3://%s/%s: negative size %d", s.bucket, obj.Key, obj.Size)
	}
	tail := min(int64(TailSize), obj.Size)
	return &s3Blob{src: s, ctx: ctx, obj: obj, tailStart: obj.Size - tail}, nil
}

// s3Blob reads one object with ranged GETs, keeping the object's last TailSize bytes
// once a read has fallen in them.
type s3Blob struct {
	src       *S3Source
	ctx       context.Context // from Open: reads have no context of their own
	obj       Object
	tailStart int64

	mu     sync.Mutex // guards tail and its fetch, so concurrent footer reads share one GET
	tail   []byte
	closed atomic.Bool
}

func (b *s3Blob) Size() int64 { return b.obj.Size }

func (b *s3Blob) Close() error {
	b.closed.Store(true)
	b.mu.Lock()
	b.tail = nil
	b.mu.Unlock()
	return nil
}

func (b *s3Blob) where() string { return "s3://" + b.src.bucket + "/" + b.obj.Key }

// ReadAt reads len(p) bytes at off with one ranged GET for exactly those bytes (fewer at
// the end of the object, then io.EOF), or from the cached tail.
func (b *s3Blob) ReadAt(p []byte, off int64) (int, error) {
	if b.closed.Load() {
		return 0, fmt.Errorf("reading %s: %w", b.where(), os.ErrClosed)
	}
	size := b.obj.Size
	if off < 0 {
		return 0, fmt.Errorf("reading %s: negative offset %d", b.where(), off)
	}
	if off >= size {
		if len(p) == 0 && off == size {
			return 0, nil
		}
		return 0, io.EOF
	}
	want := p
	if rest := size - off; int64(len(want)) > rest {
		want = want[:rest]
	}
	n, err := b.read(want, off)
	if err == nil && len(want) < len(p) {
		err = io.EOF
	}
	return n, err
}

func (b *s3Blob) read(p []byte, off int64) (int, error) {
	end := off + int64(len(p))
	if off >= b.tailStart {
		tail, err := b.tailBytes()
		if err != nil {
			return 0, err
		}
		return copy(p, tail[off-b.tailStart:]), nil
	}
	if end > b.tailStart {
		// The read straddles the tail: fetch only what lies before it once it is cached.
		b.mu.Lock()
		tail := b.tail
		b.mu.Unlock()
		if tail != nil {
			head := b.tailStart - off
			if err := b.fetch(p[:head], off); err != nil {
				return 0, err
			}
			copy(p[head:], tail)
			return len(p), nil
		}
	}
	if err := b.fetch(p, off); err != nil {
		return 0, err
	}
	return len(p), nil
}

func (b *s3Blob) tailBytes() ([]byte, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	if b.tail != nil {
		return b.tail, nil
	}
	buf := make([]byte, b.obj.Size-b.tailStart)
	if err := b.fetch(buf, b.tailStart); err != nil {
		return nil, err
	}
	if !b.closed.Load() {
		b.tail = buf
	}
	return buf, nil
}

// fetch fills p from off, resuming a body that broke off.
func (b *s3Blob) fetch(p []byte, off int64) error {
	for attempt := 1; ; attempt++ {
		n, resumable, err := b.get(p, off)
		if err == nil {
			return nil
		}
		p, off = p[n:], off+int64(n)
		if !resumable || attempt >= maxBodyAttempts || b.ctx.Err() != nil {
			return err
		}
	}
}

// get issues one GET for bytes off..off+len(p)-1 and reads its body into p. resumable
// says the request succeeded but its body broke off after n bytes.
func (b *s3Blob) get(p []byte, off int64) (n int, resumable bool, err error) {
	in := &s3.GetObjectInput{
		Bucket: aws.String(b.src.bucket),
		Key:    aws.String(b.obj.Key),
		Range:  aws.String(fmt.Sprintf("bytes=%d-%d", off, off+int64(len(p))-1)),
	}
	if b.obj.ETag != "" {
		// Never mix two versions of an object in one read of it.
		in.IfMatch = aws.String(`"` + b.obj.ETag + `"`)
	}
	if b.obj.VersionID != "" {
		in.VersionId = aws.String(b.obj.VersionID)
	}
	b.src.gets.Add(1)
	out, err := b.src.client.GetObject(b.ctx, in)
	if err != nil {
		return 0, false, b.describe(err)
	}
	defer out.Body.Close()
	if err := checkRange(out, off, int64(len(p))); err != nil {
		return 0, false, &SourceError{URL: b.src.url, Err: fmt.Errorf("%s: %w", b.where(), err)}
	}
	n, err = io.ReadFull(out.Body, p)
	b.src.bytes.Add(int64(n))
	if err != nil {
		if b.ctx.Err() != nil {
			return n, false, fmt.Errorf("reading %s: %w", b.where(), b.ctx.Err())
		}
		return n, true, &SourceError{URL: b.src.url, Err: fmt.Errorf("reading %s at offset %d: %w", b.where(), off+int64(n), err)}
	}
	// Reading the (empty) rest lets the connection be reused.
	_, _ = io.Copy(io.Discard, out.Body)
	return n, false, nil
}

// checkRange makes sure the server honoured the Range header: a server that ignores it
// answers with the whole object, whose first bytes are not the ones asked for.
func checkRange(out *s3.GetObjectOutput, off, n int64) error {
	if out.ContentLength != nil && *out.ContentLength != n {
		return fmt.Errorf("asked for %d bytes at offset %d, the server sent %d", n, off, *out.ContentLength)
	}
	cr := aws.ToString(out.ContentRange)
	if cr == "" {
		if off != 0 {
			return fmt.Errorf("the server ignored the Range header (asked for offset %d)", off)
		}
		return nil
	}
	// "bytes 100-199/1234"
	spec, _ := strings.CutPrefix(cr, "bytes ")
	first, _, _ := strings.Cut(spec, "-")
	start, err := strconv.ParseInt(first, 10, 64)
	if err != nil || start != off {
		return fmt.Errorf("asked for offset %d, the server sent range %q", off, cr)
	}
	return nil
}

func (b *s3Blob) describe(err error) error {
	if b.ctx.Err() != nil {
		return fmt.Errorf("reading %s: %w", b.where(), b.ctx.Err())
	}
	d := s3conn.Describe(err, b.src.bucket, b.obj.Key)
	var se *s3conn.Error
	if errors.As(d, &se) {
		switch {
		case se.NotFound:
			return &SourceError{URL: b.src.url, Err: &objectError{msg: d.Error(), err: d, kind: ErrNotFound}}
		case se.Precondition:
			return &SourceError{URL: b.src.url, Err: &objectError{
				msg:  fmt.Sprintf("%s: changed since it was listed (its ETag is no longer %s)", b.where(), b.obj.ETag),
				err:  d,
				kind: ErrChanged,
			}}
		}
	}
	return &SourceError{URL: b.src.url, Err: d}
}
