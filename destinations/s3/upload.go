package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"sort"
	"sync"
	"sync/atomic"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/s3/types"

	"github.com/backflowhq/backflow/internal/s3conn"
)

// s3API is the part of *s3.Client the destination uses.
type s3API interface {
	PutObject(context.Context, *s3.PutObjectInput, ...func(*s3.Options)) (*s3.PutObjectOutput, error)
	CreateMultipartUpload(context.Context, *s3.CreateMultipartUploadInput, ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error)
	UploadPart(context.Context, *s3.UploadPartInput, ...func(*s3.Options)) (*s3.UploadPartOutput, error)
	CompleteMultipartUpload(context.Context, *s3.CompleteMultipartUploadInput, ...func(*s3.Options)) (*s3.CompleteMultipartUploadOutput, error)
	AbortMultipartUpload(context.Context, *s3.AbortMultipartUploadInput, ...func(*s3.Options)) (*s3.AbortMultipartUploadOutput, error)
	ListMultipartUploads(context.Context, *s3.ListMultipartUploadsInput, ...func(*s3.Options)) (*s3.ListMultipartUploadsOutput, error)
	HeadBucket(context.Context, *s3.HeadBucketInput, ...func(*s3.Options)) (*s3.HeadBucketOutput, error)
	HeadObject(context.Context, *s3.HeadObjectInput, ...func(*s3.Options)) (*s3.HeadObjectOutput, error)
}

// partPool holds the part buffers of one destination. Their number bounds both the
// memory an upload takes and how many parts are in flight: one buffer is being filled
// while the others upload.
type partPool struct {
	size int
	free chan []byte
	made int // guarded by the destination's mutex (only writers allocate)
	max  int
}

func newPartPool(size, inFlight int) *partPool {
	return &partPool{size: size, max: inFlight + 1, free: make(chan []byte, inFlight+1)}
}

// get returns an empty buffer, waiting for an upload to finish when all are in use.
func (p *partPool) get(ctx context.Context) ([]byte, error) {
	select {
	case b := <-p.free:
		return b[:0], nil
	default:
	}
	if p.made < p.max {
		p.made++
		return make([]byte, 0, p.size), nil
	}
	select {
	case b := <-p.free:
		return b[:0], nil
	case <-ctx.Done():
		return nil, context.Cause(ctx)
	}
}

func (p *partPool) put(b []byte) {
	if b == nil {
		return
	}
	select {
	case p.free <- b:
	default: // never happens: at most max buffers exist
	}
}

// objectUpload streams the bytes of one object to S3 as they are written (io.Writer):
// every full buffer becomes a part uploaded in the background. An object smaller than
// one part is sent with a single PutObject when it completes. Nothing is visible in the
// bucket until complete returns nil; abort removes every trace of the upload.
//
// It is written by one goroutine at a time (the destination's, or the gzip goroutine of
// the object's encoder); only the part uploads run concurrently.
type objectUpload struct {
	client      s3API
	bucket, key string
	contentType string
	pool        *partPool
	timeout     time.Duration // one request

	// ctx bounds every request of the upload; abort (or a cancelled call) cancels it.
	ctx    context.Context
	cancel context.CancelCauseFunc
	// base outlives ctx, for the requests that clean up after it was cancelled.
	base context.Context

	buf         []byte // the part being filled
	uploadID    string
	createTried bool
	nextPart    int32
	size        int64 // bytes written so far
	// dropping says the upload is being aborted: writes are dropped (lets encoders,
	// and the gzip goroutine, release their resources). Set from any goroutine.
	dropping atomic.Bool

	wg    sync.WaitGroup
	mu    sync.Mutex // guards parts and err, set by the part goroutines
	parts []types.CompletedPart
	err   error
}

func newObjectUpload(base context.Context, client s3API, bucket, key, contentType string, pool *partPool, timeout time.Duration) *objectUpload {
	ctx, cancel := context.WithCancelCause(base)
	return &objectUpload{
		client: client, bucket: bucket, key: key, contentType: contentType,
		pool: pool, timeout: timeout, ctx: ctx, cancel: cancel, base: base, nextPart: 1,
	}
}

// bind ties the upload to the context of a Write or Commit call: when call is done
// before the returned stop is called, every request of the upload is cancelled (and the
// caller aborts the upload). stop reports whether call was still live.
func (u *objectUpload) bind(call context.Context) (stop func() bool) {
	return context.AfterFunc(call, func() { u.cancel(context.Cause(call)) })
}

func (u *objectUpload) failed() error {
	u.mu.Lock()
	defer u.mu.Unlock()
	return u.err
}

func (u *objectUpload) fail(err error) {
	u.mu.Lock()
	if u.err == nil {
		u.err = err
	}
	u.mu.Unlock()
}

// Write copies p into part buffers, starting the upload of each one that fills.
func (u *objectUpload) Write(p []byte) (int, error) {
	n := 0
	for len(p) > 0 {
		if u.dropping.Load() {
			return n + len(p), nil
		}
		if err := u.failed(); err != nil {
			return n, err
		}
		if u.buf == nil {
			b, err := u.pool.get(u.ctx)
			if err != nil {
				return n, fmt.Errorf("uploading s3://%s/%s: %w", u.bucket, u.key, err)
			}
			u.buf = b
		}
		c := copy(u.buf[len(u.buf):cap(u.buf)], p)
		u.buf = u.buf[:len(u.buf)+c]
		p = p[c:]
		n += c
		u.size += int64(c)
		if len(u.buf) == cap(u.buf) {
			if err := u.flushPart(); err != nil {
				return n, err
			}
		}
	}
	return n, nil
}

// flushPart starts the upload of the filled buffer as the next part.
func (u *objectUpload) flushPart() error {
	if u.nextPart > maxParts {
		err := fmt.Errorf("the object is larger than %d parts of %d bytes: lower max_object_rows", maxParts, u.pool.size)
		u.fail(err)
		return err
	}
	if u.uploadID == "" {
		u.createTried = true
		ctx, cancel := context.WithTimeout(u.ctx, u.timeout)
		out, err := u.client.CreateMultipartUpload(ctx, &s3.CreateMultipartUploadInput{
			Bucket: aws.String(u.bucket), Key: aws.String(u.key), ContentType: aws.String(u.contentType),
		})
		cancel()
		if err != nil {
			err = s3conn.Describe(err, u.bucket, u.key)
			u.fail(err)
			return fmt.Errorf("starting the upload: %w", err)
		}
		u.uploadID = aws.ToString(out.UploadId)
	}
	num := u.nextPart
	u.nextPart++
	buf := u.buf
	u.buf = nil
	u.wg.Add(1)
	go func() {
		defer u.wg.Done()
		defer u.pool.put(buf)
		ctx, cancel := context.WithTimeout(u.ctx, u.timeout)
		defer cancel()
		out, err := u.client.UploadPart(ctx, &s3.UploadPartInput{
			Bucket: aws.String(u.bucket), Key: aws.String(u.key), UploadId: aws.String(u.uploadID),
			PartNumber: aws.Int32(num), Body: bytes.NewReader(buf), ContentLength: aws.Int64(int64(len(buf))),
		})
		if err != nil {
			u.fail(fmt.Errorf("uploading part %d: %w", num, s3conn.Describe(err, u.bucket, u.key)))
			return
		}
		u.mu.Lock()
		u.parts = append(u.parts, types.CompletedPart{ETag: out.ETag, PartNumber: aws.Int32(num)})
		u.mu.Unlock()
	}()
	return nil
}

// complete makes the object visible with every byte written. On failure the caller
// must abort.
func (u *objectUpload) complete() error {
	if u.uploadID == "" {
		if u.size == 0 {
			return nil
		}
		ctx, cancel := context.WithTimeout(u.ctx, u.timeout)
		defer cancel()
		_, err := u.client.PutObject(ctx, &s3.PutObjectInput{
			Bucket: aws.String(u.bucket), Key: aws.String(u.key), ContentType: aws.String(u.contentType),
			Body: bytes.NewReader(u.buf), ContentLength: aws.Int64(int64(len(u.buf))),
		})
		if err != nil {
			return fmt.Errorf("writing the object: %w", s3conn.Describe(err, u.bucket, u.key))
		}
		u.pool.put(u.buf)
		u.buf = nil
		u.cancel(errCompleted)
		return nil
	}
	if len(u.buf) > 0 {
		if err := u.flushPart(); err != nil {
			return err
		}
	} else if u.buf != nil {
		u.pool.put(u.buf)
		u.buf = nil
	}
	u.wg.Wait()
	if err := u.failed(); err != nil {
		return err
	}
	parts := u.parts
	sort.Slice(parts, func(i, j int) bool { return *parts[i].PartNumber < *parts[j].PartNumber })
	ctx, cancel := context.WithTimeout(u.ctx, u.timeout)
	defer cancel()
	_, err := u.client.CompleteMultipartUpload(ctx, &s3.CompleteMultipartUploadInput{
		Bucket: aws.String(u.bucket), Key: aws.String(u.key), UploadId: aws.String(u.uploadID),
		MultipartUpload: &types.CompletedMultipartUpload{Parts: parts},
	})
	if err != nil {
		return fmt.Errorf("completing the upload: %w", s3conn.Describe(err, u.bucket, u.key))
	}
	u.uploadID = ""
	u.cancel(errCompleted)
	return nil
}

// abortTimeout bounds the clean-up requests, which run after the upload's own context
// may have been cancelled.
const abortTimeout = 30 * time.Second

// stop makes the upload drop every later write and cancels its requests, so that a
// writer blocked in it (the gzip goroutine waiting for a part buffer) returns. It may
// be called from any goroutine; abort follows once nothing writes any more.
func (u *objectUpload) stop() {
	u.dropping.Store(true)
	u.cancel(errAborted)
}

// abort stops the part uploads and deletes every uploaded part, so that nothing of the
// object remains in the bucket. It returns an error only when the clean-up failed (the
// error names the upload id, for a manual AbortMultipartUpload or a lifecycle rule).
// Nothing may write to u during or after abort but to be dropped.
func (u *objectUpload) abort() error {
	u.stop()
	u.wg.Wait()
	u.pool.put(u.buf)
	u.buf = nil
	if !u.createTried {
		return nil
	}
	ctx, cancel := context.WithTimeout(u.base, abortTimeout)
	defer cancel()
	ids := []string{u.uploadID}
	if u.uploadID == "" {
		// CreateMultipartUpload failed or was cancelled: it may still have created an
		// upload whose id never reached us. The key is unique to this run and part, so
		// every upload for it is ours.
		found, err := u.listUploads(ctx)
		if err != nil {
			return fmt.Errorf("looking for an unfinished upload of s3://%s/%s to abort: %w", u.bucket, u.key, err)
		}
		ids = found
	}
	var errs []error
	for _, id := range ids {
		_, err := u.client.AbortMultipartUpload(ctx, &s3.AbortMultipartUploadInput{
			Bucket: aws.String(u.bucket), Key: aws.String(u.key), UploadId: aws.String(id),
		})
		if err != nil && !isNoSuchUpload(err) {
			errs = append(errs, fmt.Errorf("aborting the multipart upload %s of s3://%s/%s (its parts stay stored until it is aborted): %w",
				id, u.bucket, u.key, s3conn.Describe(err, u.bucket, u.key)))
		}
	}
	u.uploadID = ""
	return errors.Join(errs...)
}

var (
	errAborted   = errors.New("upload aborted")
	errCompleted = errors.New("upload completed")
)

// maxParts is S3's limit on the parts of one multipart upload.
const maxParts = 10000

func (u *objectUpload) listUploads(ctx context.Context) ([]string, error) {
	var ids []string
	in := &s3.ListMultipartUploadsInput{Bucket: aws.String(u.bucket), Prefix: aws.String(u.key)}
	for {
		out, err := u.client.ListMultipartUploads(ctx, in)
		if err != nil {
			return nil, s3conn.Describe(err, u.bucket, u.key)
		}
		for _, up := range out.Uploads {
			if aws.ToString(up.Key) == u.key {
				ids = append(ids, aws.ToString(up.UploadId))
			}
		}
		if !aws.ToBool(out.IsTruncated) {
			return ids, nil
		}
		in.KeyMarker, in.UploadIdMarker = out.NextKeyMarker, out.NextUploadIdMarker
	}
}

func isNoSuchUpload(err error) bool {
	var nsu *types.NoSuchUpload
	return errors.As(err, &nsu)
}
