package e2e

import (
	"encoding/json"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
)

// twoRunsAtOnce starts two `backflow sync` of the workspace's sync at once against a
// slow webhook. Each must end cleanly, or fail with one line saying another run is
// active; the checkpoints (read by checkpoints) must stay whole, and a later run must
// complete the sync without losing a row.
func twoRunsAtOnce(t *testing.T, w *workspace, hook *destinationstest.SegmentServer, files, per int, checkpoints func() [][]byte) {
	t.Helper()
	p1 := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	p2 := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	results := []result{p1.wait(), p2.wait()}
	ok := 0
	for _, r := range results {
		t.Logf("a concurrent run: exit %d, error lines %q", r.Code, r.errorLines())
		switch {
		case r.Code == 0:
			ok++
		case r.Code == 1 && strings.Contains(r.Stderr, "another"):
			if lines := r.errorLines(); len(lines) != 1 {
				t.Errorf("the stopped run printed %d error lines, want 1: %q", len(lines), lines)
			}
		default:
			t.Errorf("a concurrent run ended neither cleanly nor with \"another run is active\"\n%s", r)
		}
	}
	if ok == 0 {
		t.Errorf("both concurrent runs failed:\n%s\n%s", results[0], results[1])
	}

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
