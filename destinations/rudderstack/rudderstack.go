// Package rudderstack is the RudderStack destination: messages go, byte for byte as the
// mapper encoded them, to a RudderStack data plane's Segment-compatible batch endpoint
// (POST <data_plane_url>/v1/batch, {"batch":[…]}, the source's write key as the basic-auth
// user). Unlike the segment destination it needs no client library: every Write is
// posted as requests of at most 4 MB, each acknowledged by a 2xx.
//
// Sample config:
//
//	destinations:
//	  - type: rudderstack
//	    write_key: ${RUDDERSTACK_WRITE_KEY}
//	    data_plane_url: https://acmeexample.dataplane.rudderstack.com
package rudderstack

import (
	"context"
	"errors"
	"fmt"
	"net/http"
	"strings"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*RudderStack)(nil)
	_ destinations.Checker     = (*RudderStack)(nil)
)

// Type is the rudderstack destination's type name in the configuration.
const Type = "rudderstack"

// Limits of RudderStack's HTTP API: 32 KB per event and 4 MB per batch request
// (https://www.rudderstack.com/docs/api/http-api/).
const (
	MaxEventBytes = 32_000
	MaxBatchBytes = 4_000_000
)

// Options are the rudderstack destination's own configuration keys.
type Options struct {
	WriteKey string `mapstructure:"write_key"` // secret; the source's write key
	// DataPlaneURL is the data plane's base URL; backflow posts to /v1/batch below it.
	DataPlaneURL string `mapstructure:"data_plane_url"`
}

// Prepare checks both keys: every RudderStack workspace (or self-hosted install) has its
// own data plane, so there is no default.
func (o *Options) Prepare(c *config.OptionsCheck) {
	c.Required("write_key", Type, o.WriteKey)
	if c.Required("data_plane_url", Type, o.DataPlaneURL) {
		c.HTTPURL("data_plane_url", o.DataPlaneURL)
	}
}

// Secrets is the write key.
func (o *Options) Secrets() []string { return []string{o.WriteKey} }

// Kind is the rudderstack destination's kind: 4 requests in flight of up to 1,000
// messages (and 4 MB).
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: 1000, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// RudderStack posts batches to one data plane.
type RudderStack struct {
	client *httpapi.Client
	url    string
	auth   http.Header
	bufs   httpapi.BufPool
}

// New is the rudderstack destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.WriteKey == "" || o.DataPlaneURL == "" {
		return nil, errors.New("write_key and data_plane_url are required")
	}
	return &RudderStack{
		client: httpapi.NewClient(cfg.MaxInFlight, env.Version, o.WriteKey),
		url:    strings.TrimRight(o.DataPlaneURL, "/") + "/v1/batch",
		auth:   httpapi.Basic(o.WriteKey, ""),
	}, nil
}

var limits = httpapi.Limits{MaxBytes: MaxBatchBytes, Overhead: len(`{"batch":[]}`)}

// Write posts msgs as {"batch":[…]} requests of at most 4 MB. A message over 32 KB is
// rejected without being sent; a request refused as a whole is bisected to reject only
// the refused messages.
func (d *RudderStack) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	items := make([][]byte, len(msgs))
	idx := make([]int, 0, len(msgs))
	var failed []destinations.Failure
	for i := range msgs {
		if n := len(msgs[i].JSON); n > MaxEventBytes {
			failed = append(failed, destinations.Failure{Index: i, Err: &destinations.PermanentError{
				Err: fmt.Errorf("the message is %d bytes, over RudderStack's limit of %d bytes per event", n, MaxEventBytes)}})
			continue
		}
		items[i] = msgs[i].JSON
		idx = append(idx, i)
	}
	f, err := httpapi.DeliverChunks(ctx, limits, items, idx, func(ctx context.Context, idx []int) error { return d.send(ctx, items, idx) })
	if err != nil {
		return fmt.Errorf("rudderstack: %w", err)
	}
	return httpapi.Result(append(failed, f...))
}

func (d *RudderStack) send(ctx context.Context, items [][]byte, idx []int) error {
	bp := d.bufs.Get()
	defer d.bufs.Put(bp)
	*bp = httpapi.AppendJoin((*bp)[:0], `{"batch":[`, items, idx, "]}")
	resp, err := d.client.Post(ctx, d.url, "application/json", *bp, d.auth)
	if err != nil {
		return fmt.Errorf("posting %d messages: %w", len(idx), err)
	}
	if err := resp.StatusError(); err != nil {
		return fmt.Errorf("posting %d messages to %s: %w", len(idx), destinations.RedactURL(d.url), err)
	}
	return nil
}

// Close releases idle connections; Writes hold nothing else.
func (d *RudderStack) Close(context.Context) error {
	d.client.CloseIdle()
	return nil
}

// Check posts an empty batch with the write key: the data plane refuses an unknown key
// (401, 403); any other answer proves it reachable. No message is sent.
func (d *RudderStack) Check(ctx context.Context) error {
	return d.client.CheckPost(ctx, "RudderStack", d.url, []byte(`{"batch":[]}`), d.auth)
}
