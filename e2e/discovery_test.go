package e2e

import (
	"context"
	"encoding/json"
	"fmt"
	"net/url"
	"os"
	"path/filepath"
	"regexp"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"github.com/aws/aws-sdk-go-v2/service/sqs"
	"github.com/aws/aws-sdk-go-v2/service/sqs/types"

	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
)

// s3Notification is the body S3 sends to a queue for an object created under key.
func s3Notification(bucket, key string, size int64, etag string) string {
	return fmt.Sprintf(`{"Records":[{"eventVersion":"2.1","eventSource":"aws:s3","eventTime":%q,"eventName":"ObjectCreated:Put",`+
		`"s3":{"s3SchemaVersion":"1.0","bucket":{"name":%q},"object":{"key":%q,"size":%d,"eTag":%q}}}]}`,
		time.Now().UTC().Format(time.RFC3339Nano), bucket, url.QueryEscape(key), size, etag)
}

// eventBridgeNotification is EventBridge's shape of the same.
func eventBridgeNotification(bucket, key string, size int64, etag string) string {
	return fmt.Sprintf(`{"version":"0","detail-type":"Object Created","source":"aws.s3","time":%q,`+
		`"detail":{"version":"0","bucket":{"name":%q},"object":{"key":%q,"size":%d,"etag":%q}}}`,
		time.Now().UTC().Format(time.RFC3339), bucket, key, size, etag)
}

// snsNotification wraps an S3 notification in an SNS envelope.
func snsNotification(inner string) string {
	b, _ := json.Marshal(map[string]string{"Type": "Notification", "MessageId": "m1", "Message": inner})
	return string(b)
}

// putUsers uploads one example file as key and returns its size and ETag (unquoted).
func putUsers(t *testing.T, m *testutil.MinIO, bucket, key string, o exampledata.Options) (int64, string) {
	t.Helper()
	o.Files = 1
	paths, err := exampledata.Write(t.TempDir(), o)
	if err != nil {
		t.Fatal(err)
	}
	b, err := os.ReadFile(paths[0])
	if err != nil {
		t.Fatal(err)
	}
	m.Put(t, bucket, key, b)
	head, err := m.Client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return int64(len(b)), strings.Trim(aws.ToString(head.ETag), `"`)
}

// queueDepth counts the messages of the queue, visible or not.
func queueDepth(t *testing.T, q *testutil.SQS, queueURL string) int {
	t.Helper()
	out, err := q.Client.GetQueueAttributes(context.Background(), &sqs.GetQueueAttributesInput{
		QueueUrl: aws.String(queueURL),
		AttributeNames: []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages,
			types.QueueAttributeNameApproximateNumberOfMessagesNotVisible},
	})
	if err != nil {
		t.Fatal(err)
	}
	n := 0
	for _, k := range []types.QueueAttributeName{types.QueueAttributeNameApproximateNumberOfMessages, types.QueueAttributeNameApproximateNumberOfMessagesNotVisible} {
		v, _ := strconv.Atoi(out.Attributes[string(k)])
		n += v
	}
	return n
}

// TestSQSDiscovery: a sync learns of new exports from S3 event notifications on an SQS
// queue (S3's own shape, SNS-wrapped, EventBridge's): the first run lists the prefix;
// later runs read only the objects the messages name, deliver their rows once, and
// delete the messages once the checkpoint counting them is saved; messages about other
// prefixes are deleted unread, malformed ones left to the queue; an object whose event
// was lost is found by the reconcile listing.
func TestSQSDiscovery(t *testing.T) {
	m := testutil.StartMinIO(t)
	q := testutil.StartSQS(t)
	src := m.Bucket(t)
	queueURL := q.CreateQueue(t, 30*time.Second)
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})

	w := newWorkspace(t)
	w.env = []string{"E2E_ACCESS_KEY=" + m.AccessKey, "E2E_SECRET_KEY=" + m.SecretKey}
	c := usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 100})
	c.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/",
		"discovery", map[string]any{"type": "sqs", "queue_url": queueURL, "endpoint": q.Endpoint, "reconcile": "24h"})
	w.writeConfig(c)

	// check reaches the queue without receiving from it; a queue that does not exist fails
	// it, named.
	if r := w.run("check"); r.Code != 0 || !strings.Contains(r.Stdout, "queue "+queueURL) {
		t.Errorf("check of an sqs-discovered sync: want exit 0 and the queue checked\n%s", r)
	}
	bad := usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook"})
	bad.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/",
		"discovery", map[string]any{"type": "sqs", "queue_url": queueURL + "-missing", "endpoint": q.Endpoint})
	w.writeConfig(bad)
	if r := w.run("check"); r.Code == 0 || !strings.Contains(r.Stdout+r.Stderr, queueURL+"-missing") {
		t.Errorf("check with a missing queue: want a failure naming it\n%s", r)
	}
	w.writeConfig(c)

	// Run 1: no run has listed yet, so it lists the prefix.
	putUsers(t, m, src, "users/a.parquet", exampledata.Options{RowsPerFile: 100, FirstID: 0, Seed: 81})
	putUsers(t, m, src, "users/b.parquet", exampledata.Options{RowsPerFile: 100, FirstID: 100, Seed: 82})
	rep := w.mustSync(0)
	if rep.Discovery == nil || !rep.Discovery.Listed || rep.Rows.Sent != 200 {
		t.Fatalf("first run: want a listing and 200 rows sent\n%s", rep)
	}

	// New exports, announced in each shape; one message about another prefix, one that is
	// no notification at all.
	size, etag := putUsers(t, m, src, "users/dt=2025-01-02/c part.parquet", exampledata.Options{RowsPerFile: 50, FirstID: 1000, Seed: 83})
	q.Send(t, queueURL, s3Notification(src, "users/dt=2025-01-02/c part.parquet", size, etag))
	size, etag = putUsers(t, m, src, "users/d.parquet", exampledata.Options{RowsPerFile: 50, FirstID: 2000, Seed: 84})
	q.Send(t, queueURL, eventBridgeNotification(src, "users/d.parquet", size, etag))
	size, etag = putUsers(t, m, src, "users/e.parquet", exampledata.Options{RowsPerFile: 50, FirstID: 3000, Seed: 85})
	q.Send(t, queueURL, snsNotification(s3Notification(src, "users/e.parquet", size, etag)))
	q.Send(t, queueURL, s3Notification(src, "orders/x.parquet", 10, "abc"))
	q.Send(t, queueURL, `{"hello": "not a notification"}`)
	// An export whose event is lost: only the reconcile listing finds it.
	putUsers(t, m, src, "users/lost.parquet", exampledata.Options{RowsPerFile: 30, FirstID: 4000, Seed: 86})

	before := len(received(t, hook))
	rep = w.mustSync(0)
	d := rep.Discovery
	if d == nil || d.Listed || d.Received != 5 || d.Ignored != 1 || d.Malformed != 1 || d.Deleted != 4 {
		t.Fatalf("second run: want 5 messages received, 1 ignored, 1 malformed, 4 deleted, no listing\n%s", rep)
	}
	if rep.Files.Read != 3 || rep.Rows.Sent != 150 {
		t.Errorf("second run: want the 3 announced files read and 150 rows sent\n%s", rep)
	}
	got := received(t, hook)[before:]
	want := append(append(idRange(1000, 50), idRange(2000, 50)...), idRange(3000, 50)...)
	checkExactlyOnce(t, "the announced files", got, sortedStrings(want))
	if n := queueDepth(t, q, queueURL); n != 1 {
		t.Errorf("%d messages left in the queue, want 1 (the malformed one)", n)
	}

	// The same notification again (a redelivery): nothing is sent twice.
	size, etag = headObject(t, m, src, "users/d.parquet")
	q.Send(t, queueURL, s3Notification(src, "users/d.parquet", size, etag))
	before = len(received(t, hook))
	if rep = w.mustSync(0); rep.Rows.Sent != 0 || rep.Discovery.Deleted != 1 {
		t.Errorf("a redelivered notification of a synced file: want nothing sent and the message deleted\n%s", rep)
	}
	if n := len(received(t, hook)) - before; n != 0 {
		t.Errorf("a redelivered notification sent %d messages", n)
	}

	// A removal: the file leaves the checkpoint, as when a listing no longer shows it.
	if _, err := m.Client.DeleteObject(context.Background(), &s3.DeleteObjectInput{Bucket: aws.String(src), Key: aws.String("users/b.parquet")}); err != nil {
		t.Fatal(err)
	}
	q.Send(t, queueURL, strings.Replace(s3Notification(src, "users/b.parquet", 0, ""), "ObjectCreated:Put", "ObjectRemoved:Delete", 1))
	if rep = w.mustSync(0); rep.Files.Deleted != 1 || rep.Rows.Sent != 0 || rep.Discovery.Deleted != 1 {
		t.Errorf("a removal notification: want the file deleted from the checkpoint, nothing sent, the message deleted\n%s", rep)
	}
	if r := w.run("state", "show", "--json"); r.Code != 0 || strings.Contains(r.Stdout, "users/b.parquet") || !strings.Contains(r.Stdout, "users/a.parquet") {
		t.Errorf("after the removal the checkpoint still names users/b.parquet (or lost a.parquet):\n%s", r)
	}

	// Time passes (the history says the last listing was two days ago): the reconcile
	// listing finds the file whose event was lost, and only it.
	backdateHistory(t, w.path(".backflow", "history", "users.json"), 48*time.Hour)
	before = len(received(t, hook))
	rep = w.mustSync(0)
	if !rep.Discovery.Listed || rep.Rows.Sent != 30 {
		t.Errorf("after the reconcile interval: want a listing that sends the 30 rows of the lost file\n%s", rep)
	}
	checkExactlyOnce(t, "the lost file", received(t, hook)[before:], idRange(4000, 30))

	// The mapping changes, and no message waits: the full sync sends every file of the
	// prefix again, not only what a queue would name.
	c.Syncs[0].Mapping["user_id"] = "anon_id"
	c.Syncs[0].Mapping["anonymous_id"] = "customer_id"
	w.writeConfig(c)
	before = len(received(t, hook))
	rep = w.mustSync(0)
	if rep.FullSyncReason != "mapping changed" || !rep.Discovery.Listed || rep.Rows.Sent != 280 {
		t.Errorf("after a mapping change: want a full sync that lists and sends the 280 rows of the prefix\n%s", rep)
	}
	if n := len(received(t, hook)) - before; n != 280 {
		t.Errorf("after a mapping change %d messages arrived, want 280", n)
	}
}

func sortedStrings(s []string) []string {
	out := append([]string(nil), s...)
	for i := 1; i < len(out); i++ {
		for j := i; j > 0 && out[j] < out[j-1]; j-- {
			out[j], out[j-1] = out[j-1], out[j]
		}
	}
	return out
}

func headObject(t *testing.T, m *testutil.MinIO, bucket, key string) (int64, string) {
	t.Helper()
	head, err := m.Client.HeadObject(context.Background(), &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String(key)})
	if err != nil {
		t.Fatal(err)
	}
	return aws.ToInt64(head.ContentLength), strings.Trim(aws.ToString(head.ETag), `"`)
}

// backdateHistory moves every started_at of a run history back by d, as if the runs had
// happened that long ago.
func backdateHistory(t *testing.T, path string, d time.Duration) {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	re := regexp.MustCompile(`"started_at":"([^"]+)"`)
	out := re.ReplaceAllStringFunc(string(b), func(s string) string {
		ts, err := time.Parse(time.RFC3339Nano, re.FindStringSubmatch(s)[1])
		if err != nil {
			t.Fatal(err)
		}
		return fmt.Sprintf(`"started_at":%q`, ts.Add(-d).Format(time.RFC3339Nano))
	})
	if err := os.WriteFile(filepath.Clean(path), []byte(out), 0o600); err != nil {
		t.Fatal(err)
	}
}

// TestSQSDiscoveryServe: `serve` runs a sync discovered by S3 event notifications when
// messages arrive in its queue (it has no schedule). With BACKFLOW_FIGURES=1 it also
// measures the latency from an object's notification to its rows at the destination,
// over 100 files announced one after the other:
// BACKFLOW_FIGURES=1 go test -run TestSQSDiscoveryServe -v ./e2e/
func TestSQSDiscoveryServe(t *testing.T) {
	m := testutil.StartMinIO(t)
	q := testutil.StartSQS(t)
	src := m.Bucket(t)
	queueURL := q.CreateQueue(t, 30*time.Second)
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook"})
	w := newWorkspace(t)
	w.env = []string{"E2E_ACCESS_KEY=" + m.AccessKey, "E2E_SECRET_KEY=" + m.SecretKey}
	c := usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": 100})
	c.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/",
		"discovery", map[string]any{"type": "sqs", "queue_url": queueURL, "endpoint": q.Endpoint})
	w.writeConfig(c)
	// The first run lists the (empty) prefix, as no run listed before.
	w.mustSync(0)

	files := 1
	if os.Getenv("BACKFLOW_FIGURES") == "1" {
		files = 100
	}
	var lat []time.Duration
	var s *serveProc
	for i := range files {
		if i%15 == 0 {
			// A test's processes live at most a minute: a new serve every 15 files.
			if s != nil {
				s.stop(30 * time.Second)
			}
			s = w.startServe(t)
		}
		key := fmt.Sprintf("users/part-%03d.parquet", i)
		first := int64(10000 * (i + 1))
		size, etag := putUsers(t, m, src, key, exampledata.Options{RowsPerFile: 20, FirstID: first, Seed: uint64(90 + i)})
		before := len(received(t, hook))
		sent := time.Now()
		q.Send(t, queueURL, s3Notification(src, key, size, etag))
		deadline := time.Now().Add(30 * time.Second)
		for len(received(t, hook)) < before+20 {
			if time.Now().After(deadline) {
				t.Fatalf("the rows of %s did not arrive within 30s of its notification\n%s", key, s.output())
			}
			time.Sleep(5 * time.Millisecond) // polling the receiver
		}
		lat = append(lat, time.Since(sent))
	}
	// The queue's metrics: what the runs of this serve received and deleted (added when
	// a run's report is recorded, just after its rows arrived).
	deleted := regexp.MustCompile(`backflow_queue_messages_total\{outcome="deleted",sync="users"\} [1-9]`)
	for deadline := time.Now().Add(10 * time.Second); ; {
		code, body := s.do("GET", "/metrics")
		if code == 200 && deleted.Match(body) && strings.Contains(string(body), `backflow_queue_lag_seconds{sync="users"}`) {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("GET /metrics: %d, no queue message or lag metrics:\n%s", code, body)
		}
		time.Sleep(20 * time.Millisecond) // polling the endpoint
	}
	s.stop(30 * time.Second)
	got := received(t, hook)
	if distinctIDs(got) != 20*files || len(got) != 20*files {
		t.Errorf("serve delivered %d messages (%d distinct), want %d once each", len(got), distinctIDs(got), 20*files)
	}
	if files > 1 {
		sorted := append([]time.Duration(nil), lat...)
		for i := 1; i < len(sorted); i++ {
			for j := i; j > 0 && sorted[j] < sorted[j-1]; j-- {
				sorted[j], sorted[j-1] = sorted[j-1], sorted[j]
			}
		}
		t.Logf("notification → rows at the destination, %d files: p50 %s, p99 %s, max %s", files,
			sorted[len(sorted)/2].Round(time.Millisecond), sorted[len(sorted)*99/100].Round(time.Millisecond), sorted[len(sorted)-1].Round(time.Millisecond))
	}
}

// TestSQSDiscoveryKilled: a run killed mid-way deletes no message; its messages come
// back once the queue's visibility timeout (2s here) passes, and the next run sends
// only what the killed one had not acknowledged — every row arrives, duplicates at most
// the batches in flight — and then empties the queue.
func TestSQSDiscoveryKilled(t *testing.T) {
	m := testutil.StartMinIO(t)
	q := testutil.StartSQS(t)
	src := m.Bucket(t)
	queueURL := q.CreateQueue(t, 2*time.Second)
	hook := destinationstest.NewSegmentServer(t, destinationstest.SegmentServerOptions{Path: "/hook", Delay: 30 * time.Millisecond})
	w := newWorkspace(t)
	w.env = []string{"E2E_ACCESS_KEY=" + m.AccessKey, "E2E_SECRET_KEY=" + m.SecretKey}
	const batch, inFlight = 25, 2
	c := usersConfig(map[string]any{"type": "webhook", "url": hook.URL + "/hook", "batch_size": batch, "max_in_flight": inFlight})
	c.Syncs[0].Source = with(s3Settings(m), "url", "s3://"+src+"/users/",
		"discovery", map[string]any{"type": "sqs", "queue_url": queueURL, "endpoint": q.Endpoint})
	w.writeConfig(c)
	w.mustSync(0) // the first run lists the empty prefix

	const files, rows = 3, 400
	for i := range files {
		key := fmt.Sprintf("users/part-%d.parquet", i)
		size, etag := putUsers(t, m, src, key, exampledata.Options{RowsPerFile: rows, FirstID: int64(i * rows), Seed: uint64(70 + i)})
		q.Send(t, queueURL, s3Notification(src, key, size, etag))
	}
	p := start(t, w.dir, w.env, "sync", "-c", w.configPath())
	for deadline := time.Now().Add(30 * time.Second); len(received(t, hook)) < 200; {
		if time.Now().After(deadline) {
			t.Fatalf("the run sent nothing within 30s")
		}
		time.Sleep(5 * time.Millisecond) // polling the receiver
	}
	if err := p.cmd.Process.Kill(); err != nil {
		t.Fatal(err)
	}
	_ = p.cmd.Wait() // killed: no exit code to judge
	killedAt := len(received(t, hook))
	if killedAt >= files*rows {
		t.Fatalf("the run delivered everything (%d) before it was killed: make it slower", killedAt)
	}
	// The messages come back after their visibility timeout; until then a run finds none.
	var rep *report
	for deadline := time.Now().Add(30 * time.Second); ; {
		rep = w.mustSync(0)
		if rep.Discovery != nil && rep.Discovery.Received > 0 {
			break
		}
		if time.Now().After(deadline) {
			t.Fatalf("the killed run's messages did not come back within 30s")
		}
		time.Sleep(500 * time.Millisecond) // the queue's visibility timeout runs
	}
	if rep.Discovery.Received != files || rep.Discovery.Deleted != files {
		t.Errorf("the rerun: want %d messages received and deleted\n%s", files, rep)
	}
	got := received(t, hook)
	if ids := distinctUserIDs(got); ids != files*rows {
		t.Errorf("%d distinct rows arrived, want %d", ids, files*rows)
	}
	if dup := len(got) - distinctIDs(got); dup > batch*inFlight {
		t.Errorf("%d rows arrived twice, want at most the batches in flight (%d)", dup, batch*inFlight)
	}
	if n := queueDepth(t, q, queueURL); n != 0 {
		t.Errorf("%d messages left in the queue, want none", n)
	}
}
