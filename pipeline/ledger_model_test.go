package pipeline

import (
	"bufio"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"strconv"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/state"
)

// The ledger's invariants, checked against a plain reference model over random runs
// with random batch sizes, partial refusals, destinations that fail, destinations whose
// writes become durable later (or never: a failed flush), and runs cut short at random
// moments:
//
//  1. every checkpoint saved — each one a state a kill could leave — counts a row for a
//     destination only if that destination holds it durably, or the rejects file
//     holding its refusal by that destination was durable before the save;
//  2. each destination's count is its own (1 is checked per destination);
//  3. a last run without faults leaves every row durable or rejected at every
//     destination: whatever was not counted was sent again.

// modelRow is a row of the test data: file index and row.
type modelRow struct{ file, row int }

// modelDest is a fake destination driven by a seeded random source. It records what is
// durable; a deferred one holds accepted writes until it "completes an object".
type modelDest struct {
	name     string
	deferred bool
	rowOf    func(userID string) modelRow

	mu      sync.Mutex
	rng     *rand.Rand
	durable map[modelRow]bool
	pending []pendingWrite // deferred: accepted, not yet durable
	faults  bool
	writes  int
	onWrite func(n int) // after every write (the test cancels runs from here)
}

type pendingWrite struct {
	rows []modelRow
	done func()
}

func (d *modelDest) Write(ctx context.Context, msgs []mapper.Message) error {
	_, err := d.write(msgs, nil)
	return err
}

func (d *modelDest) WriteDeferred(ctx context.Context, msgs []mapper.Message, durable func()) error {
	_, err := d.write(msgs, durable)
	return err
}

// write decides the fate of a batch: accepted whole, some messages refused, or a failure.
func (d *modelDest) write(msgs []mapper.Message, durable func()) ([]modelRow, error) {
	d.mu.Lock()
	d.writes++
	n := d.writes
	var rows []modelRow
	var failed []destinations.Failure
	roll := d.rng.Float64()
	var err error
	switch {
	case d.faults && roll < 0.05:
		err = errors.New("destination is down")
	default:
		for i := range msgs {
			if d.faults && roll < 0.2 && d.rng.Float64() < 0.3 {
				failed = append(failed, destinations.Failure{Index: i, Err: errors.New("HTTP 400 refused")})
				continue
			}
			rows = append(rows, d.rowOf(msgs[i].UserID))
		}
		if len(failed) > 0 {
			err = &destinations.BatchError{Failed: failed}
		}
	}
	var ready []func()
	if err == nil || len(failed) > 0 {
		if durable == nil {
			for _, r := range rows {
				d.durable[r] = true
			}
		} else {
			d.pending = append(d.pending, pendingWrite{rows: rows, done: durable})
			// Now and then an object completes: everything accepted so far is durable.
			if d.rng.Float64() < 0.3 {
				ready = d.completeLocked()
			}
		}
	}
	onWrite := d.onWrite
	d.mu.Unlock()
	for _, f := range ready {
		f()
	}
	if onWrite != nil {
		onWrite(n)
	}
	return rows, err
}

// completeLocked makes the pending writes durable and returns their durable funcs.
func (d *modelDest) completeLocked() []func() {
	var ready []func()
	for _, p := range d.pending {
		for _, r := range p.rows {
			d.durable[r] = true
		}
		ready = append(ready, p.done)
	}
	d.pending = nil
	return ready
}

func (d *modelDest) Flush(ctx context.Context) error {
	d.mu.Lock()
	if d.faults && d.rng.Float64() < 0.2 {
		d.pending = nil // the open object is lost: nothing of it is durable
		d.mu.Unlock()
		return errors.New("completing the object failed")
	}
	ready := d.completeLocked()
	d.mu.Unlock()
	for _, f := range ready {
		f()
	}
	return nil
}

func (d *modelDest) DurableUnit() int { return 0 }

func (d *modelDest) Close(context.Context) error {
	d.mu.Lock()
	defer d.mu.Unlock()
	d.pending = nil
	return nil
}

func (d *modelDest) isDurable(r modelRow) bool {
	d.mu.Lock()
	defer d.mu.Unlock()
	return d.durable[r]
}

type deferredModelDest struct{ *modelDest }

// plainModelDest hides WriteDeferred and Flush.
type plainModelDest struct{ d *modelDest }

func (p plainModelDest) Write(ctx context.Context, msgs []mapper.Message) error {
	return p.d.Write(ctx, msgs)
}
func (p plainModelDest) Close(ctx context.Context) error { return p.d.Close(ctx) }

// checkingStore checks invariant 1 on every Save, before it is written.
type checkingStore struct {
	state.Store
	t       *testing.T
	dir     string
	dests   []*modelDest
	rows    int
	fileKey func(i int) string
	saves   int
	mu      sync.Mutex
}

func (s *checkingStore) Save(ctx context.Context, cp *state.Checkpoint) error {
	s.mu.Lock()
	defer s.mu.Unlock()
	s.saves++
	rejected := readModelRejects(s.t, s.dir)
	for key, f := range cp.Files {
		fi := -1
		for i := 0; ; i++ {
			k := s.fileKey(i)
			if k == "" {
				break
			}
			if k == key {
				fi = i
				break
			}
		}
		if fi < 0 {
			s.t.Errorf("checkpoint names an unknown file %s", key)
			continue
		}
		for _, d := range s.dests {
			set := newRangeSet(f.Acked[d.name], f.AckedRanges[d.name])
			for row := 0; row < s.rows; row++ {
				if !set.contains(int64(row)) {
					continue
				}
				r := modelRow{fi, row}
				if !d.isDurable(r) && !rejected[d.name][r] {
					s.t.Errorf("save %d counts %s row %d for %s, which holds it neither durably nor in a durable rejects file", s.saves, key, row, d.name)
					return errors.New("invariant broken")
				}
			}
		}
	}
	return s.Store.Save(ctx, cp)
}

// readModelRejects reads every rejects file on disk: destination → rows refused by it.
func readModelRejects(t *testing.T, stateDir string) map[string]map[modelRow]bool {
	out := map[string]map[modelRow]bool{}
	paths, _ := filepath.Glob(filepath.Join(stateDir, "rejects", "users", "*.jsonl"))
	for _, p := range paths {
		f, err := os.Open(p)
		if err != nil {
			t.Fatal(err)
		}
		sc := bufio.NewScanner(f)
		sc.Buffer(make([]byte, 1<<20), 1<<20)
		for sc.Scan() {
			var l rejectLine
			if json.Unmarshal(sc.Bytes(), &l) != nil {
				continue // a torn last line is not durable
			}
			idx, err := strconv.Atoi(l.File[len("part-") : len("part-")+5])
			if err != nil {
				t.Fatalf("rejects line names %q", l.File)
			}
			if out[l.Destination] == nil {
				out[l.Destination] = map[modelRow]bool{}
			}
			out[l.Destination][modelRow{idx, int(l.Row)}] = true
		}
		f.Close()
	}
	return out
}

func TestLedgerModelRandomized(t *testing.T) {
	seeds := 12
	if testing.Short() {
		seeds = 3
	}
	for seed := range seeds {
		t.Run(fmt.Sprint("seed", seed), func(t *testing.T) { runLedgerModel(t, uint64(seed)) })
	}
}

func runLedgerModel(t *testing.T, seed uint64) {
	rng := rand.New(rand.NewPCG(seed, 99))
	files := 1 + rng.IntN(3)
	rows := 50 + rng.IntN(300)
	dir := t.TempDir()
	paths, err := exampledata.Write(filepath.Join(dir, "data"), exampledata.Options{
		Files: files, RowsPerFile: int64(rows), RowGroupRows: int64(20 + rng.IntN(150)), Seed: seed, FirstID: 1000,
	})
	if err != nil {
		t.Fatal(err)
	}
	const firstID = 1000
	rowOf := func(userID string) modelRow {
		id, err := strconv.ParseInt(userID, 10, 64)
		if err != nil {
			panic(err)
		}
		return modelRow{int((id - firstID) / int64(rows)), int((id - firstID) % int64(rows))}
	}

	ndests := 1 + rng.IntN(3)
	yaml := "syncs:\n  - name: users\n    source: {url: data}\n    mapping: {type: identify, user_id: customer_id}\n    destinations:\n"
	var dests []*modelDest
	for i := range ndests {
		d := &modelDest{name: fmt.Sprintf("d%d", i), deferred: rng.IntN(2) == 0, rowOf: rowOf,
			rng: rand.New(rand.NewPCG(seed, uint64(i))), durable: map[modelRow]bool{}}
		dests = append(dests, d)
		yaml += fmt.Sprintf("      - {type: webhook, name: %s, url: \"http://127.0.0.1:1/\", batch_size: %d, max_in_flight: %d, retry: {max_attempts: 1}}\n",
			d.name, 1+rng.IntN(60), 1+rng.IntN(3))
	}
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, func(string) (string, bool) { return "", false }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	base, err := state.Open(context.Background(), cfg.State)
	if err != nil {
		t.Fatal(err)
	}
	keys := make([]string, len(paths))
	for i, p := range paths {
		keys[i] = filepath.Base(p)
	}
	store := &checkingStore{Store: base, t: t, dir: cfg.State.URL, dests: dests, rows: rows,
		fileKey: func(i int) string {
			if i < len(keys) {
				return keys[i]
			}
			return ""
		}}
	reg := destinations.NewRegistry()
	byName := map[string]*modelDest{}
	for _, d := range dests {
		byName[d.name] = d
	}
	reg.Register(fakeWebhook(func(_ context.Context, c config.Destination, _ destinations.Env) (destinations.Destination, error) {
		d := byName[c.Name]
		if d.deferred {
			return deferredModelDest{d}, nil
		}
		return plainModelDest{d}, nil
	}))
	runs := 3 + rng.IntN(4)
	for i := 0; i <= runs; i++ {
		last := i == runs
		ctx, cancel := context.WithCancel(context.Background())
		stopAt := 1 + rng.IntN(40)
		var once sync.Once
		for _, d := range dests {
			d.mu.Lock()
			d.faults = !last
			d.writes = 0
			if !last && rng.IntN(2) == 0 {
				d.onWrite = func(n int) {
					if n >= stopAt {
						once.Do(cancel) // a run cut short: a signal, or a kill between saves
					}
				}
			} else {
				d.onWrite = nil
			}
			d.mu.Unlock()
		}
		full := !last && rng.IntN(8) == 0
		_, _ = Run(ctx, Options{Config: cfg, Sync: &cfg.Syncs[0], Registry: reg, Store: store,
			Workers: 1 + rng.IntN(3), BatchRows: int64(10 + rng.IntN(100)), Grace: time.Duration(rng.IntN(3)) * time.Millisecond,
			// 1 byte: every row group is decoded alone, its batches mapped by every worker.
			ReadBytes: []int64{0, 1, 64 << 10}[rng.IntN(3)],
			Full:      full})
		cancel()
		if t.Failed() {
			return
		}
	}
	// Invariant 3: after a run without faults, nothing is missing anywhere.
	rejected := readModelRejects(t, cfg.State.URL)
	cp, err := base.Load(context.Background(), "users")
	if err != nil || cp == nil {
		t.Fatalf("loading the checkpoint: %v", err)
	}
	for fi, key := range keys {
		f := cp.Files[key]
		if f == nil {
			t.Fatalf("%s is missing from the checkpoint", key)
		}
		for _, d := range dests {
			if f.Acked[d.name] != int64(rows) {
				t.Errorf("%s: %s counts %d of %d rows after a clean run", key, d.name, f.Acked[d.name], rows)
			}
			for row := range rows {
				r := modelRow{fi, row}
				if !d.isDurable(r) && !rejected[d.name][r] {
					t.Errorf("%s row %d never reached %s (neither durable nor rejected)", key, row, d.name)
					return
				}
			}
		}
	}
}
