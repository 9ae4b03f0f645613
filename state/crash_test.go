package state

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"os"
	"os/exec"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
)

// The crash tests run a helper process (this test binary, re-executed) that writes state
// in a tight loop, and kill it with SIGKILL at random moments. After every kill the state
// must load and be whole: the previous or the new version, never a torn one.
const (
	envHelper     = "GO_WANT_HELPER_PROCESS"
	envHelperMode = "BACKFLOW_STATE_HELPER_MODE"
	envHelperDir  = "BACKFLOW_STATE_HELPER_DIR"
	crashKills    = 30
	helperKeep    = 40
)

// TestHelperProcess is not a test: it is the writer the crash tests kill.
func TestHelperProcess(t *testing.T) {
	if os.Getenv(envHelper) != "1" {
		return
	}
	ctx := context.Background()
	fail := func(err error) {
		fmt.Fprintln(os.Stderr, "helper:", err)
		os.Exit(3)
	}
	st, err := Open(ctx, config.StateConfig{URL: os.Getenv(envHelperDir)})
	if err != nil {
		fail(err)
	}
	ready := false
	if os.Getenv(envHelperMode) == "segments" {
		// A compaction every few saves and a merge every few compactions, so that kills
		// land between a segment's write and its head's, and in the deletions after.
		compactAt, mergeAt, orphanAge = 3, 3, 0
	}
	for {
		switch os.Getenv(envHelperMode) {
		case "checkpoint", "segments":
			cp, err := st.Load(ctx, "users")
			if err != nil {
				fail(err)
			}
			if cp == nil {
				cp = &Checkpoint{Sync: "users", Files: map[string]*File{}}
			}
			// Each save adds one file, so the content grows and so does the window in
			// which a non-atomic write would be caught half-done.
			n := int64(len(cp.Files))
			cp.Put(&File{Key: crashFileKey(n), Size: n * 100, Rows: n, Acked: map[string]int64{"segment": n}})
			cp.LastRunID = fmt.Sprint(n)
			if err := st.Save(ctx, cp); err != nil {
				fail(err)
			}
		case "history":
			hist, err := st.History(ctx, "users")
			if err != nil {
				fail(err)
			}
			next := 0
			if len(hist) > 0 {
				var last crashReport
				if err := json.Unmarshal(hist[0], &last); err != nil {
					fail(err)
				}
				next = last.N + 1
			}
			report, _ := json.Marshal(crashReport{N: next, Pad: strings.Repeat("x", next%500)})
			if err := st.AppendHistory(ctx, "users", report, helperKeep); err != nil {
				fail(err)
			}
		default:
			fail(fmt.Errorf("unknown mode %q", os.Getenv(envHelperMode)))
		}
		if !ready {
			// The parent starts its random delay once something was written.
			fmt.Println("ready")
			ready = true
		}
	}
}

type crashReport struct {
	N   int    `json:"n"`
	Pad string `json:"pad"`
}

func crashFileKey(n int64) string { return fmt.Sprintf("exports/dt=2025-01-01/part-%06d.parquet", n) }

// killHelperRepeatedly runs the helper crashKills times over the state directory dir,
// killing it with SIGKILL after a random delay of 0–50 ms (from a seeded PRNG) once it has
// written once, and calls check after every kill.
func killHelperRepeatedly(t *testing.T, mode, dir string, check func(kill int)) {
	if testing.Short() {
		t.Skip("crash test")
	}
	rng := rand.New(rand.NewPCG(2025, uint64(len(mode))))
	for kill := range crashKills {
		cmd := exec.Command(os.Args[0], "-test.run=^TestHelperProcess$", "-test.count=1")
		cmd.Env = append(os.Environ(), envHelper+"=1", envHelperMode+"="+mode, envHelperDir+"="+dir)
		var stderr bytes.Buffer
		cmd.Stderr = &stderr
		stdout, err := cmd.StdoutPipe()
		if err != nil {
			t.Fatal(err)
		}
		if err := cmd.Start(); err != nil {
			t.Fatal(err)
		}
		line, err := bufio.NewReader(stdout).ReadString('\n')
		if err != nil || line != "ready\n" {
			_ = cmd.Process.Kill()
			_ = cmd.Wait()
			t.Fatalf("kill %d: helper did not start writing (%q, %v): %s", kill, line, err, stderr.String())
		}
		// The delay only picks the moment of the kill; no outcome depends on its length.
		time.Sleep(time.Duration(rng.IntN(51)) * time.Millisecond)
		if err := cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if err := cmd.Wait(); err == nil || !strings.Contains(err.Error(), "killed") {
			t.Fatalf("kill %d: helper ended on its own (%v): %s", kill, err, stderr.String())
		}
		check(kill)
	}
}

func TestCrashCheckpoint(t *testing.T) { crashCheckpoint(t, "checkpoint") }

// TestCrashSegments kills a writer whose checkpoint compacts into segments and merges
// them every few saves: the state loads whole after every kill, and the orphan segments
// of killed compactions are deleted by later ones.
func TestCrashSegments(t *testing.T) {
	dir := crashCheckpoint(t, "segments")
	cp, err := (&localStore{dir: dir}).Load(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	if len(cp.segments) == 0 {
		t.Fatal("the helper never compacted")
	}
	stored, err := (&localStore{dir: dir}).listSegments(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	// The head's segments, plus at most the orphan of the last kill (mergeAt is 3).
	if len(stored) > len(cp.segments)+1 {
		t.Fatalf("%d segments stored, the head names %d: orphans are not deleted", len(stored), len(cp.segments))
	}
}

func crashCheckpoint(t *testing.T, mode string) string {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	prev := 0
	killHelperRepeatedly(t, mode, dir, func(kill int) {
		cp, err := st.Load(ctx, "users")
		if err != nil {
			t.Fatalf("kill %d: Load after the crash: %v", kill, err)
		}
		if cp == nil {
			t.Fatalf("kill %d: the checkpoint vanished", kill)
		}
		n := len(cp.Files)
		// Every file the helper ever saved is there, whole, and nothing was lost.
		for i := range int64(n) {
			f := cp.Files[crashFileKey(i)]
			if f == nil || f.Rows != i || f.Acked["segment"] != i || f.Size != i*100 {
				t.Fatalf("kill %d: file %d of %d is wrong: %+v", kill, i, n, f)
			}
		}
		if cp.LastRunID != fmt.Sprint(n-1) || n < prev+1 {
			t.Fatalf("kill %d: %d files (last run %q), had %d before this run", kill, n, cp.LastRunID, prev)
		}
		prev = n
	})
	t.Logf("%d checkpoints saved across %d kills", prev, crashKills)
	return dir
}

func TestCrashHistory(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	prev := -1
	killHelperRepeatedly(t, "history", dir, func(kill int) {
		hist, err := st.History(ctx, "users")
		if err != nil {
			t.Fatalf("kill %d: History after the crash: %v", kill, err)
		}
		if len(hist) == 0 || len(hist) > helperKeep {
			t.Fatalf("kill %d: %d runs kept, want 1..%d", kill, len(hist), helperKeep)
		}
		// Newest first, consecutive, each report whole.
		var newest int
		for i, raw := range hist {
			var r crashReport
			if err := json.Unmarshal(raw, &r); err != nil {
				t.Fatalf("kill %d: run %d: %v", kill, i, err)
			}
			if i == 0 {
				newest = r.N
			}
			if r.N != newest-i || len(r.Pad) != r.N%500 {
				t.Fatalf("kill %d: run %d is %d (pad %d), want %d", kill, i, r.N, len(r.Pad), newest-i)
			}
		}
		if want := min(newest+1, helperKeep); len(hist) != want {
			t.Fatalf("kill %d: %d runs kept, want %d", kill, len(hist), want)
		}
		if newest <= prev {
			t.Fatalf("kill %d: newest run %d, had %d before this run", kill, newest, prev)
		}
		prev = newest
	})
	t.Logf("%d runs recorded across %d kills", prev+1, crashKills)
}
