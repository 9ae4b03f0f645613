package s3

import (
	"bytes"
	"compress/gzip"
	"context"
	"encoding/json"
	"fmt"
	"io"
	"os"
	"slices"
	"sort"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/mapper"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopMinIO()
	os.Exit(code)
}

// newMsg builds a message shaped as the mapper shapes it: body is the traits (identify,
// group) or properties (track) object as JSON text; ts an RFC 3339 timestamp or "".
func newMsg(typ, id, user, body, ts string) mapper.Message {
	m := mapper.Message{Type: typ, UserID: user, ID: id, Key: typ + ":" + user}
	b := []byte(`{"type":` + strconv.Quote(typ))
	if user != "" {
		b = append(b, `,"userId":`+strconv.Quote(user)...)
	}
	bodyKey := "traits"
	switch typ {
	case "track":
		m.Event = "Order Completed"
		b = append(b, `,"event":"Order Completed"`...)
		bodyKey = "properties"
	case "group":
		m.GroupID = "g-" + user
		b = append(b, `,"groupId":`+strconv.Quote(m.GroupID)...)
	}
	b = append(b, `,"`+bodyKey+`":`...)
	m.BodyStart = len(b)
	b = append(b, body...)
	m.BodyEnd = len(b)
	if ts != "" {
		b = append(b, `,"timestamp":"`...)
		m.TimestampStart = len(b)
		b = append(b, ts...)
		m.TimestampEnd = len(b)
		b = append(b, '"')
	}
	b = append(b, `,"messageId":`+strconv.Quote(id)+`,"context":{"library":{"name":"backflow","version":"test"}}}`...)
	m.JSON = b
	return m
}

// testMessages returns n messages of every type whose bodies hold what CSV and Parquet
// must carry: nested objects, lists, nulls, escapes, non-ASCII text, a decimal with a
// trailing zero, an integer beyond 2^53, CSV specials (delimiters, quotes, line breaks),
// and a trait named like a message field.
func testMessages(prefix string, n int) []mapper.Message {
	types := []string{"identify", "track", "group"}
	msgs := make([]mapper.Message, n)
	for i := range msgs {
		body := fmt.Sprintf(`{"email":"user%d@example.com","plan":"pro, \"gold\"|x\ty","amount":12.30,"big":9007199254740993,`+
			`"active":%t,"address":{"city":"Oslo \u00d8st","zip":"0150","geo":{"lat":59.9}},"tags":["a","b\"q"],`+
			`"note":"line\nbreak é","missing":null,"n":%d,"type":"inner","empty":{}}`, i, i%2 == 0, i)
		ts := ""
		if i%4 != 3 {
			ts = fmt.Sprintf("2024-01-%02dT10:%02d:00Z", 1+i%28, i%60)
		}
		msgs[i] = newMsg(types[i%3], fmt.Sprintf("%s-%06d", prefix, i), fmt.Sprintf("u-%s-%d", prefix, i), body, ts)
	}
	return msgs
}

// expectedColumns flattens m the way the CSV and Parquet formats must, using
// encoding/json as an independent reference: column name → value (json.Number for
// numbers, string, bool, nil, or the decoded value of a list or empty object).
func expectedColumns(t testing.TB, m mapper.Message) map[string]any {
	t.Helper()
	out := map[string]any{}
	for name, v := range map[string]string{"type": m.Type, "userId": m.UserID, "anonymousId": m.AnonymousID,
		"groupId": m.GroupID, "event": m.Event, "timestamp": m.Timestamp(), "messageId": m.ID} {
		if v != "" {
			out[name] = v
		}
	}
	d := json.NewDecoder(bytes.NewReader(m.Body()))
	d.UseNumber()
	var body map[string]any
	if err := d.Decode(&body); err != nil {
		t.Fatalf("decoding the body of %s: %v", m.ID, err)
	}
	prefix := "traits"
	if m.Type == "track" {
		prefix = "properties"
	}
	var walk func(name string, v any)
	walk = func(name string, v any) {
		if obj, ok := v.(map[string]any); ok && len(obj) > 0 {
			for k, x := range obj {
				walk(name+"."+k, x)
			}
			return
		}
		if v != nil {
			out[name] = v
		}
	}
	for k, v := range body {
		name := k
		if slices.Contains(fieldColumns[:], k) {
			name = prefix + "." + k
		}
		walk(name, v)
	}
	return out
}

// sameValue compares a value read back as text (CSV, or a Parquet string column) with
// the reference: lists and objects as JSON values, everything else by its text.
func sameValue(t testing.TB, got string, want any) bool {
	t.Helper()
	switch w := want.(type) {
	case string:
		return got == w
	case json.Number:
		return got == w.String()
	case bool:
		return got == strconv.FormatBool(w)
	default:
		var g any
		d := json.NewDecoder(strings.NewReader(got))
		d.UseNumber()
		if err := d.Decode(&g); err != nil {
			return false
		}
		return fmt.Sprint(g) == fmt.Sprint(w)
	}
}

type env struct {
	mio    *testutil.MinIO
	bucket string
}

func newEnv(t *testing.T) *env {
	t.Helper()
	m := testutil.StartMinIO(t)
	return &env{mio: m, bucket: m.Bucket(t)}
}

// cfg is an s3 destination config for the test bucket, as config.Load would default it.
func (e *env) cfg(format string) config.Destination {
	o := e.mio.Options()
	return config.Destination{
		Type: "s3", Name: "lake", Timeout: 30 * time.Second,
		Options: &Options{
			URL: "s3://" + e.bucket + "/out/", S3Options: o,
			Key: "{stream_name}/{date}/{connection_run_id}-{part}.{extension}", Format: format, Compression: "none",
			CSV: CSV{Delimiter: ","}, MaxObjectRows: DefaultMaxObjectRows,
		},
	}
}

// optsOf returns the s3 options of cfg, to change one of them (cfg's own: each call of
// env.cfg makes new ones).
func optsOf(cfg config.Destination) *Options { return cfg.Options.(*Options) }

var testRunStarted = time.Date(2025, 4, 14, 11, 23, 45, 0, time.UTC)

func testEnv() destinations.Env {
	return destinations.Env{Sync: "users", RunID: "run1", RunStarted: testRunStarted, Version: "test"}
}

// newDest builds a destination with a checked allocator (asserted empty at cleanup) and
// the given upload options.
func (e *env) newDest(t *testing.T, cfg config.Destination, opts tuning) *Destination {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	t.Cleanup(func() { mem.AssertSize(t, 0) })
	if opts.mem == nil {
		opts.mem = mem
	}
	d, err := newDestination(context.Background(), cfg, testEnv(), opts)
	if err != nil {
		t.Fatalf("newDestination: %v", err)
	}
	t.Cleanup(func() { _ = d.Close(context.Background()) })
	return d
}

func (e *env) keys(t *testing.T) []string {
	t.Helper()
	k := e.mio.List(t, e.bucket, "")
	sort.Strings(k)
	return k
}

// uploads lists the bucket's unfinished multipart uploads.
func (e *env) uploads(t *testing.T) []string {
	t.Helper()
	out, err := e.mio.Client.ListMultipartUploads(context.Background(), &s3.ListMultipartUploadsInput{Bucket: aws.String(e.bucket)})
	if err != nil {
		t.Fatalf("listing multipart uploads: %v", err)
	}
	var ids []string
	for _, u := range out.Uploads {
		ids = append(ids, aws.ToString(u.Key)+" "+aws.ToString(u.UploadId))
	}
	return ids
}

// assertClean fails unless the bucket has no object and no unfinished upload.
func (e *env) assertClean(t *testing.T) {
	t.Helper()
	if k := e.keys(t); len(k) != 0 {
		t.Errorf("objects are visible: %v", k)
	}
	if u := e.uploads(t); len(u) != 0 {
		t.Errorf("unfinished multipart uploads remain: %v", u)
	}
}

func gunzip(t testing.TB, b []byte) []byte {
	t.Helper()
	r, err := gzip.NewReader(bytes.NewReader(b))
	if err != nil {
		t.Fatalf("gzip: %v", err)
	}
	out, err := io.ReadAll(r)
	if err != nil {
		t.Fatalf("gunzip: %v", err)
	}
	return out
}

func write(t *testing.T, d *Destination, batches ...[]mapper.Message) {
	t.Helper()
	for _, b := range batches {
		if err := d.Write(context.Background(), b); err != nil {
			t.Fatalf("Write: %v", err)
		}
	}
}

func batches(msgs []mapper.Message, size int) [][]mapper.Message {
	var out [][]mapper.Message
	for len(msgs) > 0 {
		n := min(size, len(msgs))
		out = append(out, msgs[:n])
		msgs = msgs[n:]
	}
	return out
}
