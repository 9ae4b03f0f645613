package pipeline

import (
	"context"
	"fmt"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"sync/atomic"
	"testing"
	"time"

	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// countingProxy forwards to target and counts requests by method.
func countingProxy(t *testing.T, target string) (string, func() (gets, lists, heads int64)) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	var gets, lists, heads atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodHead:
			heads.Add(1)
		case r.Method == http.MethodGet && r.URL.Query().Has("list-type"):
			lists.Add(1)
		case r.Method == http.MethodGet:
			gets.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() (int64, int64, int64) { return gets.Load(), lists.Load(), heads.Load() }
}

// TestFigureSchemaOverMinIO measures `backflow schema` (pipeline.Inspect: list, then
// every footer and first row) over 1,000 small files on MinIO, counting the requests.
// BACKFLOW_FIGURES=1 go test -run TestFigureSchemaOverMinIO -v ./pipeline/
func TestFigureSchemaOverMinIO(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	dir := t.TempDir()
	paths, err := exampledata.Write(dir, exampledata.Options{Files: 1000, RowsPerFile: 20, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	var g errgroup.Group
	g.SetLimit(16)
	for _, p := range paths {
		g.Go(func() error {
			b, err := os.ReadFile(p)
			if err != nil {
				return err
			}
			m.Put(t, bucket, "users/"+filepath.Base(p), b)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
	endpoint, counts := countingProxy(t, m.Endpoint)
	opts := m.Options()
	opts.Endpoint = endpoint
	sync := &config.Sync{Name: "users", Source: config.Source{URL: "s3://" + bucket + "/users/", S3: opts,
		Limits: config.Limits{MaxRowGroupBytes: 512 << 20, MaxRecordBytes: 1 << 20}}}
	start := time.Now()
	rep, err := Inspect(context.Background(), sync, InspectOptions{})
	elapsed := time.Since(start)
	if err != nil {
		t.Fatal(err)
	}
	if len(rep.Files) != 1000 || rep.Invalid() != 0 {
		t.Fatalf("%d files, %d invalid", len(rep.Files), rep.Invalid())
	}
	gets, lists, heads := counts()
	t.Logf("schema over 1,000 files of %d bytes on MinIO: %s, %d LIST, %d GET, %d HEAD requests",
		rep.Files[0].Size, elapsed.Round(time.Millisecond), lists, gets, heads)
	fmt.Printf("FIGURE schema-1000-files: %s; LIST %d; GET %d; HEAD %d\n", elapsed.Round(time.Millisecond), lists, gets, heads)
}
