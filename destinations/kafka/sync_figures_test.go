package kafka_test

import (
	"context"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"runtime/debug"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/twmb/franz-go/pkg/kfake"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/pipeline"
	"github.com/backflowhq/backflow/state"
)

// TestSyncFigures measures whole syncs of a 1M-row export (the bundled example's users
// table, 4 files) as `backflow sync` runs them — read, map, deliver, checkpoint — to the
// file destination, to kafka (kfake on 127.0.0.1, discarding what it acknowledges), and
// to both in the same run:
//
//	BACKFLOW_FIGURES=1 go test -run TestSyncFigures -v ./destinations/kafka/
//
// BACKFLOW_FIGURES_ROWS=N reads N rows instead.
func TestSyncFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
	rows := int64(1_000_000)
	if n, err := strconv.ParseInt(os.Getenv("BACKFLOW_FIGURES_ROWS"), 10, 64); err == nil && n > 0 {
		rows = n
	}
	const files = 4
	data := t.TempDir()
	if _, err := exampledata.Write(filepath.Join(data, "data"), exampledata.Options{Files: files, RowsPerFile: rows / files, Seed: 1}); err != nil {
		t.Fatal(err)
	}
	c, err := kfake.NewCluster(kfake.NumBrokers(1), kfake.SeedTopics(6, "users"), kfake.BlackholeProduce())
	if err != nil {
		t.Fatal(err)
	}
	defer c.Close()
	fileDest := "      - type: file\n        path: %s\n"
	kafkaDest := "      - type: kafka\n        brokers: [\"" + c.ListenAddrs()[0] + "\"]\n        topic: users\n"
	for _, tc := range []struct {
		name  string
		dests []string
	}{
		{"file", []string{fileDest}},
		{"kafka", []string{kafkaDest}},
		{"file+kafka", []string{fileDest, kafkaDest}},
	} {
		t.Run(tc.name, func(t *testing.T) {
			dir := t.TempDir()
			yaml := `state:
  url: ` + filepath.Join(dir, "state") + `
syncs:
  - name: users
    source:
      url: ` + filepath.Join(data, "data") + `
    mapping:
      type: identify
      user_id: customer_id
      anonymous_id: anon_id
      timestamp: updated_at
    destinations:
`
			for _, d := range tc.dests {
				if strings.Contains(d, "%s") {
					d = fmt.Sprintf(d, filepath.Join(dir, "out.jsonl"))
				}
				yaml += d
			}
			cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, nil, all.Registry())
			if err != nil {
				t.Fatal(err)
			}
			store, err := state.Open(context.Background(), cfg.State)
			if err != nil {
				t.Fatal(err)
			}
			runtime.GC()
			debug.FreeOSMemory()
			testutil.ResetPeakRSS(t)
			before := testutil.ProcStatus(t, "VmRSS")
			start := time.Now()
			rep, err := pipeline.Run(context.Background(), pipeline.Options{Config: cfg, Sync: &cfg.Syncs[0],
				Registry: all.Registry(), Store: store, Version: "figures"})
			elapsed := time.Since(start)
			if err != nil {
				t.Fatal(err)
			}
			peak := testutil.ProcStatus(t, "VmHWM")
			var delivered []string
			for name, d := range rep.Destinations {
				if d.Delivered != rows {
					t.Errorf("%s: %d rows delivered, want %d", name, d.Delivered, rows)
				}
				delivered = append(delivered, fmt.Sprintf("%s %d", name, d.Delivered))
			}
			t.Logf("sync to %s: %d rows read, delivered %s, in %s: %.0f k rows/s; RSS %d MiB before, peak %d MiB",
				tc.name, rep.Rows.Read, strings.Join(delivered, ", "), elapsed.Round(time.Millisecond),
				float64(rows)/elapsed.Seconds()/1000, before>>10, peak>>10)
		})
	}
}
