package rudderstack_test

import (
	"context"
	"errors"
	"net/http"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
	"github.com/backflowhq/backflow/destinations/rudderstack"
)

const key = "rs-write-key"

// server is a data plane's /v1/batch: the Segment-compatible server of the shared suite,
// with RudderStack's 4 MB limit per request.
func server(t *testing.T) *destinationstest.SegmentServer {
	return destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: key, MaxBodyBytes: rudderstack.MaxBatchBytes})
}

func cfgFor(url, writeKey string) config.Destination {
	return config.Destination{
		Type: rudderstack.Type, Name: "rs", BatchSize: 1000, MaxInFlight: 4,
		Retry: config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
		Options: &rudderstack.Options{WriteKey: writeKey, DataPlaneURL: url},
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, rudderstack.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		srv := server(t)
		return build(t, cfgFor(srv.URL, key)), srv
	})
}

// TestBodyIsTheMessagesBytes: the data plane receives the messages as encoded.
func TestBodyIsTheMessagesBytes(t *testing.T) {
	srv := apitest.New(t, func(*apitest.Server, *http.Request, []byte) apitest.Answer {
		return apitest.Answer{Status: 200, Body: "OK"}
	})
	msgs := destinationstest.Messages("bytes", 2)
	if err := build(t, cfgFor(srv.URL+"/", key)).Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	want := `{"batch":[` + string(msgs[0].JSON) + "," + string(msgs[1].JSON) + `]}`
	if r := srv.Requests(); len(r) != 1 || r[0].Path != "/v1/batch" || string(r[0].Body) != want {
		t.Errorf("requests %d; body %s", len(r), r[0].Body)
	}
}

// TestThrottled: a 429 is retried, after its Retry-After when it has one (RudderStack
// documents none; the backoff is otherwise the destination's).
func TestThrottled(t *testing.T) {
	srv := apitest.New(t, func(*apitest.Server, *http.Request, []byte) apitest.Answer {
		return apitest.Answer{Status: 200, Body: "OK"}
	})
	srv.Throttle(apitest.Answer{Status: 429, Header: http.Header{"Retry-After": {"1"}}, Body: "Too many requests"})
	cfg := cfgFor(srv.URL, key)
	cfg.Retry.MaxBackoff = 150 * time.Millisecond
	start := time.Now()
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("thr", 3)); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 150*time.Millisecond || len(srv.Requests()) != 2 {
		t.Errorf("%d requests in %s, want a retry after the capped 150ms", len(srv.Requests()), el)
	}
}

func TestWriteKeyRefused(t *testing.T) {
	srv := server(t)
	d := build(t, cfgFor(srv.URL, "wrong-key"))
	err := d.Write(context.Background(), destinationstest.Messages("auth", 8))
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || pe.Status != 401 || len(srv.Batches()) != 1 {
		t.Errorf("Write = %v after %d requests, want one 401", err, len(srv.Batches()))
	}
	if err := d.(destinations.Checker).Check(context.Background()); err == nil || strings.Contains(err.Error(), "wrong-key") {
		t.Errorf("Check = %v", err)
	}
	if err := build(t, cfgFor(srv.URL, key)).(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("Check with the right key: %v", err)
	}
}

// TestSizeLimits: requests of at most 4 MB; a message over 32 KB rejected unsent.
func TestSizeLimits(t *testing.T) {
	srv := server(t)
	cfg := cfgFor(srv.URL, key)
	cfg.Timeout = time.Minute
	d := build(t, cfg)
	msgs := destinationstest.LargeMessages("big", 300, 30_000)
	over := destinationstest.LargeMessages("over", 1, 40_000)
	err := d.Write(context.Background(), append(msgs[:10:10], append(over, msgs[10:]...)...))
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 10 || !strings.Contains(be.Failed[0].Err.Error(), "32000") {
		t.Fatalf("Write = %v, want the 40 KB message refused", err)
	}
	batches := srv.Batches()
	for _, b := range batches {
		if b.Bytes > rudderstack.MaxBatchBytes || b.Status != 200 {
			t.Errorf("a request of %d bytes answered %d", b.Bytes, b.Status)
		}
	}
	if len(batches) < 3 || len(srv.Counts()) != 300 {
		t.Errorf("%d requests, %d messages received", len(batches), len(srv.Counts()))
	}
}

func TestExampleLoads(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "rudderstack", "backflow.yaml")
	env := map[string]string{"RUDDERSTACK_WRITE_KEY": "secret-key", "RUDDERSTACK_DATA_PLANE_URL": "https://acme.dataplane.rudderstack.com"}
	cfg, err := config.Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	if o, ok := cfg.Syncs[0].Destinations[0].Options.(*rudderstack.Options); !ok || o.WriteKey != "secret-key" {
		t.Errorf("options %+v", cfg.Syncs[0].Destinations[0].Options)
	}
}

func TestBadOptions(t *testing.T) {
	yaml := `syncs:
  - name: s
    source: { url: s3://b/p/ }
    mapping: { type: identify, user_id: id }
    destinations:
      - type: rudderstack
        data_plane_url: ftp://x
        endpoint: https://x
`
	_, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), nil, all.Registry())
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{"write_key", "data_plane_url", "endpoint"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestDocumented(t *testing.T) {
	apitest.CheckDocumented(t, rudderstack.Type, &rudderstack.Options{})
}
