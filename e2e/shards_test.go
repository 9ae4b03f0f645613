package e2e

import (
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// shardRun runs `backflow sync --shard I/N` for every I at once, as the pods of a
// Kubernetes Indexed Job would, and returns their reports by shard.
func shardRun(t *testing.T, w *workspace, n int, extra ...string) []*report {
	t.Helper()
	procs := make([]*proc, n)
	reports := make([]string, n)
	for i := range n {
		f, err := os.CreateTemp(t.TempDir(), "report-*.json")
		if err != nil {
			t.Fatal(err)
		}
		f.Close()
		reports[i] = f.Name()
		args := append([]string{"sync", "--shard", fmt.Sprintf("%d/%d", i, n), "--report", f.Name(), "-c", w.configPath()}, extra...)
		procs[i] = start(t, w.dir, w.env, args...)
	}
	out := make([]*report, n)
	for i, p := range procs {
		r := p.wait()
		if r.Code != 0 {
			t.Fatalf("shard %d/%d: want exit 0\n%s", i, n, r)
		}
		out[i] = readReport(t, reports[i], r)
		if want := fmt.Sprintf("%d/%d", i, n); n > 1 && out[i].Shard != want {
			t.Errorf("shard %s: the report says shard %q", want, out[i].Shard)
		}
	}
	return out
}

// messageIDs returns the sorted messageIds of msgs, duplicates kept.
func messageIDs(msgs []message) []string {
	out := make([]string, len(msgs))
	for i, m := range msgs {
		out[i] = m.MessageID
	}
	sort.Strings(out)
	return out
}

// TestShards: N processes of one sync, each with --shard I/N, deliver exactly what one
// unsharded run delivers — no row twice — in modes incremental and diff; a file added
// later goes to one shard; changing N makes every shard's next run a full sync; a shard
// killed mid-run is run again alone and completes its part.
func TestShards(t *testing.T) {
	for _, mode := range []string{"incremental", "diff"} {
		t.Run(mode, func(t *testing.T) {
			const files, per = 8, 500
			hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
			ref := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
			sharded, whole := newWorkspace(t), newWorkspace(t)
			for _, w := range []*workspace{sharded, whole} {
				w.writeUsers("", exampledata.Options{Files: files, RowsPerFile: per, RowGroupRows: 100, Seed: 71})
			}
			configure := func(w *workspace, url string) {
				c := usersConfig(map[string]any{"type": "webhook", "url": url + "/hook", "batch_size": 50, "max_in_flight": 2})
				c.Syncs[0].Mode = mode
				w.writeConfig(c)
			}
			configure(sharded, hook.URL)
			configure(whole, ref.URL)

			reps := shardRun(t, sharded, 4)
			want := whole.mustSync(0)
			got, wantMsgs := received(t, hook), received(t, ref)
			if !slices.Equal(messageIDs(got), messageIDs(wantMsgs)) {
				t.Fatalf("4 shards delivered %d messages (%d distinct), one run %d: %s", len(got), distinctIDs(got), len(wantMsgs),
					diffSummary(messageIDs(got), messageIDs(wantMsgs)))
			}
			checkExactlyOnce(t, "4 shards", got, idRange(0, files*per))
			var read int
			for i, r := range reps {
				if r.FullSyncReason != "first sync" {
					t.Errorf("shard %d: reason %q, want first sync", i, r.FullSyncReason)
				}
				read += r.Files.Read
			}
			if mode == "incremental" && read != files {
				t.Errorf("the shards read %d files in all, want each of the %d once", read, files)
			}
			if mode == "diff" && read != 4*files {
				t.Errorf("in mode diff every shard reads every file: %d reads, want %d", read, 4*files)
			}
			_ = want

			// A file added later goes to exactly one shard (incremental), or its rows are
			// spread over the shards by identifier (diff); either way once.
			before := len(received(t, hook))
			for _, w := range []*workspace{sharded, whole} {
				w.writeUsers("new", exampledata.Options{Files: 1, RowsPerFile: 120, FirstID: 100000, Seed: 72})
			}
			reps = shardRun(t, sharded, 4)
			whole.mustSync(0)
			readers := 0
			for _, r := range reps {
				if r.Files.Read > 0 {
					readers++
				}
				if r.FullSync {
					t.Errorf("shard %s: a full sync (%s) after a new file", r.Shard, r.FullSyncReason)
				}
			}
			if mode == "incremental" && readers != 1 {
				t.Errorf("the new file was read by %d shards, want 1", readers)
			}
			if added := received(t, hook)[before:]; len(added) != 120 || distinctIDs(added) != 120 {
				t.Errorf("after a new file the shards sent %d messages (%d distinct), want 120", len(added), distinctIDs(added))
			}

			// Fewer shards: every shard's next run is a full sync, reason "shards changed".
			before = len(received(t, hook))
			reps = shardRun(t, sharded, 3)
			for _, r := range reps {
				if r.FullSyncReason != "shards changed" {
					t.Errorf("shard %s after 4 → 3 shards: reason %q, want shards changed", r.Shard, r.FullSyncReason)
				}
			}
			if again := received(t, hook)[before:]; len(again) != files*per+120 || distinctIDs(again) != files*per+120 {
				t.Errorf("after 4 → 3 shards: %d messages (%d distinct), want every row once: %d", len(again), distinctIDs(again), files*per+120)
			}
			// And then nothing more.
			before = len(received(t, hook))
			for _, r := range shardRun(t, sharded, 3) {
				if r.FullSync || r.Rows.Sent != 0 {
					t.Errorf("shard %s: a run with nothing new sent %d rows (reason %q)", r.Shard, r.Rows.Sent, r.FullSyncReason)
				}
			}
			if n := len(received(t, hook)) - before; n != 0 {
				t.Errorf("a run with nothing new delivered %d messages", n)
			}

			// state show lists every shard; state reset resets them all.
			if r := sharded.run("state", "show"); r.Code != 0 || !containsAll(r.Stdout, "Shard 0/3 of sync users", "Shard 2/3", "Shard 3/4") {
				t.Errorf("state show does not list the shards:\n%s", r)
			}
			if r := sharded.run("state", "reset"); r.Code != 0 {
				t.Errorf("state reset:\n%s", r)
			}
			if paths, _ := filepath.Glob(sharded.path(".backflow", "checkpoints", "users*.json")); len(paths) != 0 {
				t.Errorf("state reset left %v", paths)
			}
		})
	}
}

func containsAll(s string, subs ...string) bool {
	for _, sub := range subs {
		if !strings.Contains(s, sub) {
			return false
		}
	}
	return true
}

// TestShardKilledAndRerun: shards on MinIO (s3:// source and state); one shard is killed
// with SIGKILL mid-run; running that shard again alone completes the sync: every row
// arrives, and the other shards' parts are not sent again.
func TestShardKilledAndRerun(t *testing.T) {
	m := testutil.StartMinIO(t)
	src, st := m.Bucket(t), m.Bucket(t)
	const files, per = 8, 400
	uploadUsers(t, m, src, "users/", exampledata.Options{Files: files, RowsPerFile: per, RowGroupRows: 50, Seed: 73})
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", Delay: 20 * time.Millisecond})
	w := s3Workspace(t, m, src, st, "shards", map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 20, "max_in_flight": 1})
	// The killed shard's lease lapses after 2s; the rerun waits for it.
	c := usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 20, "max_in_flight": 1})
	c.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/")
	c.State = with(with(s3Settings(m), "url", "s3://"+st+"/shards"), "lease_ttl", "2s")
	w.writeConfig(c)

	// Shards 0, 1 and 3 run to the end; shard 2 is killed once it has sent something.
	victim := start(t, w.dir, w.env, "sync", "--shard", "2/4", "-c", w.configPath())
	deadline := time.Now().Add(30 * time.Second)
	for len(received(t, hook)) == 0 && time.Now().Before(deadline) {
		time.Sleep(10 * time.Millisecond) // polling the receiver for the first batch
	}
	if err := victim.cmd.Process.Signal(syscall.SIGKILL); err != nil {
		t.Fatal(err)
	}
	_ = victim.cmd.Wait() // killed: no exit code to judge
	for _, i := range []int{0, 1, 3} {
		if r, _ := w.sync("--shard", fmt.Sprintf("%d/4", i)); r.Code != 0 {
			t.Fatalf("shard %d/4:\n%s", i, r)
		}
	}
	afterOthers := len(received(t, hook))
	r, rep := w.sync("--shard", "2/4", "--wait", "30s")
	if r.Code != 0 || rep.FullSync {
		t.Fatalf("shard 2/4 run again: want exit 0 and an incremental run\n%s\n%s", r, rep)
	}
	got := received(t, hook)
	if rep.Rows.Sent != int64(len(got)-afterOthers) {
		t.Errorf("the rerun of shard 2 reports %d sent, the receiver got %d", rep.Rows.Sent, len(got)-afterOthers)
	}
	// Every row at least once; duplicates only from the killed shard's batch in flight.
	if ids := distinctUserIDs(got); ids != files*per {
		t.Errorf("%d distinct rows arrived, want %d", ids, files*per)
	}
	if dup := len(got) - distinctIDs(got); dup > 20 {
		t.Errorf("%d messages arrived twice, want at most the killed shard's batch in flight (20)", dup)
	}
	// Nothing left for anyone.
	for i := range 4 {
		if rep := w.mustSync(0, "--shard", fmt.Sprintf("%d/4", i)); rep.Rows.Sent != 0 {
			t.Errorf("shard %d/4 sent %d rows after the sync was complete", i, rep.Rows.Sent)
		}
	}
}

func distinctUserIDs(msgs []message) int {
	seen := map[string]bool{}
	for _, m := range msgs {
		seen[m.UserID] = true
	}
	return len(seen)
}

// TestFigureShardsThroughput times 1, 2 and 4 shards against a latency-bound destination
// (a webhook taking 20 ms a batch, max_in_flight 1), with the peak RSS of each shard.
// BACKFLOW_FIGURES=1 go test -run TestFigureShardsThroughput -v ./e2e/
func TestFigureShardsThroughput(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	// Files are what shards share out (modes incremental and full): with few files the
	// biggest shard's share decides the time, so enough of them for an even split.
	const files, per = 256, 320
	latency := 20 * time.Millisecond
	if v, err := time.ParseDuration(os.Getenv("BACKFLOW_SHARD_LATENCY")); err == nil {
		latency = v // e.g. 100ms: a slower API
	}
	var base time.Duration
	for _, n := range []int{1, 2, 4} {
		hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", Delay: latency})
		w := newWorkspace(t)
		w.writeUsers("", exampledata.Options{Files: files, RowsPerFile: per, RowGroupRows: 500, Seed: 79})
		w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 100, "max_in_flight": 1}))
		began := time.Now()
		reps := shardRun(t, w, n)
		took := time.Since(began)
		var peaks, shares []string
		for _, r := range reps {
			peaks = append(peaks, fmt.Sprintf("%d MiB", r.PeakRSSBytes>>20))
			shares = append(shares, fmt.Sprint(r.Files.Read))
		}
		if n == 1 {
			base = took
		}
		if got := received(t, hook); distinctIDs(got) != files*per {
			t.Fatalf("%d shards delivered %d distinct messages, want %d", n, distinctIDs(got), files*per)
		}
		t.Logf("%s a batch; %d shard(s): %d rows in %s (%.0f rows/s, %.2f× one shard); files per shard %s; peak RSS per shard %s",
			latency, n, files*per, took.Round(time.Millisecond), float64(files*per)/took.Seconds(), base.Seconds()/took.Seconds(),
			strings.Join(shares, "/"), strings.Join(peaks, ", "))
	}
}
