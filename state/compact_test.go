package state

import (
	"bufio"
	"bytes"
	"context"
	"errors"
	"fmt"
	"math"
	"math/rand/v2"
	"os"
	"os/exec"
	"path/filepath"
	"runtime"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
)

// randomPairs returns n random keys and hashes of 32 hex characters (as mode diff stores
// them), from a PRNG seeded with seed.
func randomPairs(n int, seed uint64) (keys, hashes []string) {
	rng := rand.New(rand.NewPCG(seed, 7))
	keys, hashes = make([]string, n), make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		hashes[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
	}
	return keys, hashes
}

// putInCalls writes the pairs in Put calls of 10,000, as a run does.
func putInCalls(t testing.TB, h HashStore, keys, hashes []string) {
	t.Helper()
	for i := 0; i < len(keys); i += 10_000 {
		j := min(i+10_000, len(keys))
		if err := h.Put(context.Background(), 0, keys[i:j], hashes[i:j]); err != nil {
			t.Fatal(err)
		}
	}
}

// checkAll reopens the sync's store from a new Store instance and checks that it holds
// exactly want.
func checkAll(t *testing.T, b *backend, sync string, want map[string]string) {
	t.Helper()
	ctx := context.Background()
	h, err := b.reopen(t).Hashes(ctx, sync)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	keys := make([]string, 0, len(want))
	for k := range want {
		keys = append(keys, k)
	}
	got, err := hashStrings(h.Get(ctx, keys))
	if err != nil {
		t.Fatal(err)
	}
	for i, k := range keys {
		if got[i] != want[k] {
			t.Fatalf("key %s: hash %q, want %q", k, got[i], want[k])
		}
	}
	if n, err := h.Len(ctx); err != nil || n != len(want) {
		t.Fatalf("Len = %d, %v; want %d", n, err, len(want))
	}
}

// TestHashesCompaction writes 200,000 random keys as a run does (Put calls of 10,000,
// flushed in several slices into a tree that already holds keys) and checks that Close
// leaves a file close to the live data, everything readable after reopening; and that a
// later run which deletes most keys shrinks the file again.
func TestHashesCompaction(t *testing.T) {
	const n = 200_000
	// Live data: 200,000 entries of 17 + 17 bytes plus bbolt's 16-byte element header,
	// 10 MB. Compacted, pages are filled to 90%: about 11.4 MB. Before, the random
	// inserts of the second flush have split most pages: about 15 MB.
	const bound = 12_500_000
	keys, hashes := randomPairs(n, 1)
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		size := func() int64 {
			data := b.get(t, "hashes/users.db")
			if data == nil {
				t.Fatal("no row-hash store")
			}
			return int64(len(data))
		}
		// run writes the pairs and closes the store; it returns the size of the file
		// before Close (Len writes every pending pair first).
		run := func(keys, hashes []string) (before int64) {
			h, err := b.store.Hashes(ctx, "users")
			if err != nil {
				t.Fatal(err)
			}
			putInCalls(t, h, keys, hashes)
			if _, err := h.Len(ctx); err != nil {
				t.Fatal(err)
			}
			fi, err := os.Stat(h.(*boltHashes).path)
			if err != nil {
				t.Fatal(err)
			}
			if err := h.Close(ctx); err != nil {
				t.Fatal(err)
			}
			return fi.Size()
		}

		// The file before Close is over the bound: the bound tells a compacted file
		// from another.
		before := run(keys, hashes)
		after := size()
		t.Logf("%d keys: %d bytes before Close, %d bytes after", n, before, after)
		if before <= bound {
			t.Fatalf("uncompacted store of %d keys is %d bytes, want over %d", n, before, bound)
		}
		if after > bound {
			t.Fatalf("compacted store of %d keys is %d bytes, want at most %d", n, after, bound)
		}
		want := make(map[string]string, n)
		for i, k := range keys {
			want[k] = hashes[i]
		}
		checkAll(t, b, "users", want)

		// A later run deletes three quarters of the keys and changes some hashes: the
		// freed pages are given back.
		var del, delHashes []string
		for i, k := range keys {
			switch {
			case i%4 != 0:
				del, delHashes = append(del, k), append(delHashes, "")
				delete(want, k)
			case i%100 == 0:
				h := fmt.Sprintf("%032x", i)
				del, delHashes = append(del, k), append(delHashes, h)
				want[k] = h
			}
		}
		before = run(del, delHashes)
		shrunk := size()
		t.Logf("after deleting 3/4 of the keys: %d bytes before Close, %d bytes after", before, shrunk)
		if limit := int64(bound/4 + 1<<20); shrunk > limit || before <= limit {
			t.Fatalf("store of %d keys: %d bytes before Close, %d after; want over and at most %d", len(want), before, shrunk, limit)
		}
		checkAll(t, b, "users", want)
	})
}

// TestHashesCompactionKeepsLockedFile: a run that waits for the store while another run
// compacts it must end up on the compacted file, not on the replaced one (where its
// writes would be lost).
func TestHashesCompactionKeepsLockedFile(t *testing.T) {
	if runtime.GOOS != "linux" {
		t.Skip("watches /proc/self/fd to know that the second opener is waiting")
	}
	ctx := context.Background()
	st, err := Open(ctx, config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	path := st.(*localStore).hashesPath("users")
	h1, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	h1.(*boltHashes).compactRatio = 0 // always worth it
	h1.(*boltHashes).compactMin = 0
	keys, hashes := randomPairs(20_000, 2)
	putInCalls(t, h1, keys, hashes)
	if err := h1.Commit(ctx); err != nil {
		t.Fatal(err)
	}

	type opened struct {
		h   HashStore
		err error
	}
	second := make(chan opened, 1)
	go func() {
		h, err := st.Hashes(ctx, "users")
		second <- opened{h, err}
	}()
	// The second opener has opened the file once bbolt holds two descriptors of it; it
	// then waits for the lock.
	for deadline := time.Now().Add(10 * time.Second); openCount(t, path) < 2; {
		if time.Now().After(deadline) {
			t.Fatal("the second opener never opened the file")
		}
		runtime.Gosched()
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if err := h1.Close(ctx); err != nil {
		t.Fatal(err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if os.SameFile(before, after) {
		t.Fatal("Close did not replace the file (no compaction)")
	}
	o := <-second
	if o.err != nil {
		t.Fatal(o.err)
	}
	if got, err := hashStrings(o.h.Get(ctx, keys[:1])); err != nil || got[0] != hashes[0] {
		t.Fatalf("second run reads %q, %v; want %q", got, err, hashes[0])
	}
	if err := o.h.Put(ctx, 0, []string{"second"}, []string{"run"}); err != nil {
		t.Fatal(err)
	}
	o.h.(*boltHashes).compactRatio = math.Inf(1)
	if err := o.h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	h, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	if got, err := hashStrings(h.Get(ctx, []string{"second", keys[len(keys)-1]})); err != nil || got[0] != "run" || got[1] != hashes[len(hashes)-1] {
		t.Fatalf("after both runs: %q, %v; the second run's write was lost", got, err)
	}
}

// openCount is the number of this process's descriptors open on path.
func openCount(t *testing.T, path string) int {
	t.Helper()
	fds, err := os.ReadDir("/proc/self/fd")
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, fd := range fds {
		if target, err := os.Readlink(filepath.Join("/proc/self/fd", fd.Name())); err == nil && target == path {
			n++
		}
	}
	return n
}

// TestHashesCompactionCancelled: a compaction cut short leaves the saved store as it was,
// with no temporary file, and Close says so; one that could not finish before the
// context's deadline is not started.
func TestHashesCompactionCancelled(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	path := st.(*localStore).hashesPath("users")
	h, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	h.(*boltHashes).compactRatio = 0
	h.(*boltHashes).compactMin = 0
	keys, hashes := randomPairs(20_000, 3)
	putInCalls(t, h, keys, hashes)
	if err := h.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	before, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	// Past its deadline, the compaction is not even started.
	expired, cancelExpired := context.WithDeadline(ctx, time.Now())
	defer cancelExpired()
	cancelled, cancel := context.WithCancel(ctx)
	cancel()
	if err := h.(*boltHashes).compactIfWorth(expired, false); err != nil || h.(*boltHashes).db == nil {
		t.Fatalf("compaction past the deadline: %v; want it skipped", err)
	}
	err = h.Close(cancelled)
	if !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "is saved, but compacting it failed") {
		t.Fatalf("Close with a cancelled context: %v; want a failed compaction of a saved store", err)
	}
	after, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	if !os.SameFile(before, after) || after.Size() != before.Size() {
		t.Fatal("a failed compaction replaced the file")
	}
	if left, _ := filepath.Glob(filepath.Join(filepath.Dir(path), ".users.db.compact-*")); len(left) != 0 {
		t.Fatalf("temporary files left: %v", left)
	}
	want := map[string]string{}
	for i, k := range keys {
		want[k] = hashes[i]
	}
	checkAll(t, &backend{reopen: func(*testing.T) Store { return st }}, "users", want)
}

// TestHashesRemovesCompactionLeftovers: the temporary file of a compaction that crashed
// is removed by the next run that opens the store, and no other file is.
func TestHashesRemovesCompactionLeftovers(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	hdir := filepath.Join(dir, hashesDir)
	if err := os.MkdirAll(hdir, 0o755); err != nil {
		t.Fatal(err)
	}
	leftover := filepath.Join(hdir, ".users.db.compact-123")
	kept := []string{filepath.Join(hdir, ".users2.db.compact-123"), filepath.Join(hdir, "users.db.compact-1")}
	for _, p := range append(kept, leftover) {
		if err := os.WriteFile(p, []byte("x"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	h, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(leftover); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("leftover %s: %v", leftover, err)
	}
	for _, p := range kept {
		if _, err := os.Stat(p); err != nil {
			t.Errorf("%s was removed: %v", p, err)
		}
	}
}

// The compaction crash test runs a helper (this test binary) that adds a batch of keys to
// a local store and closes it, compacting every time, in a loop; it is killed with
// SIGKILL at random moments. After every kill the store must open and hold every batch
// before the last one it holds any key of (a flush cut short may have written part of
// the last): the old file or the new one, never a broken or a partial one.
const (
	envCompactHelper = "BACKFLOW_STATE_COMPACT_HELPER_DIR"
	crashBatch       = 5_000
	compactKills     = 20
)

func crashBatchPairs(batch int) (keys, hashes []string) {
	keys, hashes = make([]string, crashBatch), make([]string, crashBatch)
	rng := rand.New(rand.NewPCG(uint64(batch), 11))
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x%016x", rng.Uint64(), rng.Uint64())
		hashes[i] = fmt.Sprintf("%08x%024x", batch, i)
	}
	return keys, hashes
}

// TestCompactHelperProcess is not a test: it is the writer TestCrashCompaction kills.
func TestCompactHelperProcess(t *testing.T) {
	dir := os.Getenv(envCompactHelper)
	if dir == "" {
		return
	}
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		fail(err)
	}
	for batch := 0; ; batch++ {
		h, err := st.Hashes(ctx, "users")
		if err != nil {
			fail(err)
		}
		bh := h.(*boltHashes)
		bh.compactRatio, bh.compactMin = 0, 0
		// Resume at the first batch not wholly stored (a killed flush may have written
		// part of one), so that the store keeps growing.
		for {
			keys, hashes := crashBatchPairs(batch)
			got, err := hashStrings(h.Get(ctx, keys))
			if err != nil {
				fail(err)
			}
			if !slices.Equal(got, hashes) {
				break
			}
			batch++
		}
		keys, hashes := crashBatchPairs(batch)
		if err := h.Put(ctx, 0, keys, hashes); err != nil {
			fail(err)
		}
		if err := h.Close(ctx); err != nil {
			fail(err)
		}
		if batch == 0 {
			fmt.Println("ready")
		}
	}
}

func TestCrashCompaction(t *testing.T) {
	if testing.Short() {
		t.Skip("crash test")
	}
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	rng := rand.New(rand.NewPCG(2025, 5))
	batches, midCompaction := 0, 0
	for kill := range compactKills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestCompactHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envCompactHelper+"="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		if kill == 0 {
			// The store exists once the first batch is in.
			line, err := bufio.NewReader(stdout).ReadString('\n')
			if err != nil || line != "ready\n" {
				_ = cmd.Process.Kill()
				_ = cmd.Wait()
				t.Fatalf("helper did not start writing (%q, %v): %s", line, err, stderr.String())
			}
		}
		// The delay only picks the moment of the kill; no outcome depends on its length.
		time.Sleep(time.Duration(rng.IntN(150)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("kill %d: helper ended on its own (%v): %s", kill, err, stderr.String())
		}

		if left, _ := filepath.Glob(filepath.Join(dir, hashesDir, ".users.db.compact-*")); len(left) > 0 {
			midCompaction++
		}
		h, err := st.Hashes(ctx, "users")
		if err != nil {
			t.Fatalf("kill %d: opening the store after the crash: %v", kill, err)
		}
		h.(*boltHashes).compactRatio = math.Inf(1) // only read
		n := 0
		for ; ; n++ {
			keys, hashes := crashBatchPairs(n)
			got, err := hashStrings(h.Get(ctx, keys))
			if err != nil {
				t.Fatalf("kill %d: batch %d: %v", kill, n, err)
			}
			present := 0
			for i := range got {
				if got[i] == hashes[i] {
					present++
				} else if got[i] != "" {
					t.Fatalf("kill %d: batch %d key %d holds %q, want %q", kill, n, i, got[i], hashes[i])
				}
			}
			if present == 0 {
				break
			}
			// A batch cut short by the kill may be partly written, but only the last.
			next, _ := crashBatchPairs(n + 1)
			if got, err := hashStrings(h.Get(ctx, next[:1])); err == nil && got[0] != "" && present != crashBatch {
				t.Fatalf("kill %d: batch %d has %d keys of %d, and a later batch was written", kill, n, present, crashBatch)
			}
		}
		if n < batches {
			t.Fatalf("kill %d: %d batches stored, %d before this run", kill, n, batches)
		}
		batches = n
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if left, _ := filepath.Glob(filepath.Join(dir, hashesDir, ".users.db.compact-*")); len(left) > 0 {
			t.Fatalf("kill %d: the next run left the crashed compaction's file: %v", kill, left)
		}
	}
	t.Logf("%d batches of %d keys across %d kills, %d of them during a compaction", batches, crashBatch, compactKills, midCompaction)
}

// BenchmarkHashStoreCompaction measures Close's compaction of a local store of a million
// random keys written as a run writes them (Put calls of 10,000). It reports the file's
// size before and after, and the time Close took.
//
//	go test -run '^$' -bench BenchmarkHashStoreCompaction -benchtime 1x ./state/
func BenchmarkHashStoreCompaction(b *testing.B) {
	keys, hashes := randomPairs(1_000_000, 1)
	ctx := context.Background()
	var closeTime time.Duration
	var before, after int64
	for b.Loop() {
		b.StopTimer()
		st, err := Open(ctx, config.StateConfig{URL: b.TempDir()})
		if err != nil {
			b.Fatal(err)
		}
		h, err := st.Hashes(ctx, "bench")
		if err != nil {
			b.Fatal(err)
		}
		putInCalls(b, h, keys, hashes)
		if err := h.Commit(ctx); err != nil {
			b.Fatal(err)
		}
		path := st.(*localStore).hashesPath("bench")
		fi, err := os.Stat(path)
		if err != nil {
			b.Fatal(err)
		}
		before = fi.Size()
		b.StartTimer()
		start := time.Now()
		if err := h.Close(ctx); err != nil {
			b.Fatal(err)
		}
		closeTime += time.Since(start)
		if fi, err = os.Stat(path); err != nil {
			b.Fatal(err)
		}
		after = fi.Size()
	}
	b.ReportMetric(float64(before), "db-bytes-before")
	b.ReportMetric(float64(after), "db-bytes-after")
	b.ReportMetric(closeTime.Seconds()/float64(b.N), "close-s")
}
