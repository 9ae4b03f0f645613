package state

import (
	"context"
	"encoding/json"
	"errors"
	"net/http"
	"net/http/httptest"
	"net/http/httputil"
	"net/url"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/testutil"
)

// One run of a sync at a time: a second Acquire names the holder; a released lease can
// be taken again at once; of many runs racing for it, exactly one wins.
func TestLeaseOneHolder(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		h1 := Holder{Host: "h1", PID: 11, RunID: "run-1", Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
		l1, err := b.store.Acquire(ctx, "users", h1, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		_, err = b.reopen(t).Acquire(ctx, "users", Holder{Host: "h2", PID: 22, RunID: "run-2"}, 10*time.Second)
		var held *LeaseHeldError
		if !errors.As(err, &held) || !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("second Acquire = %v, want a LeaseHeldError", err)
		}
		want := "sync users is running elsewhere (host h1, pid 11, run run-1, since 2025-01-01T00:00:00Z)"
		if err.Error() != want {
			t.Fatalf("message %q, want %q", err, want)
		}
		// Another sync is not affected.
		l3, err := b.store.Acquire(ctx, "orders", h1, 10*time.Second)
		if err != nil {
			t.Fatalf("lease of another sync: %v", err)
		}
		if err := l3.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if err := l1.Release(ctx); err != nil {
			t.Fatal(err)
		}
		l2, err := b.reopen(t).Acquire(ctx, "users", Holder{Host: "h2", PID: 22, RunID: "run-2"}, 10*time.Second)
		if err != nil {
			t.Fatalf("Acquire after Release: %v", err)
		}
		if err := l2.Release(ctx); err != nil {
			t.Fatal(err)
		}

		// A race: 8 stores (processes) at once, exactly one wins.
		var wg sync.WaitGroup
		var mu sync.Mutex
		var won []Lease
		for i := range 8 {
			st := b.reopen(t)
			wg.Add(1)
			go func() {
				defer wg.Done()
				l, err := st.Acquire(ctx, "users", Holder{Host: "racer", PID: i}, 10*time.Second)
				if err == nil {
					mu.Lock()
					won = append(won, l)
					mu.Unlock()
				} else if !errors.Is(err, ErrLeaseHeld) {
					t.Errorf("racer %d: %v", i, err)
				}
			}()
		}
		wg.Wait()
		if len(won) != 1 {
			t.Fatalf("%d runs hold the lease at once, want 1", len(won))
		}
		_ = won[0].Release(ctx)
	})
}

// An s3:// lease whose holder was killed (it stopped renewing) lapses after its ttl; one
// whose object another run overwrote is lost, and its holder is told.
func TestS3LeaseExpiresAndIsLost(t *testing.T) {
	b := s3Backend(t)
	ctx := context.Background()
	l1, err := b.store.Acquire(ctx, "users", Holder{Host: "killed", PID: 1, RunID: "r1"}, 2*time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Killed: it stops renewing without releasing.
	s3l := l1.(*s3Lease)
	close(s3l.stop)
	<-s3l.stopped
	if _, err := b.reopen(t).Acquire(ctx, "users", Holder{Host: "next"}, 2*time.Second); !errors.Is(err, ErrLeaseHeld) {
		t.Fatalf("Acquire within the ttl = %v, want held", err)
	}
	deadline := time.Now().Add(10 * time.Second)
	var l2 Lease
	for {
		l2, err = b.reopen(t).Acquire(ctx, "users", Holder{Host: "next", PID: 2, RunID: "r2"}, 2*time.Second)
		if err == nil {
			break
		}
		if !errors.Is(err, ErrLeaseHeld) || time.Now().After(deadline) {
			t.Fatalf("Acquire after the ttl: %v", err)
		}
		time.Sleep(100 * time.Millisecond) // polling the lease as `sync --wait` does
	}
	// Someone overwrites the lease object (a reset by hand, a clock far off): l2 is lost
	// at its next renewal.
	b.put(t, "leases/users.json", []byte(`{"host":"intruder","expires":"2999-01-01T00:00:00Z"}`))
	select {
	case <-l2.Lost():
		if err := l2.Err(); err == nil || !strings.Contains(err.Error(), "taken over") {
			t.Fatalf("Err = %v", err)
		}
	case <-time.After(10 * time.Second):
		t.Fatal("the lease was not reported lost")
	}
	_ = l2.Release(ctx)
}

// A local lease is an OS lock: it ends with its holder's file, whatever the holder's end.
func TestLocalLeaseEndsWithItsFile(t *testing.T) {
	dir := t.TempDir()
	st, err := newLocalStore(dir)
	if err != nil {
		t.Fatal(err)
	}
	ctx := context.Background()
	l, err := st.Acquire(ctx, "users", Holder{Host: "h", PID: 1}, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	// Closing the file (what the kernel does when the process dies) frees the lock.
	l.(*localLease).f.Close()
	l.(*localLease).f = nil
	l2, err := st.Acquire(ctx, "users", Holder{Host: "h", PID: 2}, time.Second)
	if err != nil {
		t.Fatalf("Acquire after the holder's end: %v", err)
	}
	_ = l2.Release(ctx)
}

// Probe fails where a run could not save, and leaves nothing behind where it can.
func TestProbe(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		if err := b.store.Probe(context.Background(), "users"); err != nil {
			t.Fatalf("Probe of a writable state: %v", err)
		}
	})
	dir := t.TempDir()
	if err := os.WriteFile(filepath.Join(dir, "checkpoints"), []byte("not a directory"), 0o644); err != nil {
		t.Fatal(err)
	}
	st, _ := newLocalStore(dir)
	err := st.Probe(context.Background(), "users")
	if err == nil || !strings.Contains(err.Error(), "not writable") || !strings.Contains(err.Error(), dir) {
		t.Fatalf("Probe with checkpoints/ a file = %v, want a clear error naming %s", err, dir)
	}
}

// BenchmarkLease measures what the lease adds to a run: one Acquire and one Release.
// go test -run '^$' -bench Lease ./state/   (MinIO: BACKFLOW_MINIO=path/to/minio)
func BenchmarkLease(b *testing.B) {
	run := func(b *testing.B, st Store) {
		ctx := context.Background()
		for b.Loop() {
			l, err := st.Acquire(ctx, "users", Holder{Host: "bench", PID: 1}, time.Minute)
			if err != nil {
				b.Fatal(err)
			}
			if err := l.Release(ctx); err != nil {
				b.Fatal(err)
			}
		}
	}
	b.Run("local", func(b *testing.B) {
		st, err := newLocalStore(b.TempDir())
		if err != nil {
			b.Fatal(err)
		}
		run(b, st)
	})
	b.Run("s3", func(b *testing.B) {
		m := testutil.StartMinIO(b)
		bucket := m.Bucket(b)
		st, err := Open(context.Background(), config.StateConfig{URL: "s3://" + bucket + "/bench", S3: m.Options()})
		if err != nil {
			b.Fatal(err)
		}
		run(b, st)
	})
}

// Holder names the run holding a lease, from another store as well (another replica),
// and nobody once it is released; reading never gets in the way of Acquire.
func TestLeaseHolder(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		hr, ok := b.store.(HolderReader)
		if !ok {
			t.Fatalf("%T does not read lease holders", b.store)
		}
		if h, err := hr.Holder(ctx, "users"); err != nil || h != nil {
			t.Fatalf("Holder before any lease = %v, %v; want none", h, err)
		}
		host, _ := os.Hostname()
		want := Holder{Host: host, PID: os.Getpid(), RunID: "run-1", Since: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)}
		l, err := b.store.Acquire(ctx, "users", want, 10*time.Second)
		if err != nil {
			t.Fatal(err)
		}
		other := b.reopen(t).(HolderReader)
		h, err := other.Holder(ctx, "users")
		if err != nil || h == nil {
			t.Fatalf("Holder while held = %v, %v", h, err)
		}
		if h.Host != want.Host || h.PID != want.PID || h.RunID != want.RunID || !h.Since.Equal(want.Since) {
			t.Fatalf("Holder = %+v, want %+v", *h, want)
		}
		// Reading did not take the lock: the lease is still held, by run-1.
		if _, err := b.reopen(t).Acquire(ctx, "users", Holder{Host: "h2", RunID: "run-2"}, 10*time.Second); !errors.Is(err, ErrLeaseHeld) {
			t.Fatalf("Acquire after Holder = %v, want ErrLeaseHeld", err)
		}
		if err := l.Release(ctx); err != nil {
			t.Fatal(err)
		}
		if h, err := other.Holder(ctx, "users"); err != nil || h != nil {
			t.Fatalf("Holder after Release = %v, %v; want none", h, err)
		}
	})
}

// A holder whose renewals hang (a store that stops answering) is told its lease is lost
// before the lease expires: another run may take the lease over from its expiry on, and
// by then this one must have stopped sending. The renewals go through a proxy that
// holds every PUT of the lease object until the client gives up.
func TestS3LeaseLostBeforeItExpires(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	target, err := url.Parse(m.Endpoint)
	if err != nil {
		t.Fatal(err)
	}
	var stall atomic.Bool
	unstall := make(chan struct{})
	proxy := httputil.NewSingleHostReverseProxy(target)
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if stall.Load() && r.Method == http.MethodPut && strings.Contains(r.URL.Path, "/leases/") {
			select {
			case <-r.Context().Done():
			case <-unstall:
			}
			w.WriteHeader(http.StatusServiceUnavailable)
			return
		}
		proxy.ServeHTTP(w, r)
	}))
	defer srv.Close()
	defer close(unstall) // before srv.Close, which waits for the handlers
	opts := m.Options()
	opts.Endpoint = srv.URL
	st, err := Open(context.Background(), config.StateConfig{URL: "s3://" + bucket + "/state/", S3: opts})
	if err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second
	l, err := st.Acquire(context.Background(), "users", Holder{Host: "h", PID: 1, RunID: "r1"}, ttl)
	if err != nil {
		t.Fatal(err)
	}
	defer l.Release(context.Background())
	// Let one renewal through, then hold them all.
	time.Sleep(ttl / 2)
	stall.Store(true)
	var lease Holder
	if err := json.Unmarshal(m.Get(t, bucket, "state/leases/users.json"), &lease); err != nil {
		t.Fatal(err)
	}
	select {
	case <-l.Lost():
		// With time to spare: the run stops sending after it is told.
		if lost := time.Now(); !lost.Before(lease.Expires.Add(-ttl / 8)) {
			t.Fatalf("the lease was reported lost at %s, not well before it expired at %s", lost.Format(time.StampMilli), lease.Expires.Format(time.StampMilli))
		}
		if err := l.Err(); err == nil || !strings.Contains(err.Error(), "expired") {
			t.Fatalf("Err = %v", err)
		}
	case <-time.After(3 * ttl):
		t.Fatal("the lease was not reported lost")
	}
}
