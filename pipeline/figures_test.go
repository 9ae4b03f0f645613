package pipeline

import (
	"context"
	"fmt"
	"io"
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
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/state"
)

// countingProxy forwards to target and counts requests by method.
func countingProxy(t *testing.T, target string) (string, func() (gets, lists, heads int64)) {
	endpoint, counts, _ := timingProxy(t, target)
	return endpoint, counts
}

// timingProxy is countingProxy that also sums the time LIST requests took.
func timingProxy(t *testing.T, target string) (string, func() (gets, lists, heads int64), func() time.Duration) {
	u, err := url.Parse(target)
	if err != nil {
		t.Fatal(err)
	}
	var gets, lists, heads, listNanos atomic.Int64
	proxy := httputil.NewSingleHostReverseProxy(u)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		switch {
		case r.Method == http.MethodHead:
			heads.Add(1)
		case r.Method == http.MethodGet && r.URL.Query().Has("list-type"):
			lists.Add(1)
			start := time.Now()
			defer func() { listNanos.Add(int64(time.Since(start))) }()
		case r.Method == http.MethodGet:
			gets.Add(1)
		}
		proxy.ServeHTTP(w, r)
	}))
	t.Cleanup(srv.Close)
	return srv.URL, func() (int64, int64, int64) { return gets.Load(), lists.Load(), heads.Load() },
		func() time.Duration { return time.Duration(listNanos.Load()) }
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

// TestFigureIncrementalNoChange10kFiles times a no-change incremental run over 10,000
// files on MinIO (after a first run that synced them all).
// BACKFLOW_FIGURES=1 go test -run TestFigureIncrementalNoChange10kFiles -v ./pipeline/
func TestFigureIncrementalNoChange10kFiles(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	figureIncrementalNoChange(t, 10_000)
}

// TestFigureIncrementalNoChange100kFiles is the same over 100,000 files: 100 LIST
// requests, and a checkpoint of 100,000 entries in segments to load and save.
// BACKFLOW_FIGURES=1 go test -run TestFigureIncrementalNoChange100kFiles -v -timeout 30m ./pipeline/
func TestFigureIncrementalNoChange100kFiles(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	figureIncrementalNoChange(t, 100_000)
}

func figureIncrementalNoChange(t *testing.T, n int) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	dir := t.TempDir()
	paths, err := exampledata.Write(dir, exampledata.Options{Files: 10, RowsPerFile: 5, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	var bodies [][]byte
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		bodies = append(bodies, b)
	}
	// Above 10,000 files the first run is seeded: it syncs the first 10 files for
	// real, and the checkpoint then gets the entries of the others as that run would
	// have written them (each file is a copy of one of the 10, so its entry is a copy of
	// theirs). Reading 100,000 files would take most of an hour on a shared machine and
	// measure nothing this figure is about.
	seeded := n > 10_000
	upload := func(from, to int) {
		var g errgroup.Group
		g.SetLimit(32)
		for i := from; i < to; i++ {
			g.Go(func() error {
				m.Put(t, bucket, fmt.Sprintf("users/part-%06d.parquet", i), bodies[i%len(bodies)])
				return nil
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
	}
	if seeded {
		upload(0, len(bodies))
	} else {
		upload(0, n)
	}
	endpoint, counts, listTime := timingProxy(t, m.Endpoint)
	opts := m.Options()
	opts.Endpoint = endpoint
	yaml := fmt.Sprintf(`state: {url: state}
syncs:
  - name: users
    source: {url: "s3://%s/users/", endpoint: %q, path_style: true, region: us-east-1,
             auth: {mode: keys, access_key_id: %q, secret_access_key: %q}}
    mapping: {type: identify, user_id: customer_id}
    destinations: [{type: file, path: out/users.jsonl}]
`, bucket, endpoint, m.AccessKey, m.SecretKey)
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(context.Background(), cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (*Report, time.Duration) {
		start := time.Now()
		rep, err := Run(context.Background(), Options{Config: cfg, Sync: &cfg.Syncs[0], Registry: all.Registry(), Store: store})
		if err != nil {
			t.Fatal(err)
		}
		return rep, time.Since(start)
	}
	rep, first := run()
	firstWhat := fmt.Sprintf("first run %s (%d rows)", first.Round(time.Millisecond), rep.Rows.Sent)
	if seeded {
		upload(len(bodies), n)
		cp, err := store.Load(context.Background(), "users")
		if err != nil {
			t.Fatal(err)
		}
		for i := len(bodies); i < n; i++ {
			f := cp.Files[fmt.Sprintf("users/part-%06d.parquet", i%len(bodies))].Clone()
			f.Key = fmt.Sprintf("users/part-%06d.parquet", i)
			cp.Put(f)
		}
		if err := store.Save(context.Background(), cp); err != nil {
			t.Fatal(err)
		}
		firstWhat = fmt.Sprintf("first run seeded (%d files synced, %d entries added)", len(bodies), n-len(bodies))
	} else if rep.Rows.Sent != int64(5*n) {
		t.Fatalf("first run sent %d rows, want %d", rep.Rows.Sent, 5*n)
	}
	start := time.Now()
	cp, err := store.Load(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	load := time.Since(start)
	g0, l0, _ := counts()
	t0 := listTime()
	rep, second := run()
	g1, l1, _ := counts()
	if rep.Files.Unchanged != n || rep.Rows.Read != 0 {
		t.Fatalf("no-change run: %+v %+v", rep.Files, rep.Rows)
	}
	fmt.Printf("FIGURE incremental-%d-files: %s; no-change run %s with %d LIST requests (%s of them) and %d GET; loading its checkpoint (%d segments) alone %s\n",
		n, firstWhat, second.Round(time.Millisecond), l1-l0, (listTime() - t0).Round(time.Millisecond), g1-g0,
		len(cp.Segments()), load.Round(time.Millisecond))
}

// TestFigureDiffMode measures mode diff over a 1M-row snapshot with 1% of rows changed.
// BACKFLOW_FIGURES=1 go test -run TestFigureDiffMode -v ./pipeline/
func TestFigureDiffMode(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	dir := t.TempDir()
	write := func(partition string, change int64) {
		if _, err := exampledata.Write(filepath.Join(dir, "data", partition), exampledata.Options{
			Files: 4, RowsPerFile: 250_000, RowGroupRows: 65536, Seed: 11, ChangeEvery: change}); err != nil {
			t.Fatal(err)
		}
	}
	write("dt=2025-01-01", 0)
	yaml := `syncs:
  - name: users
    source: {url: data, partition: latest}
    mapping: {type: identify, user_id: customer_id}
    mode: diff
    destinations: [{type: file, path: out/users.jsonl}]
`
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(context.Background(), cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	run := func() (*Report, time.Duration) {
		start := time.Now()
		rep, err := Run(context.Background(), Options{Config: cfg, Sync: &cfg.Syncs[0], Registry: all.Registry(), Store: store})
		if err != nil {
			t.Fatal(err)
		}
		return rep, time.Since(start)
	}
	rep, first := run()
	if rep.Rows.Sent != 1_000_000 {
		t.Fatalf("first snapshot sent %d", rep.Rows.Sent)
	}
	write("dt=2025-01-02", 100)
	rep, second := run()
	if rep.Rows.Sent != 10_000 || rep.Rows.Unchanged != 990_000 {
		t.Fatalf("second snapshot: sent %d, unchanged %d; want 10000 and 990000", rep.Rows.Sent, rep.Rows.Unchanged)
	}
	st, err := os.Stat(filepath.Join(dir, ".backflow", "hashes", "users.db"))
	if err != nil {
		t.Fatal(err)
	}
	fmt.Printf("FIGURE diff-mode: first snapshot 1,000,000 rows in %s (%.0f rows/s); second with 1%% changed in %s (%.0f rows/s, %d sent, %d unchanged); store %.1f MB\n",
		first.Round(time.Millisecond), 1e6/first.Seconds(), second.Round(time.Millisecond), 1e6/second.Seconds(),
		rep.Rows.Sent, rep.Rows.Unchanged, float64(st.Size())/1e6)
}

// TestFigureCheckpointSaves counts the checkpoint saves of a 1M-row sync to a loopback
// webhook: the saver writes as soon as the previous save ended and something new was
// acknowledged (group commit).
// BACKFLOW_FIGURES=1 go test -run TestFigureCheckpointSaves -v ./pipeline/
func TestFigureCheckpointSaves(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	dir := t.TempDir()
	if _, err := exampledata.Write(filepath.Join(dir, "data"), exampledata.Options{Files: 4, RowsPerFile: 250_000, RowGroupRows: 50_000, Seed: 5}); err != nil {
		t.Fatal(err)
	}
	var posts atomic.Int64
	hook := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		_, _ = io.Copy(io.Discard, r.Body)
		posts.Add(1)
	}))
	defer hook.Close()
	for _, kind := range []string{"local", "s3"} {
		t.Run(kind, func(t *testing.T) {
			stateYAML := "state: {url: state-" + kind + "}\n"
			if kind == "s3" {
				m := testutil.StartMinIO(t)
				o := m.Options()
				stateYAML = fmt.Sprintf("state: {url: %q, endpoint: %q, path_style: true, region: %q, auth: {mode: keys, access_key_id: %q, secret_access_key: %q}}\n",
					"s3://"+m.Bucket(t)+"/state", o.Endpoint, o.Region, o.Auth.AccessKeyID, o.Auth.SecretAccessKey)
			}
			posts.Store(0)
			yaml := stateYAML + fmt.Sprintf("syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n    destinations:\n      - {type: webhook, url: %q, batch_size: 500, max_in_flight: 4}\n", hook.URL)
			cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, func(string) (string, bool) { return "", false }, all.Registry())
			if err != nil {
				t.Fatal(err)
			}
			store, err := state.Open(context.Background(), cfg.State)
			if err != nil {
				t.Fatal(err)
			}
			rep, err := Run(context.Background(), Options{Config: cfg, Sync: &cfg.Syncs[0], Registry: all.Registry(), Store: store})
			if err != nil || rep.Rows.Sent != 1_000_000 {
				t.Fatalf("run: %v, %d sent", err, rep.Rows.Sent)
			}
			secs := float64(rep.DurationMS) / 1000
			t.Logf("%s state: 1M rows to a loopback webhook (batches of 500, 4 in flight): %.2f s (%.0f rows/s), %d POSTs, %d checkpoint saves (%.0f a second, one per %.1f batches)",
				kind, secs, 1e6/secs, posts.Load(), rep.CheckpointSaves, float64(rep.CheckpointSaves)/secs, float64(posts.Load())/float64(rep.CheckpointSaves))
		})
	}
}
