package main

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/credentials"
	"github.com/aws/aws-sdk-go-v2/service/s3"
)

// The MinIO root user of the bench's server (it listens on 127.0.0.1 only).
const (
	minioUser     = "backflowbench"
	minioPassword = "backflowbenchsecret"
)

// minioServer is a MinIO server on a loopback port, started the way backflow's tests
// start theirs (internal/testutil), with its data in a folder of its own.
type minioServer struct {
	endpoint string
	cmd      *exec.Cmd
	dir      string
	client   *s3.Client
}

// minioBinary finds the minio binary as backflow's tests do: $BACKFLOW_MINIO, then PATH,
// then <user cache dir>/backflow/bin/minio (where scripts/test.sh installs it).
func minioBinary() (string, error) {
	if p := os.Getenv("BACKFLOW_MINIO"); p != "" {
		return p, nil
	}
	if p, err := exec.LookPath("minio"); err == nil {
		return p, nil
	}
	if cache, err := os.UserCacheDir(); err == nil {
		p := filepath.Join(cache, "backflow", "bin", "minio")
		if _, err := os.Stat(p); err == nil {
			return p, nil
		}
	}
	return "", errors.New("no minio binary (set BACKFLOW_MINIO, put minio on PATH, or run scripts/test.sh, which installs it)")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

func startMinIO(ctx context.Context, dataDir string) (*minioServer, error) {
	bin, err := minioBinary()
	if err != nil {
		return nil, err
	}
	var lastErr error
	for range 3 { // a port picked free may be taken before MinIO binds it
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		console, err := freePort()
		if err != nil {
			return nil, err
		}
		s := &minioServer{endpoint: fmt.Sprintf("http://127.0.0.1:%d", port), dir: dataDir}
		var logs bytes.Buffer
		cmd := exec.Command(bin, "server", "--quiet",
			"--address", fmt.Sprintf("127.0.0.1:%d", port),
			"--console-address", fmt.Sprintf("127.0.0.1:%d", console),
			dataDir)
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+minioUser, "MINIO_ROOT_PASSWORD="+minioPassword,
			"MINIO_BROWSER=off", "MINIO_UPDATE=off")
		cmd.Stdout, cmd.Stderr = &logs, &logs
		// The server dies with the bench, even when the bench is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		s.cmd = cmd
		if err := waitReady(ctx, s.endpoint, 60*time.Second); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			lastErr = fmt.Errorf("minio did not become ready: %v; output: %s", err, strings.TrimSpace(logs.String()))
			continue
		}
		s.client = s3.New(s3.Options{
			Region:       "us-east-1",
			BaseEndpoint: aws.String(s.endpoint),
			UsePathStyle: true,
			Credentials:  credentials.NewStaticCredentialsProvider(minioUser, minioPassword, ""),
		})
		return s, nil
	}
	return nil, lastErr
}

func waitReady(ctx context.Context, endpoint string, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	client := &http.Client{Timeout: time.Second}
	for {
		resp, err := client.Get(endpoint + "/minio/health/ready")
		if err == nil {
			resp.Body.Close()
			if resp.StatusCode == http.StatusOK {
				return nil
			}
			err = fmt.Errorf("status %d", resp.StatusCode)
		}
		if time.Now().After(deadline) {
			return err
		}
		select {
		case <-ctx.Done():
			return ctx.Err()
		case <-time.After(100 * time.Millisecond):
		}
	}
}

func (s *minioServer) stop() {
	_ = s.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = s.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = s.cmd.Process.Kill()
		<-done
	}
	_ = os.RemoveAll(s.dir)
}

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
