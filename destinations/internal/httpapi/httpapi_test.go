package httpapi_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
)

func TestChunks(t *testing.T) {
	idx := []int{0, 1, 2, 3, 4, 5, 6}
	sizes := []int{10, 10, 10, 50, 10, 10, 10}
	size := func(i int) int { return sizes[i] }
	for _, tc := range []struct {
		l    httpapi.Limits
		want string
	}{
		{httpapi.Limits{MaxCount: 3}, "[[0 1 2] [3 4 5] [6]]"},
		{httpapi.Limits{MaxBytes: 40, Overhead: 2}, "[[0 1 2] [3] [4 5 6]]"}, // 2+10+1+10+1+10 = 34; +1+50 > 40
		{httpapi.Limits{MaxCount: 2, MaxBytes: 1000}, "[[0 1] [2 3] [4 5] [6]]"},
		{httpapi.Limits{}, "[[0 1 2 3 4 5 6]]"},
	} {
		if got := fmt.Sprint(tc.l.Chunks(idx, size)); got != tc.want {
			t.Errorf("%+v: %s, want %s", tc.l, got, tc.want)
		}
		for _, c := range tc.l.Chunks(idx, size) {
			n := tc.l.Overhead + len(c) - 1
			for _, i := range c {
				n += sizes[i]
			}
			if tc.l.MaxBytes > 0 && n > tc.l.MaxBytes && len(c) > 1 {
				t.Errorf("%+v: chunk %v is %d bytes", tc.l, c, n)
			}
		}
	}
	if !(httpapi.Limits{MaxBytes: 40, Overhead: 2}).Fits(38) || (httpapi.Limits{MaxBytes: 40, Overhead: 2}).Fits(39) {
		t.Error("Fits")
	}
}

// TestDeliver: refused messages are isolated by bisection, a BatchError's positions are
// mapped back to message indices, and a refusal of the credentials stops everything.
func TestDeliver(t *testing.T) {
	poison := map[int]bool{3: true, 17: true, 18: true}
	var calls int
	send := func(_ context.Context, idx []int) error {
		calls++
		for _, i := range idx {
			if poison[i] {
				return &destinations.PermanentError{Status: 400, Err: errors.New("bad")}
			}
		}
		return nil
	}
	idx := make([]int, 20)
	for i := range idx {
		idx[i] = i + 1
	}
	failed, err := httpapi.Deliver(context.Background(), idx, send)
	var got []int
	for _, f := range failed {
		got = append(got, f.Index)
	}
	if err != nil || !slices.Equal(got, []int{3, 17, 18}) || calls > 20 {
		t.Errorf("Deliver = %v, %v after %d calls", got, err, calls)
	}

	failed, err = httpapi.Deliver(context.Background(), []int{5, 6, 7}, func(context.Context, []int) error {
		return &destinations.BatchError{Failed: []destinations.Failure{{Index: 2, Err: errors.New("x")}}}
	})
	if err != nil || len(failed) != 1 || failed[0].Index != 7 {
		t.Errorf("Deliver of a partial refusal = %+v, %v", failed, err)
	}

	calls = 0
	_, err = httpapi.Deliver(context.Background(), idx, func(context.Context, []int) error {
		calls++
		return &destinations.PermanentError{Status: 401, Err: errors.New("who are you")}
	})
	if err == nil || calls != 1 {
		t.Errorf("Deliver with a 401 = %v after %d calls", err, calls)
	}

	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if _, err := httpapi.Deliver(ctx, idx, send); !errors.Is(err, context.Canceled) {
		t.Errorf("Deliver with a done context = %v", err)
	}
	if httpapi.Result(nil) != nil {
		t.Error("Result of nothing")
	}
	var be *destinations.BatchError
	err = httpapi.Result([]destinations.Failure{{Index: 4}, {Index: 1}, {Index: 4}})
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 1 {
		t.Errorf("Result = %v", err)
	}
}

func TestRetryAfter(t *testing.T) {
	now := time.Unix(1_700_000_000, 0)
	for _, tc := range []struct {
		h    http.Header
		want time.Duration
	}{
		{http.Header{"Retry-After": {"3"}}, 3 * time.Second},
		{http.Header{"Retry-After": {"3"}, "X-Ratelimit-Reset": {"1700000010"}}, 3 * time.Second},
		{http.Header{"X-Ratelimit-Reset": {"1700000010"}}, 10 * time.Second},
		{http.Header{"X-Ratelimit-Reset": {"1699999990"}}, 0},
		{http.Header{"X-Ratelimit-Reset": {"2.5"}}, 2500 * time.Millisecond},
		{http.Header{"X-Ratelimit-Reset": {"NaN"}}, 0},
		{http.Header{"X-Ratelimit-Reset": {"9999999999999"}}, 24 * time.Hour},
		{http.Header{"X-Ratelimit-Reset": {"soon"}}, 0},
		{http.Header{}, 0},
	} {
		if got := httpapi.RetryAfter(tc.h, now); got != tc.want {
			t.Errorf("%v: %s, want %s", tc.h, got, tc.want)
		}
	}
	resp := &httpapi.Response{Status: 429, Header: http.Header{"X-Ratelimit-Reset": {strconv.FormatInt(time.Now().Add(time.Hour).Unix(), 10)}}}
	var re *destinations.RetryableError
	if err := resp.StatusError(); !errors.As(err, &re) || re.After < 59*time.Minute {
		t.Errorf("StatusError of a 429 = %v", err)
	}
}

// TestSecretsMasked: an API that echoes the key does not put it in errors.
func TestSecretsMasked(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Header.Get("User-Agent") != "backflow/9.9" {
			w.WriteHeader(500)
			return
		}
		w.WriteHeader(400)
		fmt.Fprintf(w, `{"error":"Invalid API key: %s"}`, r.Header.Get("Authorization"))
	}))
	defer srv.Close()
	c := httpapi.NewClient(2, "9.9", "hunter2-key", "ab")
	resp, err := c.Post(context.Background(), srv.URL, "application/json", []byte("{}"), httpapi.Bearer("hunter2-key"))
	if err != nil {
		t.Fatal(err)
	}
	if err := resp.StatusError(); err == nil || strings.Contains(err.Error(), "hunter2") || !strings.Contains(err.Error(), "[redacted]") {
		t.Errorf("StatusError = %v", err)
	}
	if err := httpapi.CheckAnswer("x", &httpapi.Response{Status: 403}); err == nil {
		t.Error("CheckAnswer accepted a 403")
	}
	if err := httpapi.CheckAnswer("x", &httpapi.Response{Status: 404}); err != nil {
		t.Errorf("CheckAnswer of a 404: %v", err)
	}
}

func TestAppendObject(t *testing.T) {
	extra := func(dst []byte) []byte { return append(dst, `"k":1`...) }
	none := func(dst []byte) []byte { return dst }
	for _, tc := range []struct{ in, want string }{
		{`{}`, `{"k":1}`},
		{` { } `, `{"k":1}`},
		{`{"a":12.30}`, `{"a":12.30,"k":1}`},
		{`null`, `{"k":1}`},
		{`[1]`, `{"k":1}`},
	} {
		if got := string(httpapi.AppendObject(nil, []byte(tc.in), extra)); got != tc.want {
			t.Errorf("AppendObject(%s) = %s, want %s", tc.in, got, tc.want)
		}
	}
	if got := string(httpapi.AppendObject(nil, []byte(`{"a":1}`), none)); got != `{"a":1}` {
		t.Errorf("AppendObject with nothing extra = %s", got)
	}
}

func FuzzAppendObject(f *testing.F) {
	for _, s := range []string{`{}`, `{"a":1}`, ` {"a":{"b":[1,2]}} `, `{"k":"dup"}`} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, obj string) {
		var m map[string]json.RawMessage
		if json.Unmarshal([]byte(obj), &m) != nil {
			return // the mapper gives objects only
		}
		b := httpapi.AppendObject(nil, []byte(obj), func(dst []byte) []byte { return append(dst, `"k":1`...) })
		var got map[string]json.RawMessage
		if err := json.Unmarshal(b, &got); err != nil || string(got["k"]) != "1" {
			t.Fatalf("%s became %s: %v", obj, b, err)
		}
		if len(got) != len(m)+1 && m["k"] == nil {
			t.Fatalf("%s became %s: members lost", obj, b)
		}
	})
}

func FuzzRetryAfter(f *testing.F) {
	for _, s := range [][2]string{{"3", ""}, {"", "1700000010"}, {"Wed, 21 Oct 2015 07:28:00 GMT", ""}, {"", "-5"}, {"", "1e308"}, {"x", "NaN"}, {"", "Inf"}} {
		f.Add(s[0], s[1])
	}
	now := time.Unix(1_700_000_000, 0)
	f.Fuzz(func(t *testing.T, retryAfter, reset string) {
		d := httpapi.RetryAfter(http.Header{"Retry-After": {retryAfter}, "X-Ratelimit-Reset": {reset}}, now)
		if d < 0 || d > 24*time.Hour {
			t.Fatalf("Retry-After %q, X-RateLimit-Reset %q: %s", retryAfter, reset, d)
		}
	})
}
