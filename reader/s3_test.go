package reader

import (
	"bytes"
	"context"
	"crypto/md5"
	"encoding/hex"
	"errors"
	"fmt"
	"io"
	"math/rand/v2"
	"net"
	"net/http"
	"net/http/httptest"
	"os"
	"reflect"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/testutil"
)

func newS3(t testing.TB, opts config.S3Options, url, include, partition string) *S3Source {
	t.Helper()
	src, err := NewS3Source(context.Background(), config.Source{URL: url, Include: include, Partition: partition, S3: opts}, 1)
	if err != nil {
		t.Fatalf("NewS3Source(%s): %v", url, err)
	}
	return src
}

// putMany uploads keys concurrently, each holding body(key).
func putMany(t testing.TB, m *testutil.MinIO, bucket string, keys []string, body func(string) []byte) {
	t.Helper()
	g, ctx := errgroup.WithContext(context.Background())
	g.SetLimit(16)
	for _, k := range keys {
		g.Go(func() error {
			_, err := m.Client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String(k), Body: bytes.NewReader(body(k))})
			if err != nil {
				return fmt.Errorf("putting %s: %w", k, err)
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		t.Fatal(err)
	}
}

// smallParquet is a real Parquet file of n rows (id int64, name string).
func smallParquet(t testing.TB, n int) []byte {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: arrow.BinaryTypes.String},
	}, nil)
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for i := range n {
		b.Field(0).(*array.Int64Builder).Append(int64(i))
		b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("user-%d", i))
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	var buf bytes.Buffer
	w, err := pqarrow.NewFileWriter(schema, &buf,
		parquet.NewWriterProperties(parquet.WithAllocator(mem), parquet.WithCompression(compress.Codecs.Snappy)),
		pqarrow.NewArrowWriterProperties(pqarrow.WithAllocator(mem)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
	return buf.Bytes()
}

func TestS3ListPagination(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	const n = 1100
	keys := make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("many/d%d/part-%04d.parquet", i%3, i)
	}
	body := func(k string) []byte { return []byte("data of " + k) }
	putMany(t, m, bucket, keys, body)
	// A sibling whose name starts like the prefix is not below it.
	m.Put(t, bucket, "many2/x.parquet", []byte("x"))

	// The prefix is a folder, with or without its trailing slash.
	src := newS3(t, m.Options(), "s3://"+bucket+"/many", "", "")
	if want := "s3://" + bucket + "/many/"; src.String() != want {
		t.Errorf("String() = %q, want %q", src.String(), want)
	}
	l, err := src.List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if len(l.Objects) != n || len(l.Skipped) != 0 {
		t.Fatalf("listed %d objects and skipped %d, want %d and 0", len(l.Objects), len(l.Skipped), n)
	}
	for i, o := range l.Objects {
		if i > 0 && l.Objects[i-1].Key >= o.Key {
			t.Fatalf("not sorted at %d: %q then %q", i, l.Objects[i-1].Key, o.Key)
		}
		sum := md5.Sum(body(o.Key))
		if o.ETag != hex.EncodeToString(sum[:]) || o.Size != int64(len(body(o.Key))) || o.LastModified.IsZero() || o.VersionID != "" {
			t.Fatalf("object %+v: want ETag %x without quotes and size %d", o, sum, len(body(o.Key)))
		}
	}
	if st := src.Stats(); st.ListRequests != 2 || st.GetRequests != 0 {
		t.Errorf("stats %+v, want 2 list pages and no GET", st)
	}
}

func TestS3IncludeAndPartition(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	for _, k := range []string{
		"exp/dt=2025-01-9/a.parquet",
		"exp/dt=2025-01-10/a.parquet",
		"exp/dt=2025-01-10/b.parquet",
		"exp/dt=2025-01-10/_SUCCESS",
		"exp/dt=2025-01-10/notes.csv",
		"exp/README.txt",
	} {
		m.Put(t, bucket, k, []byte("content"))
	}
	m.Put(t, bucket, "exp/dt=2025-01-10/", nil) // a directory marker, as consoles create
	m.Put(t, bucket, "exp/dt=2025-01-10/empty.parquet", nil)

	l, err := newS3(t, m.Options(), "s3://"+bucket+"/exp/", "", "latest").List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keysOf(l), []string{"exp/dt=2025-01-10/a.parquet", "exp/dt=2025-01-10/b.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("objects = %q, want %q", got, want)
	}
	want := map[string]string{
		"exp/README.txt":                  `not a Parquet file (include "*.parquet")`,
		"exp/dt=2025-01-10/":              "directory marker",
		"exp/dt=2025-01-10/_SUCCESS":      `hidden ("_SUCCESS" starts with "_" or ".": a temporary or marker file)`,
		"exp/dt=2025-01-10/empty.parquet": "empty object (0 bytes)",
		"exp/dt=2025-01-10/notes.csv":     `not a Parquet file (include "*.parquet")`,
		"exp/dt=2025-01-9/a.parquet":      "older partition (latest is dt=2025-01-10/)",
	}
	if got := skippedOf(l); !reflect.DeepEqual(got, want) {
		t.Fatalf("skipped = %q\nwant %q", got, want)
	}

	l, err = newS3(t, m.Options(), "s3://"+bucket+"/exp/", "dt=*/a.*", "all").List(context.Background())
	if err != nil {
		t.Fatal(err)
	}
	if got, want := keysOf(l), []string{"exp/dt=2025-01-10/a.parquet", "exp/dt=2025-01-9/a.parquet"}; !reflect.DeepEqual(got, want) {
		t.Fatalf("include dt=*/a.*: objects = %q, want %q", got, want)
	}
}

// readAll reads the whole blob with ReadAt.
func readAll(t *testing.T, b Blob) []byte {
	t.Helper()
	out := make([]byte, b.Size())
	if n, err := b.ReadAt(out, 0); n != len(out) || (err != nil && err != io.EOF) {
		t.Fatalf("ReadAt whole: n=%d err=%v", n, err)
	}
	return out
}

func TestS3RangedReads(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	data := make([]byte, 300<<10)
	rng := rand.New(rand.NewPCG(1, 2))
	for i := range data {
		data[i] = byte(rng.Uint32())
	}
	m.Put(t, bucket, "r/blob.parquet", data)
	src := newS3(t, m.Options(), "s3://"+bucket+"/r/", "", "")
	ctx := context.Background()
	l, err := src.List(ctx)
	if err != nil || len(l.Objects) != 1 {
		t.Fatalf("list: %+v %v", l, err)
	}
	blob, err := src.Open(ctx, l.Objects[0])
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	size := int64(len(data))
	if blob.Size() != size || src.Stats().GetRequests != 0 {
		t.Fatalf("Open: size %d, stats %+v (Open must not make a request)", blob.Size(), src.Stats())
	}

	// A read before the tail is one GET for exactly its bytes.
	before := src.Stats()
	buf := make([]byte, 1000)
	if n, err := blob.ReadAt(buf, 12345); n != 1000 || err != nil || !bytes.Equal(buf, data[12345:13345]) {
		t.Fatalf("ReadAt(12345): n=%d err=%v, bytes equal %v", n, err, bytes.Equal(buf, data[12345:13345]))
	}
	if d := delta(before, src.Stats()); d.GetRequests != 1 || d.BytesRead != 1000 {
		t.Fatalf("one early read cost %+v, want 1 GET of 1000 bytes", d)
	}

	// A footer (8 bytes, then the metadata before it) costs one GET of the tail.
	before = src.Stats()
	foot := make([]byte, 8)
	if n, err := blob.ReadAt(foot, size-8); n != 8 || err != nil || !bytes.Equal(foot, data[size-8:]) {
		t.Fatalf("ReadAt(footer): n=%d err=%v", n, err)
	}
	meta := make([]byte, 40000)
	if n, err := blob.ReadAt(meta, size-8-40000); n != 40000 || err != nil || !bytes.Equal(meta, data[size-8-40000:size-8]) {
		t.Fatalf("ReadAt(metadata): n=%d err=%v", n, err)
	}
	if d := delta(before, src.Stats()); d.GetRequests != 1 || d.BytesRead != TailSize {
		t.Fatalf("footer cost %+v, want 1 GET of %d bytes", d, TailSize)
	}

	// A read straddling the cached tail fetches only what lies before it.
	before = src.Stats()
	straddle := make([]byte, 10000)
	off := size - TailSize - 3000
	if n, err := blob.ReadAt(straddle, off); n != len(straddle) || err != nil || !bytes.Equal(straddle, data[off:off+10000]) {
		t.Fatalf("straddling read: n=%d err=%v", n, err)
	}
	if d := delta(before, src.Stats()); d.GetRequests != 1 || d.BytesRead != 3000 {
		t.Fatalf("straddling read cost %+v, want 1 GET of 3000 bytes", d)
	}

	// Reads past the end: the bytes there are, then io.EOF.
	n, err := blob.ReadAt(buf, size-10)
	if n != 10 || err != io.EOF || !bytes.Equal(buf[:10], data[size-10:]) {
		t.Fatalf("read over the end: n=%d err=%v", n, err)
	}
	if n, err := blob.ReadAt(buf, size); n != 0 || err != io.EOF {
		t.Fatalf("read at the end: n=%d err=%v", n, err)
	}
	if _, err := blob.ReadAt(buf, -1); err == nil {
		t.Fatal("read at a negative offset succeeded")
	}

	// Concurrent reads all over the object (the race detector watches the tail cache).
	fresh, err := src.Open(ctx, l.Objects[0])
	if err != nil {
		t.Fatal(err)
	}
	defer fresh.Close()
	before = src.Stats()
	var wg sync.WaitGroup
	offsets := make([]int64, 16)
	wantGets := int64(1 + 1) // the tail once, and the head of the whole read below
	for i := range offsets {
		offsets[i] = size - int64(i+1)*19000
		if i%2 == 1 {
			offsets[i] = size - 100 - int64(i)*10 // all in the tail
		}
		if offsets[i] < size-TailSize {
			wantGets++
		}
	}
	for i := range 16 {
		wg.Go(func() {
			off := offsets[i]
			p := make([]byte, 7000)
			n, err := fresh.ReadAt(p, off)
			if err != nil && err != io.EOF {
				t.Errorf("concurrent ReadAt(%d): %v", off, err)
				return
			}
			if !bytes.Equal(p[:n], data[off:off+int64(n)]) {
				t.Errorf("concurrent ReadAt(%d): wrong bytes", off)
			}
		})
	}
	wg.Wait()
	if got := readAll(t, fresh); !bytes.Equal(got, data) {
		t.Fatal("whole read differs")
	}
	// The reads that fall in the tail share one GET.
	if d := delta(before, src.Stats()); d.GetRequests != wantGets {
		t.Errorf("concurrent reads cost %+v, want %d GETs (the tail fetched once)", d, wantGets)
	}
	fresh.Close()
	if _, err := fresh.ReadAt(buf, 0); !errors.Is(err, os.ErrClosed) {
		t.Errorf("read after Close: %v", err)
	}
}

func delta(a, b Stats) Stats {
	return Stats{ListRequests: b.ListRequests - a.ListRequests, GetRequests: b.GetRequests - a.GetRequests, BytesRead: b.BytesRead - a.BytesRead}
}

func TestS3ParquetFooterOneGET(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	data := smallParquet(t, 5000)
	m.Put(t, bucket, "p/users.parquet", data)
	src := newS3(t, m.Options(), "s3://"+bucket+"/p", "", "")
	ctx := context.Background()
	l, err := src.List(ctx)
	if err != nil || len(l.Objects) != 1 {
		t.Fatalf("list: %+v %v", l, err)
	}
	blob, err := src.Open(ctx, l.Objects[0])
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	pf, err := file.NewParquetReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		t.Fatal(err)
	}
	if pf.NumRows() != 5000 || pf.MetaData().Schema.NumColumns() != 2 {
		t.Fatalf("footer: %d rows, %d columns", pf.NumRows(), pf.MetaData().Schema.NumColumns())
	}
	if st := src.Stats(); st.GetRequests != 1 || st.BytesRead != min(TailSize, int64(len(data))) {
		t.Fatalf("footer cost %+v, want one GET of min(64 KiB, size)", st)
	}
}

func TestS3VanishedAndChanged(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	m.Put(t, bucket, "v/gone.parquet", []byte("soon gone"))
	m.Put(t, bucket, "v/rewritten.parquet", []byte("first version"))
	src := newS3(t, m.Options(), "s3://"+bucket+"/v/", "", "")
	ctx := context.Background()
	l, err := src.List(ctx)
	if err != nil || len(l.Objects) != 2 {
		t.Fatalf("list: %+v %v", l, err)
	}
	if _, err := m.Client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: aws.String("v/gone.parquet")}); err != nil {
		t.Fatal(err)
	}
	m.Put(t, bucket, "v/rewritten.parquet", []byte("second version!"))

	blob, err := src.Open(ctx, l.Objects[0])
	if err != nil {
		t.Fatal(err)
	}
	_, err = blob.ReadAt(make([]byte, 4), 0)
	var se *SourceError
	if !errors.Is(err, ErrNotFound) || !errors.As(err, &se) || errors.Is(err, ErrChanged) {
		t.Fatalf("vanished object: %T %v", err, err)
	}
	if want := "s3://" + bucket + "/v/gone.parquet: no such object"; err.Error() != want {
		t.Errorf("error = %q, want %q", err, want)
	}

	blob, err = src.Open(ctx, l.Objects[1])
	if err != nil {
		t.Fatal(err)
	}
	_, err = blob.ReadAt(make([]byte, 4), 0)
	if !errors.Is(err, ErrChanged) || errors.Is(err, ErrNotFound) {
		t.Fatalf("rewritten object: %v", err)
	}
	if !strings.HasPrefix(err.Error(), "s3://"+bucket+"/v/rewritten.parquet: changed since it was listed") {
		t.Errorf("error = %q", err)
	}

	// A cancelled context stops a read, and says so.
	cctx, cancel := context.WithCancel(ctx)
	cancel()
	blob, _ = src.Open(cctx, Object{Key: "v/rewritten.parquet", Size: 15})
	if _, err := blob.ReadAt(make([]byte, 4), 0); !errors.Is(err, context.Canceled) {
		t.Errorf("cancelled read: %v", err)
	}
}

func closedPort(t *testing.T) string {
	t.Helper()
	l, err := net.Listen("tcp", "127.0.0.1:0")
	if err != nil {
		t.Fatal(err)
	}
	addr := l.Addr().String()
	l.Close()
	return addr
}

func TestS3AuthFailures(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	m.Put(t, bucket, "a/x.parquet", []byte("x"))
	const badSecret = "definitely-not-the-secret-42"

	cases := []struct {
		name   string
		opts   func(o *config.S3Options)
		bucket string
		want   string
	}{
		{"wrong access key id", func(o *config.S3Options) { o.Auth.AccessKeyID = "NOSUCHKEYID" }, bucket,
			"s3://" + bucket + "/a/: the access key id is not known to the server (bad credentials)"},
		{"wrong secret", func(o *config.S3Options) { o.Auth.SecretAccessKey = badSecret }, bucket,
			"s3://" + bucket + "/a/: the secret access key does not match the access key id (bad credentials)"},
		{"no such bucket", func(o *config.S3Options) {}, "no-such-bucket-here",
			"s3://no-such-bucket-here/a/: no such bucket"},
		{"unreachable endpoint", func(o *config.S3Options) { o.Endpoint = "http://" + closedPort(t) }, bucket,
			"s3://" + bucket + "/a/: endpoint unreachable: "},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			opts := m.Options()
			c.opts(&opts)
			src := newS3(t, opts, "s3://"+c.bucket+"/a/", "", "")
			_, err := src.List(context.Background())
			var se *SourceError
			if !errors.As(err, &se) {
				t.Fatalf("want *SourceError, got %T %v", err, err)
			}
			msg := err.Error()
			if !strings.HasPrefix(msg, c.want) {
				t.Errorf("error = %q, want prefix %q", msg, c.want)
			}
			if strings.Contains(msg, "\n") || strings.Contains(msg, badSecret) || strings.Contains(msg, m.SecretKey) {
				t.Errorf("error is not one secret-free line: %q", msg)
			}
			t.Logf("%s: %s", c.name, msg)
		})
	}
}

// TestS3RoleAuth assumes a role through MinIO's STS AssumeRole with the root keys as the
// base credentials (from the environment, as the default chain finds them).
func TestS3RoleAuth(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	m.Put(t, bucket, "r/x.parquet", []byte("x"))
	isolateAWSEnv(t)
	t.Setenv("AWS_ACCESS_KEY_ID", m.AccessKey)
	t.Setenv("AWS_SECRET_ACCESS_KEY", m.SecretKey)

	opts := m.Options()
	opts.Auth = config.Auth{Mode: "role", RoleARN: "arn:aws:iam::123456789012:role/backflow", ExternalID: "backflow-external-id"}
	src := newS3(t, opts, "s3://"+bucket+"/r/", "", "")
	l, err := src.List(context.Background())
	if err != nil {
		t.Fatalf("list with an assumed role: %v", err)
	}
	if got := keysOf(l); !reflect.DeepEqual(got, []string{"r/x.parquet"}) {
		t.Fatalf("objects = %q", got)
	}
	blob, err := src.Open(context.Background(), l.Objects[0])
	if err != nil {
		t.Fatal(err)
	}
	if got := readAll(t, blob); string(got) != "x" {
		t.Fatalf("read %q", got)
	}

	// Base credentials the STS endpoint refuses: one line, no secret.
	const badSecret = "not-the-root-secret-99"
	t.Setenv("AWS_SECRET_ACCESS_KEY", badSecret)
	_, err = newS3(t, opts, "s3://"+bucket+"/r/", "", "").List(context.Background())
	var se *SourceError
	if !errors.As(err, &se) {
		t.Fatalf("want *SourceError, got %T %v", err, err)
	}
	msg := err.Error()
	if !strings.Contains(msg, "assum") || strings.Contains(msg, "\n") || strings.Contains(msg, badSecret) {
		t.Errorf("refused role: %q", msg)
	}
	t.Logf("refused role: %s", msg)

	// No credentials anywhere: say so, rather than "access denied".
	t.Setenv("AWS_ACCESS_KEY_ID", "")
	t.Setenv("AWS_SECRET_ACCESS_KEY", "")
	for _, mode := range []string{"role", "default"} {
		opts.Auth.Mode = mode
		_, err = newS3(t, opts, "s3://"+bucket+"/r/", "", "").List(context.Background())
		if !errors.As(err, &se) || !strings.Contains(err.Error(), ": no AWS credentials found") {
			t.Errorf("mode %s without credentials: %v", mode, err)
		}
	}
}

// isolateAWSEnv keeps the developer's AWS files, profile and instance metadata out of a test.
func isolateAWSEnv(t *testing.T) {
	dir := t.TempDir()
	for k, v := range map[string]string{
		"AWS_CONFIG_FILE":             dir + "/config",
		"AWS_SHARED_CREDENTIALS_FILE": dir + "/credentials",
		"AWS_EC2_METADATA_DISABLED":   "true",
		"AWS_PROFILE":                 "",
		"AWS_SESSION_TOKEN":           "",
		"AWS_ROLE_ARN":                "",
		"AWS_WEB_IDENTITY_TOKEN_FILE": "",
	} {
		t.Setenv(k, v)
	}
	_ = os.Unsetenv("AWS_PROFILE")
}

// TestS3BodyResumeAndRangeCheck runs against a small S3-speaking HTTP server that
// misbehaves the way networks and odd stores do: a body cut off halfway is resumed from
// where it stopped, and a server that ignores Range is refused rather than trusted.
func TestS3BodyResumeAndRangeCheck(t *testing.T) {
	data := []byte(strings.Repeat("abcdefghij", 10000))
	var mu sync.Mutex
	var ranges []string
	cut, ignoreRange := true, false
	srv := httptest.NewServer(http.HandlerFunc(func(w http.ResponseWriter, r *http.Request) {
		if r.Method != http.MethodGet || r.URL.Path != "/bkt/k/blob.parquet" {
			http.Error(w, "unexpected request", http.StatusBadRequest)
			return
		}
		mu.Lock()
		ranges = append(ranges, r.Header.Get("Range"))
		doCut, ignore := cut, ignoreRange
		cut = false
		mu.Unlock()
		if ignore {
			w.Header().Set("Content-Length", strconv.Itoa(len(data)))
			_, _ = w.Write(data)
			return
		}
		var a, b int
		if _, err := fmt.Sscanf(r.Header.Get("Range"), "bytes=%d-%d", &a, &b); err != nil {
			http.Error(w, "bad range", http.StatusBadRequest)
			return
		}
		w.Header().Set("Content-Range", fmt.Sprintf("bytes %d-%d/%d", a, b, len(data)))
		w.Header().Set("Content-Length", strconv.Itoa(b-a+1))
		w.WriteHeader(http.StatusPartialContent)
		if doCut {
			_, _ = w.Write(data[a : a+(b-a+1)/2])
			w.(http.Flusher).Flush()
			conn, _, err := w.(http.Hijacker).Hijack()
			if err == nil {
				conn.Close()
			}
			return
		}
		_, _ = w.Write(data[a : b+1])
	}))
	defer srv.Close()

	opts := config.S3Options{Region: "us-east-1", Endpoint: srv.URL, PathStyle: true,
		Auth: config.Auth{Mode: "keys", AccessKeyID: "id", SecretAccessKey: "secret"}}
	src := newS3(t, opts, "s3://bkt/k/", "", "")
	blob, err := src.Open(context.Background(), Object{Key: "k/blob.parquet", Size: int64(len(data))})
	if err != nil {
		t.Fatal(err)
	}
	buf := make([]byte, 20000)
	if n, err := blob.ReadAt(buf, 1000); n != len(buf) || err != nil || !bytes.Equal(buf, data[1000:21000]) {
		t.Fatalf("resumed read: n=%d err=%v equal=%v", n, err, bytes.Equal(buf, data[1000:21000]))
	}
	mu.Lock()
	got := append([]string(nil), ranges...)
	ignoreRange = true
	mu.Unlock()
	if want := []string{"bytes=1000-20999", "bytes=11000-20999"}; !reflect.DeepEqual(got, want) {
		t.Errorf("ranges asked = %q, want %q", got, want)
	}

	_, err = blob.ReadAt(buf, 500)
	var se *SourceError
	if !errors.As(err, &se) || !strings.Contains(err.Error(), "s3://bkt/k/blob.parquet: asked for 20000 bytes at offset 500") {
		t.Errorf("a server ignoring Range: %v", err)
	}
}
