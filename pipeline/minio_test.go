package pipeline

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/state"
)

// Files larger than the cached footer tail, with many row groups, are read from S3 by
// ranged GETs long after they were opened: every row must arrive (a regression test for
// files opened with a context that ended before their row groups were read).
func TestS3SourceLargeFilesArriveWhole(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	dir := t.TempDir()
	paths, err := exampledata.Write(dir, exampledata.Options{Files: 3, RowsPerFile: 40_000, RowGroupRows: 4_000, Seed: 5})
	if err != nil {
		t.Fatal(err)
	}
	for _, p := range paths {
		b, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		if len(b) < 1<<20 {
			t.Fatalf("%s is %d bytes: too small to leave the cached tail", p, len(b))
		}
		m.Put(t, bucket, "users/"+filepath.Base(p), b)
	}
	yaml := fmt.Sprintf(`syncs:
  - name: users
    source: {url: "s3://%s/users/", endpoint: %q, path_style: true, region: us-east-1,
             auth: {mode: keys, access_key_id: %q, secret_access_key: %q}}
    mapping: {type: identify, user_id: customer_id}
    destinations: [{type: webhook, name: hook, url: "http://127.0.0.1:1/", batch_size: 500}]
`, bucket, m.Endpoint, m.AccessKey, m.SecretKey)
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(context.Background(), cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	d := newFakeDest()
	reg := destinations.NewRegistry()
	reg.Register(fakeWebhook(func(context.Context, config.Destination, destinations.Env) (destinations.Destination, error) {
		return d, nil
	}))
	rep, err := Run(context.Background(), Options{Config: cfg, Sync: &cfg.Syncs[0], Registry: reg, Store: store, Prefetch: 1, Workers: 2})
	if err != nil {
		t.Fatalf("run: %v", err)
	}
	if n, all := d.total(); n != 120_000 || all != 120_000 || rep.Rows.Sent != 120_000 {
		t.Fatalf("%d distinct rows, %d deliveries, report %d sent; want 120000", n, all, rep.Rows.Sent)
	}
}
