package e2e

import (
	"encoding/json"
	"fmt"
	"slices"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
)

const writeKey = "wk-e2e-0123456789"

// segmentDest is a segment destination posting to srv, its write key from $SEG_WRITE_KEY.
func segmentDest(srv *destinationstest.SegmentServer) map[string]any {
	return map[string]any{"type": "segment", "endpoint": srv.URL, "write_key": "${SEG_WRITE_KEY}"}
}

// received decodes what a SegmentServer accepted.
func received(t testing.TB, srv *destinationstest.SegmentServer) []message {
	t.Helper()
	var out []message
	for _, r := range srv.Received() {
		var m message
		if err := json.Unmarshal(r.JSON, &m); err != nil {
			t.Fatalf("server received a message that is not JSON: %s", r.JSON)
		}
		m.line = r.JSON
		out = append(out, m)
	}
	return out
}

// checkAtLeastOnce fails unless every id of want arrived, and nothing else did: one
// distinct messageId per row (duplicates of the same message are allowed).
func checkAtLeastOnce(t testing.TB, what string, msgs []message, want []string) {
	t.Helper()
	byID := map[string]string{}
	for _, m := range msgs {
		if u, ok := byID[m.MessageID]; ok && u != m.UserID {
			t.Errorf("%s: messageId %s for users %s and %s", what, m.MessageID, u, m.UserID)
		}
		byID[m.MessageID] = m.UserID
	}
	var users []string
	for _, u := range byID {
		users = append(users, u)
	}
	slices.Sort(users)
	if len(byID) != len(want) || !slices.Equal(users, want) {
		t.Errorf("%s: %d distinct messageIds, want %d: %s", what, len(byID), len(want), diffSummary(users, want))
	}
}

func TestSegmentClean(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 1000, Seed: 5, FirstID: 100})
	w.writeConfig(usersConfig(segmentDest(srv)))

	r, rep := w.sync()
	if r.Code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if rep.Status != "ok" || rep.delivered("segment") != 3000 || rep.Rows.Sent != 3000 {
		t.Errorf("want ok, 3000 delivered\n%s", rep)
	}
	checkExactlyOnce(t, "segment", received(t, srv), idRange(100, 3000))
	for _, b := range srv.Batches() {
		if b.Status != 200 {
			t.Errorf("a request was answered %d (the write key is checked by basic auth)", b.Status)
		}
		if b.Bytes > destinationstest.MaxBatchBytes {
			t.Errorf("a request of %d bytes, over Segment's 500 KB", b.Bytes)
		}
	}
	if strings.Contains(r.Stderr+r.Stdout+rep.String(), writeKey) {
		t.Errorf("the write key appears in the output or the report")
	}

	// A wrong write key: the server refuses, the run fails and nothing is acknowledged.
	w2 := newWorkspace(t)
	w2.env = []string{"SEG_WRITE_KEY=not-the-key"}
	w2.writeUsers("", exampledata.Options{Files: 1, RowsPerFile: 50, Seed: 5, FirstID: 100000})
	w2.writeConfig(usersConfig(segmentDest(srv)))
	r, rep = w2.sync()
	if r.Code != 1 || rep.Status != "failed" || rep.delivered("segment") != 0 {
		t.Errorf("a wrong write key: want exit 1, status failed, 0 delivered\n%s\n%s", r, rep)
	}
	if n := len(srv.Received()); n != 3000 {
		t.Errorf("the server accepted %d messages, want only the 3000 of the right key", n)
	}
}

// TestSegmentLargeMessages: rows of about 6 KB make 100-message batches over 500 KB, which
// must be split; one row over Segment's 32 KB message limit is rejected.
func TestSegmentLargeMessages(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	rows := people(1, 400)
	for i := range rows {
		rows[i].Bio = strings.Repeat(fmt.Sprintf("bio of %d. ", i), 600)[:6000]
	}
	const big = 123
	rows[big].Bio = strings.Repeat("x", 40_000)
	writePeople(t, w.path("data", "a.parquet"), rows, peopleOptions{Bio: true})
	w.writeConfig(usersConfig(segmentDest(srv)))

	r, rep := w.sync()
	if r.Code != 3 || rep.Status != "partial" {
		t.Errorf("want exit 3 (one row too large), status partial\n%s\n%s", r, rep)
	}
	var want []string
	for _, p := range rows {
		if *p.ID != *rows[big].ID {
			want = append(want, strconv.FormatInt(*p.ID, 10))
		}
	}
	slices.Sort(want)
	msgs := received(t, srv)
	checkExactlyOnce(t, "segment", msgs, want)
	for _, m := range msgs {
		if len(m.line) > 32_000 {
			t.Errorf("a message of %d bytes reached the server, over 32 KB", len(m.line))
		}
	}
	for _, b := range srv.Batches() {
		if b.Bytes > destinationstest.MaxBatchBytes {
			t.Errorf("a request of %d bytes, over Segment's 500 KB", b.Bytes)
		}
	}
	rej := w.rejects(rep)
	if len(rej) != 1 || *rej[0].Row != big || rej[0].File != "a.parquet" || rej[0].Destination == nil || *rej[0].Destination != "segment" {
		t.Errorf("rejects = %+v, want row %d of a.parquet refused by segment", rej, big)
	}
	if rep.Rows.Rejected != 1 || rep.delivered("segment") != 399 {
		t.Errorf("want 1 row rejected, 399 delivered\n%s", rep)
	}
}

// TestSegmentFaults: 500s, 429s with Retry-After, dropped connections and a slow endpoint;
// every row still arrives.
func TestSegmentFaults(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		WriteKey:   writeKey,
		Seed:       42,
		Fail500:    0.30,
		Fail429:    0.10,
		Drop:       0.05,
		RetryAfter: "1",
		Delay:      20 * time.Millisecond,
	})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 1000, Seed: 6})
	d := segmentDest(srv)
	// 45% of requests fail: 20 attempts leave a batch failing for good once in 10^7.
	d["retry"] = fastRetry(20)
	d["timeout"] = "5s"
	d["batch_size"] = 100 // enough requests for every kind of fault to be drawn
	w.writeConfig(usersConfig(d))

	start := time.Now()
	r, rep := w.sync()
	if r.Code != 0 || rep.Status != "ok" || rep.delivered("segment") != 3000 {
		t.Fatalf("want exit 0, 3000 delivered\n%s\n%s", r, rep)
	}
	checkAtLeastOnce(t, "segment", received(t, srv), idRange(0, 3000))
	seen := map[int]int{}
	for _, b := range srv.Batches() {
		seen[b.Status]++
	}
	if seen[500] == 0 || seen[429] == 0 || seen[0] == 0 {
		t.Errorf("the faults were not all injected: answers %v", seen)
	}
	// Retry-After: 1 is capped by max_backoff: the run must not wait a second per 429.
	if d := time.Since(start); d > time.Duration(seen[429])*time.Second/2+10*time.Second {
		t.Errorf("the run took %s for %d answers 429: Retry-After is not capped by max_backoff", d, seen[429])
	}
	t.Logf("answers %v; run took %s", seen, time.Since(start))
}

// TestSegmentPoison: rows the server refuses for good are rejected, and only they.
func TestSegmentPoison(t *testing.T) {
	poison := []string{"10", "1500", "2999"}
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey, PoisonUsers: poison})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	w.writeUsers("", exampledata.Options{Files: 3, RowsPerFile: 1000, Seed: 7})
	w.writeConfig(usersConfig(segmentDest(srv)))

	r, rep := w.sync()
	if r.Code != 3 || rep.Status != "partial" {
		t.Fatalf("want exit 3, status partial\n%s\n%s", r, rep)
	}
	if rep.Rows.Rejected != 3 || rep.delivered("segment") != 2997 || rep.Destinations["segment"].Failed != 3 {
		t.Errorf("want 3 rows rejected, 2997 delivered, 3 failed\n%s", rep)
	}
	var want []string
	for _, u := range idRange(0, 3000) {
		if !slices.Contains(poison, u) {
			want = append(want, u)
		}
	}
	checkExactlyOnce(t, "segment", received(t, srv), want)

	if rep.RejectsFile == "" {
		t.Errorf("the report names no rejects file\n%s", rep)
	}
	rej := w.rejects(rep)
	if len(rej) != len(poison) {
		t.Fatalf("%d rejects, want %d: %+v", len(rej), len(poison), rej)
	}
	got := map[string]rejectLine{}
	for _, l := range rej {
		var m message
		if err := json.Unmarshal(l.Message, &m); err != nil {
			t.Errorf("reject %+v: message is not a message: %v", l, err)
			continue
		}
		got[m.UserID] = l
		id, _ := strconv.Atoi(m.UserID)
		wantFile := fmt.Sprintf("part-%05d.parquet", id/1000)
		if l.File != wantFile || *l.Row != int64(id%1000) {
			t.Errorf("reject of user %s names %s row %d, want %s row %d", m.UserID, l.File, *l.Row, wantFile, id%1000)
		}
		if l.Destination == nil || *l.Destination != "segment" || !strings.Contains(l.Reason, "400") {
			t.Errorf("reject of user %s: destination %v, reason %q; want segment and the 400", m.UserID, l.Destination, l.Reason)
		}
	}
	for _, u := range poison {
		if _, ok := got[u]; !ok {
			t.Errorf("user %s is not in the rejects file", u)
		}
	}

	// Refused rows are settled: the next run has nothing to send.
	rep = w.mustSync(0)
	if rep.Rows.Sent != 0 || rep.Files.Unchanged != 3 {
		t.Errorf("the run after: want nothing sent\n%s", rep)
	}
}

// TestThreeDestinations: segment, webhook and file each receive every row.
func TestThreeDestinations(t *testing.T) {
	seg := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{
		Path: "/hook", Headers: map[string]string{"Authorization": "Bearer hook-token"},
	})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey, "HOOK_TOKEN=hook-token"}
	w.writeUsers("", exampledata.Options{Files: 4, RowsPerFile: 700, Seed: 8, FirstID: 1})
	w.writeConfig(usersConfig(
		segmentDest(seg),
		map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 250, "gzip": true,
			"headers": map[string]any{"Authorization": "Bearer ${HOOK_TOKEN}"}},
		fileDest("out/users.jsonl"),
	))
	r, rep := w.sync()
	if r.Code != 0 || rep.Status != "ok" {
		t.Fatalf("want exit 0\n%s\n%s", r, rep)
	}
	want := idRange(1, 2800)
	checkExactlyOnce(t, "segment", received(t, seg), want)
	checkExactlyOnce(t, "webhook", received(t, hook), want)
	file := readMessages(t, w.path("out", "users.jsonl"))
	checkExactlyOnce(t, "file", file, want)
	for _, d := range []string{"segment", "webhook", "file"} {
		if rep.delivered(d) != 2800 {
			t.Errorf("%s delivered %d, want 2800\n%s", d, rep.delivered(d), rep)
		}
	}
	for _, b := range hook.Batches() {
		if len(b.IDs) > 250 || b.Status != 200 || !b.Gzip {
			t.Errorf("a webhook batch of %d messages (gzip %v) answered %d; want at most 250, gzip, 200", len(b.IDs), b.Gzip, b.Status)
		}
	}
	// The webhook and the file get the same bytes (the mapper's), message by message.
	byID := map[string][]byte{}
	for _, m := range file {
		byID[m.MessageID] = m.line
	}
	for _, m := range received(t, hook) {
		if string(byID[m.MessageID]) != string(m.line) {
			t.Errorf("message %s differs between file and webhook:\n%s\n%s", m.MessageID, byID[m.MessageID], m.line)
			break
		}
	}
}

// TestDryRun: --dry-run sends nothing, creates nothing and writes no state.
func TestDryRun(t *testing.T) {
	srv := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{WriteKey: writeKey})
	w := newWorkspace(t)
	w.env = []string{"SEG_WRITE_KEY=" + writeKey}
	w.writeUsers("", exampledata.Options{Files: 2, RowsPerFile: 500, Seed: 9})
	w.writeConfig(usersConfig(segmentDest(srv), fileDest("out/users.jsonl")))

	r, rep := w.sync("--dry-run")
	if r.Code != 0 {
		t.Fatalf("want exit 0\n%s", r)
	}
	if !rep.DryRun || rep.Rows.WouldSend != 1000 || rep.Rows.Read != 1000 || rep.Rows.Sent != 0 || !strings.Contains(string(rep.raw), `"would_send"`) {
		t.Errorf("want dry_run, would_send 1000, 1000 read, 0 sent\n%s", rep)
	}
	if n := len(srv.Batches()); n != 0 {
		t.Errorf("the server saw %d requests", n)
	}
	if exists(w.path("out")) {
		t.Errorf("the file destination's output was created")
	}
	if exists(w.stateDir()) {
		t.Errorf("a dry run wrote the state directory")
	}
	// A real run after it is still a first sync.
	if rep := w.mustSync(0); !rep.FullSync || rep.FullSyncReason != "first sync" || rep.Rows.Sent != 1000 {
		t.Errorf("the run after a dry run: want a first sync\n%s", rep)
	}
}
