// Package testutil holds helpers shared by backflow's tests: a real MinIO server started
// once per test binary, and small Parquet writers.
package testutil

import (
	"bytes"
	"context"
	"fmt"
	"net"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// EnvRequireIntegration, when "1", turns a missing MinIO binary into a test failure
// instead of a skip (CI sets it).
const EnvRequireIntegration = "BACKFLOW_REQUIRE_INTEGRATION"

// MinIO is a running MinIO server on a loopback port.
type MinIO struct {
	Endpoint  string // http://127.0.0.1:PORT
	AccessKey string
	SecretKey string
	Client    *s3.Client

	cmd     *exec.Cmd
	dir     string
	buckets int
	mu      sync.Mutex
}

// The root credentials of every server started here (it listens on 127.0.0.1 only).
const (
	MinIOAccessKey = "backflowtest"
	MinIOSecretKey = "backflowtestsecret"
)

var (
	minioOnce   sync.Once
	minioServer *MinIO
	minioErr    error
)

// StartMinIO returns the test binary's MinIO server, starting it on first use. It skips
// the test when no minio binary is found, unless BACKFLOW_REQUIRE_INTEGRATION=1. Call
// StopMinIO from TestMain after m.Run.
func StartMinIO(t testing.TB) *MinIO {
	t.Helper()
	minioOnce.Do(func() { minioServer, minioErr = Launch() })
	if minioErr != nil {
		if os.Getenv(EnvRequireIntegration) == "1" {
			t.Fatalf("MinIO is required (%s=1): %v", EnvRequireIntegration, minioErr)
		}
		t.Skipf("skipping integration test: %v", minioErr)
	}
	return minioServer
}

// StopMinIO stops the server started by StartMinIO, if any, and removes its data.
func StopMinIO() {
	if minioServer != nil {
		minioServer.Stop()
	}
}

// Stop stops a server started by Launch and removes its data.
func (m *MinIO) Stop() {
	if m.cmd == nil {
		return
	}
	_ = m.cmd.Process.Signal(syscall.SIGTERM)
	done := make(chan struct{})
	go func() { _ = m.cmd.Wait(); close(done) }()
	select {
	case <-done:
	case <-time.After(10 * time.Second):
		_ = m.cmd.Process.Kill()
		<-done
	}
	m.cmd = nil
	_ = os.RemoveAll(m.dir)
}

// MinIOBinary finds the minio binary: $BACKFLOW_MINIO, then PATH, then the cache
// directory the test command installs it into ($XDG_CACHE_HOME or ~/.cache)/backflow/bin.
func MinIOBinary() (string, error) {
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
	return "", fmt.Errorf("no minio binary (set BACKFLOW_MINIO, put minio on PATH, or run scripts/test.sh which installs it)")
}

func freePort() (int, error) {
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		return 0, err
	}
	defer l.Close()
	return l.Addr().(*net.TCPAddr).Port, nil
}

// Launch starts a new MinIO server on a free loopback port, with its data in a new
// temporary folder; Stop ends it. Tests use StartMinIO, which shares one per test binary;
// the bench program uses Launch directly.
func Launch() (*MinIO, error) {
	bin, err := MinIOBinary()
	if err != nil {
		return nil, err
	}
	dir, err := os.MkdirTemp("", "backflow-minio-")
	if err != nil {
		return nil, err
	}
	var lastErr error
	for attempt := 0; attempt < 3; attempt++ {
		port, err := freePort()
		if err != nil {
			return nil, err
		}
		console, err := freePort()
		if err != nil {
			return nil, err
		}
		m := &MinIO{
			Endpoint:  fmt.Sprintf("http://127.0.0.1:%d", port),
			AccessKey: MinIOAccessKey,
			SecretKey: MinIOSecretKey,
			dir:       dir,
		}
		var logs bytes.Buffer
		cmd := exec.Command(bin, "server", "--quiet",
			"--address", fmt.Sprintf("127.0.0.1:%d", port),
			"--console-address", fmt.Sprintf("127.0.0.1:%d", console),
			filepath.Join(dir, "data"))
		cmd.Env = append(os.Environ(),
			"MINIO_ROOT_USER="+m.AccessKey,
			"MINIO_ROOT_PASSWORD="+m.SecretKey,
			"MINIO_BROWSER=off",
			"MINIO_UPDATE=off",
		)
		cmd.Stdout = &logs
		cmd.Stderr = &logs
		// The server dies with the test binary, even when the binary is killed.
		cmd.SysProcAttr = &syscall.SysProcAttr{Pdeathsig: syscall.SIGKILL}
		if err := cmd.Start(); err != nil {
			return nil, fmt.Errorf("starting %s: %w", bin, err)
		}
		m.cmd = cmd
		if err := waitReady(m.Endpoint, 60*time.Second); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			lastErr = fmt.Errorf("minio did not become ready: %v; output: %s", err, strings.TrimSpace(logs.String()))
			continue
		}
		client, err := s3conn.New(context.Background(), m.Options(), "", 3)
		if err != nil {
			_ = cmd.Process.Kill()
			return nil, err
		}
		m.Client = client
		// The health endpoint answers before the object layer is initialized
		// (XMinioServerNotInitialized): wait until S3 calls succeed.
		if err := waitS3(client, 60*time.Second); err != nil {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			lastErr = fmt.Errorf("minio did not answer S3 calls: %v; output: %s", err, strings.TrimSpace(logs.String()))
			continue
		}
		return m, nil
	}
	return nil, lastErr
}

func waitReady(endpoint string, timeout time.Duration) error {
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
		time.Sleep(100 * time.Millisecond)
	}
}

func waitS3(client *s3.Client, timeout time.Duration) error {
	deadline := time.Now().Add(timeout)
	for {
		ctx, cancel := context.WithTimeout(context.Background(), 5*time.Second)
		_, err := client.ListBuckets(ctx, &s3.ListBucketsInput{})
		cancel()
		if err == nil {
			return nil
		}
		if time.Now().After(deadline) {
			return err
		}
		time.Sleep(100 * time.Millisecond)
	}
}

// Options are S3 settings (keys auth, path style) that reach this server.
func (m *MinIO) Options() config.S3Options {
	return config.S3Options{
		Region:    "us-east-1",
		Endpoint:  m.Endpoint,
		PathStyle: true,
		Auth:      config.Auth{Mode: "keys", AccessKeyID: m.AccessKey, SecretAccessKey: m.SecretKey},
	}
}

// Bucket creates a new empty bucket with a name unique in this test binary.
func (m *MinIO) Bucket(t testing.TB) string {
	t.Helper()
	m.mu.Lock()
	m.buckets++
	name := fmt.Sprintf("bf-%d-%d", os.Getpid()%100000, m.buckets)
	m.mu.Unlock()
	_, err := m.Client.CreateBucket(context.Background(), &s3.CreateBucketInput{Bucket: aws.String(name)})
	if err != nil {
		t.Fatalf("creating bucket %s: %v", name, err)
	}
	return name
}

// Put writes data to bucket/key.
func (m *MinIO) Put(t testing.TB, bucket, key string, data []byte) {
	t.Helper()
	_, err := m.Client.PutObject(context.Background(), &s3.PutObjectInput{
		Bucket: aws.String(bucket), Key: aws.String(key), Body: bytes.NewReader(data),
	})
	if err != nil {
		t.Fatalf("putting s3://%s/%s: %v", bucket, key, err)
	}
}

// Get reads bucket/key.
// A body cut short (a loaded machine: the server drops the connection) is read again,
// a few times: the object is whole on the server.
func (m *MinIO) Get(t testing.TB, bucket, key string) []byte {
	t.Helper()
	var lastErr error
	for range 3 {
		out, err := m.Client.GetObject(context.Background(), &s3.GetObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
		if err != nil {
			t.Fatalf("getting s3://%s/%s: %v", bucket, key, err)
		}
		var buf bytes.Buffer
		_, err = buf.ReadFrom(out.Body)
		out.Body.Close()
		if err == nil {
			return buf.Bytes()
		}
		lastErr = err
	}
	t.Fatalf("reading s3://%s/%s: %v", bucket, key, lastErr)
	return nil
}

// List returns every key under prefix in bucket, sorted.
func (m *MinIO) List(t testing.TB, bucket, prefix string) []string {
	t.Helper()
	var keys []string
	p := s3.NewListObjectsV2Paginator(m.Client, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(context.Background())
		if err != nil {
			t.Fatalf("listing s3://%s/%s: %v", bucket, prefix, err)
		}
		for _, o := range page.Contents {
			keys = append(keys, aws.ToString(o.Key))
		}
	}
	return keys
}
