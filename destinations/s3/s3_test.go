package s3

import (
	"bufio"
	"bytes"
	"context"
	"encoding/csv"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/keytemplate"
	"github.com/backflowhq/backflow/mapper"
)

// wantKey is the key of part with the test config's template.
func wantKey(part int, ext string) string {
	return fmt.Sprintf("out/users/2025_04_14/run1-%d.%s", part, ext)
}

func TestJSONL(t *testing.T) {
	for _, gz := range []bool{false, true} {
		t.Run(fmt.Sprintf("gzip=%t", gz), func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg("jsonl")
			ext := "jsonl"
			if gz {
				optsOf(cfg).Compression = "gzip"
				ext = "jsonl.gz"
			}
			d := e.newDest(t, cfg, tuning{})
			msgs := testMessages("j", 250)
			write(t, d, batches(msgs, 100)...)
			if k := e.keys(t); len(k) != 0 {
				t.Fatalf("objects visible before Flush: %v", k)
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			if got, want := e.keys(t), []string{wantKey(0, ext)}; !equal(got, want) {
				t.Fatalf("keys = %v, want %v", got, want)
			}
			data := e.mio.Get(t, e.bucket, wantKey(0, ext))
			if gz {
				data = gunzip(t, data)
			}
			lines := bytes.Split(bytes.TrimSuffix(data, []byte("\n")), []byte("\n"))
			if len(lines) != len(msgs) {
				t.Fatalf("%d lines, want %d", len(lines), len(msgs))
			}
			for i, l := range lines {
				if !bytes.Equal(l, msgs[i].JSON) {
					t.Fatalf("line %d = %s, want %s", i, l, msgs[i].JSON)
				}
			}
			if err := d.Close(context.Background()); err != nil {
				t.Fatalf("Close after Flush: %v", err)
			}
			e.assertClean2(t, 1)
		})
	}
}

// assertClean2 checks that no multipart upload is left and n objects exist.
func (e *env) assertClean2(t *testing.T, n int) {
	t.Helper()
	if u := e.uploads(t); len(u) != 0 {
		t.Errorf("unfinished multipart uploads remain: %v", u)
	}
	if k := e.keys(t); len(k) != n {
		t.Errorf("%d objects (%v), want %d", len(k), k, n)
	}
}

func equal(a, b []string) bool { return strings.Join(a, "\n") == strings.Join(b, "\n") }

// readCSV parses an object and returns its header and rows.
func readCSV(t *testing.T, data []byte, delim rune) ([]string, [][]string) {
	t.Helper()
	r := csv.NewReader(bytes.NewReader(data))
	r.Comma = delim
	recs, err := r.ReadAll()
	if err != nil {
		t.Fatalf("parsing CSV: %v\n%s", err, data)
	}
	if len(recs) == 0 {
		t.Fatal("empty CSV")
	}
	return recs[0], recs[1:]
}

func checkCSVRows(t *testing.T, header []string, rows [][]string, msgs []mapper.Message) {
	t.Helper()
	if len(rows) != len(msgs) {
		t.Fatalf("%d rows, want %d", len(rows), len(msgs))
	}
	for i, m := range msgs {
		want := expectedColumns(t, m)
		for c, name := range header {
			w, ok := want[name]
			if !ok {
				if rows[i][c] != "" {
					t.Errorf("row %d column %s = %q, want empty", i, name, rows[i][c])
				}
				continue
			}
			if !sameValue(t, rows[i][c], w) {
				t.Errorf("row %d column %s = %q, want %v", i, name, rows[i][c], w)
			}
			delete(want, name)
		}
		for name := range want {
			t.Errorf("row %d: no column %s", i, name)
		}
	}
}

func TestCSV(t *testing.T) {
	tests := []struct {
		delim    string
		r        rune
		gzip     bool
		quoteAll bool
	}{
		{",", ',', false, false},
		{"|", '|', true, false},
		{"tab", '\t', false, true},
	}
	for _, tt := range tests {
		t.Run(fmt.Sprintf("%s/gzip=%t/quote_all=%t", tt.delim, tt.gzip, tt.quoteAll), func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg("csv")
			optsOf(cfg).CSV = CSV{Delimiter: tt.delim, QuoteAll: tt.quoteAll}
			ext := "csv"
			if tt.gzip {
				optsOf(cfg).Compression = "gzip"
				ext = "csv.gz"
			}
			d := e.newDest(t, cfg, tuning{})
			msgs := testMessages("c", 90)
			write(t, d, batches(msgs, 40)...)
			if err := d.Flush(context.Background()); err != nil {
				t.Fatalf("Flush: %v", err)
			}
			data := e.mio.Get(t, e.bucket, wantKey(0, ext))
			if tt.gzip {
				data = gunzip(t, data)
			}
			header, rows := readCSV(t, data, tt.r)
			wantHeader := "type,userId,anonymousId,groupId,event,timestamp,messageId,email,plan,amount,big,active,address.city,address.zip,address.geo.lat,tags,note,missing,n,traits.type,empty,properties.type"
			if got := strings.Join(header, ","); got != wantHeader {
				t.Fatalf("header = %s\nwant     %s", got, wantHeader)
			}
			checkCSVRows(t, header, rows, msgs)
			firstLine, _, _ := strings.Cut(string(data), "\n")
			if tt.quoteAll && !strings.HasPrefix(firstLine, `"type"`+string(tt.r)+`"userId"`) {
				t.Errorf("quote_all: header line %q is not quoted", firstLine)
			}
			if !tt.quoteAll && !strings.HasPrefix(firstLine, "type"+string(tt.r)+"userId") {
				t.Errorf("header line %q is quoted", firstLine)
			}
			e.assertClean2(t, 1)
		})
	}
}

func TestCSVNullAndEmpty(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("csv")
	optsOf(cfg).CSV.QuoteAll = true
	d := e.newDest(t, cfg, tuning{})
	write(t, d, []mapper.Message{newMsg("identify", "m1", "u1", `{"a":"","b":null}`, "")})
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	got := string(e.mio.Get(t, e.bucket, wantKey(0, "csv")))
	want := `"type","userId","anonymousId","groupId","event","timestamp","messageId","a","b"` + "\n" +
		`"identify","u1",,,,,"m1","",` + "\n"
	if got != want {
		t.Errorf("got\n%s\nwant\n%s", got, want)
	}
}

// TestColumnsWiden: a message with a key the object lacks completes the object and the
// next one has the wider set of columns.
func TestColumnsWiden(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("csv"), tuning{})
	first := []mapper.Message{newMsg("identify", "m1", "u1", `{"a":1}`, ""), newMsg("identify", "m2", "u2", `{"a":2}`, "")}
	second := []mapper.Message{newMsg("identify", "m3", "u3", `{"a":3}`, ""), newMsg("identify", "m4", "u4", `{"b":"x","a":4}`, ""),
		newMsg("identify", "m5", "u5", `{"c":true}`, "")}
	write(t, d, first, second)
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := e.keys(t), []string{wantKey(0, "csv"), wantKey(1, "csv")}; !equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	h0, r0 := readCSV(t, e.mio.Get(t, e.bucket, wantKey(0, "csv")), ',')
	h1, r1 := readCSV(t, e.mio.Get(t, e.bucket, wantKey(1, "csv")), ',')
	if got := strings.Join(h0[numFieldColumns:], ","); got != "a" {
		t.Errorf("object 0 columns %q, want a", got)
	}
	// The rest of the batch widens the next object at once: b and c, not one object each.
	if got := strings.Join(h1[numFieldColumns:], ","); got != "a,b,c" {
		t.Errorf("object 1 columns %q, want a,b,c", got)
	}
	checkCSVRows(t, h0, r0, append(first, second[0]))
	checkCSVRows(t, h1, r1, second[1:])
}

func TestMaxObjectRows(t *testing.T) {
	for _, format := range []string{"jsonl", "csv", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(format)
			optsOf(cfg).MaxObjectRows = 10
			d := e.newDest(t, cfg, tuning{})
			msgs := testMessages("r", 25)
			write(t, d, batches(msgs, 7)...)
			// Two objects are complete (and visible) already; the third waits for Commit.
			if got := len(e.keys(t)); got != 2 {
				t.Fatalf("%d objects before Flush, want 2", got)
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			want := []string{wantKey(0, format), wantKey(1, format), wantKey(2, format)}
			if got := e.keys(t); !equal(got, want) {
				t.Fatalf("keys = %v, want %v", got, want)
			}
			for part, n := range []int{10, 10, 5} {
				data := e.mio.Get(t, e.bucket, want[part])
				chunk := msgs[part*10 : part*10+n]
				switch format {
				case "jsonl":
					if lines := bytes.Count(data, []byte("\n")); lines != n {
						t.Errorf("%s: %d rows, want %d", want[part], lines, n)
					}
				case "csv":
					h, rows := readCSV(t, data, ',')
					checkCSVRows(t, h, rows, chunk)
				case "parquet":
					checkParquet(t, data, chunk)
				}
			}
			e.assertClean2(t, 3)
		})
	}
}

func TestFlushCycles(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("jsonl"), tuning{})
	if err := d.Flush(context.Background()); err != nil {
		t.Fatalf("Flush with nothing written: %v", err)
	}
	if k := e.keys(t); len(k) != 0 {
		t.Fatalf("an empty Flush wrote %v", k)
	}
	msgs := testMessages("cy", 6)
	write(t, d, msgs[:3])
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	write(t, d, msgs[3:])
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := e.keys(t), []string{wantKey(0, "jsonl"), wantKey(1, "jsonl")}; !equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	if err := d.Close(context.Background()); err != nil {
		t.Fatal(err)
	}
	if err := d.Write(context.Background(), msgs); !errors.Is(err, destinations.ErrClosed) {
		t.Fatalf("Write after Close = %v, want ErrClosed", err)
	}
}

// TestMultipart writes objects larger than one part (5 MiB) so that parts upload while
// Write runs, and reads them back whole.
func TestMultipart(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("jsonl")
	d := e.newDest(t, cfg, tuning{partSize: 5 << 20, partsInFlight: 2})
	msgs := largeMessages("mp", 9000, 1400) // ~13 MiB: three parts
	var size int
	for _, m := range msgs {
		size += len(m.JSON) + 1
	}
	write(t, d, batches(msgs, 500)...)
	if d.obj == nil || d.obj.up.uploadID == "" {
		t.Fatal("no multipart upload started while writing")
	}
	if k := e.keys(t); len(k) != 0 {
		t.Fatalf("objects visible before Flush: %v", k)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	data := e.mio.Get(t, e.bucket, wantKey(0, "jsonl"))
	if len(data) != size {
		t.Fatalf("object is %d bytes, want %d", len(data), size)
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	sc.Buffer(nil, 1<<20)
	for i := 0; sc.Scan(); i++ {
		if !bytes.Equal(sc.Bytes(), msgs[i].JSON) {
			t.Fatalf("line %d differs", i)
		}
	}
	e.assertClean2(t, 1)
}

// largeMessages are track messages with a body of about pad bytes.
func largeMessages(prefix string, n, pad int) []mapper.Message {
	msgs := make([]mapper.Message, n)
	fill := strings.Repeat("x", pad)
	for i := range msgs {
		body := fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, fill)
		msgs[i] = newMsg("track", fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("u%d", i), body, "")
	}
	return msgs
}

// TestCloseWithoutCommitAborts: a multipart upload with parts already uploaded is
// aborted by Close; nothing is visible and no upload remains.
func TestCloseWithoutCommitAborts(t *testing.T) {
	for _, format := range []string{"jsonl", "csv", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			d := e.newDest(t, e.cfg(format), tuning{partSize: 5 << 20})
			msgs := largeMessages("cl", 9000, 1400)
			write(t, d, batches(msgs, 1000)...)
			if format != "parquet" && d.obj.up.uploadID == "" {
				t.Fatal("no multipart upload started")
			}
			err := d.Close(context.Background())
			if err == nil || !strings.Contains(err.Error(), "9000 accepted messages are not acknowledged") {
				t.Fatalf("Close = %v, want it to count 9000 uncommitted messages", err)
			}
			e.assertClean(t)
		})
	}
}

// TestCancelDuringWrite cancels the Write's context while a part is uploading: the
// object is aborted, the messages accepted before are reported lost, and nothing remains.
func TestCancelDuringWrite(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hook := &hookClient{s3API: e.mio.Client}
	hook.uploadPart = func(callCtx context.Context, n int32) error {
		cancel()
		<-callCtx.Done() // the cancellation reaches the request
		return nil
	}
	// One part in flight: the Write must wait for the hooked part, so the cancellation
	// happens during the Write.
	d := e.newDest(t, e.cfg("jsonl"), tuning{partSize: 5 << 20, partsInFlight: 1, client: hook})
	msgs := largeMessages("cx", 12000, 1400)
	write(t, d, msgs[:100]) // accepted
	err := d.Write(ctx, msgs[100:])
	if err == nil || !strings.Contains(err.Error(), "100 accepted messages were lost") {
		t.Fatalf("Write = %v, want the loss of 100 accepted messages", err)
	}
	if err := d.Flush(context.Background()); err == nil {
		t.Fatal("Commit succeeded after accepted messages were lost")
	}
	if err := d.Close(context.Background()); err == nil {
		t.Fatal("Close reported nothing")
	}
	e.assertClean(t)
}

// TestCancelledBeforeWrite: a context that is done before Write starts costs nothing:
// the open object is kept and commits.
func TestCancelledBeforeWrite(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("jsonl"), tuning{})
	msgs := testMessages("cb", 4)
	write(t, d, msgs[:2])
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.Write(ctx, msgs[2:]); !errors.Is(err, context.Canceled) {
		t.Fatalf("Write = %v, want context.Canceled", err)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if n := bytes.Count(e.mio.Get(t, e.bucket, wantKey(0, "jsonl")), []byte("\n")); n != 2 {
		t.Fatalf("%d messages committed, want 2", n)
	}
}

// TestPartFailure: an UploadPart the store refuses fails the Write (or the Commit) and
// leaves nothing behind.
func TestPartFailure(t *testing.T) {
	e := newEnv(t)
	hook := &hookClient{s3API: e.mio.Client}
	hook.uploadPart = func(_ context.Context, n int32) error {
		if n == 2 {
			return errors.New("injected failure")
		}
		return nil
	}
	d := e.newDest(t, e.cfg("jsonl"), tuning{partSize: 5 << 20, client: hook})
	msgs := largeMessages("pf", 12000, 1400) // 4 parts
	var err error
	for _, b := range batches(msgs, 500) {
		if err = d.Write(context.Background(), b); err != nil {
			break
		}
	}
	if err == nil {
		err = d.Flush(context.Background())
	}
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("error = %v, want the injected failure", err)
	}
	_ = d.Close(context.Background())
	e.assertClean(t)
}

// TestLostCreateResponse: CreateMultipartUpload succeeds on the server but its answer
// is lost; the abort finds the upload by its key and removes it.
func TestLostCreateResponse(t *testing.T) {
	e := newEnv(t)
	hook := &hookClient{s3API: e.mio.Client, loseCreate: true}
	d := e.newDest(t, e.cfg("jsonl"), tuning{partSize: 5 << 20, client: hook})
	err := d.Write(context.Background(), largeMessages("lc", 5000, 1400))
	if err == nil || !strings.Contains(err.Error(), "answer lost") {
		t.Fatalf("Write = %v, want the lost answer", err)
	}
	if len(hook.created) != 1 {
		t.Fatalf("%d uploads created, want 1", len(hook.created))
	}
	e.assertClean(t)
	// Nothing was accepted before: the destination goes on with the next object.
	write(t, d, testMessages("lc2", 3))
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	e.assertClean2(t, 1)
}

// hookClient is the real MinIO client with injection points.
type hookClient struct {
	s3API
	uploadPart func(ctx context.Context, part int32) error
	loseCreate bool
	mu         sync.Mutex
	created    []string
}

func (h *hookClient) UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	if h.uploadPart != nil {
		if err := h.uploadPart(ctx, *in.PartNumber); err != nil {
			return nil, err
		}
	}
	return h.s3API.UploadPart(ctx, in, opts...)
}

func (h *hookClient) CreateMultipartUpload(ctx context.Context, in *s3.CreateMultipartUploadInput, opts ...func(*s3.Options)) (*s3.CreateMultipartUploadOutput, error) {
	out, err := h.s3API.CreateMultipartUpload(ctx, in, opts...)
	if err == nil {
		h.mu.Lock()
		h.created = append(h.created, *out.UploadId)
		h.mu.Unlock()
		if h.loseCreate {
			h.loseCreate = false
			return nil, errors.New("answer lost")
		}
	}
	return out, err
}

func TestConcurrentWrites(t *testing.T) {
	for _, format := range []string{"jsonl", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(format)
			optsOf(cfg).MaxObjectRows = 300
			d := e.newDest(t, cfg, tuning{})
			const writers, perWriter = 8, 120
			var wg sync.WaitGroup
			errs := make(chan error, writers)
			all := make([][]mapper.Message, writers)
			for w := range writers {
				all[w] = testMessages(fmt.Sprintf("w%d", w), perWriter)
				wg.Add(1)
				go func() {
					defer wg.Done()
					for _, b := range batches(all[w], 15) {
						if err := d.Write(context.Background(), b); err != nil {
							errs <- err
							return
						}
					}
				}()
			}
			wg.Wait()
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			keys := e.keys(t)
			if len(keys) != writers*perWriter/300+1 {
				t.Fatalf("%d objects: %v", len(keys), keys)
			}
			seen := map[string]int{}
			for _, k := range keys {
				data := e.mio.Get(t, e.bucket, k)
				var ids []string
				if format == "jsonl" {
					for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
						ids = append(ids, string(bytes.Split(bytes.Split(l, []byte(`"messageId":"`))[1], []byte(`"`))[0]))
					}
				} else {
					ids = parquetColumn(t, data, "messageId")
				}
				for _, id := range ids {
					seen[id]++
				}
			}
			for w := range writers {
				for _, m := range all[w] {
					if seen[m.ID] != 1 {
						t.Fatalf("message %s written %d times", m.ID, seen[m.ID])
					}
				}
			}
			if len(seen) != writers*perWriter {
				t.Fatalf("%d distinct messages, want %d", len(seen), writers*perWriter)
			}
		})
	}
}

func TestRejectsUnreadableBody(t *testing.T) {
	for _, format := range []string{"csv", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			d := e.newDest(t, e.cfg(format), tuning{})
			msgs := testMessages("rj", 4)
			bad := newMsg("identify", "bad", "ub", `{"a":`, "")
			batch := []mapper.Message{msgs[0], msgs[1], bad, msgs[2], msgs[3]}
			err := d.Write(context.Background(), batch)
			var be *destinations.BatchError
			if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 2 {
				t.Fatalf("Write = %v, want a BatchError for index 2", err)
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			data := e.mio.Get(t, e.bucket, wantKey(0, format))
			if format == "csv" {
				h, rows := readCSV(t, data, ',')
				checkCSVRows(t, h, rows, msgs)
			} else {
				checkParquet(t, data, msgs)
			}
		})
	}
}

func TestCSVQuoting(t *testing.T) {
	for _, tt := range []struct {
		in       string
		quoteAll bool
		want     string
	}{
		{"plain", false, "plain"},
		{"", false, ""},
		{"a,b", false, `"a,b"`},
		{`say "hi"`, false, `"say ""hi"""`},
		{"two\nlines", false, "\"two\nlines\""},
		{"cr\r", false, "\"cr\r\""},
		{" lead", false, `" lead"`},
		{"trail\t", false, "\"trail\t\""},
		{"a|b", false, "a|b"},
		{"plain", true, `"plain"`},
		{"", true, `""`},
	} {
		if got := string(appendCSVField(nil, tt.in, ',', tt.quoteAll)); got != tt.want {
			t.Errorf("appendCSVField(%q, quoteAll=%t) = %s, want %s", tt.in, tt.quoteAll, got, tt.want)
		}
	}
	if got := string(appendCSVField(nil, []byte("a|b"), '|', false)); got != `"a|b"` {
		t.Errorf("pipe delimiter: %s", got)
	}
}

func TestCheck(t *testing.T) {
	e := newEnv(t)
	e.mio.Put(t, e.bucket, "proof/backflow.txt", []byte("mine"))
	cfg := e.cfg("jsonl")
	optsOf(cfg).VerifyObject = "proof/backflow.txt"
	d := e.newDest(t, cfg, tuning{})
	if err := d.Check(context.Background()); err != nil {
		t.Fatalf("Check: %v", err)
	}
	optsOf(cfg).VerifyObject = "proof/missing.txt"
	d = e.newDest(t, cfg, tuning{})
	err := d.Check(context.Background())
	if err == nil || !strings.Contains(err.Error(), "verify_object s3://"+e.bucket+"/proof/missing.txt does not exist") {
		t.Fatalf("Check = %v, want the missing verify_object named", err)
	}
	cfg = e.cfg("jsonl")
	optsOf(cfg).URL = "s3://no-such-bucket-bf/x/"
	d = e.newDest(t, cfg, tuning{})
	if err := d.Check(context.Background()); err == nil || !strings.Contains(err.Error(), "s3://no-such-bucket-bf") {
		t.Fatalf("Check = %v, want the bucket named", err)
	}
	cfg = e.cfg("jsonl")
	optsOf(cfg).Auth.SecretAccessKey = "wrong-secret"
	d = e.newDest(t, cfg, tuning{})
	// The diagnosis the source gives for the same wrong secret: bad credentials, not
	// the bare "access denied" of a HEAD request.
	if err := d.Check(context.Background()); err == nil || strings.Contains(err.Error(), "wrong-secret") || !strings.Contains(err.Error(), "bad credentials") {
		t.Fatalf("Check with a bad secret = %v, want bad credentials, without the secret", err)
	}
	if u := e.uploads(t); len(u) != 0 {
		t.Fatalf("Check left uploads: %v", u)
	}
	if got := e.keys(t); !equal(got, []string{"proof/backflow.txt"}) {
		t.Fatalf("Check wrote objects: %v", got)
	}
}

func TestKeyMacros(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("jsonl")
	optsOf(cfg).URL = "s3://" + e.bucket + "/lake" // no trailing slash: one is added
	optsOf(cfg).Key = "{stream_name}/{stream_id}/{connection_id}/{iso_date}/{hour}{minute}{second}/{stream_run_id}-{part}.{extension}"
	d := e.newDest(t, cfg, tuning{})
	write(t, d, testMessages("k", 1))
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	want := "lake/users/" + stableID("stream", "users") + "/" + stableID("connection", "users", "lake") +
		"/2025-04-14/112345/run1-0.jsonl"
	if got := e.keys(t); !equal(got, []string{want}) {
		t.Fatalf("keys = %v, want %s", got, want)
	}
	// The ids never change (keys written by earlier versions keep their meaning; the
	// documentation shows these values) and differ by sync and destination.
	if stableID("stream", "users") != "491083f7f54ecd2e" || stableID("connection", "users", "lake") != "b757822375ce6030" {
		t.Fatalf("stable ids changed: %s %s", stableID("stream", "users"), stableID("connection", "users", "lake"))
	}
	if stableID("stream", "users") == stableID("stream", "orders") ||
		stableID("connection", "users", "a") == stableID("connection", "users", "b") {
		t.Fatal("stable ids are not stable or not distinct")
	}
}

func TestNewRefuses(t *testing.T) {
	base := Options{URL: "s3://b/p/", Key: keytemplate.Default, Format: "jsonl",
		S3Options: config.S3Options{Endpoint: "http://127.0.0.1:1", Region: "us-east-1", Auth: config.Auth{Mode: "keys", AccessKeyID: "a", SecretAccessKey: "b"}}}
	tests := []struct {
		name string
		mod  func(*Options)
		env  func(*destinations.Env)
		want string
	}{
		{"bad url", func(c *Options) { c.URL = "http://b/p" }, nil, "must be s3://bucket/prefix"},
		{"bad format", func(c *Options) { c.Format = "xml" }, nil, `format "xml"`},
		{"gzip parquet", func(c *Options) { c.Format = "parquet"; c.Compression = "gzip" }, nil, "gzip is not used with format parquet"},
		{"bad delimiter", func(c *Options) { c.Format = "csv"; c.CSV.Delimiter = ";" }, nil, "csv.delimiter"},
		{"bad key", func(c *Options) { c.Key = "{nope}" }, nil, "unknown macro {nope}"},
		{"run id with a space", nil, func(e *destinations.Env) { e.RunID = "a b" }, "contains a space"},
		{"key over 1024 bytes", func(c *Options) { c.URL = "s3://b/" + strings.Repeat("p", 1000) }, nil, "over S3's limit of 1024"},
	}
	for _, tt := range tests {
		t.Run(tt.name, func(t *testing.T) {
			o := base
			if tt.mod != nil {
				tt.mod(&o)
			}
			cfg := config.Destination{Type: "s3", Options: &o}
			env := testEnv()
			if tt.env != nil {
				tt.env(&env)
			}
			_, err := New(context.Background(), cfg, env)
			if err == nil || !strings.Contains(err.Error(), tt.want) {
				t.Fatalf("New = %v, want an error containing %q", err, tt.want)
			}
		})
	}
}
