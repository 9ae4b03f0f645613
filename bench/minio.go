package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/testutil"
)

// The MinIO root user of the bench's server (it listens on 127.0.0.1 only).
const (
	minioUser     = testutil.MinIOAccessKey
	minioPassword = testutil.MinIOSecretKey
)

// minioServer is a MinIO server on a loopback port, started as backflow's tests start
// theirs (internal/testutil finds the binary: $BACKFLOW_MINIO, PATH, then the cache folder
// scripts/test.sh installs it into).
type minioServer struct {
	*testutil.MinIO
	endpoint string
	client   *s3.Client
}

func startMinIO(_ context.Context, _ string) (*minioServer, error) {
	m, err := testutil.Launch()
	if err != nil {
		return nil, err
	}
	return &minioServer{MinIO: m, endpoint: m.Endpoint, client: m.Client}, nil
}

func (s *minioServer) stop() { s.Stop() }

// upload creates bucket (if needed) and puts the files under prefix.
func (s *minioServer) upload(ctx context.Context, bucket, prefix string, files []string) error {
	_, err := s.client.CreateBucket(ctx, &s3.CreateBucketInput{Bucket: aws.String(bucket)})
	var owned interface{ ErrorCode() string }
	if err != nil && !(errors.As(err, &owned) && owned.ErrorCode() == "BucketAlreadyOwnedByYou") {
		return fmt.Errorf("creating bucket %s: %w", bucket, err)
	}
	for _, p := range files {
		f, err := os.Open(p)
		if err != nil {
			return err
		}
		key := prefix + filepath.Base(p)
		_, err = s.client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(key), Body: f})
		f.Close()
		if err != nil {
			return fmt.Errorf("uploading s3://%s/%s: %w", bucket, key, err)
		}
	}
	return nil
}
