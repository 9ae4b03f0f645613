// Package webhook is the webhook destination: every Write is one HTTP POST of
// {"batch":[message, …]} to a URL, built straight from the messages' encoded JSON. A 2xx
// answer acknowledges the whole batch.
//
// Sample config:
//
//	destinations:
//	  - type: webhook
//	    url: https://hooks.example.com/backflow
//	    headers: { Authorization: "Bearer ${HOOK_TOKEN}" }
//	    gzip: true                  # Content-Encoding: gzip
//	    batch_size: 500             # messages per POST
//	    max_in_flight: 4            # concurrent POSTs
//	    rate_limit: 10              # POSTs per second; 0: unlimited
//	    timeout: 30s                # one POST
//	    retry: { max_attempts: 8, max_backoff: 30s }
//	    non_retryable_status: [400, 413, 422]   # default: every 4xx but 408 and 429
package webhook

import (
	"bytes"
	"compress/gzip"
	"context"
	"errors"
	"fmt"
	"maps"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"sync"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*Webhook)(nil)
	_ destinations.Checker     = (*Webhook)(nil)
)

// Webhook posts batches to one URL. It holds no state between Writes but its HTTP
// connections: retries, rate limits, timeouts and splitting come from destinations.Wrap.
type Webhook struct {
	url          string
	safeURL      string // without credentials or query, for errors
	header       http.Header
	gzip         bool
	nonRetryable []int
	client       *http.Client
	bufs         sync.Pool // *bytes.Buffer
	zips         sync.Pool // *gzip.Writer
}

// Type is the webhook destination's type name in the configuration.
const Type = "webhook"

// Options are the webhook destination's own configuration keys.
type Options struct {
	URL     string            `mapstructure:"url"`
	Headers map[string]string `mapstructure:"headers"` // values are secret
	Gzip    bool              `mapstructure:"gzip"`    // Content-Encoding: gzip
	// NonRetryableStatus are the HTTP codes that refuse a batch for good (it is then
	// split to isolate the refused messages). Default: every 4xx but 408 and 429.
	NonRetryableStatus []int `mapstructure:"non_retryable_status"`
}

// Prepare checks the URL, the header names and values, and the status codes.
func (o *Options) Prepare(c *config.OptionsCheck) {
	if c.Required("url", Type, o.URL) {
		c.HTTPURL("url", o.URL)
	}
	for _, name := range slices.Sorted(maps.Keys(o.Headers)) {
		key := "headers." + name
		if !config.HeaderName(name) {
			c.Problem(key, "is not a valid HTTP header name")
		}
		if !config.ValidHeaderValue(o.Headers[name]) {
			c.Problem(key, "the value must not contain line breaks or NUL")
		}
	}
	for i, code := range o.NonRetryableStatus {
		if code < 400 || code > 499 {
			c.Problem("non_retryable_status["+strconv.Itoa(i)+"]", fmt.Sprintf("%d is not a 4xx status code", code))
		}
	}
}

// Secrets are the header values: they carry tokens.
func (o *Options) Secrets() []string { return slices.Collect(maps.Values(o.Headers)) }

// Kind is the webhook destination's kind: 4 POSTs in flight of 500 messages each.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: 500, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// New is the webhook destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	u, err := parseURL(o.URL)
	if err != nil {
		return nil, err
	}
	header := http.Header{}
	for k, v := range o.Headers {
		header.Set(k, v)
	}
	header.Set("Content-Type", "application/json")
	if header.Get("User-Agent") == "" {
		header.Set("User-Agent", "backflow/"+versionOr(env.Version))
	}
	if o.Gzip {
		header.Set("Content-Encoding", "gzip")
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(cfg.MaxInFlight, 2)
	return &Webhook{
		url:          u.String(),
		safeURL:      destinations.RedactURL(u.String()),
		header:       header,
		gzip:         o.Gzip,
		nonRetryable: o.NonRetryableStatus,
		client: &http.Client{
			Transport: tr,
			// A redirected POST may turn into a GET and lose its body: never follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
	}, nil
}

func parseURL(raw string) (*url.URL, error) {
	if raw == "" {
		return nil, errors.New("url is required")
	}
	u, err := url.Parse(raw)
	if err != nil {
		return nil, fmt.Errorf("url %s: %w", destinations.RedactURL(raw), errors.Unwrap(err))
	}
	if u.Scheme != "http" && u.Scheme != "https" {
		return nil, fmt.Errorf("url %s: the scheme must be http or https", destinations.RedactURL(raw))
	}
	if u.Host == "" {
		return nil, fmt.Errorf("url %s: no host", destinations.RedactURL(raw))
	}
	return u, nil
}

func versionOr(v string) string {
	if v == "" {
		return "dev"
	}
	return v
}

// Write posts msgs as one batch. nil means the receiver answered 2xx; a
// *destinations.PermanentError a non-retryable status (Wrap then splits the batch); a
// *destinations.RetryableError a timeout, a dropped connection or a retryable status,
// with the receiver's Retry-After.
func (d *Webhook) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	buf := d.body(msgs)
	defer d.bufs.Put(buf)
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, d.url, bytes.NewReader(buf.Bytes()))
	if err != nil {
		return fmt.Errorf("posting to %s: %w", d.safeURL, err)
	}
	req.Header = d.header.Clone()
	resp, err := d.client.Do(req)
	if err != nil {
		err = fmt.Errorf("posting %s: %w", render.Plural(len(msgs), "message"), destinations.RedactError(err))
		if ctx.Err() == nil && destinations.IsRetryable(err) {
			return &destinations.RetryableError{Err: err}
		}
		return err
	}
	if err := destinations.ResponseError(resp, d.nonRetryable); err != nil {
		return fmt.Errorf("posting %s to %s: %w", render.Plural(len(msgs), "message"), d.safeURL, err)
	}
	return nil
}

// body builds {"batch":[m1,m2,…]} from the messages' bytes, gzipped when configured.
func (d *Webhook) body(msgs []mapper.Message) *bytes.Buffer {
	size := len(`{"batch":[]}`) + len(msgs)
	for i := range msgs {
		size += len(msgs[i].JSON)
	}
	plain, _ := d.bufs.Get().(*bytes.Buffer)
	if plain == nil {
		plain = new(bytes.Buffer)
	}
	plain.Reset()
	plain.Grow(size)
	plain.WriteString(`{"batch":[`)
	for i := range msgs {
		if i > 0 {
			plain.WriteByte(',')
		}
		plain.Write(msgs[i].JSON)
	}
	plain.WriteString("]}")
	if !d.gzip {
		return plain
	}
	out, _ := d.bufs.Get().(*bytes.Buffer)
	if out == nil {
		out = new(bytes.Buffer)
	}
	out.Reset()
	zw, _ := d.zips.Get().(*gzip.Writer)
	if zw == nil {
		zw, _ = gzip.NewWriterLevel(out, gzip.BestSpeed)
	} else {
		zw.Reset(out)
	}
	zw.Write(plain.Bytes()) // writes to a bytes.Buffer do not fail
	zw.Close()
	d.zips.Put(zw)
	d.bufs.Put(plain)
	return out
}

// Close releases idle connections; Writes hold nothing else.
func (d *Webhook) Close(context.Context) error {
	d.client.CloseIdleConnections()
	return nil
}

// Check verifies that the URL is valid and that its host answers HTTP: any status counts
// as reachable (a HEAD may well be refused by an endpoint that only takes POST).
func (d *Webhook) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	req, err := http.NewRequestWithContext(ctx, http.MethodHead, d.url, nil)
	if err != nil {
		return fmt.Errorf("checking %s: %w", d.safeURL, err)
	}
	for k, v := range d.header {
		if k != "Content-Encoding" && k != "Content-Type" {
			req.Header[k] = v
		}
	}
	resp, err := d.client.Do(req)
	if err != nil {
		return fmt.Errorf("checking %s: %w", d.safeURL, destinations.RedactError(err))
	}
	resp.Body.Close()
	return nil
}
