package state

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"
)

// TestFigureCheckpointScale measures checkpoints of 100,000 and 1,000,000 files (keys
// like exports/users/dt=2025-01-07/part-0000123-<uuid>.snappy.parquet, size, etag, rows,
// acknowledged by 2 destinations), local and on MinIO:
//   - format 1 (every entry in one document, as before segments): save and load;
//   - the first save of such a checkpoint, which compacts it into a segment (migration);
//   - the stored sizes of head and segments, the load time and the heap after load;
//   - a save with 10 changed entries (the pipeline's snapshot plus the store's Save), and
//     one of the largest head (compactAt changed entries);
//   - a compaction (compactAt+1 changed entries) and a merge of every segment.
//
// BACKFLOW_FIGURES=1 go test -run TestFigureCheckpointScale -v -timeout 30m ./state/
// (BACKFLOW_FIGURES_FILES=100000 for one size.)
func TestFigureCheckpointScale(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	sizes := []int{100_000, 1_000_000}
	if s := os.Getenv("BACKFLOW_FIGURES_FILES"); s != "" {
		n, err := strconv.Atoi(s)
		if err != nil {
			t.Fatal(err)
		}
		sizes = []int{n}
	}
	orphanAge = 0
	t.Cleanup(func() { orphanAge = time.Hour })
	for _, kind := range []string{"local", "s3"} {
		for _, n := range sizes {
			t.Run(fmt.Sprintf("%s-%d", kind, n), func(t *testing.T) {
				var b *backend
				if kind == "local" {
					b = localBackend(t)
				} else {
					b = s3Backend(t)
				}
				figureScale(t, b, kind, n)
			})
		}
	}
}

// figureHex is 32 hex digits that look random (as uuids and ETags do, which gzip cannot
// shrink much), derived from i.
func figureHex(i int) string {
	sum := sha256.Sum256([]byte(strconv.Itoa(i)))
	return hex.EncodeToString(sum[:16])
}

func figureKey(i int) string {
	h := figureHex(i)
	return fmt.Sprintf("exports/users/dt=2025-01-07/part-%07d-%s-%s-%s-%s-%s.snappy.parquet", i, h[:8], h[8:12], h[12:16], h[16:20], h[20:])
}

func figureCheckpoint(n int) *Checkpoint {
	cp := &Checkpoint{Sync: "users", MappingFingerprint: "5b1c0f9e", SourceFingerprint: "0f9e5b1c", SchemaFingerprint: "a7d2",
		Files: make(map[string]*File, n), LastRunID: "20250414T112301Z-4k2p", UpdatedAt: time.Now().UTC()}
	for i := range n {
		k := figureKey(i)
		cp.Files[k] = &File{Key: k, Size: 48_000_000 + int64(i), ETag: `"` + figureHex(-i-1) + `"`, Rows: 120_000,
			Acked: map[string]int64{"segment": 120_000, "webhook": 120_000}}
	}
	return cp
}

func heapMB() float64 {
	runtime.GC()
	runtime.GC()
	var m runtime.MemStats
	runtime.ReadMemStats(&m)
	return float64(m.HeapAlloc) / 1e6
}

// storedSizes returns the bytes of the head and of the segments of sync.
func storedSizes(t *testing.T, b *backend, cp *Checkpoint) (head, segs int64) {
	head = int64(len(b.get(t, "checkpoints/users.json")))
	for _, id := range cp.segments {
		segs += int64(len(b.get(t, "checkpoints/"+segmentName("users", id))))
	}
	return head, segs
}

func figureScale(t *testing.T, b *backend, kind string, n int) {
	ctx := context.Background()
	ms := func(d time.Duration) string {
		return strconv.FormatFloat(float64(d.Microseconds())/1000, 'f', 1, 64) + " ms"
	}
	line := func(what string, args ...any) {
		fmt.Printf("FIGURE checkpoint-%s-%d %s\n", kind, n, fmt.Sprintf(what, args...))
	}

	// Format 1, as every save wrote it before segments: the whole document each time.
	threshold := compactAt
	compactAt = n + 1
	cp := figureCheckpoint(n)
	start := time.Now()
	clone := cp.Clone()
	line("format 1: clone (the pipeline's snapshot before) %s", ms(time.Since(start)))
	_ = clone
	start = time.Now()
	if err := b.store.Save(ctx, cp); err != nil {
		t.Fatal(err)
	}
	line("format 1: save %s, document %.1f MB", ms(time.Since(start)), float64(len(b.get(t, "checkpoints/users.json")))/1e6)
	cp = nil
	base := heapMB()
	start = time.Now()
	v1, err := b.reopen(t).Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	line("format 1: load %s, heap after load %.0f MB", ms(time.Since(start)), heapMB()-base)

	// Migration: the first save compacts the loaded entries into a segment.
	compactAt = threshold
	start = time.Now()
	if err := b.store.Save(ctx, v1); err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	head, segs := storedSizes(t, b, v1)
	line("format 2: first save (compaction into one segment) %s; head %d bytes, segments %.1f MB", ms(took), head, float64(segs)/1e6)
	v1 = nil

	base = heapMB()
	start = time.Now()
	cp, err = b.reopen(t).Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	line("format 2: load %s, heap after load %.0f MB", ms(time.Since(start)), heapMB()-base)
	if len(cp.Files) != n {
		t.Fatalf("loaded %d files", len(cp.Files))
	}

	// A run's saves: the working checkpoint changes a few entries, the saver snapshots
	// and saves it. The median of 20.
	start = time.Now()
	work := cp.Clone()
	work.Track()
	line("format 2: run start (clone of the loaded checkpoint) %s", ms(time.Since(start)))
	var snaps, saves []time.Duration
	for round := range 20 {
		for i := range 10 {
			k := figureKey((round*10 + i) * 97 % n)
			f := work.Own(k)
			f.Acked["webhook"] = int64(round)
			work.Changed(k)
		}
		start = time.Now()
		snap := work.Snapshot()
		snaps = append(snaps, time.Since(start))
		start = time.Now()
		if err := b.store.Save(ctx, snap); err != nil {
			t.Fatal(err)
		}
		saves = append(saves, time.Since(start))
		work.Saved(snap)
	}
	head, _ = storedSizes(t, b, work)
	line("format 2: save with 10 changed entries: snapshot %s, save %s (medians of 20); head %d bytes with %d live entries",
		ms(median(snaps)), ms(median(saves)), head, len(work.live))

	// The largest head: just below the compaction threshold.
	for i := 0; len(work.live) < compactAt; i++ {
		k := figureKey(i * 11 % n)
		work.Own(k).Rows += 2
		work.Changed(k)
	}
	saves = saves[:0]
	for range 5 {
		snap := work.Snapshot()
		start = time.Now()
		if err := b.store.Save(ctx, snap); err != nil {
			t.Fatal(err)
		}
		saves = append(saves, time.Since(start))
		work.Saved(snap)
	}
	head, _ = storedSizes(t, b, work)
	line("format 2: save of the largest head (%d live entries, %.1f MB): %s (median of 5)", len(work.live), float64(head)/1e6, ms(median(saves)))

	// A compaction: compactAt+1 changed entries become a new segment.
	for i := range compactAt + 1 {
		k := figureKey(i * 13 % n)
		f := work.Own(k)
		f.Rows++
		work.Changed(k)
	}
	snap := work.Snapshot()
	start = time.Now()
	if err := b.store.Save(ctx, snap); err != nil {
		t.Fatal(err)
	}
	line("format 2: save that compacts %d changed entries into a segment %s", compactAt+1, ms(time.Since(start)))
	work.Saved(snap)

	// A merge of every segment (forced: it happens once more than mergeAt exist).
	old := mergeAt
	mergeAt = 1
	for i := range compactAt + 1 {
		k := figureKey(i * 17 % n)
		work.Own(k).Size++
		work.Changed(k)
	}
	snap = work.Snapshot()
	merged := len(snap.segments) + 1
	start = time.Now()
	if err := b.store.Save(ctx, snap); err != nil {
		t.Fatal(err)
	}
	mergeAt = old
	work.Saved(snap)
	head, segs = storedSizes(t, b, work)
	line("format 2: save that merges %d segments and %d changed entries %s; head %d bytes, segments %.1f MB",
		merged, compactAt+1, ms(time.Since(start)), head, float64(segs)/1e6)
	if kind == "local" {
		matches, _ := filepath.Glob(filepath.Join(strings.TrimSuffix(b.store.String(), "/"), checkpointsDir, "users.seg-*"))
		if len(matches) != 1 {
			t.Fatalf("after the merge %d segment files are stored: %v", len(matches), matches)
		}
	}
}

func median(ds []time.Duration) time.Duration {
	s := slices.Clone(ds)
	slices.Sort(s)
	return s[len(s)/2]
}
