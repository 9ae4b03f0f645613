package destinations

import (
	"context"
	"crypto/tls"
	"crypto/x509"
	"errors"
	"fmt"
	"io"
	"net"
	"net/http"
	"net/url"
	"slices"
	"strconv"
	"strings"
	"syscall"
	"time"
)

// RetryableError is a failure that may go away if the same messages are sent again
// later: a timeout, a dropped connection, an HTTP 408, 429 or 5xx.
type RetryableError struct {
	Err error
	// After is how long the receiver asked us to wait (its Retry-After), 0 if it did not say.
	After time.Duration
}

func (e *RetryableError) Error() string {
	if e.After > 0 {
		return fmt.Sprintf("%v (retry after %s)", e.Err, e.After)
	}
	return e.Err.Error()
}

func (e *RetryableError) Unwrap() error { return e.Err }

// PermanentError means the receiver refused the whole request for good: sending the same
// messages again will fail the same way. A batch of several messages refused this way is
// split by Wrap until the refused messages are isolated (see Splittable).
type PermanentError struct {
	Err error
	// Status is the HTTP status of the refusal, 0 when the refusal did not come from HTTP
	// (a message over a size limit, a message the client library itself refused).
	Status int
}

func (e *PermanentError) Error() string { return e.Err.Error() }

func (e *PermanentError) Unwrap() error { return e.Err }

// Failure is one message of a batch that was refused permanently.
type Failure struct {
	// Index is the message's position in the msgs slice given to Write.
	Index int
	Err   error
}

// BatchError is a partial failure, as in Benthos' service.BatchError: the messages at
// Failed indices were refused permanently (they become rejects), every other message of
// the batch was acknowledged. Failed is sorted by Index and holds each index once.
type BatchError struct {
	Failed []Failure
}

func (e *BatchError) Error() string {
	switch len(e.Failed) {
	case 0:
		return "no message refused"
	case 1:
		return fmt.Sprintf("message %d refused: %v", e.Failed[0].Index, e.Failed[0].Err)
	}
	return fmt.Sprintf("%d messages refused; message %d: %v", len(e.Failed), e.Failed[0].Index, e.Failed[0].Err)
}

// IsRetryable reports whether sending the same messages again may succeed: true for a
// *RetryableError, a timeout (context.DeadlineExceeded included: Wrap gives each attempt
// its own deadline) and a connection error (refused, reset, closed early, a temporary DNS
// failure); false for nil, a *PermanentError, a *BatchError, context.Canceled, TLS
// certificate errors and everything else.
func IsRetryable(err error) bool {
	if err == nil {
		return false
	}
	var re *RetryableError
	if errors.As(err, &re) {
		return true
	}
	var pe *PermanentError
	var be *BatchError
	if errors.As(err, &pe) || errors.As(err, &be) || errors.Is(err, context.Canceled) {
		return false
	}
	if errors.Is(err, context.DeadlineExceeded) {
		return true
	}
	return isConnError(err)
}

// isConnError reports whether err is a network failure worth retrying.
func isConnError(err error) bool {
	var certErr *tls.CertificateVerificationError
	var unknownAuth x509.UnknownAuthorityError
	var hostErr x509.HostnameError
	var invalid x509.CertificateInvalidError
	if errors.As(err, &certErr) || errors.As(err, &unknownAuth) || errors.As(err, &hostErr) || errors.As(err, &invalid) {
		return false // a misconfiguration: retrying cannot fix it
	}
	var dnsErr *net.DNSError
	if errors.As(err, &dnsErr) {
		return !dnsErr.IsNotFound
	}
	var ne net.Error
	if errors.As(err, &ne) && ne.Timeout() {
		return true
	}
	for _, target := range []error{syscall.ECONNREFUSED, syscall.ECONNRESET, syscall.ECONNABORTED,
		syscall.EPIPE, syscall.ETIMEDOUT, syscall.EHOSTUNREACH, syscall.ENETUNREACH, io.ErrUnexpectedEOF} {
		if errors.Is(err, target) {
			return true
		}
	}
	var opErr *net.OpError
	if errors.As(err, &opErr) {
		return true
	}
	// http.Client reports a connection the server closed before answering as a bare
	// io.EOF inside its *url.Error.
	var ue *url.Error
	return errors.As(err, &ue) && errors.Is(err, io.EOF)
}

// NonRetryableStatus reports whether an HTTP status refuses a request for good. set is the
// destination's non_retryable_status; empty means the default: every 4xx but 408
// (request timeout) and 429 (too many requests).
func NonRetryableStatus(status int, set []int) bool {
	if len(set) == 0 {
		return status >= 400 && status < 500 && status != http.StatusRequestTimeout && status != http.StatusTooManyRequests
	}
	return slices.Contains(set, status)
}

// Splittable reports whether a permanent refusal may concern only some of the messages,
// so that splitting the batch can isolate them. Authentication and authorisation refusals
// (401, 403, 407) concern the request, not its messages: every half would be refused the
// same way, so they are returned whole instead (the run then stops for that destination).
func Splittable(err *PermanentError) bool {
	switch err.Status {
	case http.StatusUnauthorized, http.StatusForbidden, http.StatusProxyAuthRequired:
		return false
	}
	return true
}

// StatusError classifies an HTTP answer: nil for 2xx; a *PermanentError when the status is
// non-retryable (see NonRetryableStatus); a plain error for a 3xx (redirects are not
// followed: a POST silently turned into a GET would lose the batch, so the URL must be
// fixed); a *RetryableError, with the Retry-After the receiver sent, for everything else.
// detail (a short excerpt of the response body) is added to the message when not empty.
func StatusError(status int, header http.Header, detail string, set []int) error {
	if status >= 200 && status < 300 {
		return nil
	}
	msg := fmt.Sprintf("HTTP %d %s", status, http.StatusText(status))
	if detail != "" {
		msg += ": " + detail
	}
	switch {
	case NonRetryableStatus(status, set):
		return &PermanentError{Err: errors.New(msg), Status: status}
	case status >= 300 && status < 400:
		if loc := header.Get("Location"); loc != "" {
			msg += " (redirect to " + RedactURL(loc) + ")"
		}
		return fmt.Errorf("%s: redirects are not followed; configure the final URL", msg)
	}
	return &RetryableError{Err: errors.New(msg), After: ParseRetryAfter(header.Get("Retry-After"), time.Now())}
}

// ResponseError reads a little of resp's body for the error message, drains and closes the
// body (so the connection can be reused), and classifies the status with StatusError.
func ResponseError(resp *http.Response, set []int) error {
	defer resp.Body.Close()
	var detail string
	if resp.StatusCode < 200 || resp.StatusCode >= 300 {
		b, _ := io.ReadAll(io.LimitReader(resp.Body, 200))
		detail = strings.Join(strings.Fields(strings.ToValidUTF8(string(b), "?")), " ")
	}
	_, _ = io.Copy(io.Discard, io.LimitReader(resp.Body, 64<<10))
	return StatusError(resp.StatusCode, resp.Header, detail, set)
}

// ParseRetryAfter reads a Retry-After header: delay-seconds or an HTTP date (RFC 9110
// 10.2.3). It returns 0 when v is empty, malformed or in the past.
func ParseRetryAfter(v string, now time.Time) time.Duration {
	v = strings.TrimSpace(v)
	if v == "" {
		return 0
	}
	if secs, err := strconv.ParseInt(v, 10, 64); err == nil {
		if secs <= 0 {
			return 0
		}
		// A day is far beyond any max_backoff; clamping avoids overflowing time.Duration.
		return time.Duration(min(secs, 86400)) * time.Second
	}
	if t, err := http.ParseTime(v); err == nil {
		if d := t.Sub(now); d > 0 {
			return d
		}
	}
	return 0
}

// RedactURL returns u without its user info, query and fragment, which may hold secrets,
// for error messages and logs. An unparseable u gives "(invalid URL)".
func RedactURL(u string) string {
	p, err := url.Parse(u)
	if err != nil {
		return "(invalid URL)"
	}
	p.User, p.RawQuery, p.Fragment, p.RawFragment, p.ForceQuery = nil, "", "", "", false
	return p.String()
}

// RedactError replaces the URL inside a *url.Error (what http.Client.Do returns) by its
// redacted form, so that a token in a query string never reaches a log or a report.
func RedactError(err error) error {
	var ue *url.Error
	if errors.As(err, &ue) {
		ue.URL = RedactURL(ue.URL)
	}
	return err
}
