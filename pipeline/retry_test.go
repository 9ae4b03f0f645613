package pipeline

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"sort"
	"strconv"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/parquet/file"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/state"
)

// retryFake is a destination that records every message it acknowledges and refuses
// the messages of the users in refuse for good (a 400).
type retryFake struct {
	mu     sync.Mutex
	refuse map[string]bool
	down   bool
	got    []mapper.Message
}

func (d *retryFake) Write(_ context.Context, msgs []mapper.Message) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	if d.down {
		return errors.New("503 service unavailable")
	}
	var failed []destinations.Failure
	for i, m := range msgs {
		if d.refuse[m.UserID] {
			failed = append(failed, destinations.Failure{Index: i, Err: errors.New("400 bad message")})
			continue
		}
		m.JSON = slices.Clone(m.JSON)
		d.got = append(d.got, m)
	}
	if len(failed) > 0 {
		return &destinations.BatchError{Failed: failed}
	}
	return nil
}

func (d *retryFake) Close(context.Context) error { return nil }

func (d *retryFake) setRefuse(users ...string) {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.refuse = map[string]bool{}
	for _, u := range users {
		d.refuse[u] = true
	}
}

// users returns the userIds acknowledged so far, sorted, duplicates kept, and forgets
// them.
func (d *retryFake) take() []string {
	d.mu.Lock()
	defer d.mu.Unlock()
	var out []string
	for _, m := range d.got {
		out = append(out, m.UserID)
	}
	d.got = nil
	sort.Strings(out)
	return out
}

// retryHarness is a local export of files×1000 rows (row groups of 300 rows), local
// state, and fake destinations "a" and "b".
type retryHarness struct {
	t     *testing.T
	dir   string
	store state.Store
	reg   *destinations.Registry
	a, b  *retryFake
	cfg   *config.Config
}

func newRetryHarness(t *testing.T, files int) *retryHarness {
	t.Helper()
	h := &retryHarness{t: t, dir: t.TempDir(), a: &retryFake{}, b: &retryFake{}}
	if _, err := exampledata.Write(filepath.Join(h.dir, "data"), exampledata.Options{Files: files, RowsPerFile: 1000, RowGroupRows: 300, Seed: 3}); err != nil {
		t.Fatal(err)
	}
	h.reg = destinations.NewRegistry()
	h.reg.Register(fakeWebhook(func(_ context.Context, c config.Destination, _ destinations.Env) (destinations.Destination, error) {
		if c.Name == "a" {
			return h.a, nil
		}
		return h.b, nil
	}))
	h.configure("user_id: customer_id")
	store, err := state.Open(context.Background(), h.cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	h.store = store
	return h
}

// configure loads the config with the given identifier mapping.
func (h *retryHarness) configure(ids string) {
	h.t.Helper()
	yaml := "syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, " + ids + "}\n    destinations:\n"
	for _, name := range []string{"a", "b"} {
		yaml += fmt.Sprintf("      - {type: webhook, name: %s, url: \"http://127.0.0.1:1/\", batch_size: 100, max_in_flight: 1, retry: {max_attempts: 1}}\n", name)
	}
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", h.dir, func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		h.t.Fatal(err)
	}
	h.cfg = cfg
}

func (h *retryHarness) sync() *Report {
	h.t.Helper()
	rep, err := Run(context.Background(), Options{Config: h.cfg, Sync: &h.cfg.Syncs[0], Registry: h.reg, Store: h.store, Workers: 2})
	if err != nil {
		h.t.Fatalf("sync: %v", err)
	}
	return rep
}

func (h *retryHarness) retry(of string) (*Report, error) {
	h.t.Helper()
	return Retry(context.Background(), RetryOptions{Config: h.cfg, Sync: &h.cfg.Syncs[0], Of: of, Registry: h.reg, Store: h.store, BatchRows: 128})
}

func (h *retryHarness) rejects(runID string) []RejectedRow {
	h.t.Helper()
	rej, err := ReadRejects(context.Background(), h.store, "users", runID)
	if err != nil {
		h.t.Fatalf("reading the rejects of run %s: %v", runID, err)
	}
	if rej.Unreadable != 0 {
		h.t.Errorf("rejects of run %s: %d unreadable lines", runID, rej.Unreadable)
	}
	return rej.Rows
}

func report(rep *Report) string {
	b, _ := json.Marshal(rep)
	return string(b)
}

func TestRetrySendsEachRowToTheDestinationThatRefusedIt(t *testing.T) {
	h := newRetryHarness(t, 2)
	h.a.setRefuse("5", "1500", "1999")
	h.b.setRefuse("700")
	first := h.sync()
	if first.Status != StatusPartial || first.Rows.Rejected != 4 {
		t.Fatalf("sync: want partial with 4 rows rejected\n%s", report(first))
	}
	if got := h.a.take(); len(got) != 1997 {
		t.Fatalf("a acknowledged %d rows, want 1997", len(got))
	}
	h.b.take()
	if rows := h.rejects(first.RunID); len(rows) != 4 {
		t.Fatalf("%d rejects, want 4: %+v", len(rows), rows)
	}

	// The receivers fixed, the retry sends exactly the refused rows, once, each to the
	// destination that refused it.
	h.a.setRefuse()
	h.b.setRefuse()
	refused := map[string]bool{} // the messageIds of the refused messages
	for _, r := range h.rejects(first.RunID) {
		var m struct {
			MessageID string `json:"messageId"`
		}
		if err := json.Unmarshal(r.Message, &m); err != nil || m.MessageID == "" {
			t.Fatalf("reject %+v: no message", r)
		}
		refused[m.MessageID] = true
	}
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusOK {
		t.Fatalf("retry: %v\n%s", err, report(rep))
	}
	// The mapping is the same: the rows read back are the very messages refused.
	for _, m := range append(slices.Clone(h.a.got), h.b.got...) {
		if !refused[m.ID] {
			t.Errorf("user %s was sent with messageId %s, not the one refused", m.UserID, m.ID)
		}
	}
	if got := h.a.take(); !slices.Equal(got, []string{"1500", "1999", "5"}) {
		t.Errorf("a received %v, want exactly 1500, 1999 and 5", got)
	}
	if got := h.b.take(); !slices.Equal(got, []string{"700"}) {
		t.Errorf("b received %v, want exactly 700", got)
	}
	if rep.RetryOf != first.RunID || rep.RunID == first.RunID || rep.Rows.Read != 4 || rep.Rows.Rejected != 0 ||
		rep.Destinations["a"].Delivered != 3 || rep.Destinations["b"].Delivered != 1 || rep.Files.Read != 2 || rep.RejectsFile != "" {
		t.Errorf("retry report: want retry_of %s, 4 rows read, a 3 and b 1 delivered, 2 files read, no rejects file\n%s", first.RunID, report(rep))
	}
	// The retry is a run of its own in the history, and settles the run it retried.
	history, err := h.store.History(context.Background(), "users")
	if err != nil || len(history) != 1 {
		t.Fatalf("history: %v, %d runs; want the retry only (sync's history is written by the command)", err, len(history))
	}
	var rec Report
	if err := json.Unmarshal(history[0], &rec); err != nil || rec.RunID != rep.RunID || rec.RetryOf != first.RunID {
		t.Errorf("history holds %s, want the retry's report", history[0])
	}
	retried, err := RetriedRuns(context.Background(), h.store, "users")
	if err != nil || retried[first.RunID] == nil || retried[first.RunID].RunID != rep.RunID {
		t.Errorf("RetriedRuns: %v, %v; want %s retried by %s", err, retried, first.RunID, rep.RunID)
	}
	// The checkpoint is untouched: the next sync sends nothing.
	if next := h.sync(); next.Rows.Sent != 0 || next.Status != StatusOK {
		t.Errorf("the sync after the retry: want nothing sent\n%s", report(next))
	}
}

func TestRetryRefusedAgainIsRejectedAgain(t *testing.T) {
	h := newRetryHarness(t, 1)
	h.a.setRefuse("10", "20")
	first := h.sync()
	h.a.take()
	h.b.take()
	h.a.setRefuse("20")
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusPartial || rep.Rows.Rejected != 1 || rep.Destinations["a"].Delivered != 1 || rep.Destinations["a"].Failed != 1 {
		t.Fatalf("retry: want partial, 1 delivered, 1 refused again: %v\n%s", err, report(rep))
	}
	if got := h.a.take(); !slices.Equal(got, []string{"10"}) {
		t.Errorf("a received %v, want 10", got)
	}
	if len(h.b.take()) != 0 {
		t.Errorf("b received rows it never refused")
	}
	rows := h.rejects(rep.RunID)
	if len(rows) != 1 || rows[0].File != "part-00000.parquet" || rows[0].Row != 20 || rows[0].Destination != "a" ||
		!strings.Contains(rows[0].Reason, "400") || !json.Valid(rows[0].Message) {
		t.Fatalf("the retry's rejects: %+v; want row 20 refused by a", rows)
	}
	// Retrying the retry, the receiver fixed, delivers the last row.
	h.a.setRefuse()
	rep2, err := h.retry(rep.RunID)
	if err != nil || rep2.Status != StatusOK {
		t.Fatalf("second retry: %v\n%s", err, report(rep2))
	}
	if got := h.a.take(); !slices.Equal(got, []string{"20"}) {
		t.Errorf("a received %v, want 20", got)
	}
}

func TestRetryChangedOrVanishedFileIsReportedNotSent(t *testing.T) {
	h := newRetryHarness(t, 3)
	h.a.setRefuse("3", "1003", "2003")
	first := h.sync()
	h.a.take()
	h.b.take()
	h.a.setRefuse()
	// part-00000 is overwritten (other rows, same key), part-00001 deleted.
	if _, err := exampledata.Write(filepath.Join(h.dir, "data"), exampledata.Options{Files: 1, RowsPerFile: 1200, RowGroupRows: 300, Seed: 4, FirstID: 50_000}); err != nil {
		t.Fatal(err)
	}
	if err := os.Remove(filepath.Join(h.dir, "data", "part-00001.parquet")); err != nil {
		t.Fatal(err)
	}
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusPartial {
		t.Fatalf("retry: want partial: %v\n%s", err, report(rep))
	}
	if got := h.a.take(); !slices.Equal(got, []string{"2003"}) {
		t.Errorf("a received %v, want only 2003 (the file that did not change)", got)
	}
	if rep.Files.Changed != 1 || rep.Files.Vanished != 1 || rep.Rows.NotRetried != 2 || rep.Rows.Read != 1 || len(rep.FileErrors) != 2 {
		t.Errorf("want 1 file changed, 1 vanished, 2 rows not retried, 1 read\n%s", report(rep))
	}
	errs := map[string]string{}
	for _, fe := range rep.FileErrors {
		errs[fe.Key] = fe.Error
	}
	if !strings.Contains(errs["part-00000.parquet"], "changed since run "+first.RunID) ||
		!strings.Contains(errs["part-00001.parquet"], "vanished since run "+first.RunID) {
		t.Errorf("file errors %v: want part-00000 changed and part-00001 vanished", errs)
	}
	rows := h.rejects(rep.RunID)
	if len(rows) != 2 {
		t.Fatalf("the retry's rejects: %+v; want the 2 rows not retried", rows)
	}
	for _, r := range rows {
		if r.Destination != "a" || !strings.HasPrefix(r.Reason, "not retried: ") || r.Message == nil {
			t.Errorf("reject %+v: want destination a, reason not retried, the original message", r)
		}
	}
}

// A file rewritten and synced again since has a checkpoint entry that matches it: it is
// still known for a new file, written after the retried run started.
func TestRetryFileRewrittenAndSyncedSince(t *testing.T) {
	h := newRetryHarness(t, 1)
	h.a.setRefuse("7")
	first := h.sync()
	h.a.setRefuse()
	path := filepath.Join(h.dir, "data", "part-00000.parquet")
	later := time.Now().Add(time.Minute)
	if err := os.Chtimes(path, later, later); err != nil {
		t.Fatal(err)
	}
	if rep := h.sync(); rep.Files.Read != 1 {
		t.Fatalf("the sync after the rewrite did not read the file again\n%s", report(rep))
	}
	h.a.take()
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusPartial || rep.Files.Changed != 1 || rep.Rows.NotRetried != 1 {
		t.Fatalf("retry: want the file changed, its row not retried: %v\n%s", err, report(rep))
	}
	if got := h.a.take(); len(got) != 0 {
		t.Errorf("a received %v from a file that changed", got)
	}
}

func TestRetryRowsRefusedBeforeDeliveryGoToEveryDestination(t *testing.T) {
	h := newRetryHarness(t, 1)
	// city is null in about a row in ten: those rows have no identifier.
	h.configure("user_id: city")
	first := h.sync()
	rows := h.rejects(first.RunID)
	if first.Status != StatusPartial || len(rows) == 0 {
		t.Fatalf("sync: want rows without identifiers rejected\n%s", report(first))
	}
	var want []string
	for _, r := range rows {
		if r.Destination != "" || r.Message != nil {
			t.Fatalf("reject %+v: want neither destination nor message", r)
		}
		want = append(want, strconv.FormatInt(r.Row, 10)) // customer_id = row in file 0
	}
	sort.Strings(want)
	h.a.take()
	h.b.take()

	// Unchanged mapping: the rows are rejected again, before delivery.
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusPartial || rep.Rows.Rejected != int64(len(rows)) || rep.Rows.Sent != 0 {
		t.Fatalf("retry with the same mapping: want every row rejected again: %v\n%s", err, report(rep))
	}
	again := h.rejects(rep.RunID)
	if len(again) != len(rows) || again[0].Destination != "" {
		t.Errorf("the retry's rejects: %d rows, want %d without destination", len(again), len(rows))
	}

	// The mapping fixed: every row goes to both destinations.
	h.configure("user_id: customer_id")
	rep, err = h.retry(first.RunID)
	if err != nil || rep.Status != StatusOK {
		t.Fatalf("retry with the fixed mapping: %v\n%s", err, report(rep))
	}
	if got := h.a.take(); !slices.Equal(got, want) {
		t.Errorf("a received %d rows, want the %d rejected ones", len(got), len(want))
	}
	if got := h.b.take(); !slices.Equal(got, want) {
		t.Errorf("b received %d rows, want the %d rejected ones", len(got), len(want))
	}
}

func TestRetryDestinationDownFailsAndKeepsTheRows(t *testing.T) {
	h := newRetryHarness(t, 1)
	h.a.setRefuse("1", "2")
	first := h.sync()
	h.a.setRefuse()
	h.a.mu.Lock()
	h.a.down = true
	h.a.mu.Unlock()
	rep, err := h.retry(first.RunID)
	if err == nil || rep.Status != StatusFailed || !strings.Contains(err.Error(), "destination a") {
		t.Fatalf("retry to a destination that is down: want it to fail naming a: %v\n%s", err, report(rep))
	}
	// The retry's rejects hold the rows not delivered: retrying it sends them.
	if rows := h.rejects(rep.RunID); len(rows) != 2 || !strings.HasPrefix(rows[0].Reason, "not delivered: ") {
		t.Fatalf("the failed retry's rejects: %+v; want the 2 rows not delivered", rows)
	}
	if retried, _ := RetriedRuns(context.Background(), h.store, "users"); retried[first.RunID] != nil {
		t.Errorf("a failed retry counts as settling run %s", first.RunID)
	}
	// The failed retry is not the one to retry next: the run it retried is.
	b, _ := json.Marshal(first)
	if err := h.store.AppendHistory(context.Background(), "users", b, 10); err != nil {
		t.Fatal(err)
	}
	runs, err := RunsWithRejects(context.Background(), h.store, "users")
	if err != nil || len(runs) != 2 {
		t.Fatalf("RunsWithRejects: %v, %+v", err, runs)
	}
	for _, r := range runs {
		if r.Pending() != (r.ID == first.RunID) {
			t.Errorf("run %s pending: %v; want only %s pending", r.ID, r.Pending(), first.RunID)
		}
	}
}

func TestRetryUnknownRun(t *testing.T) {
	h := newRetryHarness(t, 1)
	rep, err := h.retry("20250101T000000Z-00000000")
	if !errors.Is(err, state.ErrNoRejects) || rep != nil {
		t.Fatalf("retry of a run without rejects: %v, %v; want ErrNoRejects and no report", err, rep)
	}
	if history, _ := h.store.History(context.Background(), "users"); len(history) != 0 {
		t.Errorf("a retry of nothing was recorded in the history")
	}
}

// Run ids tell the start to the second: runs of the same second are ordered by the start
// times of the run history.
func TestRunsWithRejectsOrdersRunsOfOneSecond(t *testing.T) {
	h := newRetryHarness(t, 1)
	h.a.setRefuse("1", "2")
	t0 := time.Now().Add(time.Minute).UTC().Truncate(time.Second)
	prefix := t0.Format("20060102T150405Z")
	first, err := Run(context.Background(), Options{Config: h.cfg, Sync: &h.cfg.Syncs[0], Registry: h.reg, Store: h.store,
		RunID: prefix + "-ffffffff", Now: func() time.Time { return t0.Add(100 * time.Millisecond) }})
	if err != nil || first.Rows.Rejected != 2 {
		t.Fatalf("sync: %v\n%s", err, report(first))
	}
	b, _ := json.Marshal(first)
	if err := h.store.AppendHistory(context.Background(), "users", b, 10); err != nil {
		t.Fatal(err)
	}
	h.a.setRefuse("2")
	rep, err := Retry(context.Background(), RetryOptions{Config: h.cfg, Sync: &h.cfg.Syncs[0], Of: first.RunID, Registry: h.reg, Store: h.store,
		RunID: prefix + "-00000000", Now: func() time.Time { return t0.Add(500 * time.Millisecond) }})
	if err != nil || rep.Status != StatusPartial {
		t.Fatalf("retry: %v\n%s", err, report(rep))
	}
	runs, err := RunsWithRejects(context.Background(), h.store, "users")
	if err != nil || len(runs) != 2 || runs[0].ID != rep.RunID || runs[1].ID != first.RunID {
		t.Fatalf("RunsWithRejects: %v, %+v; want the retry %s first", err, runs, rep.RunID)
	}
	if runs[1].RetriedBy == nil || runs[1].RetriedBy.RunID != rep.RunID || runs[1].Pending() ||
		runs[0].RetriedBy != nil || !runs[0].Pending() || runs[0].Report == nil || runs[0].Report.RetryOf != first.RunID {
		t.Errorf("runs %+v: want %s settled by %s, which is pending", runs, first.RunID, rep.RunID)
	}
}

// corruptRowGroup overwrites every column chunk of row group rg of the file at path with
// garbage, keeping its size and modification time: the listing sees the same file, and
// only reading that row group fails.
func corruptRowGroup(t *testing.T, path string, rg int) {
	t.Helper()
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	pf, err := file.OpenParquetFile(path, false)
	if err != nil {
		t.Fatal(err)
	}
	md := pf.MetaData().RowGroup(rg)
	var spans [][2]int64
	for c := 0; c < md.NumColumns(); c++ {
		cc, err := md.ColumnChunk(c)
		if err != nil {
			t.Fatal(err)
		}
		start := cc.DataPageOffset()
		if cc.HasDictionaryPage() && cc.DictionaryPageOffset() < start {
			start = cc.DictionaryPageOffset()
		}
		spans = append(spans, [2]int64{start, start + cc.TotalCompressedSize()})
	}
	pf.Close()
	f, err := os.OpenFile(path, os.O_WRONLY, 0)
	if err != nil {
		t.Fatal(err)
	}
	for _, s := range spans {
		if _, err := f.WriteAt(bytes.Repeat([]byte{0xff}, int(s[1]-s[0])), s[0]); err != nil {
			t.Fatal(err)
		}
	}
	if err := f.Close(); err != nil {
		t.Fatal(err)
	}
	if err := os.Chtimes(path, info.ModTime(), info.ModTime()); err != nil {
		t.Fatal(err)
	}
}

// Rows are read back from the row groups that hold them only: a broken row group
// elsewhere in the file is never read; a file whose rows cannot all be read sends none.
func TestRetryReadsOnlyTheRowGroupsOfItsRows(t *testing.T) {
	h := newRetryHarness(t, 2) // row groups of 300 rows: [0,300) [300,600) [600,900) [900,1000)
	h.a.setRefuse("5", "950", "1700")
	first := h.sync()
	h.a.take()
	h.a.setRefuse()
	for _, name := range []string{"part-00000.parquet", "part-00001.parquet"} {
		corruptRowGroup(t, filepath.Join(h.dir, "data", name), 2)
	}
	rep, err := h.retry(first.RunID)
	if err != nil || rep.Status != StatusPartial {
		t.Fatalf("retry: %v\n%s", err, report(rep))
	}
	if got := h.a.take(); !slices.Equal(got, []string{"5", "950"}) {
		t.Errorf("a received %v, want 5 and 950 (row groups 0 and 3 of part-00000)", got)
	}
	if rep.Files.Read != 1 || rep.Files.Rejected != 1 || rep.Rows.NotRetried != 1 || len(rep.FileErrors) != 1 ||
		rep.FileErrors[0].Key != "part-00001.parquet" || !strings.Contains(rep.FileErrors[0].Error, "row group 2") {
		t.Errorf("want part-00001.parquet reported unreadable at row group 2, its row not retried\n%s", report(rep))
	}
}
