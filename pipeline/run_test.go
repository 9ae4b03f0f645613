package pipeline

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/webhook"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/state"
)

// fakeDest records what it acknowledged; its behaviour is set per test.
type fakeDest struct {
	mu       sync.Mutex
	got      map[string]int // userId -> times acknowledged
	batches  int
	failFrom int                          // fail every Write from this batch on (0: never)
	refuse   func(m *mapper.Message) bool // refuse these messages for good
	commit   func(context.Context) error  // non-nil: the fake is Deferred; Flush calls it
	accepted []string                     // userIds accepted, not yet durable
	durable  []func()                     // durable funcs of the accepted writes
}

func newFakeDest() *fakeDest { return &fakeDest{got: map[string]int{}} }

func (d *fakeDest) Write(ctx context.Context, msgs []mapper.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.batches++
	if d.failFrom > 0 && d.batches >= d.failFrom {
		return errors.New("destination is down")
	}
	var failed []destinations.Failure
	for i := range msgs {
		if d.refuse != nil && d.refuse(&msgs[i]) {
			failed = append(failed, destinations.Failure{Index: i, Err: errors.New("400 bad message")})
			continue
		}
		if d.commit != nil {
			d.accepted = append(d.accepted, msgs[i].UserID)
		} else {
			d.got[msgs[i].UserID]++
		}
	}
	if len(failed) > 0 {
		return &destinations.BatchError{Failed: failed}
	}
	return nil
}

func (d *fakeDest) Close(context.Context) error { return nil }

// committingFake is a destinations.Deferred fake: what it accepts becomes durable on
// Flush, when commit returns nil (a failed commit loses what was accepted).
type committingFake struct{ *fakeDest }

func (d committingFake) WriteDeferred(ctx context.Context, msgs []mapper.Message, durable func()) error {
	err := d.fakeDest.Write(ctx, msgs)
	var be *destinations.BatchError
	if err == nil || errors.As(err, &be) {
		d.mu.Lock()
		d.durable = append(d.durable, durable)
		d.mu.Unlock()
	}
	return err
}

func (d committingFake) DurableUnit() int { return 0 }

func (d committingFake) Flush(ctx context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if err := d.commit(ctx); err != nil {
		d.accepted, d.durable = nil, nil
		return err
	}
	for _, id := range d.accepted {
		d.got[id]++
	}
	for _, f := range d.durable {
		f()
	}
	d.accepted, d.durable = nil, nil
	return nil
}

func (d *fakeDest) total() (distinct, all int) {
	d.mu.Lock()
	defer d.mu.Unlock()
	for _, n := range d.got {
		all += n
	}
	return len(d.got), all
}

type harness struct {
	t     *testing.T
	cfg   *config.Config
	store state.Store
	reg   *destinations.Registry
	dests map[string]*fakeDest
}

// newHarness writes files×rows example rows and a config whose destinations are the
// given fakes, registered under the webhook type (their URLs are never used).
func newHarness(t *testing.T, files int, rows int64, dests map[string]*fakeDest) *harness {
	t.Helper()
	dir := t.TempDir()
	if _, err := exampledata.Write(filepath.Join(dir, "data"), exampledata.Options{Files: files, RowsPerFile: rows, RowGroupRows: 300, Seed: 7}); err != nil {
		t.Fatal(err)
	}
	yaml := "syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n    destinations:\n"
	for name := range dests {
		yaml += fmt.Sprintf("      - {type: webhook, name: %s, url: \"http://127.0.0.1:1/\", batch_size: 100, max_in_flight: 1, retry: {max_attempts: 1}}\n", name)
	}
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	store, err := state.Open(context.Background(), cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	reg := destinations.NewRegistry()
	reg.Register(fakeWebhook(func(_ context.Context, c config.Destination, _ destinations.Env) (destinations.Destination, error) {
		d := dests[c.Name]
		if d.commit != nil {
			return committingFake{d}, nil
		}
		return d, nil
	}))
	return &harness{t: t, cfg: cfg, store: store, reg: reg, dests: dests}
}

func (h *harness) run() (*Report, error) {
	h.t.Helper()
	return Run(context.Background(), Options{
		Config: h.cfg, Sync: &h.cfg.Syncs[0], Registry: h.reg, Store: h.store, Workers: 2,
	})
}

func (h *harness) checkpoint() *state.Checkpoint {
	h.t.Helper()
	cp, err := h.store.Load(context.Background(), "users")
	if err != nil || cp == nil {
		h.t.Fatalf("loading checkpoint: %v (nil: %v)", err, cp == nil)
	}
	return cp
}

func TestFailedDestinationResumesAloneWithoutLoss(t *testing.T) {
	good, bad := newFakeDest(), newFakeDest()
	bad.failFrom = 5
	h := newHarness(t, 2, 1000, map[string]*fakeDest{"good": good, "bad": bad})

	rep, err := h.run()
	if err == nil || rep.Status != StatusFailed {
		t.Fatalf("run with a failing destination: err %v, status %s; want failed", err, rep.Status)
	}
	if d, _ := good.total(); d != 2000 {
		t.Fatalf("the healthy destination got %d rows, want 2000", d)
	}
	cp := h.checkpoint()
	var badAcked int64
	for _, f := range cp.Files {
		if f.Acked["good"] != f.Rows {
			t.Fatalf("%s: good acknowledged %d of %d", f.Key, f.Acked["good"], f.Rows)
		}
		badAcked += f.Acked["bad"]
		for _, r := range f.AckedRanges["bad"] {
			badAcked += r[1] - r[0]
		}
	}
	badDistinct, _ := bad.total()
	if badAcked != int64(badDistinct) {
		t.Fatalf("checkpoint counts %d rows for the failing destination, it acknowledged %d", badAcked, badDistinct)
	}

	// The destination recovers: only it receives, and only what it lacks.
	bad.failFrom = 0
	goodBefore, _ := good.total()
	rep, err = h.run()
	if err != nil || rep.Status != StatusOK {
		t.Fatalf("rerun: %v, status %s", err, rep.Status)
	}
	if _, all := good.total(); all != goodBefore {
		t.Fatalf("the healthy destination received %d rows again", all-goodBefore)
	}
	if d, all := bad.total(); d != 2000 || all != 2000 {
		t.Fatalf("recovered destination has %d distinct rows, %d deliveries; want 2000 and 2000 (no duplicates with one writer)", d, all)
	}
	if rep.FullSync {
		t.Fatalf("rerun was a full sync (%s), want incremental", rep.FullSyncReason)
	}
}

func TestCommitterIsAcknowledgedOnlyOnCommit(t *testing.T) {
	d := newFakeDest()
	commitErr := errors.New("upload failed")
	d.commit = func(context.Context) error { return commitErr }
	h := newHarness(t, 2, 500, map[string]*fakeDest{"lake": d})
	if _, err := h.run(); err == nil || !errors.Is(err, commitErr) {
		t.Fatalf("run whose commit fails: err %v, want it to name the commit failure", err)
	}
	for _, f := range h.checkpoint().Files {
		if f.Acked["lake"] != 0 {
			t.Fatalf("%s: %d rows counted before any commit succeeded", f.Key, f.Acked["lake"])
		}
	}
	d.commit = func(context.Context) error { return nil }
	rep, err := h.run()
	if err != nil || rep.Status != StatusOK {
		t.Fatalf("rerun: %v %s", err, rep.Status)
	}
	if n, _ := d.total(); n != 1000 {
		t.Fatalf("committed %d rows, want 1000", n)
	}
	for _, f := range h.checkpoint().Files {
		if f.Acked["lake"] != f.Rows {
			t.Fatalf("%s: %d of %d rows acknowledged after a commit", f.Key, f.Acked["lake"], f.Rows)
		}
	}
}

func TestRefusedRowsAreRejectedAndNotResent(t *testing.T) {
	d := newFakeDest()
	poison := func(m *mapper.Message) bool {
		id, _ := strconv.Atoi(m.UserID)
		return id%250 == 7
	}
	d.refuse = poison
	h := newHarness(t, 2, 1000, map[string]*fakeDest{"hook": d})
	rep, err := h.run()
	if err != nil || rep.Status != StatusPartial {
		t.Fatalf("err %v, status %s; want partial", err, rep.Status)
	}
	if rep.Rows.Rejected != 8 || rep.Destinations["hook"].Failed != 8 || rep.Destinations["hook"].Delivered != 1992 {
		t.Fatalf("report rows %+v, hook %+v; want 8 rejected, 1992 delivered", rep.Rows, *rep.Destinations["hook"])
	}
	f, err := os.Open(rep.RejectsFile)
	if err != nil {
		t.Fatalf("rejects file: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	lines := 0
	for sc.Scan() {
		var l rejectLine
		if err := json.Unmarshal(sc.Bytes(), &l); err != nil {
			t.Fatalf("rejects line %q: %v", sc.Text(), err)
		}
		var msg struct{ UserID string }
		_ = json.Unmarshal(l.Message, &msg)
		id, _ := strconv.Atoi(msg.UserID)
		if l.Destination != "hook" || id%250 != 7 || l.Reason == "" || l.File == "" {
			t.Fatalf("unexpected reject %+v", l)
		}
		lines++
	}
	if lines != 8 {
		t.Fatalf("%d reject lines, want 8", lines)
	}
	// Refused rows were handled: the next run sends nothing.
	_, before := d.total()
	if rep, err := h.run(); err != nil || rep.Files.Read != 0 {
		t.Fatalf("rerun read %d files (err %v), want 0", rep.Files.Read, err)
	}
	if _, after := d.total(); after != before {
		t.Fatalf("rerun delivered %d rows again", after-before)
	}
}

func TestContextCancelStopsAndKeepsProgress(t *testing.T) {
	d := newFakeDest()
	h := newHarness(t, 3, 1000, map[string]*fakeDest{"hook": d})
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	rep, err := Run(ctx, Options{Config: h.cfg, Sync: &h.cfg.Syncs[0], Registry: h.reg, Store: h.store})
	if err == nil || rep.Status != StatusFailed {
		t.Fatalf("cancelled run: err %v status %s", err, rep.Status)
	}
	rep, err = h.run()
	if err != nil {
		t.Fatal(err)
	}
	if n, _ := d.total(); n != 3000 {
		t.Fatalf("after a cancelled run and a rerun, %d rows delivered, want 3000", n)
	}
}

// fakeWebhook is the webhook kind (its options and defaults, so that configs load) built
// by f instead of the webhook adapter.
func fakeWebhook(f destinations.Factory) destinations.Kind {
	k := webhook.Kind()
	k.New = f
	return k
}
