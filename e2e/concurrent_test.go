package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
)

// leaseHeldLine is the one line a run prints when another run of its sync holds the
// lease (SPEC.md "One run at a time").
var leaseHeldLine = regexp.MustCompile(`^backflow: sync users is running elsewhere \(host [^,]+, pid \d+, run \d{8}T\d{6}Z-[0-9a-f]{8}, since \d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ\)$`)

// twoRunsAtOnce starts two `backflow sync` of the workspace's sync at once against a
// slow webhook. Exactly one runs; the other sends nothing and exits 1 with one line
// naming the holder of the lease. No message arrives twice; the checkpoints (read by
// checkpoints) stay whole, and a later run completes the sync without losing a row.
func twoRunsAtOnce(t *testing.T, w *workspace, hook *destinationstest.SegmentServer, files, per int, checkpoints func() [][]byte) {
	t.Helper()
	p1 := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	p2 := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	results := []result{p1.wait(), p2.wait()}
	ok, held := 0, 0
	for _, r := range results {
		t.Logf("a concurrent run: exit %d, error lines %q", r.Code, r.errorLines())
		switch {
		case r.Code == 0:
			ok++
		case r.Code == 1:
			held++
			if lines := strings.Split(strings.TrimSpace(r.Stderr), "\n"); len(lines) != 1 || !leaseHeldLine.MatchString(lines[0]) {
				t.Errorf("the run that found the lease held printed %q, want exactly one line naming the holder", lines)
			}
		default:
			t.Errorf("a concurrent run ended neither cleanly nor with the lease held\n%s", r)
		}
	}
	if ok != 1 || held != 1 {
		t.Errorf("%d runs succeeded and %d found the lease held, want 1 and 1:\n%s\n%s", ok, held, results[0], results[1])
	}
	// The run that found the lease held sent nothing: every message arrived once.
	checkExactlyOnce(t, "webhook", received(t, hook), idRange(0, int64(files*per)))

	// The checkpoint is whole, and a third run completes what is missing.
	cps := checkpoints()
	if len(cps) != 1 {
		t.Errorf("%d checkpoints stored, want 1", len(cps))
	}
	for _, b := range cps {
		if !json.Valid(b) {
			t.Errorf("a checkpoint is not valid JSON: %q", b)
		}
	}
	r, rep := w.sync()
	if r.Code != 0 || rep.Status != "ok" {
		t.Fatalf("the run after: want exit 0\n%s\n%s", r, rep)
	}
	checkAtLeastOnce(t, "webhook", received(t, hook), idRange(0, int64(files*per)))
	r = w.run("state", "show", "--json")
	var cp struct {
		Files map[string]struct {
			Rows  int64            `json:"rows"`
			Acked map[string]int64 `json:"acked"`
		} `json:"files"`
	}
	if err := json.Unmarshal([]byte(r.Stdout), &cp); err != nil || r.Code != 0 {
		t.Fatalf("state show --json: %v\n%s", err, r)
	}
	if len(cp.Files) != files {
		t.Errorf("the checkpoint holds %d files, want %d", len(cp.Files), files)
	}
	for k, f := range cp.Files {
		if f.Rows != int64(per) || f.Acked["webhook"] != int64(per) {
			t.Errorf("checkpoint entry %s: %+v, want every row acknowledged", k, f)
		}
	}
	// And nothing is left to send.
	if rep := w.mustSync(0); rep.Rows.Sent != 0 {
		t.Errorf("a fourth run still sent %d rows\n%s", rep.Rows.Sent, rep)
	}
}

// TestTwoRunsAtOnceLocal is twoRunsAtOnce with a local state directory.
func TestTwoRunsAtOnceLocal(t *testing.T) {
	const files, per = 10, 200
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", Delay: 150 * time.Millisecond})
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: files, RowsPerFile: per, Seed: 19})
	w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 50, "max_in_flight": 4}))
	twoRunsAtOnce(t, w, hook, files, per, func() [][]byte {
		paths, _ := filepath.Glob(filepath.Join(w.stateDir(), "checkpoints", "*.json"))
		var out [][]byte
		for _, p := range paths {
			b, err := os.ReadFile(p)
			if err != nil {
				t.Fatal(err)
			}
			out = append(out, b)
		}
		return out
	})
}
