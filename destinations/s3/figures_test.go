package s3

import (
	"context"
	"fmt"
	"os"
	"runtime"
	"runtime/debug"
	"strconv"
	"sync/atomic"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/mapper"
)

// TestFigures measures the throughput and the peak memory of writing 1M messages
// (~200 bytes, 10 properties) to MinIO as gzip JSON lines and as Parquet, with
// WriteDeferred as the pipeline writes, then Flush:
//
//	BACKFLOW_FIGURES=1 BACKFLOW_REQUIRE_INTEGRATION=1 go test -run TestFigures -v ./destinations/s3/
//
// Each batch is freshly allocated and dropped by the caller once WriteDeferred returns,
// as the pipeline drops a batch it no longer has to resend: a destination that kept
// messages (or their JSON) alive would make the peak grow with the run. The peak RSS
// growth is the destination's (part buffers, gzip or a Parquet row group) plus a batch
// or two of garbage. BACKFLOW_FIGURES_MESSAGES=N writes N messages instead (one object,
// which keeps the durable funcs of all its writes): the peak must not depend on N.
func TestFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	total, batch := 1_000_000, 1000
	if n, err := strconv.Atoi(os.Getenv("BACKFLOW_FIGURES_MESSAGES")); err == nil && n > 0 {
		total = n / batch * batch
	}
	for _, tc := range []struct{ format, compression string }{{"jsonl", "gzip"}, {"parquet", "none"}} {
		t.Run(tc.format, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(tc.format)
			optsOf(cfg).Compression = tc.compression
			optsOf(cfg).MaxObjectRows = int64(total)
			d, err := newDestination(context.Background(), cfg, testEnv(), tuning{})
			if err != nil {
				t.Fatal(err)
			}
			gen := newFigureGen(batch)
			runtime.GC()
			debug.FreeOSMemory()
			testutil.ResetPeakRSS(t)
			before := testutil.ProcStatus(t, "VmRSS")
			start := time.Now()
			var in, durable int64
			for sent := 0; sent < total; sent += batch {
				msgs := gen.next(sent)
				for i := range msgs {
					in += int64(len(msgs[i].JSON))
				}
				// Only the count is kept, as the pipeline keeps only what to acknowledge.
				err := d.WriteDeferred(context.Background(), msgs, func() { atomic.AddInt64(&durable, 1) })
				if err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			if n := atomic.LoadInt64(&durable); n != int64(total/batch) {
				t.Fatalf("%d writes durable after Flush, want %d", n, total/batch)
			}
			peak := testutil.ProcStatus(t, "VmHWM")
			if err := d.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			head, err := e.mio.Client.HeadObject(context.Background(), &s3.HeadObjectInput{
				Bucket: aws.String(e.bucket), Key: aws.String(wantKey(0, d.vars.Extension))})
			if err != nil {
				t.Fatal(err)
			}
			mb := float64(in) / 1e6
			t.Logf("%s (%s): %d messages, %.0f MB of message JSON (%.0f bytes each) in %s: %.1f MB/s, %.0f k messages/s; object %.1f MB; RSS %d MiB before, peak %d MiB (growth %d MiB)",
				tc.format, tc.compression, total, mb, float64(in)/float64(total), elapsed.Round(time.Millisecond), mb/elapsed.Seconds(),
				float64(total)/elapsed.Seconds()/1000, float64(aws.ToInt64(head.ContentLength))/1e6, before>>10, peak>>10, (peak-before)>>10)
		})
	}
}

// figureGen makes batches of track messages of about 200 bytes with 10 properties,
// each batch in memory of its own, which the caller drops.
type figureGen struct{ n int }

func newFigureGen(n int) *figureGen { return &figureGen{n: n} }

var plans = []string{"free", "pro", "team", "enterprise"}

func (g *figureGen) next(first int) []mapper.Message {
	msgs, buf := make([]mapper.Message, g.n), make([]byte, 0, g.n*256)
	for i := range msgs {
		n := first + i
		start := len(buf)
		buf = append(buf, `{"type":"track","userId":"u`...)
		buf = strconv.AppendInt(buf, int64(n), 10)
		buf = append(buf, `","event":"Order","properties":`...)
		bs := len(buf) - start
		buf = fmt.Appendf(buf, `{"email":"u%d@x.io","plan":"%s","amount":%d.%02d,"active":%t,"city":"Oslo","items":%d,"score":%g,"coupon":null,"src":"dw","n":%d}`,
			n, plans[n%4], n%500, n%100, n%3 == 0, n%7, float64(n%1000)/1000, n)
		be := len(buf) - start
		buf = append(buf, `,"messageId":"`...)
		buf = strconv.AppendInt(buf, int64(n), 36)
		buf = append(buf, `"}`...)
		msgs[i] = mapper.Message{Row: int64(n), Type: "track", Event: "Order",
			UserID: "u" + strconv.Itoa(n), ID: strconv.FormatInt(int64(n), 36),
			JSON: buf[start:len(buf):len(buf)], BodyStart: bs, BodyEnd: be}
	}
	return msgs
}
