package kafka

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"runtime/metrics"
	"strconv"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/mapper"
)

// TestFigures measures rows per second, peak RSS and peak live heap of writing 1M
// messages (~200 bytes, 10 properties) to kafka — an in-process kfake broker on
// 127.0.0.1 that acknowledges and discards (BlackholeProduce, so that its storage is
// not in the figures; it still checks the idempotent sequences and advances offsets) —
// and, in the same run, to the file destination, one Write after the other as the
// pipeline writes with max_in_flight 1:
//
//	BACKFLOW_FIGURES=1 go test -run TestFigures -v ./destinations/kafka/
//
// BACKFLOW_FIGURES_MESSAGES=N writes N messages instead. The broker runs in the same
// process and on the same cores as the producer: a remote cluster's round trips are
// slower, its CPU is not ours.
func TestFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	total := 1_000_000
	if n, err := strconv.Atoi(os.Getenv("BACKFLOW_FIGURES_MESSAGES")); err == nil && n > 0 {
		total = n
	}
	type run struct {
		name        string
		batch       int
		compression string // "": the file destination
	}
	runs := []run{
		{"file", 5000, ""},
		{"kafka", DefaultBatchSize, CompressionSnappy},
		{"kafka", 5000, CompressionSnappy},
		{"kafka", DefaultBatchSize, CompressionNone},
		{"kafka", DefaultBatchSize, CompressionLZ4},
	}
	for _, r := range runs {
		t.Run(fmt.Sprintf("%s-%d-%s", r.name, r.batch, r.compression), func(t *testing.T) {
			var d destinations.Destination
			var k *cluster
			var path string
			if r.compression == "" {
				path = filepath.Join(t.TempDir(), "out.jsonl")
				cfg := config.Destination{Type: file.Type, Name: file.Type, BatchSize: r.batch, MaxInFlight: 1, Options: &file.Options{Path: path}}
				raw, err := file.New(context.Background(), cfg, destinations.Env{})
				if err != nil {
					t.Fatal(err)
				}
				d = destinations.Wrap(raw, cfg, nil)
			} else {
				k = newCluster(t, kfake.BlackholeProduce())
				o := k.options()
				o.Compression = r.compression
				cfg := testConfig(o)
				cfg.BatchSize = r.batch
				raw, err := New(context.Background(), cfg, destinations.Env{})
				if err != nil {
					t.Fatal(err)
				}
				d = destinations.Wrap(raw, cfg, nil)
			}
			runtime.GC()
			debug.FreeOSMemory()
			testutil.ResetPeakRSS(t)
			before := testutil.ProcStatus(t, "VmRSS")
			heap := sampleHeap()
			start := time.Now()
			var in int64
			for sent := 0; sent < total; sent += r.batch {
				msgs := figureBatch(sent, min(r.batch, total-sent))
				for i := range msgs {
					in += int64(len(msgs[i].JSON))
				}
				if err := d.Write(context.Background(), msgs); err != nil {
					t.Fatal(err)
				}
			}
			if err := d.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			elapsed := time.Since(start)
			peakHeap := heap()
			peak := testutil.ProcStatus(t, "VmHWM")
			if k != nil {
				var n int64
				for _, e := range k.endOffsets(context.Background()) {
					n += e
				}
				if n != int64(total) {
					t.Fatalf("the broker acknowledged %d records, want %d", n, total)
				}
			} else if st, err := os.Stat(path); err != nil || st.Size() != in+int64(total) {
				t.Fatalf("file of %v bytes (%v), want %d", st.Size(), err, in+int64(total))
			}
			t.Logf("%s batch %d %s: %d messages (%.0f bytes each) in %s: %.0f k rows/s, %.1f MB/s; RSS %d MiB before, peak %d MiB (growth %d MiB); peak live heap %d MiB",
				r.name, r.batch, r.compression, total, float64(in)/float64(total), elapsed.Round(time.Millisecond),
				float64(total)/elapsed.Seconds()/1000, float64(in)/1e6/elapsed.Seconds(), before>>10, peak>>10, (peak-before)>>10, peakHeap>>20)
		})
	}
}

// sampleHeap samples the live heap every 10 ms until the returned func is called, which
// returns the largest sample.
func sampleHeap() func() uint64 {
	var peak atomic.Uint64
	stop := make(chan struct{})
	var wg sync.WaitGroup
	s := []metrics.Sample{{Name: "/memory/classes/heap/objects:bytes"}}
	read := func() {
		metrics.Read(s)
		if v := s[0].Value.Uint64(); v > peak.Load() {
			peak.Store(v)
		}
	}
	wg.Go(func() {
		tick := time.NewTicker(10 * time.Millisecond)
		defer tick.Stop()
		for {
			select {
			case <-stop:
				return
			case <-tick.C:
				read()
			}
		}
	})
	return func() uint64 {
		close(stop)
		wg.Wait()
		read()
		return peak.Load()
	}
}

var plans = []string{"free", "pro", "team", "enterprise"}

// figureBatch makes n track messages of about 200 bytes with 10 properties, numbered
// from first, in memory of their own that the caller drops (as the pipeline drops a
// batch once it is acknowledged).
func figureBatch(first, n int) []mapper.Message {
	msgs, buf := make([]mapper.Message, n), make([]byte, 0, n*256)
	for i := range msgs {
		id := first + i
		start := len(buf)
		buf = append(buf, `{"type":"track","userId":"u`...)
		buf = strconv.AppendInt(buf, int64(id%100_000), 10)
		buf = append(buf, `","event":"Order","properties":`...)
		bs := len(buf) - start
		buf = fmt.Appendf(buf, `{"email":"u%d@x.io","plan":"%s","amount":%d.%02d,"active":%t,"city":"Oslo","items":%d,"score":%g,"coupon":null,"src":"dw","n":%d}`,
			id, plans[id%4], id%500, id%100, id%3 == 0, id%7, float64(id%1000)/1000, id)
		be := len(buf) - start
		buf = append(buf, `,"messageId":"`...)
		buf = strconv.AppendInt(buf, int64(id), 36)
		buf = append(buf, `"}`...)
		msgs[i] = mapper.Message{Row: int64(id), Type: "track", Event: "Order",
			UserID: "u" + strconv.Itoa(id%100_000), ID: strconv.FormatInt(int64(id), 36),
			JSON: buf[start:len(buf):len(buf)], BodyStart: bs, BodyEnd: be}
	}
	return msgs
}
