package postgres_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"sync"
	"syscall"
	"testing"
	"time"

	"github.com/jackc/pgx/v5"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/destinations/postgres"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/mapper"
)

// TestFigures measures rows per second and peak memory of writing 1M identify messages
// (~230 bytes, 10 traits) through the registry — destinations.Wrap, batches of 1,000, 4
// in flight, as a run writes — into PostgreSQL with both layouts, and into the file
// destination in the same run for comparison:
//
//	BACKFLOW_FIGURES=1 BACKFLOW_REQUIRE_INTEGRATION=1 go test -count=1 -run TestFigures -v -timeout 30m ./destinations/postgres/
//
// The server is the test's own (fsync and synchronous_commit on, default settings) on
// the same machine; RSS is the test process's (backflow's side), not the server's.
// BACKFLOW_FIGURES_MESSAGES=N writes N messages instead.
func TestFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	total, batch, inFlight := 1_000_000, 1000, 4
	if n, err := strconv.Atoi(os.Getenv("BACKFLOW_FIGURES_MESSAGES")); err == nil && n > 0 {
		total = n / batch * batch
	}
	pg := testutil.StartPostgres(t)
	for _, target := range []string{"file", "postgres columns", "postgres jsonb"} {
		t.Run(strings.ReplaceAll(target, " ", "_"), func(t *testing.T) {
			cfg := config.Destination{Type: file.Type, Name: "out", MaxInFlight: inFlight, BatchSize: batch,
				Options: &file.Options{Path: filepath.Join(t.TempDir(), "out.jsonl")}}
			var db string
			if layout, ok := strings.CutPrefix(target, "postgres "); ok {
				db = pg.NewDatabase(t)
				cfg = config.Destination{Type: postgres.Type, Name: "pg", MaxInFlight: inFlight, BatchSize: batch,
					Options: &postgres.Options{URL: pg.AdminURL(db), Table: "users", Key: "userId", Layout: layout}}
			}
			d, err := all.Registry().New(context.Background(), cfg, destinations.Env{Sync: "figures", Version: "test"})
			if err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			debug.FreeOSMemory()
			testutil.ResetPeakRSS(t)
			before := testutil.ProcStatus(t, "VmRSS")
			var bytesIn int64
			cpu0 := cpuTime()
			start := time.Now()
			batches := make(chan []mapper.Message, inFlight)
			errs := make(chan error, inFlight)
			var wg sync.WaitGroup
			for range inFlight {
				wg.Go(func() {
					for msgs := range batches {
						if err := d.Write(context.Background(), msgs); err != nil {
							errs <- err
							return
						}
					}
				})
			}
			for sent := 0; sent < total; sent += batch {
				msgs := figureBatch(sent, batch)
				for i := range msgs {
					bytesIn += int64(len(msgs[i].JSON))
				}
				batches <- msgs
			}
			close(batches)
			wg.Wait()
			elapsed := time.Since(start)
			cpu := cpuTime() - cpu0
			close(errs)
			for err := range errs {
				t.Fatal(err)
			}
			peak := testutil.ProcStatus(t, "VmHWM")
			if err := d.Close(context.Background()); err != nil {
				t.Fatal(err)
			}
			if db != "" {
				conn, err := pgx.Connect(context.Background(), pg.AdminURL(db))
				if err != nil {
					t.Fatal(err)
				}
				var rows int
				var size string
				err = conn.QueryRow(context.Background(), "SELECT count(*), pg_size_pretty(pg_total_relation_size('users')) FROM users").Scan(&rows, &size)
				conn.Close(context.Background())
				if err != nil || rows != total {
					t.Fatalf("%d rows (%v), want %d", rows, err, total)
				}
				t.Logf("table with its indexes: %s", size)
			}
			t.Logf("%s: %d messages (%.0f bytes each) in %s: %.0f k rows/s; backflow's side used %s of CPU; RSS %d MiB before, peak %d MiB (growth %d MiB)",
				target, total, float64(bytesIn)/float64(total), elapsed.Round(time.Millisecond),
				float64(total)/elapsed.Seconds()/1000, cpu.Round(time.Millisecond), before>>10, peak>>10, (peak-before)>>10)
		})
	}
}

var plans = []string{"free", "pro", "team", "enterprise"}

// figureBatch makes n identify messages with 10 traits, in memory of their own.
func figureBatch(first, n int) []mapper.Message {
	msgs, buf := make([]mapper.Message, n), make([]byte, 0, n*256)
	for i := range msgs {
		k := first + i
		start := len(buf)
		buf = append(buf, `{"type":"identify","userId":"u`...)
		buf = strconv.AppendInt(buf, int64(k), 10)
		buf = append(buf, `","traits":`...)
		bs := len(buf) - start
		buf = fmt.Appendf(buf, `{"email":"u%d@x.io","plan":"%s","ltv":%d.%02d,"active":%t,"address":{"city":"Oslo"},"orders":%d,"score":%g,"coupon":null,"src":"dw","n":%d}`,
			k, plans[k%4], k%500, k%100, k%3 == 0, k%7, float64(k%1000)/1000, k)
		be := len(buf) - start
		buf = append(buf, `,"timestamp":"2024-05-01T10:00:00Z","messageId":"`...)
		ts := len(buf) - start - len(`","messageId":"`) - len("2024-05-01T10:00:00Z")
		buf = strconv.AppendInt(buf, int64(k), 36)
		buf = append(buf, `"}`...)
		msgs[i] = mapper.Message{Row: int64(k), Type: "identify", UserID: "u" + strconv.Itoa(k), ID: strconv.FormatInt(int64(k), 36),
			JSON: buf[start:len(buf):len(buf)], BodyStart: bs, BodyEnd: be, TimestampStart: ts, TimestampEnd: ts + 20}
	}
	return msgs
}

// cpuTime is the CPU time (user and system) this process has used.
func cpuTime() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}
