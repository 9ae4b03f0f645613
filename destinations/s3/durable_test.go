package s3

import (
	"bytes"
	"context"
	"errors"
	"fmt"
	"math/rand/v2"
	"os"
	"slices"
	"strconv"
	"strings"
	"sync"
	"testing"

	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
)

// durables records the durable calls of numbered writes. It is safe for concurrent use.
type durables struct {
	mu    sync.Mutex
	calls map[int]int
}

func newDurables() *durables { return &durables{calls: map[int]int{}} }

func (r *durables) fn(write int) func() {
	return func() {
		r.mu.Lock()
		r.calls[write]++
		r.mu.Unlock()
	}
}

// done returns the writes whose durable was called, sorted; twice is a test failure.
func (r *durables) done(t *testing.T) []int {
	t.Helper()
	r.mu.Lock()
	defer r.mu.Unlock()
	var out []int
	for w, n := range r.calls {
		if n != 1 {
			t.Errorf("write %d: durable called %d times", w, n)
		}
		out = append(out, w)
	}
	slices.Sort(out)
	return out
}

// upTo returns 0, 1, …, n-1.
func upTo(n int) []int {
	out := make([]int, n)
	for i := range out {
		out[i] = i
	}
	return out
}

// TestDurableMidRun: with max_object_rows 10 and writes of 7 messages, each object
// completed mid-run calls durable for exactly the writes whose last message it holds,
// before Flush, once it is visible; the write spanning objects 0 and 1 waits for 1.
func TestDurableMidRun(t *testing.T) {
	for _, format := range []string{"jsonl", "csv", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(format)
			optsOf(cfg).MaxObjectRows = 10
			d := e.newDest(t, cfg, tuning{})
			rec := newDurables()
			visible := map[int]int{} // write → objects visible when its durable ran
			durable := func(w int) func() {
				f := rec.fn(w)
				return func() {
					visible[w] = len(e.keys(t)) // the writes are sequential: this goroutine
					f()
				}
			}
			// Objects: 0 holds writes 0 and 1 (3 of its 7 messages), 1 holds the rest
			// of write 1 and 6 of write 2, 2 holds the last of write 2 and write 3.
			want := [][]int{{}, {0}, {0, 1}, {0, 1}}
			for w, b := range batches(testMessages("dm", 25), 7) {
				if err := d.WriteDeferred(context.Background(), b, durable(w)); err != nil {
					t.Fatalf("WriteDeferred %d: %v", w, err)
				}
				if got := rec.done(t); !slices.Equal(got, want[w]) {
					t.Fatalf("after write %d, durable writes %v, want %v", w, got, want[w])
				}
			}
			if got := len(e.keys(t)); got != 2 {
				t.Fatalf("%d objects before Flush, want 2", got)
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := rec.done(t); !slices.Equal(got, upTo(4)) {
				t.Fatalf("after Flush, durable writes %v, want all 4", got)
			}
			for w, n := range map[int]int{0: 1, 1: 2, 2: 3, 3: 3} {
				if visible[w] != n {
					t.Errorf("write %d became durable with %d objects visible, want %d", w, visible[w], n)
				}
			}
			if err := d.Close(context.Background()); err != nil {
				t.Fatalf("Close after Flush: %v", err)
			}
			e.assertClean2(t, 3)
		})
	}
}

// TestDurableNoneAccepted: a write whose messages are all refused, and an empty write,
// are durable at once; a write failing as a whole never is.
func TestDurableNoneAccepted(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("csv"), tuning{})
	rec := newDurables()
	bad := newMsg("identify", "bad", "ub", `{"a":`, "")
	err := d.WriteDeferred(context.Background(), []mapper.Message{bad, bad}, rec.fn(0))
	if !isBatchError(err) {
		t.Fatalf("WriteDeferred of unreadable bodies = %v, want a BatchError", err)
	}
	if err := d.WriteDeferred(context.Background(), nil, rec.fn(1)); err != nil {
		t.Fatalf("WriteDeferred(nil) = %v", err)
	}
	if got := rec.done(t); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("durable writes %v, want [0 1] before any Flush", got)
	}
	ctx, cancel := context.WithCancel(context.Background())
	cancel()
	if err := d.WriteDeferred(ctx, testMessages("na", 3), rec.fn(2)); !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteDeferred with a cancelled context = %v", err)
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.done(t); !slices.Equal(got, []int{0, 1}) {
		t.Fatalf("durable writes %v, want [0 1]: a failed write is never durable", got)
	}
	e.assertClean(t)
}

// failParts fails every part upload of one key.
type failParts struct {
	s3API
	key string
}

func (c failParts) UploadPart(ctx context.Context, in *s3.UploadPartInput, opts ...func(*s3.Options)) (*s3.UploadPartOutput, error) {
	if *in.Key == c.key {
		return nil, errors.New("injected failure")
	}
	return c.s3API.UploadPart(ctx, in, opts...)
}

// TestDurableAbortedObject: object 0 completes, then a part of object 1 fails: the
// writes held by object 0 are durable, those of object 1 never, not even at Flush or
// Close, and every later call fails.
func TestDurableAbortedObject(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("jsonl")
	optsOf(cfg).MaxObjectRows = 4000 // ~6 MB: object 0 is a real multipart upload too
	d := e.newDest(t, cfg, tuning{partSize: 5 << 20, client: failParts{e.mio.Client, wantKey(1, "jsonl")}})
	rec := newDurables()
	var (
		err error
		w   int
	)
	for _, b := range batches(largeMessages("ab", 12000, 1400), 500) {
		if err = d.WriteDeferred(context.Background(), b, rec.fn(w)); err != nil {
			break
		}
		w++
	}
	if err == nil || !strings.Contains(err.Error(), "injected failure") {
		t.Fatalf("WriteDeferred = %v, want the injected failure", err)
	}
	if w <= 8 {
		t.Fatalf("the failure came at write %d, want it in object 1 (writes 8 on)", w)
	}
	if got := rec.done(t); !slices.Equal(got, upTo(8)) {
		t.Fatalf("durable writes %v, want exactly the 8 of object 0", got)
	}
	if err := d.Flush(context.Background()); err == nil || !strings.Contains(err.Error(), "accepted messages were lost") {
		t.Fatalf("Flush after the loss = %v, want the lost messages", err)
	}
	if err := d.WriteDeferred(context.Background(), testMessages("ab2", 1), rec.fn(100)); err == nil {
		t.Fatal("WriteDeferred after the loss succeeded")
	}
	if err := d.Close(context.Background()); err == nil {
		t.Fatal("Close reported nothing")
	}
	if got := rec.done(t); !slices.Equal(got, upTo(8)) {
		t.Fatalf("durable writes %v after Close, want exactly the 8 of object 0", got)
	}
	if u := e.uploads(t); len(u) != 0 {
		t.Errorf("unfinished multipart uploads remain: %v", u)
	}
	if got, want := e.keys(t), []string{wantKey(0, "jsonl")}; !equal(got, want) {
		t.Errorf("keys = %v, want %v", got, want)
	}
}

// TestDurableCloseAborts: Close without Flush aborts the open object; the writes waiting
// for it never become durable, and Close counts their messages.
func TestDurableCloseAborts(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("jsonl")
	optsOf(cfg).MaxObjectRows = 10
	d := e.newDest(t, cfg, tuning{})
	rec := newDurables()
	for w, b := range batches(testMessages("ca", 16), 6) { // objects: 0-9 complete, 10-15 open
		if err := d.WriteDeferred(context.Background(), b, rec.fn(w)); err != nil {
			t.Fatal(err)
		}
	}
	err := d.Close(context.Background())
	// Write 1 (messages 6-11) spans the completed object and the aborted one: all of its
	// messages are sent again, so all are counted.
	if err == nil || !strings.Contains(err.Error(), "10 accepted messages are not acknowledged") {
		t.Fatalf("Close = %v, want 10 messages not acknowledged", err)
	}
	if got := rec.done(t); !slices.Equal(got, []int{0}) {
		t.Fatalf("durable writes %v, want [0]", got)
	}
	if u := e.uploads(t); len(u) != 0 {
		t.Errorf("unfinished multipart uploads remain: %v", u)
	}
}

// TestDurableConcurrentWriters: writers calling WriteDeferred at once, objects completing
// under them: every write is durable exactly once, and every message is in one object.
func TestDurableConcurrentWriters(t *testing.T) {
	for _, format := range []string{"jsonl", "parquet"} {
		t.Run(format, func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(format)
			optsOf(cfg).MaxObjectRows = 97
			d := e.newDest(t, cfg, tuning{})
			rec := newDurables()
			const writers, perWriter = 8, 25
			var (
				wg    sync.WaitGroup
				mu    sync.Mutex
				sent  []mapper.Message
				fails []error
			)
			for w := range writers {
				rng := rand.New(rand.NewPCG(uint64(w), 1))
				wg.Go(func() {
					for b := range perWriter {
						msgs := testMessages(fmt.Sprintf("cw%d-%d", w, b), rng.IntN(40))
						if err := d.WriteDeferred(context.Background(), msgs, rec.fn(w*perWriter+b)); err != nil {
							mu.Lock()
							fails = append(fails, err)
							mu.Unlock()
							return
						}
						mu.Lock()
						sent = append(sent, msgs...)
						mu.Unlock()
					}
				})
			}
			wg.Wait()
			if len(fails) > 0 {
				t.Fatal(errors.Join(fails...))
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			if got := rec.done(t); !slices.Equal(got, upTo(writers*perWriter)) {
				t.Fatalf("%d writes durable, want %d", len(got), writers*perWriter)
			}
			seen := map[string]int{}
			for _, ids := range readIDs(t, e, format, nil) {
				for _, id := range ids {
					seen[id]++
				}
			}
			for _, m := range sent {
				if seen[m.ID] != 1 {
					t.Fatalf("message %s is in %d objects, want 1", m.ID, seen[m.ID])
				}
			}
			if len(seen) != len(sent) {
				t.Fatalf("%d messages in the objects, %d sent", len(seen), len(sent))
			}
		})
	}
}

// readIDs returns the message ids of every object of the bucket by key. cache holds
// objects read before (completed objects never change); nil reads everything.
func readIDs(t *testing.T, e *env, format string, cache map[string][]string) map[string][]string {
	t.Helper()
	out := map[string][]string{}
	for _, k := range e.keys(t) {
		if ids, ok := cache[k]; ok {
			out[k] = ids
			continue
		}
		data := e.mio.Get(t, e.bucket, k)
		var ids []string
		switch format {
		case "jsonl":
			for _, l := range bytes.Split(bytes.TrimSpace(data), []byte("\n")) {
				_, rest, _ := bytes.Cut(l, []byte(`"messageId":"`))
				id, _, _ := bytes.Cut(rest, []byte(`"`))
				ids = append(ids, string(id))
			}
		case "csv":
			h, rows := readCSV(t, data, ',')
			col := slices.Index(h, "messageId")
			for _, r := range rows {
				ids = append(ids, r[col])
			}
		case "parquet":
			ids = parquetColumn(t, data, "messageId")
		}
		out[k] = ids
		if cache != nil {
			cache[k] = ids
		}
	}
	return out
}

// TestDurableRandomized writes batches of random sizes (empty ones too) with a random
// max_object_rows, CSV messages widening the columns and unreadable ones refused, and
// checks after every call that the writes reported durable are exactly those whose
// accepted messages can all be read back from completed objects. Then Flush makes all
// durable, and Close without Flush never makes the last ones durable.
// BACKFLOW_DURABLE_SEEDS=N runs N seeds instead of 12.
func TestDurableRandomized(t *testing.T) {
	formats, limits := []string{"jsonl", "csv"}, []int64{0, 1, 2, 7, 25, 60}
	seeds := len(formats) * len(limits) // the first seeds try every pair once
	if n, err := strconv.Atoi(os.Getenv("BACKFLOW_DURABLE_SEEDS")); err == nil && n > 0 {
		seeds = n
	}
	for seed := range uint64(seeds) {
		rng := rand.New(rand.NewPCG(seed, 2))
		format := formats[seed%2]
		maxRows := limits[seed/2%uint64(len(limits))]
		t.Run(fmt.Sprintf("seed=%d/%s/max_object_rows=%d", seed, format, maxRows), func(t *testing.T) {
			e := newEnv(t)
			cfg := e.cfg(format)
			optsOf(cfg).MaxObjectRows = maxRows
			d := e.newDest(t, cfg, tuning{})
			rec := newDurables()
			maxBatch := 30
			if maxRows > 0 && maxRows <= 2 {
				maxBatch = 8 // an object a message or two: keep the number of objects small
			}
			type sentWrite struct {
				ids      []string // accepted messages
				accepted bool
			}
			var (
				writes []sentWrite
				cache  = map[string][]string{}
				serial int
			)
			message := func() mapper.Message {
				serial++
				id, user := fmt.Sprintf("rnd-%05d", serial), fmt.Sprintf("u%d", serial)
				switch r := rng.IntN(20); {
				case format == "csv" && r == 0: // a new column: the object completes
					return newMsg("identify", id, user, fmt.Sprintf(`{"k%d":"x"}`, serial), "")
				case format == "csv" && r == 1: // unreadable: refused
					return newMsg("identify", id, user, `{"a":`, "")
				}
				return newMsg("track", id, user, fmt.Sprintf(`{"a":%d}`, serial), "")
			}
			// check compares the writes reported durable with those whose accepted
			// messages are all in the bucket (only completed objects are visible).
			check := func(when string) {
				t.Helper()
				in := map[string]bool{}
				for _, ids := range readIDs(t, e, format, cache) {
					for _, id := range ids {
						in[id] = true
					}
				}
				var want []int
				for w, sw := range writes {
					all := sw.accepted
					for _, id := range sw.ids {
						all = all && in[id]
					}
					if all {
						want = append(want, w)
					}
				}
				if got := rec.done(t); !slices.Equal(got, want) {
					t.Fatalf("%s: durable writes %v, want %v", when, got, want)
				}
			}
			write := func(w int) {
				msgs := make([]mapper.Message, rng.IntN(maxBatch+1))
				for i := range msgs {
					msgs[i] = message()
				}
				err := d.WriteDeferred(context.Background(), msgs, rec.fn(w))
				refused := map[int]bool{}
				var be *destinations.BatchError
				switch {
				case errors.As(err, &be):
					for _, f := range be.Failed {
						refused[f.Index] = true
					}
				case err != nil:
					t.Fatalf("write %d: %v", w, err)
				}
				sw := sentWrite{accepted: true}
				for i, m := range msgs {
					if !refused[i] {
						sw.ids = append(sw.ids, m.ID)
					}
				}
				writes = append(writes, sw)
			}
			n := 20 + rng.IntN(20)
			for w := range n {
				write(w)
				check(fmt.Sprintf("after write %d", w))
			}
			if err := d.Flush(context.Background()); err != nil {
				t.Fatal(err)
			}
			check("after Flush")
			if got := rec.done(t); len(got) != n {
				t.Fatalf("%d writes durable after Flush, want %d", len(got), n)
			}
			// Left for Close: what is not durable by then never is.
			for w := n; w < n+3; w++ {
				write(w)
			}
			_ = d.Close(context.Background())
			check("after Close")
			if u := e.uploads(t); len(u) != 0 {
				t.Errorf("unfinished multipart uploads remain: %v", u)
			}
		})
	}
}
