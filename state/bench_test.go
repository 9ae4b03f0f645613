package state

import (
	"context"
	"fmt"
	"math/rand/v2"
	"os"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
)

// BenchmarkHashStore measures the local row-hash store of mode diff at a million rows:
// Put of 1M keys (32 hex characters, hashes likewise) in calls of 10,000 (one transaction
// each, as a run writes them), then — after reopening — Get of the same keys in calls of
// 10,000 and comparison with new hashes of which 1% changed. It reports keys/s for each
// phase and the size of the .db file.
//
//	go test -run '^$' -bench BenchmarkHashStore -benchtime 1x ./state/
func BenchmarkHashStore(b *testing.B) {
	const (
		n     = 1_000_000
		batch = 10_000
	)
	rng := rand.New(rand.NewPCG(1, 2))
	keys, hashes, next := make([]string, n), make([]string, n), make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		hashes[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		next[i] = hashes[i]
		if i%100 == 0 {
			next[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		}
	}
	ctx := context.Background()
	var putTime, getTime time.Duration
	var size int64
	for b.Loop() {
		dir := b.TempDir()
		st, err := Open(ctx, config.StateConfig{URL: dir})
		if err != nil {
			b.Fatal(err)
		}
		start := time.Now()
		h, err := st.Hashes(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		for i := 0; i < n; i += batch {
			if err := h.Put(ctx, 0, keys[i:i+batch], hashes[i:i+batch]); err != nil {
				b.Fatal(err)
			}
		}
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
		putTime += time.Since(start)

		start = time.Now()
		h, err = st.Hashes(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		changed := 0
		for i := 0; i < n; i += batch {
			got, err := hashStrings(h.Get(ctx, keys[i:i+batch]))
			if err != nil {
				b.Fatal(err)
			}
			for j, g := range got {
				if g != next[i+j] {
					changed++
				}
			}
		}
		getTime += time.Since(start)
		if changed != n/100 {
			b.Fatalf("%d changed rows found, want %d", changed, n/100)
		}
		fi, err := os.Stat(st.(*localStore).hashesPath("bench"))
		if err != nil {
			b.Fatal(err)
		}
		size = fi.Size()
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
	}
	b.ReportMetric(float64(n*b.N)/putTime.Seconds(), "put-keys/s")
	b.ReportMetric(float64(n*b.N)/getTime.Seconds(), "get-keys/s")
	b.ReportMetric(float64(size), "db-bytes")
	b.ReportMetric(float64(size)/n, "db-bytes/key")
}
