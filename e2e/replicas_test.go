package e2e

// Black-box tests of several `backflow serve` replicas over one s3:// state (MinIO): each
// due run runs on exactly one replica, never two at once, every replica shows the same
// history, and a replica killed in the middle of a run is replaced once its lease
// expires.

import (
	"encoding/json"
	"fmt"
	"net/http"
	"net/http/httptest"
	"slices"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// replicaRun is what these tests read of a run report listed by GET /syncs.
type replicaRun struct {
	RunID        string    `json:"run_id"`
	Status       string    `json:"status"`
	Error        string    `json:"error"`
	StartedAt    time.Time `json:"started_at"`
	DurationMS   int64     `json:"duration_ms"`
	ScheduledFor time.Time `json:"scheduled_for"`
	Rows         struct {
		Sent int64 `json:"sent"`
	} `json:"rows"`
}

func (r replicaRun) end() time.Time {
	return r.StartedAt.Add(time.Duration(r.DurationMS) * time.Millisecond)
}

// replicaSync is one element of GET /syncs with the fields replicas add.
type replicaSync struct {
	Name  string       `json:"name"`
	Runs  []replicaRun `json:"runs"`
	Lease *struct {
		Host  string `json:"host"`
		PID   int    `json:"pid"`
		RunID string `json:"run_id"`
	} `json:"lease"`
	RunningElsewhere bool `json:"running_elsewhere"`
}

// replicaUsers GETs /syncs and returns the sync "users".
func (s *serveProc) replicaUsers() replicaSync {
	s.t.Helper()
	code, b := s.do(http.MethodGet, "/syncs")
	var list []replicaSync
	if code != http.StatusOK || json.Unmarshal(b, &list) != nil {
		s.fatalf("GET /syncs: %d %s; want 200 and a JSON array", code, b)
	}
	for _, ss := range list {
		if ss.Name == "users" {
			return ss
		}
	}
	s.fatalf("GET /syncs does not list users: %s", b)
	return replicaSync{}
}

// slowHook is a webhook receiver that answers every POST after a delay (a destination
// with some latency, so that runs last long enough to meet each other), recording every
// message it acknowledged.
type slowHook struct {
	url   string
	delay time.Duration

	mu   sync.Mutex
	got  []message
	busy int // POSTs being answered now
	most int // the most POSTs answered at once
}

func newSlowHook(t *testing.T, delay time.Duration) *slowHook {
	h := &slowHook{delay: delay}
	srv := httptest.NewServer(h)
	h.url = srv.URL + "/hook"
	t.Cleanup(srv.Close)
	return h
}

func (h *slowHook) ServeHTTP(w http.ResponseWriter, r *http.Request) {
	var body struct {
		Batch []json.RawMessage `json:"batch"`
	}
	if r.Method != http.MethodPost || json.NewDecoder(r.Body).Decode(&body) != nil {
		w.WriteHeader(http.StatusBadRequest)
		return
	}
	h.mu.Lock()
	h.busy++
	h.most = max(h.most, h.busy)
	h.mu.Unlock()
	defer func() {
		h.mu.Lock()
		h.busy--
		h.mu.Unlock()
	}()
	// The latency of a remote endpoint, not a wait for anything in the test.
	select {
	case <-time.After(h.delay):
	case <-r.Context().Done():
		return
	}
	h.mu.Lock()
	for _, raw := range body.Batch {
		var m message
		_ = json.Unmarshal(raw, &m)
		m.line = raw
		h.got = append(h.got, m)
	}
	h.mu.Unlock()
	w.WriteHeader(http.StatusOK)
}

func (h *slowHook) snapshot() (msgs []message, most int) {
	h.mu.Lock()
	defer h.mu.Unlock()
	return slices.Clone(h.got), h.most
}

// replicaWorkspace is a workspace whose sync "users" reads data/ (shared by every
// replica, as a bucket would be), keeps its state in s3://<bucket>/replicas with
// lease_ttl 2s, runs every second, and delivers to dest. It returns the state bucket.
func replicaWorkspace(t *testing.T, m *testutil.MinIO, dest map[string]any) (*workspace, string) {
	w := newWorkspace(t)
	w.env = []string{"E2E_ACCESS_KEY=" + m.AccessKey, "E2E_SECRET_KEY=" + m.SecretKey}
	c := usersConfig(dest)
	bucket := m.Bucket(t)
	c.State = with(s3Settings(m), "url", "s3://"+bucket+"/replicas", "lease_ttl", "2s")
	w.writeConfigText(serveYAML(t, c, map[string]any{"history": 500},
		map[string]map[string]any{"users": {"every": "1s"}}))
	return w, bucket
}

// storedRuns reads the run history of users from the state bucket, newest first.
func storedRuns(t *testing.T, m *testutil.MinIO, bucket string) []replicaRun {
	t.Helper()
	var h struct {
		Runs []replicaRun `json:"runs"`
	}
	if err := json.Unmarshal(m.Get(t, bucket, "replicas/history/users.json"), &h); err != nil {
		t.Fatalf("the stored run history: %v", err)
	}
	return h.Runs
}

// TestServeReplicas: three replicas of serve over one s3:// state, a sync every second
// to a webhook with latency, new files arriving now and then, for about 16 s. Every
// slot that ran, ran on one replica only; no two runs overlapped; every row reached
// the webhook exactly once; every replica lists the same history; replicas said in
// their logs that runs ran elsewhere.
func TestServeReplicas(t *testing.T) {
	t.Parallel()
	m := testutil.StartMinIO(t)
	hook := newSlowHook(t, 100*time.Millisecond)
	dest := webhookDest(hook.url)
	dest["batch_size"] = 20
	dest["max_in_flight"] = 1
	w, bucket := replicaWorkspace(t, m, dest)

	const rowsPerFile = 60 // 3 POSTs of 20: a run that sends a file lasts ~300 ms
	var want []string
	next := int64(0)
	addFile := func() {
		w.addUsers(exampledata.Options{Files: 1, RowsPerFile: rowsPerFile, Seed: uint64(next) + 7, FirstID: next,
			Prefix: fmt.Sprintf("part-%05d-", next)})
		want = append(want, idRange(next, rowsPerFile)...)
		next += rowsPerFile
	}
	addFile()

	replicas := []*serveProc{w.startServe(t), w.startServe(t), w.startServe(t)}

	// New files now and then while the replicas run: the workload, not a wait.
	const length = 16 * time.Second
	end := time.Now().Add(length)
	tick := time.NewTicker(1300 * time.Millisecond)
	for time.Now().Before(end) {
		<-tick.C
		addFile()
	}
	tick.Stop()
	slices.Sort(want)

	// Every row reaches the webhook (the last file within a few slots).
	deadline := time.Now().Add(serveWait)
	for {
		msgs, _ := hook.snapshot()
		if len(msgs) >= len(want) || time.Now().After(deadline) {
			break
		}
		time.Sleep(servePoll)
	}

	// Every replica lists the same history: compared up to the newest run every one of
	// them has read (runs go on meanwhile, and a replica reads the store at most every
	// half second).
	var lists [][]replicaRun
	var agreed bool
	deadline = time.Now().Add(serveWait)
	for !agreed && time.Now().Before(deadline) {
		lists = lists[:0]
		for _, r := range replicas {
			lists = append(lists, r.replicaUsers().Runs)
		}
		agreed = sameHistory(lists)
		if !agreed {
			time.Sleep(servePoll)
		}
	}
	if !agreed {
		for i, l := range lists {
			t.Logf("replica %d lists %d runs: %v", i, len(l), runIDsOf(l))
		}
		t.Errorf("the replicas do not list the same history")
	}

	for _, r := range replicas {
		r.stop(serveWait)
	}
	// The history as the replicas left it, every run included.
	runs := storedRuns(t, m, bucket)
	if len(runs) < int(length/time.Second)/2 {
		t.Fatalf("%d runs in %s of `every: 1s`; want at least one every two seconds", len(runs), length)
	}
	// Every slot that ran, ran once; runs never overlapped.
	seen := map[time.Time]string{}
	for _, r := range runs {
		if r.Status != "ok" {
			t.Errorf("run %s: status %s (%s), want ok", r.RunID, r.Status, r.Error)
		}
		if r.ScheduledFor.IsZero() {
			t.Errorf("run %s has no scheduled_for", r.RunID)
			continue
		}
		if r.ScheduledFor.Sub(time.Unix(0, 0))%time.Second != 0 {
			t.Errorf("run %s: scheduled_for %s is not on the epoch-anchored 1s grid", r.RunID, r.ScheduledFor)
		}
		if other, dup := seen[r.ScheduledFor]; dup {
			t.Errorf("the run of %s ran twice: runs %s and %s", r.ScheduledFor.Format(time.RFC3339), other, r.RunID)
		}
		seen[r.ScheduledFor] = r.RunID
	}
	byStart := slices.Clone(runs)
	slices.SortFunc(byStart, func(a, b replicaRun) int { return a.StartedAt.Compare(b.StartedAt) })
	for i := 1; i < len(byStart); i++ {
		a, b := byStart[i-1], byStart[i]
		if b.StartedAt.Before(a.end()) {
			t.Errorf("runs %s (%s + %dms) and %s (from %s) overlap", a.RunID, a.StartedAt.Format(time.StampMilli),
				a.DurationMS, b.RunID, b.StartedAt.Format(time.StampMilli))
		}
	}

	msgs, most := hook.snapshot()
	checkExactlyOnce(t, "the webhook", msgs, want)
	if most > 1 {
		t.Errorf("the webhook answered %d POSTs at once; one run with max_in_flight 1 sends one at a time", most)
	}

	// Each replica logged its own runs, and said which ran elsewhere; together they
	// started exactly the runs of the history (the state being new).
	started, elsewhere, ranOn := 0, 0, 0
	for i, r := range replicas {
		out := r.output()
		n := strings.Count(out, "run started")
		started += n
		if n > 0 {
			ranOn++
		}
		elsewhere += strings.Count(out, "runs elsewhere") + strings.Count(out, "ran elsewhere")
		if strings.Contains(out, "run failed") || strings.Contains(out, "run.failed") {
			t.Errorf("replica %d logged a failed run:\n%s", i, out)
		}
	}
	if started != len(runs) {
		t.Errorf("the replicas started %d runs; the history lists %d", started, len(runs))
	}
	if elsewhere == 0 {
		t.Errorf("no replica logged a run that ran elsewhere")
	}
	t.Logf("%d runs on %d of %d replicas, %d slots found running or ran elsewhere, %d messages",
		len(runs), ranOn, len(replicas), elsewhere, len(msgs))
}

// sameHistory reports whether the lists (newest first) agree on every run up to the
// oldest of their newest runs, and cover at least one.
func sameHistory(lists [][]replicaRun) bool {
	var cutoff time.Time
	for i, l := range lists {
		if len(l) == 0 {
			return false
		}
		if i == 0 || l[0].StartedAt.Before(cutoff) {
			cutoff = l[0].StartedAt
		}
	}
	var first []string
	for i, l := range lists {
		var ids []string
		for _, r := range l {
			if !r.StartedAt.After(cutoff) {
				ids = append(ids, r.RunID)
			}
		}
		if i == 0 {
			first = ids
		} else if !slices.Equal(ids, first) {
			return false
		}
	}
	return len(first) > 0
}

func runIDsOf(runs []replicaRun) []string {
	out := make([]string, len(runs))
	for i, r := range runs {
		out[i] = r.RunID
	}
	return out
}

// TestServeReplicaKilled: two replicas; the one running the sync is killed (SIGKILL)
// while the webhook holds its POSTs. Until its lease expires (lease_ttl 2s) the other
// replica finds the run going elsewhere and records nothing; then it takes the sync,
// and every row arrives.
func TestServeReplicaKilled(t *testing.T) {
	t.Parallel()
	m := testutil.StartMinIO(t)
	hook := newHeldHook(t)
	w, _ := replicaWorkspace(t, m, heldWebhookDest(hook.url))
	w.addUsers(exampledata.Options{Files: 2, RowsPerFile: 100, Seed: 81})
	want := idRange(0, 200)

	replicas := []*serveProc{w.startServe(t), w.startServe(t)}
	// A run is sending, held by the webhook: find which replica holds the lease.
	hook.waitArrivals(replicas[0], 1)
	var victim, survivor *serveProc
	deadline := time.Now().Add(serveWait)
	for victim == nil && time.Now().Before(deadline) {
		for i, r := range replicas {
			ss := r.replicaUsers()
			if ss.Lease == nil {
				continue
			}
			for j, c := range replicas {
				if c.p.cmd.Process.Pid == ss.Lease.PID {
					victim, survivor = c, replicas[1-j]
				}
			}
			// The replica not running it shows that it runs elsewhere.
			if victim != nil && r == survivor && !ss.RunningElsewhere {
				t.Errorf("replica %d: GET /syncs shows the lease of pid %d without running_elsewhere", i, ss.Lease.PID)
			}
		}
		if victim == nil {
			time.Sleep(servePoll)
		}
	}
	if victim == nil {
		t.Fatalf("no replica holds the lease of users while its run is held by the webhook")
	}
	if len(survivor.replicaUsers().Runs) != 0 {
		t.Fatalf("the survivor lists a run before any ended: %+v", survivor.replicaUsers().Runs)
	}

	if err := victim.p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	killed := time.Now()
	<-victim.done
	hook.release()

	// The survivor takes the sync once the lease expired — not before: it was renewed
	// at most ttl/3 before the kill — and sends every row.
	ss := survivor.waitSync("users", "a run on the surviving replica", func(ss serveSync) bool { return len(ss.Runs) >= 1 })
	var first replicaRun
	if err := json.Unmarshal(ss.Runs[len(ss.Runs)-1], &first); err != nil {
		t.Fatal(err)
	}
	const ttl = 2 * time.Second
	if first.StartedAt.Before(killed.Add(ttl / 2)) {
		t.Errorf("the survivor's run started %s after the kill, before the killed holder's lease (ttl %s) could expire",
			first.StartedAt.Sub(killed), ttl)
	}
	if first.Status != "ok" || first.ScheduledFor.IsZero() {
		t.Errorf("the survivor's first run: %+v; want ok, with its slot", first)
	}
	t.Logf("the survivor ran the sync %s after the kill", first.StartedAt.Sub(killed).Round(time.Millisecond))

	deadline = time.Now().Add(serveWait)
	for {
		acked, _, _ := hook.snapshot()
		ids := userIDs(acked)
		ids = slices.Compact(ids)
		if slices.Equal(ids, want) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the webhook has %d distinct users of %d", len(ids), len(want))
		}
		time.Sleep(servePoll)
	}
	survivor.stop(serveWait)
	out := survivor.output()
	if !strings.Contains(out, "runs elsewhere") {
		t.Errorf("the survivor never logged that the run went on elsewhere:\n%s", out)
	}
	if strings.Contains(out, "run failed") {
		t.Errorf("the survivor recorded a failed run while the lease was held elsewhere:\n%s", out)
	}
}
