package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
)

// TestSuite runs the behavioural suite every destination passes; the s3 destination is
// a destinations.Deferred, so the suite writes with WriteDeferred and flushes.
func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		e := newEnv(t)
		cfg := e.cfg("jsonl")
		optsOf(cfg).Compression = "gzip"
		optsOf(cfg).MaxObjectRows = 70 // several objects per test
		cfg.Retry = config.Retry{MaxAttempts: 3, MaxBackoff: 100 * time.Millisecond}
		d, err := New(context.Background(), cfg, testEnv())
		if err != nil {
			t.Fatal(err)
		}
		return destinations.Wrap(d, cfg, nil), bucketReceiver{e: e, t: t}
	})
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
