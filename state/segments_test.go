package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"maps"
	"reflect"
	"slices"
	"testing"
	"time"
)

// smallSegments makes compactions and merges happen after a few files.
func smallSegments(t *testing.T, compact, merge int) {
	t.Helper()
	oldCompact, oldMerge, oldAge := compactAt, mergeAt, orphanAge
	compactAt, mergeAt, orphanAge = compact, merge, 0
	t.Cleanup(func() { compactAt, mergeAt, orphanAge = oldCompact, oldMerge, oldAge })
}

func segFile(i int, acked int64) *File {
	key := fmt.Sprintf("exports/users/dt=2025-01-07/part-%07d.snappy.parquet", i)
	return &File{Key: key, Size: int64(i) * 10, ETag: fmt.Sprintf(`"%x"`, i), Rows: 100,
		Acked: map[string]int64{"segment": acked, "webhook": 100}}
}

// headOf parses the stored head.
func headOf(t *testing.T, b *backend, sync string) headFile {
	t.Helper()
	var h headFile
	if err := json.Unmarshal(b.get(t, "checkpoints/"+sync+".json"), &h); err != nil {
		t.Fatal(err)
	}
	return h
}

// storedSegments lists the segment ids stored for sync.
func storedSegments(t *testing.T, st Store, sync string) []string {
	t.Helper()
	var ids map[string]segmentInfo
	var err error
	switch s := st.(type) {
	case *localStore:
		ids, err = s.listSegments(context.Background(), sync)
	case *s3Store:
		ids, err = s.listSegments(context.Background(), sync)
	}
	if err != nil {
		t.Fatal(err)
	}
	return slices.Sorted(maps.Keys(ids))
}

// checkLoads loads sync afresh and compares its files with want.
func checkLoads(t *testing.T, b *backend, sync string, want map[string]*File) *Checkpoint {
	t.Helper()
	got, err := b.reopen(t).Load(context.Background(), sync)
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Files) != len(want) {
		t.Fatalf("loaded %d files, want %d", len(got.Files), len(want))
	}
	for k, w := range want {
		if g := got.Files[k]; !reflect.DeepEqual(g, w) {
			t.Fatalf("file %s = %+v, want %+v", k, g, w)
		}
	}
	return got
}

// TestSegmentsRoundTrip grows a checkpoint from a format-1 file through compactions
// into segments and a merge, changing and removing entries on the way: every state loads
// as saved, the head holds only what changed since the last compaction, and merged-away
// segments are deleted.
func TestSegmentsRoundTrip(t *testing.T) {
	smallSegments(t, 5, 3)
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		// A format-1 checkpoint, as every earlier build wrote it.
		v1 := map[string]*File{}
		for i := range 8 {
			f := segFile(i, 100)
			v1[f.Key] = f
		}
		raw, err := json.Marshal(map[string]any{"version": 1, "sync": "users", "mapping_fingerprint": "m",
			"files": v1, "generation": "g0"})
		if err != nil {
			t.Fatal(err)
		}
		b.put(t, "checkpoints/users.json", raw)
		want := maps.Clone(v1)
		cp := checkLoads(t, b, "users", want)
		if (isLocal(b.store) && cp.Generation != "g0") || cp.Version != 1 || cp.live != nil {
			t.Fatalf("format-1 load: generation %q, version %d, tracked %v", cp.Generation, cp.Version, cp.live != nil)
		}

		// 8 entries > 5: the first save compacts them into a segment.
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		h := headOf(t, b, "users")
		if h.Version != 2 || len(h.Segments) != 1 || len(h.Files) != 0 || cp.Version != 2 {
			t.Fatalf("after the first compaction: head version %d, %d segments, %d files", h.Version, len(h.Segments), len(h.Files))
		}
		cp = checkLoads(t, b, "users", want)
		if h.MappingFingerprint != "m" || cp.MappingFingerprint != "m" {
			t.Fatal("fingerprint lost")
		}

		// A few changes stay in the head: one changed in place, one new, one removed.
		changed := cp.Own(segFile(1, 0).Key)
		changed.Acked["segment"] = 42
		cp.Changed(changed.Key)
		cp.Put(segFile(100, 7))
		cp.Delete(segFile(2, 0).Key)
		want[changed.Key] = changed.Clone()
		want[segFile(100, 0).Key] = segFile(100, 7)
		delete(want, segFile(2, 0).Key)
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		h = headOf(t, b, "users")
		if len(h.Files) != 2 || !slices.Equal(h.Removed, []string{segFile(2, 0).Key}) || len(h.Segments) != 1 {
			t.Fatalf("head after 3 changes: %d files, removed %v, %d segments", len(h.Files), h.Removed, len(h.Segments))
		}
		cp = checkLoads(t, b, "users", want)

		// Rounds of 6 changes compact each time; the fourth segment triggers a merge.
		first := h.Segments[0]
		for round := range 4 {
			for i := range 6 {
				f := segFile(200+round*10+i, int64(round))
				cp.Put(f)
				want[f.Key] = f.Clone()
			}
			if round == 2 {
				cp.Delete(segFile(3, 0).Key) // removed from the oldest segment by a tombstone
				delete(want, segFile(3, 0).Key)
			}
			if err := b.store.Save(ctx, cp); err != nil {
				t.Fatal(err)
			}
			cp = checkLoads(t, b, "users", want)
		}
		h = headOf(t, b, "users")
		stored := storedSegments(t, b.store, "users")
		if len(h.Segments) > 3 || slices.Contains(h.Segments, first) || slices.Contains(stored, first) {
			t.Fatalf("no merge: head segments %v, stored %v", h.Segments, stored)
		}
		if !slices.Equal(stored, slices.Sorted(slices.Values(h.Segments))) {
			t.Fatalf("stored segments %v, the head names %v", stored, h.Segments)
		}

		// Reset deletes the head and every segment.
		if err := b.store.Reset(ctx, "users"); err != nil {
			t.Fatal(err)
		}
		if got, err := b.store.Load(ctx, "users"); err != nil || got != nil {
			t.Fatalf("Load after Reset = %v, %v", got, err)
		}
		if left := storedSegments(t, b.store, "users"); len(left) != 0 {
			t.Fatalf("segments left after Reset: %v", left)
		}
	})
}

// TestSegmentsConflictAndOrphans: two runners compact from the same head. The second
// one's head write fails with ErrConflict after its segment was written — the state of a
// crash between the two writes: the checkpoint loads as the first runner saved it, and
// the orphan is deleted by the next compaction.
func TestSegmentsConflictAndOrphans(t *testing.T) {
	smallSegments(t, 3, 8)
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		cp := &Checkpoint{Sync: "users", Files: map[string]*File{}}
		want := map[string]*File{}
		for i := range 4 {
			f := segFile(i, 100)
			cp.Files[f.Key] = f
			want[f.Key] = f.Clone()
		}
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		a, err := b.reopen(t).Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		other, err := b.reopen(t).Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		for i := range 4 {
			f := segFile(10+i, 1)
			a.Put(f)
			want[f.Key] = f.Clone()
			other.Put(segFile(20+i, 2))
		}
		if err := b.store.Save(ctx, a); err != nil {
			t.Fatal(err)
		}
		err = b.reopen(t).Save(ctx, other)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("second runner's Save = %v, want ErrConflict", err)
		}
		checkLoads(t, b, "users", want)
		h := headOf(t, b, "users")
		stored := storedSegments(t, b.store, "users")
		if b.get(t, "checkpoints/users.json") == nil || len(stored) != len(h.Segments)+1 && !isLocal(b.store) {
			t.Fatalf("stored %v, head %v: want the head's plus one orphan", stored, h.Segments)
		}

		// The next compaction deletes the orphan (the local store checks the
		// generation before it writes a segment, so it made none).
		for i := range 4 {
			f := segFile(30+i, 3)
			a.Put(f)
			want[f.Key] = f.Clone()
		}
		if err := b.store.Save(ctx, a); err != nil {
			t.Fatal(err)
		}
		checkLoads(t, b, "users", want)
		h = headOf(t, b, "users")
		if stored := storedSegments(t, b.store, "users"); !slices.Equal(stored, slices.Sorted(slices.Values(h.Segments))) {
			t.Fatalf("stored %v, the head names %v: the orphan is still there", stored, h.Segments)
		}
	})
}

func isLocal(st Store) bool { _, ok := st.(*localStore); return ok }

// TestSegmentsYoungOrphanKept: an unnamed segment younger than orphanAge may belong to a
// save under way; a compaction leaves it.
func TestSegmentsYoungOrphanKept(t *testing.T) {
	smallSegments(t, 2, 8)
	orphanAge = time.Hour
	st := &localStore{dir: t.TempDir()}
	ctx := context.Background()
	if err := st.writeSegment(ctx, "users", "ORPHAN1", []byte("x")); err != nil {
		t.Fatal(err)
	}
	cp := &Checkpoint{Sync: "users", Files: map[string]*File{}}
	for i := range 3 {
		cp.Put(segFile(i, 1))
	}
	if err := st.Save(ctx, cp); err != nil {
		t.Fatal(err)
	}
	if ids := storedSegments(t, st, "users"); !slices.Contains(ids, "ORPHAN1") || len(ids) != 2 {
		t.Fatalf("stored %v", ids)
	}
}

// TestSnapshotSaved follows the pipeline's use: a working checkpoint is changed while a
// snapshot of it is saved with a compaction. Entries changed after the snapshot stay
// live, the others are settled, and the next save writes only the former.
func TestSnapshotSaved(t *testing.T) {
	smallSegments(t, 3, 8)
	ctx := context.Background()
	st := &localStore{dir: t.TempDir()}
	work := &Checkpoint{Sync: "users", Files: map[string]*File{}}
	work.Track()
	for i := range 5 {
		work.Put(segFile(i, 1))
	}
	snap := work.Snapshot()
	if len(snap.Files) != 5 || !snap.partial {
		t.Fatalf("snapshot holds %d files", len(snap.Files))
	}
	// Changed after the snapshot: not in the segment the save writes.
	late := work.Files[segFile(4, 0).Key]
	late.Acked["segment"] = 99
	work.Changed(late.Key)
	if snap.Files[late.Key].Acked["segment"] != 1 {
		t.Fatal("the snapshot shares an entry with the working checkpoint")
	}
	if err := st.Save(ctx, snap); err != nil {
		t.Fatal(err)
	}
	work.Saved(snap)
	if len(work.segments) != 1 || len(work.live) != 1 || !work.isLive(late.Key) || work.Generation != snap.Generation {
		t.Fatalf("after Saved: segments %v, live %v", work.segments, work.live)
	}
	snap2 := work.Snapshot()
	if len(snap2.Files) != 1 {
		t.Fatalf("second snapshot holds %d files, want the one changed late", len(snap2.Files))
	}
	if err := st.Save(ctx, snap2); err != nil {
		t.Fatal(err)
	}
	work.Saved(snap2)
	got, err := st.Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Files) != 5 || got.Files[late.Key].Acked["segment"] != 99 || got.Files[segFile(0, 0).Key].Acked["segment"] != 1 {
		t.Fatalf("loaded %+v", got.Files)
	}
	// Clone shares settled entries and copies live ones; Own copies a settled one.
	c := got.Clone()
	settled := segFile(0, 0).Key
	if c.Files[settled] != got.Files[settled] {
		t.Fatal("Clone copied a settled entry")
	}
	if o := c.Own(settled); o == got.Files[settled] {
		t.Fatal("Own returned the shared entry")
	}
}

// TestSegmentCorrupt: a damaged segment is a corrupt checkpoint, never a silent reset.
func TestSegmentCorrupt(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		good, err := encodeSegment("users", "S1", map[string]*File{"a": {Key: "a", Acked: map[string]int64{}}}, nil)
		if err != nil {
			t.Fatal(err)
		}
		for name, data := range map[string][]byte{
			"truncated": good[:len(good)-6],
			"garbage":   []byte("not gzip"),
			"other id":  must(encodeSegment("users", "S2", nil, nil)),
		} {
			t.Run(name, func(t *testing.T) {
				b.put(t, "checkpoints/users.json", []byte(`{"version":2,"sync":"users","files":{},"segments":["S1"]}`))
				b.put(t, "checkpoints/users.seg-S1.jsonl.gz", data)
				if _, err := b.store.Load(ctx, "users"); !errors.Is(err, ErrCorrupt) {
					t.Fatalf("Load = %v, want ErrCorrupt", err)
				}
			})
		}
	})
}

func must(b []byte, err error) []byte {
	if err != nil {
		panic(err)
	}
	return b
}

// TestSegmentsTieredMerge: a merge takes the newest segments and leaves a much larger
// old one alone, keeping the tombstones of keys that the old one still holds.
func TestSegmentsTieredMerge(t *testing.T) {
	smallSegments(t, 2, 3)
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		cp := &Checkpoint{Sync: "users", Files: map[string]*File{}}
		want := map[string]*File{}
		for i := range 200 {
			f := segFile(i, 100)
			cp.Files[f.Key] = f
			want[f.Key] = f.Clone()
		}
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		base := cp.segments[0]
		for round := range 3 {
			if round == 0 {
				cp.Delete(segFile(0, 0).Key)
				delete(want, segFile(0, 0).Key)
			}
			for i := range 3 {
				f := segFile(1000+round*10+i, 1)
				cp.Put(f)
				want[f.Key] = f.Clone()
			}
			if err := b.store.Save(ctx, cp); err != nil {
				t.Fatal(err)
			}
		}
		if len(cp.segments) != 2 || cp.segments[0] != base {
			t.Fatalf("segments after the merge %v, want the base %s and one merged", cp.segments, base)
		}
		checkLoads(t, b, "users", want)
		if stored := storedSegments(t, b.store, "users"); len(stored) != 2 {
			t.Fatalf("stored %v", stored)
		}
	})
}

// FuzzSegmentLine: whatever the fast path of decodeLine accepts, encoding/json reads the
// same way.
func FuzzSegmentLine(f *testing.F) {
	for _, k := range []string{"a", `we"ird\key`, "<&>", "ünï", "tab\tkey", "line\u2028sep"} {
		fl := &File{Key: k, Size: 3, ETag: `"e"`, VersionID: "v", Rows: 9, Acked: map[string]int64{"d": 1, `x"y`: 0}}
		b, err := json.Marshal(fl)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(b)
	}
	f.Add([]byte(`{"key":"a","size":01,"rows":1,"acked":{}}`))
	f.Add([]byte(`{"key":"a","size":1,"rows":1,"acked":{"d":-1}}`))
	f.Add([]byte(`{"key":"a","size":1,"rows":99999999999999999999,"acked":{}}`))
	f.Fuzz(func(t *testing.T, line []byte) {
		var fast File
		if !parseEntry(line, &fast) {
			return
		}
		var slow segmentLine
		if err := json.Unmarshal(line, &slow); err != nil {
			t.Fatalf("fast path accepted what encoding/json refuses (%v): %s", err, line)
		}
		if slow.Acked == nil {
			slow.Acked = map[string]int64{}
		}
		if slow.Removed != "" || !reflect.DeepEqual(fast, slow.File) {
			t.Fatalf("fast %+v, encoding/json %+v: %s", fast, slow, line)
		}
	})
}

// TestSegmentRoundTripOddEntries: entries the fast path does not read (ranges, deletion
// times, escapes) round-trip through encoding/json.
func TestSegmentRoundTripOddEntries(t *testing.T) {
	files := map[string]*File{}
	for _, f := range []*File{
		{Key: "plain", Size: 1, ETag: `"e"`, Rows: 3, Acked: map[string]int64{"a": 3, "b": 0}},
		{Key: `q"uo\te`, Size: 2, Rows: 3, Acked: map[string]int64{}},
		{Key: "ctl\x01\u2028<&>é", VersionID: "v1", Rows: 5, Acked: map[string]int64{"a": 1},
			AckedRanges: map[string][][2]int64{"a": {{2, 4}}}},
	} {
		files[f.Key] = f
	}
	data, err := encodeSegment("users", "S1", files, []string{"gone"})
	if err != nil {
		t.Fatal(err)
	}
	got := map[string]*File{"gone": {Key: "gone"}}
	if err := applySegment(data, "users", "S1", "x", got, nil); err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, files) {
		t.Fatalf("round trip: %+v\nwant %+v", got, files)
	}
}

// TestAppendEntryIsJSON: the fast encoder writes what encoding/json writes.
func TestAppendEntryIsJSON(t *testing.T) {
	for _, f := range []*File{
		{Key: "a", Size: 0, Rows: 0, Acked: map[string]int64{}},
		{Key: `q"u\o`, Size: 12, ETag: `"9b2c"`, VersionID: "v-1", Rows: 120000, Acked: map[string]int64{"segment": 7}},
		{Key: "users/dt=2025-01-01/part-0.parquet", Size: 1 << 40, ETag: `"x"`, Rows: 5, Acked: map[string]int64{"w": 5}},
	} {
		want, err := json.Marshal(f)
		if err != nil {
			t.Fatal(err)
		}
		if got := appendEntry(nil, f); string(got) != string(want)+"\n" {
			t.Errorf("appendEntry = %s, want %s", got, want)
		}
	}
	if appendEntry(nil, &File{Key: "é", Acked: map[string]int64{}}) != nil {
		t.Error("a non-ASCII key took the fast path")
	}
}

// TestHeadFastEncoding: a format-2 head, written with the fast encoder, reads back with
// encoding/json exactly, odd keys and entries included.
func TestHeadFastEncoding(t *testing.T) {
	files := map[string]*File{}
	for _, f := range []*File{
		{Key: "plain", Size: 1, ETag: `"e"`, Rows: 3, Acked: map[string]int64{"a": 3, "b": 0}},
		{Key: `q"uo\te,"files":{}`, Size: 2, Rows: 3, Acked: map[string]int64{}},
		{Key: "ctl\x01\u2028<&>é", VersionID: "v1", Rows: 5, Acked: map[string]int64{"a": 1},
			AckedRanges: map[string][][2]int64{"a": {{2, 4}}}},
	} {
		files[f.Key] = f
	}
	cp := &Checkpoint{Sync: "users", MappingFingerprint: `m,"files":{}`, LastRunID: "r"}
	data, err := encodeHead(cp, "g", files, []string{"S1"}, []string{"gone"})
	if err != nil {
		t.Fatal(err)
	}
	got, gen, removed, err := decodeHead(data, "users", "x")
	if err != nil {
		t.Fatalf("%v\n%s", err, data)
	}
	if gen != "g" || got.Version != 2 || !reflect.DeepEqual(got.Files, files) || !slices.Equal(removed, []string{"gone"}) ||
		got.MappingFingerprint != cp.MappingFingerprint || !slices.Equal(got.segments, []string{"S1"}) {
		t.Fatalf("head round trip: %+v, %q, %v\n%s", got, gen, removed, data)
	}
}
