package pipeline

import (
	"context"
	"fmt"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/state"
)

// TestLedgerSnapshotsOnlyWhatChanged runs the planner and the ledger over a checkpoint
// large enough to be compacted into a segment: planning leaves the settled entries
// settled, snapshots hold only the entries the run changed, and what is saved loads
// back merged with the segment.
func TestLedgerSnapshotsOnlyWhatChanged(t *testing.T) {
	ctx := context.Background()
	store, err := state.Open(ctx, config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	dests := []string{"segment", "webhook"}
	const n = 10_050 // above the compaction threshold: the first save writes a segment
	key := func(i int) string { return fmt.Sprintf("users/dt=2025-01-07/part-%07d.parquet", i) }
	first := &state.Checkpoint{Sync: "users", Files: map[string]*state.File{}}
	var objects []reader.Object
	for i := range n {
		first.Files[key(i)] = &state.File{Key: key(i), Size: 10, ETag: "e", Rows: 5, Acked: map[string]int64{"segment": 5, "webhook": 5}}
		objects = append(objects, reader.Object{Key: key(i), Size: 10, ETag: "e"})
	}
	if err := store.Save(ctx, first); err != nil {
		t.Fatal(err)
	}
	prev, err := store.Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if len(prev.Segments()) != 1 {
		t.Fatalf("%d segments, want 1", len(prev.Segments()))
	}

	// This run: file 0 changed, file 1 vanished, two new files; the rest unchanged.
	objects[0].ETag = "e2"
	objects = append(objects[:1], objects[2:]...)
	objects = append(objects, reader.Object{Key: key(n), Size: 10, ETag: "e"}, reader.Object{Key: key(n + 1), Size: 10, ETag: "e"})
	cp := prev.Clone()
	l := newLedger(cp, dests)
	toRead, unchanged, deleted := planFiles(cp, objects, dests, nil)
	if len(toRead) != 3 || unchanged != n-2 || deleted != 1 {
		t.Fatalf("planned %d to read, %d unchanged, %d deleted", len(toRead), unchanged, deleted)
	}
	snap, _ := l.snapshot()
	// The changed file's stale entry and the vanished one are removals; nothing else.
	if len(snap.Files) != 0 {
		t.Fatalf("snapshot after planning holds %d entries, want none", len(snap.Files))
	}
	if err := store.Save(ctx, snap); err != nil {
		t.Fatal(err)
	}
	l.saved(snap.Generation)

	// Open and acknowledge the changed file and one new file; the other stays unopened.
	for _, f := range toRead[:2] {
		of := &openFile{entry: f}
		l.open(f, 5)
		l.handled(0, []span{{file: of, start: 0, end: 5}}, 5, 0)
	}
	snap, _ = l.snapshot()
	if len(snap.Files) != 2 {
		t.Fatalf("snapshot holds %d entries, want the 2 opened", len(snap.Files))
	}
	if prev.Files[key(5)] != cp.Files[key(5)] {
		t.Fatal("an unchanged settled entry was copied")
	}
	if err := store.Save(ctx, snap); err != nil {
		t.Fatal(err)
	}
	l.saved(snap.Generation)

	got, err := store.Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if len(got.Files) != n { // minus the vanished one, plus the opened new one
		t.Fatalf("loaded %d files, want %d", len(got.Files), n)
	}
	if f := got.Files[key(0)]; f == nil || f.ETag != "e2" || f.Acked["segment"] != 5 || f.Acked["webhook"] != 0 {
		t.Fatalf("changed file loaded as %+v", f)
	}
	if got.Files[key(1)] != nil || got.Files[key(n+1)] != nil {
		t.Fatal("the vanished file or the unopened new one was saved")
	}
	if f := got.Files[key(n)]; f == nil || f.Acked["segment"] != 5 {
		t.Fatalf("new file loaded as %+v", f)
	}
	if f := got.Files[key(7)]; f == nil || f.Acked["webhook"] != 5 {
		t.Fatalf("settled file loaded as %+v", f)
	}
}
