package e2e

import (
	"maps"
	"slices"
	"strconv"
	"testing"
)

// TestModeDiff: a full-load export (partition latest) whose second snapshot changes 1% of
// the rows: only those are sent.
func TestModeDiff(t *testing.T) {
	const n = 2000
	w := newWorkspace(t)
	snap1 := people(1, n)
	writePeople(t, w.path("data", "dt=2025-01-01", "part-0.parquet"), snap1, peopleOptions{})
	c := usersConfig(fileDest("out/users.jsonl"))
	c.Syncs[0].Mode = "diff"
	c.Syncs[0].Source["partition"] = "latest"
	w.writeConfig(c)

	rep := w.mustSync(0)
	if !rep.FullSync || rep.Rows.Sent != n || rep.Rows.Unchanged != 0 || rep.Mode != "diff" {
		t.Errorf("snapshot 1: want a first sync sending %d rows\n%s", n, rep)
	}
	out := w.path("out", "users.jsonl")
	first := readMessages(t, out)
	checkExactlyOnce(t, "snapshot 1", first, idRange(1, n))
	for _, m := range first {
		if _, ok := m.Traits["dt"]; ok {
			t.Errorf("the partition value became a trait: %s", m.line)
			break
		}
	}

	// Snapshot 2: the same table, a day later, 1% of the rows changed.
	snap2 := slices.Clone(snap1)
	var changed []string
	for i := 0; i < n; i += 100 {
		snap2[i].Plan = "changed"
		changed = append(changed, strconv.FormatInt(*snap2[i].ID, 10))
	}
	slices.Sort(changed)
	writePeople(t, w.path("data", "dt=2025-01-02", "part-0.parquet"), snap2, peopleOptions{})

	// A dry run counts what would be sent, and leaves the state as it was, byte for byte.
	before := digestTree(t, w.stateDir())
	rep = w.mustSync(0, "--dry-run")
	if rep.Rows.WouldSend != int64(len(changed)) || rep.Rows.Unchanged != int64(n-len(changed)) || rep.Rows.Sent != 0 {
		t.Errorf("dry run of snapshot 2: want would_send %d, unchanged %d\n%s", len(changed), n-len(changed), rep)
	}
	if after := digestTree(t, w.stateDir()); !maps.Equal(before, after) {
		t.Errorf("a dry run changed the state directory:\nbefore %v\nafter  %v", before, after)
	}

	rep = w.mustSync(0)
	if rep.FullSync {
		t.Errorf("snapshot 2: want no full sync\n%s", rep)
	}
	if rep.Rows.Read != n || rep.Rows.Sent != int64(len(changed)) || rep.Rows.Unchanged != int64(n-len(changed)) {
		t.Errorf("snapshot 2: want %d read, %d sent, %d unchanged\n%s", n, len(changed), n-len(changed), rep)
	}
	if rep.Files.Listed != 2 || rep.Files.Read != 1 || rep.Files.Skipped != 1 || rep.Files.Deleted != 1 {
		t.Errorf("snapshot 2: want 2 listed, 1 read, the old partition skipped and dropped from the checkpoint\n%s", rep)
	}
	second := readMessages(t, out)[n:]
	checkExactlyOnce(t, "snapshot 2", second, changed)
	for _, m := range second {
		if m.Traits["plan"] != "changed" {
			t.Errorf("snapshot 2 sent an unchanged row: %s", m.line)
		}
	}

	// Snapshot 3 identical to snapshot 2: nothing sent.
	writePeople(t, w.path("data", "dt=2025-01-03", "part-0.parquet"), snap2, peopleOptions{})
	rep = w.mustSync(0)
	if rep.Rows.Sent != 0 || rep.Rows.Unchanged != n {
		t.Errorf("snapshot 3 (no change): want 0 sent, %d unchanged\n%s", n, rep)
	}

	// --full sends everything and rebuilds the hashes: the run after sends nothing again.
	rep = w.mustSync(0, "--full")
	if !rep.FullSync || rep.Rows.Sent != n {
		t.Errorf("--full in mode diff: want every row sent\n%s", rep)
	}
	writePeople(t, w.path("data", "dt=2025-01-04", "part-0.parquet"), snap2, peopleOptions{})
	if rep := w.mustSync(0); rep.Rows.Sent != 0 || rep.Rows.Unchanged != n {
		t.Errorf("the snapshot after --full: want 0 sent, %d unchanged\n%s", n, rep)
	}
	if got := len(readMessages(t, out)); got != n+len(changed)+n {
		t.Errorf("the output has %d messages, want %d", got, n+len(changed)+n)
	}
}
