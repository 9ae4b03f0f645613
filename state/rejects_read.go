package state

import (
	"context"
	"errors"
	"fmt"
	"io"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/s3conn"
)

// ErrNoRejects is matched (errors.Is) by OpenRejects when the run wrote no rejects file.
var ErrNoRejects = errors.New("no rejects file")

// RejectsRuns returns the run ids of the sync that have a rejects file, newest first
// (run ids begin with their UTC start time, so their order is the order of the runs).
func (s *localStore) RejectsRuns(ctx context.Context, sync string) ([]string, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, rejectsDir, sync)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing rejects of sync %s: %w", sync, err)
	}
	var ids []string
	for _, e := range entries {
		if id, ok := strings.CutSuffix(e.Name(), ".jsonl"); ok && !e.IsDir() && checkName("run id", id) == nil {
			ids = append(ids, id)
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids)))
	return ids, nil
}

// OpenRejects opens the rejects file of one run for reading.
func (s *localStore) OpenRejects(ctx context.Context, sync, runID string) (io.ReadCloser, string, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, "", err
	}
	if err := checkName("run id", runID); err != nil {
		return nil, "", err
	}
	path := filepath.Join(s.dir, rejectsDir, sync, runID+".jsonl")
	f, err := os.Open(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, path, fmt.Errorf("run %s of sync %s: %w", runID, sync, ErrNoRejects)
	}
	if err != nil {
		return nil, path, fmt.Errorf("opening rejects file %s: %w", path, err)
	}
	return f, path, nil
}

func (s *s3Store) RejectsRuns(ctx context.Context, sync string) ([]string, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	prefix := s.key(rejectsDir, sync) + "/"
	var ids []string
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing rejects of sync %s: %w", sync, s3conn.Describe(err, s.bucket, prefix))
		}
		for _, o := range page.Contents {
			name := strings.TrimPrefix(aws.ToString(o.Key), prefix)
			if id, ok := strings.CutSuffix(name, ".jsonl"); ok && checkName("run id", id) == nil {
				ids = append(ids, id)
			}
		}
	}
	sort.Sort(sort.Reverse(sort.StringSlice(ids)))
	return ids, nil
}

func (s *s3Store) OpenRejects(ctx context.Context, sync, runID string) (io.ReadCloser, string, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, "", err
	}
	if err := checkName("run id", runID); err != nil {
		return nil, "", err
	}
	key := s.key(rejectsDir, sync, runID+".jsonl")
	out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(s.bucket), Key: aws.String(key)})
	if err != nil {
		err = s3conn.Describe(err, s.bucket, key)
		var se *s3conn.Error
		if errors.As(err, &se) && se.NotFound {
			return nil, s.url(key), fmt.Errorf("run %s of sync %s: %w", runID, sync, ErrNoRejects)
		}
		return nil, s.url(key), fmt.Errorf("reading %w", err)
	}
	return out.Body, s.url(key), nil
}
