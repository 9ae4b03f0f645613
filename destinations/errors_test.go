package destinations

import (
	"context"
	"errors"
	"fmt"
	"io"
	"log/slog"
	"net"
	"net/http"
	"net/http/httptest"
	"net/url"
	"strings"
	"syscall"
	"testing"
	"time"
)

func discard() *slog.Logger { return slog.New(slog.DiscardHandler) }

func TestIsRetryable(t *testing.T) {
	for _, tc := range []struct {
		err  error
		want bool
	}{
		{nil, false},
		{errors.New("plain"), false},
		{&RetryableError{Err: errors.New("x")}, true},
		{fmt.Errorf("wrapped: %w", &RetryableError{Err: errors.New("x")}), true},
		{&PermanentError{Err: errors.New("x"), Status: 400}, false},
		{&BatchError{}, false},
		{context.Canceled, false},
		{context.DeadlineExceeded, true},
		{fmt.Errorf("post: %w", syscall.ECONNREFUSED), true},
		{fmt.Errorf("post: %w", syscall.ECONNRESET), true},
		{io.ErrUnexpectedEOF, true},
		{io.EOF, false},
		{&url.Error{Op: "Post", URL: "http://x", Err: io.EOF}, true},
		{&net.OpError{Op: "dial", Net: "tcp", Err: errors.New("no route")}, true},
		{&net.DNSError{Err: "no such host", Name: "x", IsNotFound: true}, false},
		{&net.DNSError{Err: "server misbehaving", Name: "x", IsTemporary: true}, true},
	} {
		if got := IsRetryable(tc.err); got != tc.want {
			t.Errorf("IsRetryable(%v) = %v, want %v", tc.err, got, tc.want)
		}
	}
}

func TestIsRetryableRealConnections(t *testing.T) {
	// A port nobody listens on: connection refused.
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	_, err = http.Post("http://"+addr+"/", "application/json", strings.NewReader("{}"))
	if err == nil || !IsRetryable(err) {
		t.Errorf("connection refused: %v, retryable %v", err, IsRetryable(err))
	}
	// A server that closes the connection without answering.
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		conn, _, _ := w.(http.Hijacker).Hijack()
		conn.Close()
	}))
	defer srv.Close()
	_, err = http.Post(srv.URL, "application/json", strings.NewReader("{}"))
	if err == nil || !IsRetryable(err) {
		t.Errorf("dropped connection: %v, retryable %v", err, IsRetryable(err))
	}
}

func TestStatusError(t *testing.T) {
	now := time.Now()
	date := now.Add(90 * time.Second).UTC().Format(http.TimeFormat)
	for _, tc := range []struct {
		status     int
		retryAfter string
		set        []int
		want       string // nil, permanent, retryable, plain
		after      time.Duration
	}{
		{200, "", nil, "nil", 0},
		{204, "", nil, "nil", 0},
		{400, "", nil, "permanent", 0},
		{401, "", nil, "permanent", 0},
		{404, "", nil, "permanent", 0},
		{413, "", nil, "permanent", 0},
		{408, "", nil, "retryable", 0},
		{429, "3", nil, "retryable", 3 * time.Second},
		{500, "", nil, "retryable", 0},
		{503, "120", nil, "retryable", 2 * time.Minute},
		{302, "", nil, "plain", 0},
		{404, "", []int{400, 413}, "retryable", 0},
		{413, "", []int{400, 413}, "permanent", 0},
		{500, "", []int{500}, "permanent", 0},
	} {
		h := http.Header{}
		if tc.retryAfter != "" {
			h.Set("Retry-After", tc.retryAfter)
		}
		err := StatusError(tc.status, h, "detail", tc.set)
		var pe *PermanentError
		var re *RetryableError
		got := "plain"
		switch {
		case err == nil:
			got = "nil"
		case errors.As(err, &pe):
			got = "permanent"
			if pe.Status != tc.status {
				t.Errorf("%d: Status %d", tc.status, pe.Status)
			}
		case errors.As(err, &re):
			got = "retryable"
			if re.After != tc.after {
				t.Errorf("%d Retry-After %q: After %s, want %s", tc.status, tc.retryAfter, re.After, tc.after)
			}
		}
		if got != tc.want {
			t.Errorf("StatusError(%d, set %v) = %v (%s), want %s", tc.status, tc.set, err, got, tc.want)
		}
		if err != nil && !strings.Contains(err.Error(), "detail") {
			t.Errorf("StatusError(%d) = %q, lost the detail", tc.status, err)
		}
	}
	h := http.Header{"Retry-After": {date}}
	var re *RetryableError
	if err := StatusError(503, h, "", nil); !errors.As(err, &re) || re.After < 80*time.Second || re.After > 91*time.Second {
		t.Errorf("Retry-After as an HTTP date: %v", err)
	}
}

func TestParseRetryAfter(t *testing.T) {
	now := time.Date(2025, 4, 14, 11, 23, 45, 0, time.UTC)
	for v, want := range map[string]time.Duration{
		"":                               0,
		"0":                              0,
		"-5":                             0,
		"1":                              time.Second,
		" 7 ":                            7 * time.Second,
		"99999999999999":                 24 * time.Hour,
		"soon":                           0,
		"1.5":                            0,
		"Mon, 14 Apr 2025 11:24:45 GMT":  time.Minute,
		"Mon, 14 Apr 2025 11:00:00 GMT":  0, // in the past
		"Monday, 14-Apr-25 11:23:55 GMT": 10 * time.Second,
	} {
		if got := ParseRetryAfter(v, now); got != want {
			t.Errorf("ParseRetryAfter(%q) = %s, want %s", v, got, want)
		}
	}
}

func TestRedact(t *testing.T) {
	if got := RedactURL("https://user:pw@hooks.example.com/p/x?token=secret#frag"); got != "https://hooks.example.com/p/x" {
		t.Errorf("RedactURL = %q", got)
	}
	err := RedactError(&url.Error{Op: "Post", URL: "https://h.example/x?token=secret", Err: io.EOF})
	if strings.Contains(err.Error(), "secret") {
		t.Errorf("RedactError kept the secret: %v", err)
	}
}

func TestBatchErrorMessage(t *testing.T) {
	be := &BatchError{Failed: []Failure{{Index: 3, Err: errors.New("bad")}, {Index: 9, Err: errors.New("worse")}}}
	if got := be.Error(); got != "2 messages refused; message 3: bad" {
		t.Errorf("Error() = %q", got)
	}
}
