// Package httpapi holds what the HTTP API destinations (amplitude, mixpanel, braze,
// rudderstack) share: one HTTP client that never follows redirects, the classification
// of answers into the destinations package's errors (with the wait the receiver asked
// for, from Retry-After or X-RateLimit-Reset), the cutting of a Write into requests
// within an API's count and byte limits, and the isolation of refused messages inside a
// Write (Deliver), so that a Write of several requests never resends what an earlier
// request of it delivered.
package httpapi

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"io"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/backflowhq/backflow/destinations"
)

// MaxResponseBytes bounds how much of an answer is read: the per-event error lists of
// the APIs are far smaller, and a misbehaving proxy must not cost memory.
const MaxResponseBytes = 1 << 20

// Client posts request bodies to one API.
type Client struct {
	http      *http.Client
	userAgent string
	secrets   [][]byte
}

// NewClient returns a client keeping up to maxInFlight idle connections to the API.
// secrets (API keys, tokens) are masked in every answer it reads: some APIs echo a
// refused key ("Invalid API key: …"), and answers end up in errors, logs and rejects.
func NewClient(maxInFlight int, version string, secrets ...string) *Client {
	var masks [][]byte
	for _, s := range secrets {
		if len(s) >= 4 { // shorter ones would mask ordinary text
			masks = append(masks, []byte(s))
		}
	}
	tr := http.DefaultTransport.(*http.Transport).Clone()
	tr.MaxIdleConnsPerHost = max(maxInFlight, 2)
	if version == "" {
		version = "dev"
	}
	return &Client{
		http: &http.Client{
			Transport: tr,
			// A redirected POST may turn into a GET and lose its body: never follow.
			CheckRedirect: func(*http.Request, []*http.Request) error { return http.ErrUseLastResponse },
		},
		userAgent: "backflow/" + version,
		secrets:   masks,
	}
}

// Response is an answer, its body read (up to MaxResponseBytes) and closed.
type Response struct {
	Status int
	Header http.Header
	Body   []byte
}

// OK reports a 2xx answer.
func (r *Response) OK() bool { return r.Status >= 200 && r.Status < 300 }

// Post sends body to url with the given Content-Type and extra header (credentials) and
// reads the answer. A failure to get an answer is returned as a *RetryableError when it
// may go away (a refused or reset connection, a timeout), else as is; the URL in it is
// redacted. ctx's own end is returned unwrapped of retryability, so that a cancelled
// Write is never retried.
func (c *Client) Post(ctx context.Context, url, contentType string, body []byte, header http.Header) (*Response, error) {
	req, err := http.NewRequestWithContext(ctx, http.MethodPost, url, bytes.NewReader(body))
	if err != nil {
		return nil, fmt.Errorf("building the request to %s: %w", destinations.RedactURL(url), err)
	}
	for k, v := range header {
		req.Header[k] = v
	}
	req.Header.Set("Content-Type", contentType)
	req.Header.Set("User-Agent", c.userAgent)
	resp, err := c.http.Do(req)
	if err != nil {
		err = destinations.RedactError(err)
		if ctx.Err() == nil && destinations.IsRetryable(err) {
			return nil, &destinations.RetryableError{Err: err}
		}
		return nil, err
	}
	defer resp.Body.Close()
	b, err := io.ReadAll(io.LimitReader(resp.Body, MaxResponseBytes))
	if err != nil {
		// The answer was cut: whether the request was accepted is unknown, so it is
		// not taken as acknowledged and is sent again (the APIs deduplicate or are
		// idempotent, see each destination).
		err = fmt.Errorf("reading the answer of %s: %w", destinations.RedactURL(url), err)
		if ctx.Err() == nil {
			return nil, &destinations.RetryableError{Err: err}
		}
		return nil, err
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10)) // lets the connection be reused
	for _, secret := range c.secrets {
		b = bytes.ReplaceAll(b, secret, []byte("[redacted]"))
	}
	return &Response{Status: resp.StatusCode, Header: resp.Header, Body: b}, nil
}

// CloseIdle releases idle connections.
func (c *Client) CloseIdle() { c.http.CloseIdleConnections() }

// StatusError classifies a non-2xx answer as destinations.StatusError does (every 4xx
// but 408 and 429 refuses for good, 401/403/407 the credentials), with a short excerpt of
// the body and the wait the API asked for (see RetryAfter). nil for a 2xx.
func (r *Response) StatusError() error {
	err := destinations.StatusError(r.Status, r.Header, Excerpt(r.Body), nil)
	var re *destinations.RetryableError
	if errors.As(err, &re) {
		re.After = max(re.After, RetryAfter(r.Header, time.Now()))
	}
	return err
}

// Excerpt is the start of an answer's body on one line, for error messages.
func Excerpt(b []byte) string {
	const n = 200
	if len(b) > n {
		b = b[:n]
	}
	return strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "?")), " ")
}

// RetryAfter is how long an answer asks the client to wait: its Retry-After (seconds or
// an HTTP date), else its X-RateLimit-Reset (Braze's: the UTC epoch second at which the
// limit resets; a small number is taken as seconds from now), else 0. Values in the past
// or malformed count as 0; a day at most.
func RetryAfter(h http.Header, now time.Time) time.Duration {
	const day = 86400
	if d := destinations.ParseRetryAfter(h.Get("Retry-After"), now); d > 0 {
		// ParseRetryAfter caps delay-seconds but not an HTTP date far ahead.
		return min(d, day*time.Second)
	}
	v := strings.TrimSpace(h.Get("X-RateLimit-Reset"))
	if v == "" {
		return 0
	}
	secs, err := strconv.ParseFloat(v, 64)
	if err != nil || secs <= 0 || secs != secs {
		return 0
	}
	if secs < 1e9 { // a delay, not an epoch second
		return time.Duration(min(secs, day) * float64(time.Second))
	}
	d := time.Unix(int64(secs), 0).Sub(now)
	if d <= 0 {
		return 0
	}
	return min(d, day*time.Second)
}

// Bearer is an Authorization header with a bearer token.
func Bearer(token string) http.Header {
	return http.Header{"Authorization": {"Bearer " + token}}
}

// Basic is an Authorization header with basic credentials.
func Basic(user, password string) http.Header {
	r, _ := http.NewRequest(http.MethodGet, "http://x", nil) // cannot fail
	r.SetBasicAuth(user, password)
	return http.Header{"Authorization": r.Header["Authorization"]}
}

// CheckAnswer is what `backflow check` makes of the answer to a request that carries
// no data: a refusal of the credentials (401, 403, 407) fails, any other answer proves
// the API reachable and the credentials not refused.
func CheckAnswer(what string, r *Response) error {
	switch r.Status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusProxyAuthRequired:
		return fmt.Errorf("%s refused the credentials: HTTP %d %s: %s", what, r.Status, http.StatusText(r.Status), Excerpt(r.Body))
	}
	if r.Status >= 300 && r.Status < 400 {
		return fmt.Errorf("%s answered HTTP %d (a redirect, not followed): configure the final URL", what, r.Status)
	}
	return nil
}

// CheckPost is `backflow check` for an API that accepts an empty request: it posts body
// (which carries no data) to url with header, within 10 seconds, and judges the answer
// with CheckAnswer. api names the service in the messages.
func (c *Client) CheckPost(ctx context.Context, api, url string, body []byte, header http.Header) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	safe := destinations.RedactURL(url)
	resp, err := c.Post(ctx, url, "application/json", body, header)
	if err != nil {
		return fmt.Errorf("checking %s: %w", safe, err)
	}
	return CheckAnswer("checking "+safe+": "+api, resp)
}
