package schedule

import (
	"context"
	"encoding/json"
	"os"
	"slices"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/notify"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// replica is one of two Servers sharing a local state directory, as two replicas share
// an s3:// state: each opens the directory itself, and its runs take the sync's lease
// through the server's RunStore, as the pipeline does.
type replica struct {
	*testServer
	store state.Store
	logs  *logRecorder
	hold  chan chan struct{} // a run receives from it, when something is sent, a channel to wait on
}

func newReplica(t *testing.T, dir string, n *notify.Notifier) *replica {
	t.Helper()
	store, err := state.Open(context.Background(), config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	return newReplicaOn(t, store, n)
}

func newReplicaOn(t *testing.T, store state.Store, n *notify.Notifier) *replica {
	t.Helper()
	r := &replica{store: store, logs: newLogRecorder(), hold: make(chan chan struct{}, 1)}
	host, _ := os.Hostname()
	run := func(ctx context.Context, sync string, _ bool) (*pipeline.Report, error) {
		rep := okReport(ctx, sync)
		lease, err := r.RunStore().Acquire(ctx, sync, state.Holder{Host: host, PID: os.Getpid(), RunID: RunID(ctx), Since: time.Now()}, time.Minute)
		if err != nil {
			rep.Status, rep.Error = pipeline.StatusFailed, err.Error()
			return rep, err
		}
		defer lease.Release(context.Background())
		select {
		case c := <-r.hold:
			<-c
		default:
		}
		return rep, nil
	}
	r.testServer = startServer(t, Options{Syncs: []config.Sync{{Name: "users"}}, Run: run, Store: store,
		Notifier: n, Logger: r.logs.logger(), HistoryRefresh: time.Nanosecond})
	return r
}

// schedule starts the run of slot as the schedule loop does.
func (r *replica) schedule(t *testing.T, slot time.Time) {
	t.Helper()
	if _, _, err := r.trigger(r.byName["users"], false, TriggerSchedule, slot); err != nil {
		t.Fatal(err)
	}
}

// waitIdle waits until the replica runs nothing and the sync's lease is free.
func (r *replica) waitIdle(t *testing.T) {
	t.Helper()
	deadline := time.Now().Add(wait)
	for time.Now().Before(deadline) {
		h, err := r.store.(state.HolderReader).Holder(context.Background(), "users")
		if err != nil {
			t.Fatal(err)
		}
		if h == nil && !r.Status()[0].Running {
			return
		}
		time.Sleep(5 * time.Millisecond)
	}
	t.Fatalf("the sync is still running or its lease held after %s", wait)
}

func logContains(s string) func(map[string]any) bool {
	return func(m map[string]any) bool {
		msg, _ := m["msg"].(string)
		return strings.Contains(msg, s)
	}
}

// Two replicas: a slot that one ran and released is not run again by the other, even
// though it takes the lease; a run whose lease another replica holds is not recorded;
// neither notifies anything; every run that did run is in the shared history with its
// slot, and each replica shows it and the other's run in progress.
func TestReplicasRunEachSlotOnce(t *testing.T) {
	t.Parallel()
	hook, events := eventReceiver(t, nil)
	dir := t.TempDir()
	store, err := state.Open(context.Background(), config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	n := notify.New(notify.Options{Config: notifyConfig(hook.URL, "started", "succeeded", "failed"), History: store})
	a, b := newReplica(t, dir, n), newReplica(t, dir, n)
	slot := time.Date(2025, 1, 1, 0, 0, 10, 0, time.UTC)

	// A runs slot T; B wakes up late for the same T, once A released the lease.
	a.schedule(t, slot)
	a.waitIdle(t)
	b.schedule(t, slot)
	b.logs.waitFor(t, "that the slot ran elsewhere", logContains("sync users: the run of 2025-01-01T00:00:10Z ran elsewhere (run "))
	b.waitIdle(t)

	// B runs T+1s.
	b.schedule(t, slot.Add(time.Second))
	b.waitIdle(t)

	// A runs T+2s and holds it; B's attempt finds the lease held.
	release := make(chan struct{})
	a.hold <- release
	a.schedule(t, slot.Add(2*time.Second))
	deadline := time.Now().Add(wait)
	for {
		if h, err := b.store.(state.HolderReader).Holder(context.Background(), "users"); err != nil || h != nil {
			break
		}
		if time.Now().After(deadline) {
			_, logs := a.logs.all()
			t.Fatalf("A's run did not take the lease within %s\n%s", wait, logs)
		}
		time.Sleep(5 * time.Millisecond)
	}
	b.schedule(t, slot.Add(2*time.Second))
	b.logs.waitFor(t, "that the run goes on elsewhere", logContains("sync users: the run of 2025-01-01T00:00:12Z runs elsewhere (host "))
	// B's GET /syncs shows A's run from the lease.
	var list []struct {
		Running          bool          `json:"running"`
		RunningElsewhere bool          `json:"running_elsewhere"`
		Lease            *state.Holder `json:"lease"`
	}
	do(t, "GET", b.url+"/syncs").json(t, &list)
	if len(list) != 1 || list[0].Running || !list[0].RunningElsewhere || list[0].Lease == nil || list[0].Lease.RunID != a.Status()[0].Current.RunID {
		t.Errorf("B's GET /syncs while A runs: %+v; want running_elsewhere with A's run in lease", list)
	}
	// And the status page, home and the sync's own, with A's host and run.
	for _, path := range []string{"/", "/ui/syncs/users"} {
		page := do(t, "GET", b.url+path)
		if body := string(page.body); page.code != 200 || !strings.Contains(body, "on another replica") ||
			!strings.Contains(body, a.Status()[0].Current.RunID) {
			t.Errorf("B's GET %s while A runs: %d; want the run on another replica, with its run id:\n%s", path, page.code, body)
		}
	}
	close(release)
	a.waitIdle(t)

	// The shared history: three runs, one per slot, newest first; both replicas list it.
	raw, err := store.History(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	var slots []string
	for _, r := range raw {
		var rep pipeline.Report
		if err := json.Unmarshal(r, &rep); err != nil {
			t.Fatal(err)
		}
		slots = append(slots, rep.ScheduledFor.Format("15:04:05"))
	}
	if want := []string{"00:00:12", "00:00:11", "00:00:10"}; !slices.Equal(slots, want) {
		t.Errorf("history slots %v, want %v", slots, want)
	}
	for name, r := range map[string]*replica{"A": a, "B": b} {
		r.loadHistory(context.Background())
		if got := len(r.Status()[0].Runs); got != 3 {
			t.Errorf("replica %s lists %d runs, want the 3 of the shared history", name, got)
		}
	}

	// Only the three runs that ran notified, each started then succeeded.
	var got []string
	timeout := time.After(wait)
	for len(got) < 6 {
		select {
		case e := <-events:
			got = append(got, e)
		case <-timeout:
			t.Fatalf("events %q, want 6", got)
		}
	}
	for i := 0; i < len(got); i += 2 {
		if got[i] != "run.started" || got[i+1] != "run.succeeded" {
			t.Fatalf("events %q, want started and succeeded three times", got)
		}
	}
	select {
	case e := <-events:
		t.Errorf("a seventh event %q: a run that did not run notified", e)
	case <-time.After(100 * time.Millisecond):
	}
	if v := value(t, scrape(t, b.url), "backflow_runs_elsewhere_total", "sync", "users"); v != 2 {
		t.Errorf("B's runs_elsewhere_total = %v, want 2", v)
	}
}

func TestSlotTaken(t *testing.T) {
	t.Parallel()
	rep := func(id, slot string) []byte {
		return []byte(`{"run_id":"` + id + `","scheduled_for":"` + slot + `"}`)
	}
	hist := [][]byte{[]byte(`{"run_id":"api"}`), rep("r2", "2025-01-01T00:00:02Z"), rep("r1", "2025-01-01T00:00:01Z"), []byte(`not json`)}
	for _, c := range []struct {
		slot string
		ran  bool
		id   string
	}{
		{"2025-01-01T00:00:01Z", true, "r2"}, // a later slot ran: an older one must not run after it
		{"2025-01-01T00:00:02Z", true, "r2"},
		{"2025-01-01T00:00:03Z", false, ""},
	} {
		slot, _ := time.Parse(time.RFC3339, c.slot)
		if ran, id := slotTaken(hist, slot); ran != c.ran || id != c.id {
			t.Errorf("slotTaken(%s) = %v, %q; want %v, %q", c.slot, ran, id, c.ran, c.id)
		}
	}
}

// slowAppend is a store whose AppendHistory waits until the test lets it go.
type slowAppend struct {
	state.Store
	entered chan struct{}
	proceed chan struct{}
}

func (s slowAppend) Holder(ctx context.Context, sync string) (*state.Holder, error) {
	return s.Store.(state.HolderReader).Holder(ctx, sync)
}

func (s slowAppend) AppendHistory(ctx context.Context, sync string, report []byte, keep int) error {
	s.entered <- struct{}{}
	<-s.proceed
	return s.Store.AppendHistory(ctx, sync, report, keep)
}

// A run of the same process that starts while the previous run's report is still being
// stored (the previous run still holds the lease) waits for it: it runs, it is not
// taken for another replica's.
func TestNextRunWaitsForPreviousLease(t *testing.T) {
	t.Parallel()
	store, err := state.Open(context.Background(), config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	slow := slowAppend{Store: store, entered: make(chan struct{}, 2), proceed: make(chan struct{})}
	r := newReplicaOn(t, slow, nil)
	first, _, err := r.Trigger("users", false)
	if err != nil {
		t.Fatal(err)
	}
	<-slow.entered // the first run returned; its report is being stored
	second, _, err := r.Trigger("users", false)
	if err != nil {
		t.Fatalf("a second run once the first returned: %v", err)
	}
	close(slow.proceed)
	select {
	case <-slow.entered: // the second run's report
	case <-time.After(wait):
		_, raw := r.logs.all()
		t.Fatalf("the second run recorded nothing:\n%s", raw)
	}
	r.waitIdle(t)
	lines, raw := r.logs.all()
	for _, l := range lines {
		if msg, _ := l["msg"].(string); strings.Contains(msg, "elsewhere") {
			t.Fatalf("a run of this process was taken for another's:\n%s", raw)
		}
	}
	hist, err := store.History(context.Background(), "users")
	if err != nil {
		t.Fatal(err)
	}
	var ids []string
	for _, b := range hist {
		var rep pipeline.Report
		_ = json.Unmarshal(b, &rep)
		ids = append(ids, rep.RunID)
	}
	if want := []string{second, first}; !slices.Equal(ids, want) {
		t.Fatalf("history %v, want %v", ids, want)
	}
}
