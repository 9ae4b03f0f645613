package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/mapper"
)

// TestSuite runs the behavioural suite every destination passes. The suite expects
// Close to deliver what Write accepted; for a Committer that is what the pipeline does at
// the end of a run: Commit, then Close (commitOnClose).
func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		e := newEnv(t)
		cfg := e.cfg("jsonl")
		cfg.Compression = "gzip"
		cfg.MaxObjectRows = 70 // several objects per test
		cfg.Retry = config.Retry{MaxAttempts: 3, MaxBackoff: 100 * time.Millisecond}
		d, err := New(context.Background(), cfg, testEnv())
		if err != nil {
			t.Fatal(err)
		}
		return &commitOnClose{Destination: destinations.Wrap(d, cfg, nil)}, bucketReceiver{e: e, t: t}
	})
}

// commitOnClose commits before closing, with no Write in between.
type commitOnClose struct {
	destinations.Destination
	mu sync.RWMutex
}

func (c *commitOnClose) Write(ctx context.Context, msgs []mapper.Message) error {
	c.mu.RLock()
	defer c.mu.RUnlock()
	return c.Destination.Write(ctx, msgs)
}

func (c *commitOnClose) Close(ctx context.Context) error {
	c.mu.Lock()
	defer c.mu.Unlock()
	err := c.Destination.(destinations.Committer).Commit(ctx)
	if cerr := c.Destination.Close(ctx); err == nil {
		err = cerr
	}
	return err
}

// bucketReceiver reads back every JSON-lines object of the test bucket.
type bucketReceiver struct {
	destinationstest.NoFaults
	e *env
	t *testing.T
}

func (r bucketReceiver) Received() []destinationstest.Received {
	var out []destinationstest.Received
	for _, k := range r.e.keys(r.t) {
		data := r.e.mio.Get(r.t, r.e.bucket, k)
		if strings.HasSuffix(k, ".gz") {
			data = gunzip(r.t, data)
		}
		for _, line := range bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n")) {
			var v struct {
				ID   string `json:"messageId"`
				User string `json:"userId"`
			}
			_ = json.Unmarshal(line, &v)
			out = append(out, destinationstest.Received{ID: v.ID, UserID: v.User, JSON: line})
		}
	}
	return out
}
