package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"path"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/smithy-go"
	bolt "go.etcd.io/bbolt"

	"github.com/backflowhq/backflow/internal/s3conn"
)

// generationMeta is the object metadata that carries the generation token of a
// checkpoint or history write: when a retried conditional PUT fails its precondition,
// it tells whether the first attempt landed (our token) or another runner wrote (theirs).
const generationMeta = "backflow-generation"

// historyAttempts bounds the read-modify-write retries of AppendHistory when other
// runs append at the same moment.
const historyAttempts = 10

// s3Store keeps state under s3://bucket/prefix. Every replacement is a conditional PUT
// (If-Match the ETag that was read, If-None-Match "*" when there was nothing), so two
// runners can never both commit changes made from the same version: S3 replaces objects
// atomically, and the precondition turns the lost update into ErrConflict.
type s3Store struct {
	client *s3.Client
	bucket string
	prefix string
	// partSize is the multipart part size for row-hash stores (tests lower it).
	partSize int64
}

func newS3Store(client *s3.Client, bucket, prefix string) *s3Store {
	return &s3Store{
		client:   client,
		bucket:   bucket,
		prefix:   strings.Trim(prefix, "/"),
		partSize: 64 << 20,
	}
}

func (s *s3Store) String() string {
	if s.prefix == "" {
		return "s3://" + s.bucket
	}
	return "s3://" + s.bucket + "/" + s.prefix
}

func (s *s3Store) key(elem ...string) string {
	return path.Join(append([]string{s.prefix}, elem...)...)
}

func (s *s3Store) url(key string) string { return "s3://" + s.bucket + "/" + key }

// get reads key; found is false when there is no such object.
func (s *s3Store) get(ctx context.Context, key string) (data []byte, etag string, found bool, err error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		err = s3conn.Describe(err, s.bucket, key)
		var se *s3conn.Error
		if errors.As(err, &se) && se.NotFound {
			return nil, "", false, nil
		}
		return nil, "", false, fmt.Errorf("reading %w", err)
	}
	defer out.Body.Close()
	data, err = io.ReadAll(out.Body)
	if err != nil {
		return nil, "", false, fmt.Errorf("reading %s: %w", s.url(key), err)
	}
	return data, aws.ToString(out.ETag), true, nil
}

// putConditional writes data to key if the object's ETag is still etag ("" = if there is
// no object). It returns the new ETag; conflict reports a failed precondition.
func (s *s3Store) putConditional(ctx context.Context, key string, data []byte, etag, gen string) (newETag string, conflict bool, err error) {
	in := &s3.PutObjectInput{
		Bucket:      aws.String(s.bucket),
		Key:         aws.String(key),
		Body:        bytes.NewReader(data),
		ContentType: aws.String("application/json"),
		Metadata:    map[string]string{generationMeta: gen},
	}
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	out, err := s.client.PutObject(ctx, in)
	if err == nil {
		return aws.ToString(out.ETag), false, nil
	}
	if !isPreconditionFailure(err, etag != "") {
		return "", false, fmt.Errorf("writing %w", s3conn.Describe(err, s.bucket, key))
	}
	// The SDK retries a PUT whose answer was lost; the retry then fails its precondition
	// against our own first attempt. The token in the metadata tells.
	head, herr := s.client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if herr == nil && metadata(head.Metadata, generationMeta) == gen {
		return aws.ToString(head.ETag), false, nil
	}
	return "", true, nil
}

// isPreconditionFailure tells whether err is a conditional write that lost: 412
// PreconditionFailed, 409 ConditionalRequestConflict (a concurrent conditional write on
// AWS), or — for If-Match — 404, the object having been deleted (reset) since it was read.
func isPreconditionFailure(err error, ifMatch bool) bool {
	var apiErr smithy.APIError
	if errors.As(err, &apiErr) && apiErr.ErrorCode() == "ConditionalRequestConflict" {
		return true
	}
	var se *s3conn.Error
	if !errors.As(s3conn.Describe(err, "", ""), &se) {
		return false
	}
	return se.Precondition || (ifMatch && se.NotFound)
}

func metadata(m map[string]string, name string) string {
	for k, v := range m {
		if strings.EqualFold(k, name) {
			return v
		}
	}
	return ""
}

func (s *s3Store) Load(ctx context.Context, sync string) (*Checkpoint, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	var err error
	for range loadAttempts {
		var cp *Checkpoint
		cp, err = s.load(ctx, sync)
		if !errors.Is(err, errSegmentMissing) {
			return cp, err
		}
		// A save merged the segment away after this load read the head: the head read
		// again names the merged one.
	}
	return nil, &CorruptError{What: "checkpoint", Where: s.url(s.key(checkpointsDir, sync+".json")), Sync: sync, Err: err}
}

func (s *s3Store) load(ctx context.Context, sync string) (*Checkpoint, error) {
	key := s.key(checkpointsDir, sync+".json")
	data, etag, found, err := s.get(ctx, key)
	if err != nil || !found {
		return nil, err
	}
	cp, _, removed, err := decodeHead(data, sync, s.url(key))
	if err != nil {
		return nil, err
	}
	cp.Generation = etag
	if err := loadSegments(ctx, s, cp, removed); err != nil {
		return nil, err
	}
	return cp, nil
}

// Save writes a compaction's segment (a plain PUT of a new key) before the head, whose
// conditional PUT decides: when it fails, the segment is an orphan for a later
// compaction to delete.
func (s *s3Store) Save(ctx context.Context, cp *Checkpoint) error {
	gen := newGeneration()
	plan, err := planSave(ctx, s, cp, gen)
	if err != nil {
		return err
	}
	key := s.key(checkpointsDir, cp.Sync+".json")
	etag, conflict, err := s.putConditional(ctx, key, plan.head, cp.Generation, gen)
	if err != nil {
		return fmt.Errorf("saving checkpoint: %w", err)
	}
	if conflict {
		return conflictError(s.url(key), cp.Sync)
	}
	cp.Generation = etag
	plan.finish(ctx, s, cp)
	return nil
}

func (s *s3Store) segmentKey(sync, id string) string {
	return s.key(checkpointsDir, segmentName(sync, id))
}

func (s *s3Store) segmentWhere(sync, id string) string { return s.url(s.segmentKey(sync, id)) }

func (s *s3Store) readSegment(ctx context.Context, sync, id string) ([]byte, error) {
	key := s.segmentKey(sync, id)
	data, _, found, err := s.get(ctx, key)
	if err != nil {
		return nil, fmt.Errorf("checkpoint segment: %w", err)
	}
	if !found {
		return nil, fmt.Errorf("reading checkpoint segment %s: %w", s.url(key), errSegmentMissing)
	}
	return data, nil
}

func (s *s3Store) writeSegment(ctx context.Context, sync, id string, data []byte) error {
	key := s.segmentKey(sync, id)
	_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
		Bucket:        aws.String(s.bucket),
		Key:           aws.String(key),
		Body:          bytes.NewReader(data),
		ContentLength: aws.Int64(int64(len(data))),
		ContentType:   aws.String("application/gzip"),
		// The id is fresh: an object already there is not ours to replace.
		IfNoneMatch: aws.String("*"),
	})
	if err != nil {
		return fmt.Errorf("writing %w", s3conn.Describe(err, s.bucket, key))
	}
	return nil
}

func (s *s3Store) listSegments(ctx context.Context, sync string) (map[string]segmentInfo, error) {
	prefix := s.key(checkpointsDir, sync+segmentInfix)
	out := map[string]segmentInfo{}
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing checkpoint segments %w", s3conn.Describe(err, s.bucket, prefix))
		}
		for _, o := range page.Contents {
			id := segmentIDOf(sync, path.Base(aws.ToString(o.Key)))
			if id == "" {
				continue
			}
			out[id] = segmentInfo{age: time.Since(aws.ToTime(o.LastModified)), size: aws.ToInt64(o.Size)}
		}
	}
	return out, nil
}

func (s *s3Store) deleteSegment(ctx context.Context, sync, id string) error {
	key := s.segmentKey(sync, id)
	_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		return fmt.Errorf("deleting checkpoint segment %w", s3conn.Describe(err, s.bucket, key))
	}
	return nil
}

func (s *s3Store) Reset(ctx context.Context, sync string) error {
	if err := checkName("sync name", sync); err != nil {
		return err
	}
	for _, key := range []string{s.key(checkpointsDir, sync+".json"), s.key(hashesDir, sync+".db")} {
		_, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
		if err != nil {
			return fmt.Errorf("resetting sync %q: deleting %w", sync, s3conn.Describe(err, s.bucket, key))
		}
	}
	// After the head: without it the segments are orphans, never a checkpoint.
	ids, err := s.listSegments(ctx, sync)
	if err != nil {
		return fmt.Errorf("resetting sync %q: %w", sync, err)
	}
	for id := range ids {
		if err := s.deleteSegment(ctx, sync, id); err != nil {
			return fmt.Errorf("resetting sync %q: %w", sync, err)
		}
	}
	return nil
}

// Hashes downloads the row-hash store to a temporary file and opens it with bbolt;
// Commit and Close upload it back, conditionally on the ETag it was downloaded with.
func (s *s3Store) Hashes(ctx context.Context, sync string) (HashStore, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	key := s.key(hashesDir, sync+".db")
	url := s.url(key)
	tmp, err := os.CreateTemp("", "backflow-hashes-*.db")
	if err != nil {
		return nil, fmt.Errorf("creating the local copy of row-hash store %s: %w", url, err)
	}
	name := tmp.Name()
	etag, err := s.download(ctx, key, tmp)
	if cerr := tmp.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil {
		_ = os.Remove(name)
		return nil, fmt.Errorf("downloading row-hash store: %w", err)
	}
	h, err := openBoltHashes(name, url, sync, true, 0)
	if err != nil {
		_ = os.Remove(name)
		return nil, err
	}
	h.cleanup = func() { _ = os.Remove(name) }
	h.upload = func(ctx context.Context, db *bolt.DB) error {
		newETag, err := s.uploadDB(ctx, key, db, etag)
		if err != nil {
			return err
		}
		etag = newETag
		return nil
	}
	return h, nil
}

// ReadHashes downloads the row-hash store to a temporary file and opens it for reading
// only; nothing is ever uploaded.
func (s *s3Store) ReadHashes(ctx context.Context, sync string) (HashStore, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	key := s.key(hashesDir, sync+".db")
	tmp, err := os.CreateTemp("", "backflow-hashes-*.db")
	if err != nil {
		return nil, fmt.Errorf("creating the local copy of row-hash store %s: %w", s.url(key), err)
	}
	name := tmp.Name()
	etag, err := s.download(ctx, key, tmp)
	if cerr := tmp.Close(); cerr != nil && err == nil {
		err = cerr
	}
	if err != nil || etag == "" {
		_ = os.Remove(name)
		if err != nil {
			return nil, fmt.Errorf("downloading row-hash store: %w", err)
		}
		return nil, nil
	}
	h, err := openBolt(name, s.url(key), sync, true, true, 0)
	if err != nil {
		_ = os.Remove(name)
		return nil, err
	}
	h.cleanup = func() { _ = os.Remove(name) }
	return h, nil
}

// download copies key into f and returns its ETag ("" when there is no object).
func (s *s3Store) download(ctx context.Context, key string, f *os.File) (string, error) {
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		err = s3conn.Describe(err, s.bucket, key)
		var se *s3conn.Error
		if errors.As(err, &se) && se.NotFound {
			return "", nil
		}
		return "", err
	}
	defer out.Body.Close()
	if _, err := io.Copy(f, out.Body); err != nil {
		return "", fmt.Errorf("%s: %w", s.url(key), err)
	}
	return aws.ToString(out.ETag), nil
}

// uploadDB sends a consistent snapshot of db (a read transaction) to key, in one PUT or,
// when large, a multipart upload; the condition applies to the upload as a whole.
func (s *s3Store) uploadDB(ctx context.Context, key string, db *bolt.DB, etag string) (string, error) {
	pr, pw := io.Pipe()
	done := make(chan error, 1)
	go func() {
		err := db.View(func(tx *bolt.Tx) error {
			_, err := tx.WriteTo(pw)
			return err
		})
		pw.CloseWithError(err)
		done <- err
	}()
	in := &s3.PutObjectInput{
		Bucket:      aws.String(s.bucket),
		Key:         aws.String(key),
		Body:        pr,
		ContentType: aws.String("application/octet-stream"),
	}
	if etag == "" {
		in.IfNoneMatch = aws.String("*")
	} else {
		in.IfMatch = aws.String(etag)
	}
	uploader := manager.NewUploader(s.client, func(u *manager.Uploader) {
		u.PartSize = s.partSize
		u.Concurrency = 2
	})
	out, err := uploader.Upload(ctx, in)
	// Unblock the snapshot writer if the upload stopped reading early.
	pr.CloseWithError(errors.New("upload finished"))
	snapErr := <-done
	if err != nil {
		if isPreconditionFailure(err, etag != "") {
			return "", fmt.Errorf("saving row-hash store %s: %w: another backflow run of this sync saved it (or it was reset) since this run opened it", s.url(key), ErrConflict)
		}
		return "", fmt.Errorf("saving row-hash store: uploading %w", s3conn.Describe(err, s.bucket, key))
	}
	if snapErr != nil {
		return "", fmt.Errorf("saving row-hash store %s: reading the local copy: %w", s.url(key), snapErr)
	}
	return aws.ToString(out.ETag), nil
}

func (s *s3Store) Rejects(ctx context.Context, sync, runID string) (RejectsFile, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := checkName("run id", runID); err != nil {
		return nil, err
	}
	key := s.key(rejectsDir, sync, runID+".jsonl")
	return &spooledRejects{
		url: s.url(key),
		upload: func(ctx context.Context, f *os.File, size int64) error {
			_, err := s.client.PutObject(ctx, &s3.PutObjectInput{
				Bucket:        aws.String(s.bucket),
				Key:           aws.String(key),
				Body:          io.NewSectionReader(f, 0, size),
				ContentLength: aws.Int64(size),
				ContentType:   aws.String("application/x-ndjson"),
			})
			if err != nil {
				return fmt.Errorf("uploading rejects %w", s3conn.Describe(err, s.bucket, key))
			}
			return nil
		},
	}, nil
}

func (s *s3Store) AppendHistory(ctx context.Context, sync string, report []byte, keep int) error {
	if err := checkHistoryArgs(sync, report, keep); err != nil {
		return err
	}
	key := s.key(historyDir, sync+".json")
	for range historyAttempts {
		data, etag, _, err := s.get(ctx, key)
		if err != nil {
			return fmt.Errorf("recording a run of sync %q: %w", sync, err)
		}
		var runs []json.RawMessage
		if data != nil {
			if runs, err = decodeHistory(data, sync, s.url(key)); err != nil {
				return err
			}
		}
		out, err := prependHistory(runs, sync, report, keep)
		if err != nil {
			return err
		}
		_, conflict, err := s.putConditional(ctx, key, out, etag, newGeneration())
		if err != nil {
			return fmt.Errorf("recording a run of sync %q: %w", sync, err)
		}
		if !conflict {
			return nil
		}
		// Another run appended in between: read its version and try again.
	}
	return fmt.Errorf("recording a run of sync %q: run history %s kept changing under %d attempts", sync, s.url(key), historyAttempts)
}

func (s *s3Store) History(ctx context.Context, sync string) ([][]byte, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	key := s.key(historyDir, sync+".json")
	data, _, found, err := s.get(ctx, key)
	if err != nil || !found {
		return nil, err
	}
	runs, err := decodeHistory(data, sync, s.url(key))
	if err != nil {
		return nil, err
	}
	return historyToBytes(runs), nil
}
