package state

import (
	"context"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/s3conn"
)

// StateInfo is one stored checkpoint of a sync: the sync's own, or a shard's
// ("<sync>.shard-I-of-N").
type StateInfo struct {
	Name    string
	Updated time.Time // when it was last written (the file's or object's time)
}

// isStateOf tells whether name is sync's own state name or one of its shards'.
func isStateOf(name, sync string) bool {
	return name == sync || strings.HasPrefix(name, sync+".shard-")
}

// States lists the checkpoints stored for sync and its shards, sorted by name.
func (s *localStore) States(ctx context.Context, sync string) ([]StateInfo, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, checkpointsDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing checkpoints in %s: %w", dir, err)
	}
	var out []StateInfo
	for _, e := range entries {
		name, ok := strings.CutSuffix(e.Name(), ".json")
		if !ok || e.IsDir() || !isStateOf(name, sync) {
			continue
		}
		fi, err := e.Info()
		if err != nil {
			continue // removed meanwhile
		}
		out = append(out, StateInfo{Name: name, Updated: fi.ModTime()})
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}

func (s *s3Store) States(ctx context.Context, sync string) ([]StateInfo, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	prefix := s.key(checkpointsDir, sync)
	var out []StateInfo
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(s.bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return nil, fmt.Errorf("listing checkpoints of sync %s: %w", sync, s3conn.Describe(err, s.bucket, prefix))
		}
		for _, o := range page.Contents {
			base := aws.ToString(o.Key)[len(s.key(checkpointsDir))+1:]
			name, ok := strings.CutSuffix(base, ".json")
			if !ok || !isStateOf(name, sync) {
				continue
			}
			out = append(out, StateInfo{Name: name, Updated: aws.ToTime(o.LastModified)})
		}
	}
	sort.Slice(out, func(i, j int) bool { return out[i].Name < out[j].Name })
	return out, nil
}
