package webhook_test

import (
	"context"
	"errors"
	"io"
	"net"
	"net/http"
	"net/http/httptest"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/webhook"
)

const token = "Bearer s3cr3t"

func cfgFor(url string, gzip bool) config.Destination {
	return config.Destination{
		Type: webhook.Type, Name: "hook", BatchSize: 500, MaxInFlight: 4,
		Options: &webhook.Options{URL: url, Gzip: gzip, Headers: map[string]string{"Authorization": token}},
		Retry:   config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, webhook.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	for _, gz := range []bool{false, true} {
		name := "plain"
		if gz {
			name = "gzip"
		}
		t.Run(name, func(t *testing.T) {
			destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
				srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
					Path: "/hook", Headers: map[string]string{"Authorization": token}})
				return build(t, cfgFor(srv.URL+"/hook", gz)), srv
			})
		})
	}
}

// TestFaults: 30% 500s, 10% 429s, dropped connections and a slow endpoint; every message
// arrives at least once, Write reports all acknowledged but the poison rows, which end as
// *BatchError failures exactly for them; every body stays within 500 KB.
func TestFaults(t *testing.T) {
	poison := map[int]bool{3: true, 250: true, 251: true, 599: true}
	msgs := destinationstest.LargeMessages("faults", 600, 1500)
	var users []string
	for i := range poison {
		users = append(users, msgs[i].UserID)
	}
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		Path: "/hook", Headers: map[string]string{"Authorization": token},
		Seed: 42, Fail500: 0.3, Fail429: 0.1, Drop: 0.05, Delay: 2 * time.Millisecond, PoisonUsers: users,
	})
	cfg := cfgFor(srv.URL+"/hook", true)
	cfg.BatchSize = 100
	cfg.Retry.MaxAttempts = 20
	d := build(t, cfg)
	defer d.Close(context.Background())

	var wg sync.WaitGroup
	var mu sync.Mutex
	refused := map[int]bool{}
	for start := 0; start < len(msgs); start += 100 {
		wg.Go(func() {
			err := d.Write(context.Background(), msgs[start:start+100])
			var be *destinations.BatchError
			if err != nil && !errors.As(err, &be) {
				t.Errorf("Write of messages %d…: %v", start, err)
				return
			}
			if be != nil {
				mu.Lock()
				for _, f := range be.Failed {
					refused[start+f.Index] = true
				}
				mu.Unlock()
			}
		})
	}
	wg.Wait()
	if len(refused) != len(poison) {
		t.Errorf("refused %v, want %v", refused, poison)
	}
	counts := srv.Counts()
	for i, m := range msgs {
		if poison[i] != refused[i] {
			t.Errorf("message %d: refused %v, want %v", i, refused[i], poison[i])
		}
		if !poison[i] && counts[m.ID] < 1 {
			t.Errorf("message %d acknowledged but never received", i)
		}
		if poison[i] && counts[m.ID] != 0 {
			t.Errorf("poison message %d received", i)
		}
	}
	var faults, gz int
	for _, b := range srv.Batches() {
		if b.Status != 200 && b.Status != 400 {
			faults++
		}
		if b.Gzip {
			gz++
		}
		if b.Bytes > destinationstest.MaxBatchBytes {
			t.Errorf("a body of %d bytes", b.Bytes)
		}
	}
	if faults == 0 || gz != len(srv.Batches()) {
		t.Errorf("%d faults injected, %d of %d requests gzipped", faults, gz, len(srv.Batches()))
	}
	t.Logf("%d requests, %d faults", len(srv.Batches()), faults)
}

func TestBodyIsTheMessagesBytes(t *testing.T) {
	var got string
	var header http.Header
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		b, _ := io.ReadAll(r.Body)
		got, header = string(b), r.Header.Clone()
	}))
	defer srv.Close()
	d := build(t, cfgFor(srv.URL, false))
	msgs := destinationstest.Messages("bytes", 2)
	if err := d.Write(context.Background(), msgs); err != nil {
		t.Fatal(err)
	}
	want := `{"batch":[` + string(msgs[0].JSON) + "," + string(msgs[1].JSON) + `]}`
	if got != want {
		t.Errorf("body %s\nwant %s", got, want)
	}
	if header.Get("Content-Type") != "application/json" || header.Get("Authorization") != token ||
		header.Get("User-Agent") != "backflow/1.2.3" || header.Get("Content-Encoding") != "" {
		t.Errorf("headers %v", header)
	}
}

func TestRetryAfterAndStatuses(t *testing.T) {
	var mu sync.Mutex
	var calls []time.Time
	status := []int{429, 503, 200}
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		mu.Lock()
		n := len(calls)
		calls = append(calls, time.Now())
		mu.Unlock()
		if n < len(status)-1 {
			w.Header().Set("Retry-After", "1")
		}
		w.WriteHeader(status[min(n, len(status)-1)])
	}))
	defer srv.Close()
	cfg := cfgFor(srv.URL, false)
	cfg.Retry.MaxBackoff = 150 * time.Millisecond // caps Retry-After: 1
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("ra", 1)); err != nil {
		t.Fatal(err)
	}
	if len(calls) != 3 {
		t.Fatalf("%d calls, want 3", len(calls))
	}
	for i := 1; i < 3; i++ {
		if gap := calls[i].Sub(calls[i-1]); gap < 150*time.Millisecond {
			t.Errorf("retry %d came %s after the Retry-After answer, want the capped 150ms", i, gap)
		}
	}
}

func TestRedirectIsNotFollowed(t *testing.T) {
	var gets int
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method == http.MethodGet {
			gets++
			return
		}
		http.Redirect(w, r, "/elsewhere?token=x", http.StatusFound)
	}))
	defer srv.Close()
	err := build(t, cfgFor(srv.URL, false)).Write(context.Background(), destinationstest.Messages("redir", 2))
	if err == nil || destinations.IsRetryable(err) || gets != 0 || !strings.Contains(err.Error(), "302") || strings.Contains(err.Error(), "token") {
		t.Errorf("Write = %v (%d GETs), want a permanent error about the redirect, without the query", err, gets)
	}
}

func TestAuthRefusalIsNotSplit(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		Path: "/hook", Headers: map[string]string{"Authorization": "Bearer other"}})
	err := build(t, cfgFor(srv.URL+"/hook", false)).Write(context.Background(), destinationstest.Messages("auth", 8))
	var pe *destinations.PermanentError
	if !errors.As(err, &pe) || pe.Status != 401 || len(srv.Batches()) != 1 {
		t.Errorf("Write = %v after %d requests, want one 401", err, len(srv.Batches()))
	}
}

func TestConnectionErrorsHideSecrets(t *testing.T) {
	l, _ := net.Listen("tcp", "127.0.0.1:0")
	addr := l.Addr().String()
	l.Close()
	cfg := cfgFor("http://"+addr+"/hook?token=hunter2", false)
	cfg.Retry.MaxAttempts = 2
	d := build(t, cfg)
	err := d.Write(context.Background(), destinationstest.Messages("refused", 1))
	if err == nil || !destinations.IsRetryable(err) || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Write = %v, want a retryable error without the token", err)
	}
	if err := d.(destinations.Checker).Check(context.Background()); err == nil || strings.Contains(err.Error(), "hunter2") {
		t.Errorf("Check = %v, want an error without the token", err)
	}
}

func TestCheck(t *testing.T) {
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		w.WriteHeader(http.StatusMethodNotAllowed) // a POST-only endpoint is still reachable
	}))
	defer srv.Close()
	d := build(t, cfgFor(srv.URL, false))
	if err := d.(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("Check: %v", err)
	}
	for _, bad := range []string{"", "ftp://x/y", "http://", "http://%zz"} {
		if _, err := webhook.New(context.Background(), cfgFor(bad, false), destinations.Env{}); err == nil {
			t.Errorf("New(%q) succeeded", bad)
		}
	}
}

func TestOneWriteIsOneRequest(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
	d := build(t, cfgFor(srv.URL+"/hook", false))
	if err := d.Write(context.Background(), destinationstest.Messages("one", 120)); err != nil {
		t.Fatal(err)
	}
	if b := srv.Batches(); len(b) != 1 || len(b[0].IDs) != 120 {
		t.Errorf("%d requests for one Write of 120", len(b))
	}
}
