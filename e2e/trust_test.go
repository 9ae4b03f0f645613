package e2e

// Issue 10, "Delivery you can trust": end-to-end tests of the promises of SPEC.md's
// "State" and "Running unattended" sections, against the real binary, real loopback
// receivers, real files and MinIO. One test per defect of the issue; each names it.
//
// Every identifier here starts with "trust": other files of the package are written by
// other people. The tests reuse the crash tests' workspace, process and receiver
// (crash_test.go) and the package's workspace helpers (helpers_test.go).

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"fmt"
	"math/rand/v2"
	"net/http"
	"os"
	"os/exec"
	"path/filepath"
	"sort"
	"strconv"
	"strings"
	"syscall"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// ---- defect 1: a destination added in mode diff ----

// TestTrustDiffNewDestination (defect 1): in mode diff, "unchanged" is judged per
// destination. A destination added to the sync receives every row on its next run while
// the one already there receives nothing; a later snapshot that changes 10 rows sends
// exactly those 10 to each.
func TestTrustDiffNewDestination(t *testing.T) {
	const rows, changeEvery = 3000, 300 // ids 0, 300, …, 2700 change: 10 rows
	w := newWorkspace(t)
	w.writeUsers("dt=2025-01-01", exampledata.Options{Files: 1, RowsPerFile: rows, Seed: 41})
	a := map[string]any{"type": "file", "name": "a", "path": "out/a.jsonl"}
	b := map[string]any{"type": "file", "name": "b", "path": "out/b.jsonl"}
	configure := func(dests ...map[string]any) {
		c := usersConfig(dests...)
		c.Syncs[0].Mode = "diff"
		c.Syncs[0].Source["partition"] = "latest"
		w.writeConfig(c)
	}
	configure(a)
	if rep := w.mustSync(0); rep.delivered("a") != rows {
		t.Fatalf("first run: want %d delivered to a\n%s", rows, rep)
	}
	outA, outB := w.path("out", "a.jsonl"), w.path("out", "b.jsonl")
	checkExactlyOnce(t, "a after the first run", readMessages(t, outA), idRange(0, rows))

	// b joins the sync: it gets everything, a nothing.
	configure(a, b)
	rep := w.mustSync(0)
	if rep.delivered("a") != 0 || rep.delivered("b") != rows {
		t.Errorf("after adding b: want destinations.a.delivered 0 and destinations.b.delivered %d, got %d and %d\n%s",
			rows, rep.delivered("a"), rep.delivered("b"), rep)
	}
	checkExactlyOnce(t, "a after adding b", readMessages(t, outA), idRange(0, rows))
	checkExactlyOnce(t, "b after it was added", readMessages(t, outB), idRange(0, rows))

	// A new snapshot with 10 rows changed: each destination gets exactly those.
	w.writeUsers("dt=2025-01-02", exampledata.Options{Files: 1, RowsPerFile: rows, Seed: 41, ChangeEvery: changeEvery})
	var changed []string
	for id := int64(0); id < rows; id += changeEvery {
		changed = append(changed, strconv.FormatInt(id, 10))
	}
	sort.Strings(changed)
	nA, nB := len(readMessages(t, outA)), len(readMessages(t, outB))
	rep = w.mustSync(0)
	if rep.delivered("a") != int64(len(changed)) || rep.delivered("b") != int64(len(changed)) {
		t.Errorf("after changing %d rows: want %d delivered to each of a and b, got a %d, b %d\n%s",
			len(changed), len(changed), rep.delivered("a"), rep.delivered("b"), rep)
	}
	newSince := func(path string, n int) []message {
		msgs := readMessages(t, path)
		return msgs[min(n, len(msgs)):]
	}
	checkExactlyOnce(t, "a's new messages after the change", newSince(outA, nA), changed)
	checkExactlyOnce(t, "b's new messages after the change", newSince(outB, nB), changed)
}

// ---- defect 2: the s3 destination's memory and durability ----

// trustRunMeasured runs the binary in dir to its end (within timeout) and returns its exit
// code, its peak resident set size in KiB and its output.
func trustRunMeasured(t *testing.T, dir string, timeout time.Duration, args ...string) (code int, maxRSSKiB int64, out string) {
	t.Helper()
	ctx, cancel := context.WithTimeout(context.Background(), timeout)
	defer cancel()
	// The binary's own figure (VmHWM, in its report): the rusage of a child counts the
	// memory of the process that started it too (Linux keeps it across exec).
	reportPath := filepath.Join(t.TempDir(), "report.json")
	args = append(args, "--report", reportPath)
	cmd := exec.CommandContext(ctx, binary, args...)
	cmd.Dir = dir
	cmd.Env = baseEnv(nil)
	var stdout, stderr bytes.Buffer
	cmd.Stdout, cmd.Stderr = &stdout, &stderr
	err := cmd.Run()
	out = fmt.Sprintf("stdout:\n%s\nstderr:\n%s", stdout.String(), stderr.String())
	if cmd.ProcessState == nil {
		t.Fatalf("backflow %s: %v\n%s", strings.Join(args, " "), err, out)
	}
	if ctx.Err() != nil {
		t.Fatalf("backflow %s did not end within %v\n%s", strings.Join(args, " "), timeout, out)
	}
	var rep struct {
		PeakRSSBytes int64 `json:"peak_rss_bytes"`
	}
	if b, err := os.ReadFile(reportPath); err == nil && json.Unmarshal(b, &rep) == nil && rep.PeakRSSBytes > 0 {
		return cmd.ProcessState.ExitCode(), rep.PeakRSSBytes >> 10, out
	}
	ru, ok := cmd.ProcessState.SysUsage().(*syscall.Rusage)
	if !ok {
		t.Fatalf("no rusage for the child process")
	}
	return cmd.ProcessState.ExitCode(), ru.Maxrss, out
}

// trustS3Dest is an s3 destination (jsonl, uncompressed) writing under
// s3://bucket/backflow/, as YAML list item lines.
func trustS3Dest(m *testutil.MinIO, bucket string, extra string) string {
	return `      - type: s3
        url: s3://` + bucket + `/backflow/
        format: jsonl
        compression: none
` + extra + trustS3YAML(m, 8)
}

// trustObjectMessages reads every object under s3://bucket/backflow/: per userId how many
// times it appears, and the number of objects.
func trustObjectMessages(t *testing.T, m *testutil.MinIO, bucket string) (count map[string]int, objects int) {
	t.Helper()
	count = map[string]int{}
	keys := m.List(t, bucket, "backflow/")
	for _, k := range keys {
		sc := bufio.NewScanner(bytes.NewReader(m.Get(t, bucket, k)))
		sc.Buffer(nil, 1<<20)
		for sc.Scan() {
			var msg struct {
				UserID    string `json:"userId"`
				MessageID string `json:"messageId"`
			}
			if err := json.Unmarshal(sc.Bytes(), &msg); err != nil || msg.MessageID == "" {
				t.Fatalf("object %s holds a line that is no message (%v): %.200q", k, err, sc.Bytes())
			}
			count[msg.UserID]++
		}
	}
	return count, len(keys)
}

// TestTrustS3DestinationMemory (defect 2): a run holds no more rows in memory for an s3
// destination than one open object's worth, and the rows it keeps for acknowledgement
// must not make its memory grow with the export: the peak RSS of a sync of 1M rows stays
// under 300 MiB. BACKFLOW_FIGURES=1 adds 10M rows (long).
func TestTrustS3DestinationMemory(t *testing.T) {
	const limitKiB = 300 << 10
	m := testutil.StartMinIO(t)
	sizes := []int64{1_000_000}
	if os.Getenv("BACKFLOW_FIGURES") == "1" {
		sizes = append(sizes, 10_000_000)
	}
	for _, total := range sizes {
		t.Run(fmt.Sprintf("%d_rows", total), func(t *testing.T) {
			const perFile = 100_000
			s := newCrashSpace(t)
			began := time.Now()
			if _, err := exampledata.Write(s.path("data"), exampledata.Options{
				Files: int(total / perFile), RowsPerFile: perFile, RowGroupRows: 50_000, Seed: 43}); err != nil {
				t.Fatal(err)
			}
			t.Logf("wrote %d rows of Parquet in %v", total, time.Since(began).Round(time.Millisecond))
			lake := m.Bucket(t)
			trustConfig(t, s, "", "", trustS3Dest(m, lake, ""))
			began = time.Now()
			code, rss, out := trustRunMeasured(t, s.dir, time.Duration(total/1_000_000)*3*time.Minute,
				"sync", "-c", s.path("backflow.yaml"))
			t.Logf("sync of %d rows to s3 (jsonl): exit %d in %v, peak RSS %d MiB", total, code, time.Since(began).Round(time.Millisecond), rss>>10)
			if code != 0 {
				t.Fatalf("the sync exited %d\n%s", code, out)
			}
			if rss >= limitKiB {
				t.Errorf("peak RSS of a sync of %d rows to s3 is %d MiB, want under %d MiB", total, rss>>10, limitKiB>>10)
			}
			if total <= 1_000_000 {
				count, objects := trustObjectMessages(t, m, lake)
				if int64(len(count)) != total {
					t.Errorf("the objects (%d) hold %d distinct users, want %d", objects, len(count), total)
				}
			}
		})
	}
}

// TestTrustS3DestinationKill (defect 2): an s3 object counts as delivered once it is
// completed. Runs killed (SIGKILL) after they completed some objects, then a run to the
// end: every row is in a completed object, and the objects completed before a kill are
// not written again: the rows written twice are at most one object's worth per kill.
func TestTrustS3DestinationKill(t *testing.T) {
	const (
		files, perFile = 6, 20_000
		objectRows     = 2000
		kills          = 3
		objectsPerKill = 4 // objects completed by a run before it is killed
	)
	m := testutil.StartMinIO(t)
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
		Files: files, RowsPerFile: perFile, RowGroupRows: 5000, Seed: 47})
	total := s.layout.total()
	lake := m.Bucket(t)
	trustConfig(t, s, "", "", trustS3Dest(m, lake, fmt.Sprintf("        max_object_rows: %d\n", objectRows)))

	killed := 0
	for i := 0; i < 3*kills && killed < kills; i++ {
		before := len(m.List(t, lake, "backflow/"))
		p := s.start("sync")
		// Kill once this run completed objectsPerKill objects.
		deadline := time.Now().Add(45 * time.Second)
		ended := false
		for !ended {
			if len(m.List(t, lake, "backflow/")) >= before+objectsPerKill {
				break
			}
			select {
			case <-p.done:
				ended = true
			case <-time.After(10 * time.Millisecond): // polling MinIO's listing
			}
			if time.Now().After(deadline) {
				t.Fatalf("run %d completed no %d objects within 45s\n%s", i+1, objectsPerKill, p.output())
			}
		}
		if ended {
			if e := p.exit(); e.code != 0 {
				t.Fatalf("run %d exited %d before its kill\n%s", i+1, e.code, p.output())
			}
			t.Logf("run %d completed before its kill", i+1)
			break
		}
		if err := p.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		e := p.wait()
		if e.signal == syscall.SIGKILL {
			killed++
		}
		count, objects := trustObjectMessages(t, m, lake)
		t.Logf("run %d: killed after %d new objects were completed (%d in all)", i+1, objects-before, objects)
		// Durable means completed: the checkpoint counts no row that is in no completed
		// object.
		got := map[int64]int{}
		for u, n := range count {
			id, err := strconv.ParseInt(u, 10, 64)
			if err != nil {
				t.Fatalf("an object holds userId %q", u)
			}
			got[id] = n
		}
		marks := crashWatermarks(s.checkpoint(fmt.Sprintf("after run %d", i+1)), "s3")
		crashCheckCovered(t, fmt.Sprintf("after run %d", i+1), &s.layout, marks, got)
	}
	if killed == 0 {
		t.Fatalf("no run was killed in the middle of its work")
	}
	if e, p := s.run("sync"); e.code != 0 {
		t.Fatalf("the final run exited %d\n%s", e.code, p.output())
	}
	count, objects := trustObjectMessages(t, m, lake)
	var missing []string
	deliveries := 0
	for id := int64(0); id < total; id++ {
		n := count[strconv.FormatInt(id, 10)]
		if n == 0 {
			missing = append(missing, strconv.FormatInt(id, 10))
		}
		deliveries += n
	}
	dups := deliveries - len(count)
	t.Logf("%d kills; %d objects hold %d lines for %d rows: %d duplicates (at most %d allowed)", killed, objects, deliveries, total, dups, killed*objectRows)
	if len(missing) > 0 {
		t.Errorf("%d of %d rows are in no completed object: %v…", len(missing), total, missing[:min(len(missing), 10)])
	}
	if dups > killed*objectRows {
		t.Errorf("%d rows were written twice after %d kills, more than one object's worth (%d) per kill: completed objects were written again", dups, killed, objectRows)
	}
}

// ---- defect 3: one run at a time ----

// trustWebhookDest is a webhook destination as YAML list item lines.
func trustWebhookDest(url string, batchSize, inFlight int) string {
	return fmt.Sprintf(`      - type: webhook
        url: %q
        batch_size: %d
        max_in_flight: %d
        timeout: 10s
`, url, batchSize, inFlight)
}

// trustTwoAtOnce starts two syncs of s at once against hook and checks that one ran and
// the other either found the lease held (exit 1 at once, one line naming the holder) or
// ran after it; never is a messageId delivered twice, and every row is delivered. It
// reports whether one of them lost the race for the lease.
func trustTwoAtOnce(t *testing.T, s *crashSpace, hook *crashHook, when string) (lost bool) {
	t.Helper()
	p1, p2 := s.start("sync"), s.start("sync")
	e1, e2 := p1.wait(), p2.wait()
	hook.quiesce(when)
	procs, exits := []*crashProc{p1, p2}, []crashExit{e1, e2}
	for i := range procs {
		winner := 1 - i
		switch {
		case exits[i].code == 0:
		case exits[i].code == 1:
			lost = true
			lines := []string{}
			for _, l := range strings.Split(strings.TrimSpace(procs[i].stderr.String()), "\n") {
				if strings.HasPrefix(l, "backflow: ") {
					lines = append(lines, l)
				}
			}
			if len(lines) != 1 || !trustRunningElsewhere.MatchString(lines[0]) {
				t.Errorf("%s: the run that found the sync running printed %q; want one line matching %q\n%s",
					when, lines, trustRunningElsewhere, procs[i].output())
			} else if pid := trustRunningElsewhere.FindStringSubmatch(lines[0])[1]; pid != strconv.Itoa(procs[winner].cmd.Process.Pid) {
				t.Errorf("%s: the line names pid %s, the run holding the lease is pid %d: %q", when, pid, procs[winner].cmd.Process.Pid, lines[0])
			}
			if exits[i].at.After(exits[winner].at) {
				t.Errorf("%s: the run that found the sync running exited after the one that ran: it did not exit at once", when)
			}
		default:
			t.Errorf("%s: a run exited %d; want 0, or 1 with the sync running elsewhere\n%s", when, exits[i].code, procs[i].output())
		}
	}
	if e1.code != 0 && e2.code != 0 {
		t.Errorf("%s: neither run completed:\n%s\n%s", when, p1.output(), p2.output())
	}
	counts, users := trustMsgCounts(hook)
	twice := 0
	for _, n := range counts {
		if n > 1 {
			twice++
		}
	}
	if twice > 0 {
		t.Errorf("%s: %d messageIds arrived more than once at the webhook: two runs delivered at once (exits %d and %d)", when, twice, e1.code, e2.code)
	}
	if int64(len(users)) != s.layout.total() {
		t.Errorf("%s: %d of %d rows arrived", when, len(users), s.layout.total())
	}
	return lost
}

// TestTrustOneRunAtATime (defect 3): a sync never runs twice at once, with a local state
// directory (an OS file lock) or s3:// state (a lease object).
func TestTrustOneRunAtATime(t *testing.T) {
	const (
		rows      = 3000
		latency   = 30 * time.Millisecond
		batchSize = 50
		inFlight  = 2
	)
	newSpace := func(t *testing.T, stateYAML string) (*crashSpace, *crashHook) {
		s := newCrashSpace(t)
		crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 3, RowsPerFile: rows / 3, Seed: 53})
		hook := newCrashHook(t, func() time.Duration { return latency })
		trustConfig(t, s, stateYAML, "", trustWebhookDest(hook.url(), batchSize, inFlight))
		return s, hook
	}

	t.Run("Local", func(t *testing.T) {
		lost := 0
		for i := 0; i < 20 && !t.Failed(); i++ {
			s, hook := newSpace(t, "")
			if trustTwoAtOnce(t, s, hook, fmt.Sprintf("local pair %d", i+1)) {
				lost++
			}
		}
		t.Logf("one run of the pair found the sync running in %d of 20 pairs", lost)
		if lost == 0 {
			t.Errorf("in 20 pairs of runs started at once, no run ever found the other holding the sync")
		}
	})

	t.Run("S3State", func(t *testing.T) {
		m := testutil.StartMinIO(t)
		state := m.Bucket(t)
		lost := 0
		for i := 0; i < 20 && !t.Failed(); i++ {
			s, hook := newSpace(t, fmt.Sprintf("  url: s3://%s/pair-%d\n", state, i)+trustS3YAML(m, 2))
			if trustTwoAtOnce(t, s, hook, fmt.Sprintf("s3 pair %d", i+1)) {
				lost++
			}
		}
		t.Logf("one run of the pair found the sync running in %d of 20 pairs", lost)
		if lost == 0 {
			t.Errorf("in 20 pairs of runs started at once on s3:// state, no run ever found the other holding the sync")
		}
	})

	// --wait: the second run waits for the lease, then runs, finding nothing new.
	t.Run("Wait", func(t *testing.T) {
		s, hook := newSpace(t, "")
		p1 := s.start("sync")
		trustWaitPosts(t, hook, p1, 2, 30*time.Second)
		report := filepath.Join(t.TempDir(), "report.json")
		p2 := s.start("sync", "--wait", "30s", "--report", report)
		e1, e2 := p1.wait(), p2.wait()
		hook.quiesce("--wait")
		if e1.code != 0 {
			t.Errorf("the first run exited %d\n%s", e1.code, p1.output())
		}
		if e2.code != 0 {
			t.Fatalf("sync --wait 30s exited %d; want 0 after waiting for the other run\n%s", e2.code, p2.output())
		}
		if e2.at.Before(e1.at) {
			t.Errorf("sync --wait ended before the run holding the sync")
		}
		rep := readReport(t, report, result{Args: p2.args, Code: e2.code, Stderr: p2.stderr.String()})
		if rep == nil || rep.Rows.Sent != 0 {
			t.Errorf("sync --wait, run after the other: want nothing sent\n%v", rep)
		}
		counts, users := trustMsgCounts(hook)
		for id, n := range counts {
			if n > 1 {
				t.Errorf("messageId %s arrived %d times", id, n)
				break
			}
		}
		if int64(len(users)) != s.layout.total() {
			t.Errorf("%d of %d rows arrived", len(users), s.layout.total())
		}
	})

	// A killed holder's lease on s3:// state expires after lease_ttl, not before.
	t.Run("LeaseTTL", func(t *testing.T) {
		const ttl = 2 * time.Second
		m := testutil.StartMinIO(t)
		state := m.Bucket(t)
		s, hook := newSpace(t, fmt.Sprintf("  url: s3://%s/ttl\n  lease_ttl: %v\n", state, ttl)+trustS3YAML(m, 2))
		p1 := s.start("sync")
		trustWaitPosts(t, hook, p1, 3, 30*time.Second)
		killedAt := time.Now()
		if err := p1.cmd.Process.Kill(); err != nil {
			t.Fatal(err)
		}
		if e := p1.wait(); e.signal != syscall.SIGKILL {
			t.Fatalf("the first run was not killed (exit %d): it ended before\n%s", e.code, p1.output())
		}
		hook.quiesce("after the kill")

		e2, p2 := s.run("sync")
		if took := time.Since(killedAt); took >= ttl {
			t.Logf("the run after the kill started %v after it, past the TTL: its verdict is not checked", took)
		} else {
			line := ""
			for _, l := range strings.Split(p2.stderr.String(), "\n") {
				if strings.HasPrefix(l, "backflow: ") {
					line = l
				}
			}
			if e2.code != 1 || !trustRunningElsewhere.MatchString(line) {
				t.Errorf("a run started right after the holder was killed: exit %d, %q; want 1 and a line matching %q\n%s",
					e2.code, line, trustRunningElsewhere, p2.output())
			} else if pid := trustRunningElsewhere.FindStringSubmatch(line)[1]; pid != strconv.Itoa(p1.cmd.Process.Pid) {
				t.Errorf("the line names pid %s, the killed holder was pid %d", pid, p1.cmd.Process.Pid)
			}
		}
		hook.quiesce("the run right after the kill")

		// The lease the killed run last renewed expires at most lease_ttl after the kill:
		// wait out that time (a duration of the contract, not a race), then run.
		time.Sleep(time.Until(killedAt.Add(ttl + 500*time.Millisecond)))
		e3, p3 := s.run("sync")
		if e3.code != 0 {
			t.Fatalf("a run started %v after the holder was killed (lease_ttl %v) exited %d\n%s",
				time.Since(killedAt).Round(time.Millisecond), ttl, e3.code, p3.output())
		}
		hook.quiesce("the run after the TTL")
		if _, users := trustMsgCounts(hook); int64(len(users)) != s.layout.total() {
			t.Errorf("after the lease expired and a run completed, %d of %d rows arrived", len(users), s.layout.total())
		}
	})
}

// ---- defect 4: kill -9 at random moments ----

// TestTrustKill9Loop (defect 4): SIGKILLed at 20 random moments against a webhook with
// batches of 25, 2 in flight and 30 ms per request, a run resends on average at most the
// rows of the batches in flight (50); the checkpoint always loads; a final complete run
// leaves every row delivered.
func TestTrustKill9Loop(t *testing.T) {
	const (
		batchSize, inFlight = 25, 2
		latency             = 30 * time.Millisecond
		kills               = 20
		minKill, maxKill    = 150 * time.Millisecond, 1500 * time.Millisecond
		meanBound           = batchSize * inFlight
	)
	seed := crashSeed(t)
	rng := rand.New(rand.NewPCG(seed, 10))
	s := newCrashSpace(t)
	crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 4, RowsPerFile: 1000, RowGroupRows: 500, Seed: seed})
	hook := newCrashHook(t, func() time.Duration { return latency })
	trustConfig(t, s, "", "", trustWebhookDest(hook.url(), batchSize, inFlight)+
		"        retry: { max_attempts: 3, max_backoff: 100ms }\n")

	ledger := newCrashLedger()
	seen, killed, completed := 0, 0, 0
	prev := crashMarks{}
	var resentPerKill []int
	deadline := time.Now().Add(90 * time.Second)
	for i := 0; killed < kills && time.Now().Before(deadline); i++ {
		when := fmt.Sprintf("run %d", i+1)
		delay := minKill + time.Duration(rng.Int64N(int64(maxKill-minKill)))
		p := s.start("sync")
		ok, _, e := p.killAfter(delay)
		hook.quiesce(when)
		marks := crashWatermarks(s.checkpoint("after "+when), "webhook")
		crashCheckMonotonic(t, when, prev, marks)
		posts, _ := hook.snapshot()
		runRows := map[int64]bool{}
		for _, post := range posts[seen:] {
			for j, id := range post.ids {
				ledger.add(t, id, post.msgIDs[j])
				runRows[id] = true
			}
		}
		seen = len(posts)
		crashCheckCovered(t, "after "+when, &s.layout, marks, ledger.count)
		prev = marks
		if !ok {
			if e.code != 0 {
				t.Fatalf("%s exited %d before its kill\n%s", when, e.code, p.output())
			}
			completed++
			crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{
				Files: 1, RowsPerFile: 3000, RowGroupRows: 500, Seed: seed + uint64(completed),
				FirstID: int64(completed) * 1_000_000, Prefix: fmt.Sprintf("more-%02d-", completed)})
			continue
		}
		killed++
		resent := crashResent(&s.layout, marks, runRows)
		resentPerKill = append(resentPerKill, resent)
	}
	if killed < kills {
		t.Errorf("only %d runs were killed in their work within the time budget; want %d", killed, kills)
	}
	e, p := s.run("sync")
	if e.code != 0 {
		t.Fatalf("the final run exited %d\n%s", e.code, p.output())
	}
	hook.quiesce("final run")
	posts, _ := hook.snapshot()
	for _, post := range posts[seen:] {
		for j, id := range post.ids {
			ledger.add(t, id, post.msgIDs[j])
		}
	}
	s.checkpoint("after the final run")
	var missing []int64
	for _, f := range s.layout.files {
		for id := f.first; id < f.first+f.rows; id++ {
			if ledger.count[id] == 0 {
				missing = append(missing, id)
			}
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d of %d rows never arrived: customer_ids %v…", len(missing), s.layout.total(), missing[:min(len(missing), 10)])
	}
	dups := ledger.deliveries() - len(ledger.count)
	maxResent := 0
	for _, r := range resentPerKill {
		maxResent = max(maxResent, r)
	}
	mean := float64(dups) / float64(max(killed, 1))
	t.Logf("%d kills, %d runs completed before their kill; %d rows, %d deliveries: %d duplicates, %.1f per kill on average (bound %d); rows left to resend per kill %v (max %d)",
		killed, completed, s.layout.total(), ledger.deliveries(), dups, mean, meanBound, resentPerKill, maxResent)
	if mean > meanBound {
		t.Errorf("%.1f duplicates per kill on average, over the %d rows of the batches in flight (%d duplicates after %d kills; max rows resent after one kill %d)",
			mean, meanBound, dups, killed, maxResent)
	}
}

// ---- defect 5: a lost reject is never counted ----

// TestTrustLostRejectNotCounted (defect 5): when a refused row cannot be written to the
// rejects file, the run fails naming that file and the checkpoint does not count the row:
// the next run, with the rejects directory writable again, handles it.
func TestTrustLostRejectNotCounted(t *testing.T) {
	const poison = "123"
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", PoisonUsers: []string{poison}})
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 500, Seed: 59})
	w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": srv.URL + "/hook", "batch_size": 50, "retry": fastRetry(2)}))
	// A regular file where the rejects directory goes: it cannot be created (the tests
	// may run as root, whom permissions do not stop).
	if err := os.MkdirAll(w.stateDir(), 0o755); err != nil {
		t.Fatal(err)
	}
	blocker := filepath.Join(w.stateDir(), "rejects")
	if err := os.WriteFile(blocker, []byte("not a directory\n"), 0o644); err != nil {
		t.Fatal(err)
	}
	r, rep := w.sync()
	named := false
	for _, l := range r.errorLines() {
		named = named || strings.Contains(l, "rejects")
	}
	if r.Code != 1 || !named {
		t.Errorf("a run whose rejected row could not be written: exit %d, error lines %q; want exit 1 and a line naming the rejects file\n%s", r.Code, r.errorLines(), r)
	}
	if rep != nil && rep.Status != "failed" {
		t.Errorf("report status %q, want failed\n%s", rep.Status, rep)
	}

	if err := os.Remove(blocker); err != nil {
		t.Fatal(err)
	}
	r, rep = w.sync()
	if rep == nil {
		t.Fatalf("no report\n%s", r)
	}
	handled := srv.Count(poison) > 0 // never: the server refuses it
	if r.Code == 3 {
		for _, l := range w.rejects(rep) {
			if l.Row != nil && *l.Row == 123 {
				handled = true
			}
		}
	}
	if !handled {
		t.Errorf("the run after: the row whose reject was lost is neither in its rejects file nor delivered (exit %d): the checkpoint counted it\n%s\n%s", r.Code, r, rep)
	}
}

// ---- defect 6: an auth refusal on a split half ----

// TestTrustAuthRefusalOnSplitHalf (defect 6): a batch refused with 400 is split; when the
// halves are refused with 401 (the credentials were revoked meanwhile) the destination
// fails, and no row refused with 401 is recorded as rejected: the next run, once the
// server accepts again, delivers every row but the poison one.
func TestTrustAuthRefusalOnSplitHalf(t *testing.T) {
	const poison = "123"
	refusing, accepting := false, false // under the hook's lock
	hook := newTrustHook(t, func(users []string) (int, http.Header) {
		hasPoison := false
		for _, u := range users {
			hasPoison = hasPoison || u == poison
		}
		switch {
		case accepting && hasPoison:
			return http.StatusBadRequest, nil
		case accepting:
			return http.StatusOK, nil
		case refusing:
			return http.StatusUnauthorized, nil
		case hasPoison:
			refusing = true
			return http.StatusBadRequest, nil
		}
		return http.StatusOK, nil
	})
	w := newWorkspace(t)
	w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 500, Seed: 61})
	w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": hook.url(), "batch_size": 50, "retry": fastRetry(2)}))

	r, rep := w.sync()
	if r.Code != 1 {
		t.Errorf("with the halves of a split refused with 401: exit %d, want 1 (the destination fails)\n%s", r.Code, r)
	}
	if rep != nil {
		path := filepath.Join(w.stateDir(), "rejects", rep.Sync, rep.RunID+".jsonl")
		if exists(path) {
			if lines := readRejects(t, path); len(lines) > 0 {
				t.Errorf("the rejects file holds %d rows refused with 401 (e.g. row %d: %s); none may be: they were never judged",
					len(lines), *lines[0].Row, lines[0].Reason)
			}
		}
	}

	hook.mu.Lock()
	accepting = true
	hook.mu.Unlock()
	r, rep = w.sync()
	if r.Code != 3 {
		t.Errorf("the run after: exit %d, want 3 (the poison row rejected)\n%s", r.Code, r)
	}
	got := hook.delivered()
	var missing []string
	for _, id := range idRange(0, 500) {
		if id != poison && got[id] == 0 {
			missing = append(missing, id)
		}
	}
	if len(missing) > 0 {
		t.Errorf("%d rows refused with 401 were never delivered once the server accepted again: %v…", len(missing), missing[:min(len(missing), 10)])
	}
	if rep != nil && r.Code == 3 {
		rej := w.rejects(rep)
		if len(rej) != 1 || *rej[0].Row != 123 {
			t.Errorf("the run after: want the poison row alone in the rejects file, got %+v", rej)
		}
	}
}

// ---- defect 7: stopping ----

// TestTrustStop (defect 7): what SIGINT leaves behind.
func TestTrustStop(t *testing.T) {
	// (a) The interrupted run is in the run history, failed, saying it was interrupted.
	// (Enough rows that what was read before the signal cannot all be delivered within
	// the grace: a run that delivers everything it planned before it exits is ok.)
	t.Run("History", func(t *testing.T) {
		s := newCrashSpace(t)
		crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 20, RowsPerFile: 2000, Seed: 67})
		hook := newCrashHook(t, func() time.Duration { return 100 * time.Millisecond })
		trustConfig(t, s, "", "", trustWebhookDest(hook.url(), 50, 2))
		p := s.start("sync", "--grace", "5s")
		trustWaitPosts(t, hook, p, 3, 30*time.Second)
		if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		if e := p.wait(); e.code != 1 {
			t.Errorf("exit %d after SIGINT, want 1\n%s", e.code, p.output())
		}
		b, err := os.ReadFile(s.path(".backflow/history/users.json"))
		if err != nil {
			t.Fatalf("the interrupted run left no history: %v\n%s", err, p.output())
		}
		var h struct {
			Runs []struct {
				RunID  string `json:"run_id"`
				Status string `json:"status"`
				Error  string `json:"error"`
			} `json:"runs"`
		}
		if err := json.Unmarshal(b, &h); err != nil || len(h.Runs) == 0 {
			t.Fatalf("the history holds no run (%v): %s", err, b)
		}
		if r := h.Runs[0]; r.Status != "failed" || !strings.Contains(strings.ToLower(r.Error), "interrupted") {
			t.Errorf("the newest run of the history: status %q, error %q; want failed and an error saying it was interrupted", r.Status, r.Error)
		}
	})

	// (b) A destination answering 503 with Retry-After forever: after SIGINT no new
	// request starts, and the process exits within --grace.
	t.Run("NoRetryAfterStop", func(t *testing.T) {
		const grace = 2 * time.Second
		hook := newTrustHook(t, func([]string) (int, http.Header) {
			return http.StatusServiceUnavailable, http.Header{"Retry-After": {"1"}}
		})
		s := newCrashSpace(t)
		crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 1, RowsPerFile: 500, Seed: 71})
		trustConfig(t, s, "", "", trustWebhookDest(hook.url(), 50, 2)+
			"        retry: { max_attempts: 1000, max_backoff: 2s }\n")
		p := s.start("sync", "--grace", grace.String())
		ctx, cancel := context.WithTimeout(context.Background(), 30*time.Second)
		defer cancel()
		if err := hook.waitRequests(ctx, 3); err != nil { // retries under way
			t.Fatalf("%v\n%s", err, p.output())
		}
		stopped := time.Now()
		if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
			t.Fatal(err)
		}
		e := p.wait()
		took := e.at.Sub(stopped)
		// A request the client sent just before the signal may reach the handler a little
		// after it: that one was in flight.
		const transit = 50 * time.Millisecond
		var late []time.Duration
		for _, r := range hook.snapshot() {
			if d := r.received.Sub(stopped); d > transit {
				late = append(late, d.Round(time.Millisecond))
			}
		}
		t.Logf("exit %d %v after SIGINT; %d requests in all, %d started after the stop (at %v)", e.code, took.Round(time.Millisecond), len(hook.snapshot()), len(late), late)
		if len(late) > 0 {
			t.Errorf("%d requests reached the server after the stop began (at %v after SIGINT): retries went on", len(late), late)
		}
		if took > grace+500*time.Millisecond {
			t.Errorf("the process exited %v after SIGINT, over the --grace of %v", took.Round(time.Millisecond), grace)
		}
		if e.code != 1 {
			t.Errorf("exit %d, want 1\n%s", e.code, p.output())
		}
	})

	// (c) A file destination with a large batch alongside a slow webhook: what the report
	// counts as delivered to the file is exactly what the file holds, and not nothing. In
	// both orders of the destinations in the config.
	for _, fileFirst := range []bool{true, false} {
		name := "FileCountsWhatItWrote/WebhookFirst"
		if fileFirst {
			name = "FileCountsWhatItWrote/FileFirst"
		}
		t.Run(name, func(t *testing.T) {
			s := newCrashSpace(t)
			crashWriteExport(t, &s.layout, s.path("data"), exampledata.Options{Files: 1, RowsPerFile: 12000, Seed: 73})
			hook := newCrashHook(t, func() time.Duration { return 150 * time.Millisecond })
			out := s.path("out/users.jsonl")
			file := fmt.Sprintf(`      - type: file
        name: file
        path: %q
        batch_size: 5000
`, out)
			webhook := trustWebhookDest(hook.url(), 50, 1)
			if fileFirst {
				trustConfig(t, s, "", "", file+webhook)
			} else {
				trustConfig(t, s, "", "", webhook+file)
			}
			report := filepath.Join(t.TempDir(), "report.json")
			p := s.start("sync", "--grace", "5s", "--report", report)
			trustWaitPosts(t, hook, p, 5, 30*time.Second)
			if err := p.cmd.Process.Signal(syscall.SIGINT); err != nil {
				t.Fatal(err)
			}
			e := p.wait()
			rep := readReport(t, report, result{Args: p.args, Code: e.code, Stderr: p.stderr.String()})
			if rep == nil {
				t.Fatalf("no report after SIGINT\n%s", p.output())
			}
			lines := int64(len(readMessages(t, out)))
			t.Logf("exit %d; the file holds %d lines, the report counts %d delivered to it, %d to the webhook", e.code, lines, rep.delivered("file"), rep.delivered("webhook"))
			if rep.delivered("file") != lines {
				t.Errorf("the report counts %d rows delivered to the file, which holds %d lines\n%s", rep.delivered("file"), lines, rep)
			}
			if rep.delivered("file") == 0 {
				t.Errorf("nothing delivered to the file destination before the stop\n%s", rep)
			}
		})
	}
}

// ---- defect 8: check proves the state writable ----

// TestTrustCheckStateWritable (defect 8): `backflow check` fails when the state cannot be
// written, and a sync whose --report cannot be written stops before it reads or sends.
func TestTrustCheckStateWritable(t *testing.T) {
	check := func(t *testing.T, block func(w *workspace)) {
		w := newWorkspace(t)
		w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 100, Seed: 79})
		w.writeConfig(usersConfig(fileDest("out/users.jsonl")))
		block(w)
		r := w.run("check")
		t.Logf("%s", r)
		if r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, w.stateDir()) {
			t.Errorf("check with a state directory that cannot be written: exit %d; want non-zero and a message naming %s (output above)", r.Code, w.stateDir())
		}
	}
	// A regular file where the checkpoints directory goes: nothing can be saved.
	t.Run("CheckpointsIsAFile", func(t *testing.T) {
		check(t, func(w *workspace) {
			if err := os.MkdirAll(w.stateDir(), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(filepath.Join(w.stateDir(), "checkpoints"), []byte("x"), 0o644); err != nil {
				t.Fatal(err)
			}
		})
	})
	// A state directory that reads as empty (no checkpoint yet) but where nothing can be
	// created: a link into /proc, where mkdir fails even for root. Only writing tells.
	t.Run("ReadsButCannotWrite", func(t *testing.T) {
		if _, err := os.Stat("/proc/self"); err != nil {
			t.Skip("no /proc")
		}
		check(t, func(w *workspace) {
			if err := os.Symlink("/proc/backflow-no-such-state", w.stateDir()); err != nil {
				t.Fatal(err)
			}
		})
	})

	t.Run("ReportNotWritable", func(t *testing.T) {
		srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
		w := newWorkspace(t)
		w.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 100, Seed: 83})
		w.writeConfig(usersConfig(map[string]any{"type": "webhook", "url": srv.URL + "/hook"}))
		r := w.run("sync", "--report", "/no/such/dir/report.json")
		if r.Code != 2 {
			t.Errorf("sync --report into a missing directory: exit %d, want 2\n%s", r.Code, r)
		}
		if n := len(srv.Batches()); n > 0 {
			t.Errorf("the webhook received %d requests: the run went ahead although its report cannot be written", n)
		}
		if exists(w.stateDir()) {
			t.Errorf("the run wrote state although its report cannot be written")
		}
	})
}
