package state

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/testutil"
)

func TestMain(m *testing.M) {
	code := m.Run()
	testutil.StopMinIO()
	os.Exit(code)
}

// backend is one kind of store under test, with raw access to what it stored so that
// tests can check the layout and plant damaged files.
type backend struct {
	store Store
	// reopen returns a new Store instance over the same location.
	reopen func(t *testing.T) Store
	// put and get write and read the raw bytes at a path relative to the state location;
	// get returns nil when there is nothing.
	put func(t *testing.T, rel string, data []byte)
	get func(t *testing.T, rel string) []byte
}

func localBackend(t *testing.T) *backend {
	dir := t.TempDir()
	open := func(t *testing.T) Store {
		st, err := Open(context.Background(), config.StateConfig{URL: dir})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	return &backend{
		store:  open(t),
		reopen: open,
		put: func(t *testing.T, rel string, data []byte) {
			p := filepath.Join(dir, filepath.FromSlash(rel))
			if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
				t.Fatal(err)
			}
			if err := os.WriteFile(p, data, 0o644); err != nil {
				t.Fatal(err)
			}
		},
		get: func(t *testing.T, rel string) []byte {
			data, err := os.ReadFile(filepath.Join(dir, filepath.FromSlash(rel)))
			if errors.Is(err, os.ErrNotExist) {
				return nil
			}
			if err != nil {
				t.Fatal(err)
			}
			return data
		},
	}
}

func s3Backend(t *testing.T) *backend {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	const prefix = "team/backflow"
	open := func(t *testing.T) Store {
		st, err := Open(context.Background(), config.StateConfig{URL: "s3://" + bucket + "/" + prefix + "/", S3: m.Options()})
		if err != nil {
			t.Fatal(err)
		}
		return st
	}
	return &backend{
		store:  open(t),
		reopen: open,
		put: func(t *testing.T, rel string, data []byte) {
			m.Put(t, bucket, prefix+"/"+rel, data)
		},
		get: func(t *testing.T, rel string) []byte {
			key := prefix + "/" + rel
			for _, k := range m.List(t, bucket, key) {
				if k == key {
					return m.Get(t, bucket, key)
				}
			}
			return nil
		},
	}
}

// forEachStore runs the same test against a local directory and an S3 prefix on MinIO.
func forEachStore(t *testing.T, test func(t *testing.T, b *backend)) {
	t.Run("local", func(t *testing.T) { test(t, localBackend(t)) })
	t.Run("s3", func(t *testing.T) { test(t, s3Backend(t)) })
}

func sampleCheckpoint(sync string) *Checkpoint {
	return &Checkpoint{
		Sync:               sync,
		MappingFingerprint: "m1",
		SourceFingerprint:  "s1",
		SchemaFingerprint:  "c1",
		Files: map[string]*File{
			"users/a.parquet": {Key: "users/a.parquet", Size: 1234, ETag: `"abc"`, Rows: 1000,
				Acked: map[string]int64{"segment": 1000, "webhook": 500}},
			"users/b.parquet": {Key: "users/b.parquet", Size: 99, VersionID: "v7", Rows: 10,
				Acked: map[string]int64{}, AckedRanges: map[string][][2]int64{"segment": {{2, 4}}}},
		},
		UpdatedAt: time.Date(2025, 4, 14, 12, 0, 0, 0, time.UTC),
		LastRunID: "run-1",
	}
}

func TestSaveLoadRoundTrip(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		got, err := b.store.Load(ctx, "users")
		if err != nil || got != nil {
			t.Fatalf("Load of a new sync = %v, %v; want nil, nil", got, err)
		}
		cp := sampleCheckpoint("users")
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		// A checkpoint without segments is written as format 1, readable by older builds.
		if cp.Generation == "" || cp.Version != 1 {
			t.Fatalf("after Save: generation %q, version %d", cp.Generation, cp.Version)
		}
		got, err = b.reopen(t).Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if !reflect.DeepEqual(got, cp) {
			t.Fatalf("Load = %+v\nwant %+v", got, cp)
		}
		if raw := b.get(t, "checkpoints/users.json"); !json.Valid(raw) {
			t.Fatalf("checkpoints/users.json is not JSON: %q", raw)
		}

		// The loaded checkpoint can be saved again, and the generation moves on.
		before := got.Generation
		got.Files["users/b.parquet"].Acked["segment"] = 10
		if err := b.store.Save(ctx, got); err != nil {
			t.Fatal(err)
		}
		if got.Generation == before {
			t.Fatal("Save did not change the generation")
		}
		again, err := b.store.Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if again.Files["users/b.parquet"].Acked["segment"] != 10 || again.Generation != got.Generation {
			t.Fatalf("second save not loaded: %+v", again.Files["users/b.parquet"])
		}
		// Syncs do not see each other's checkpoints.
		if other, err := b.store.Load(ctx, "orders"); err != nil || other != nil {
			t.Fatalf("Load(orders) = %v, %v", other, err)
		}
	})
}

func TestConflictTwoRunners(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		// Two first syncs: both start from nothing.
		first, second := sampleCheckpoint("users"), sampleCheckpoint("users")
		if err := b.store.Save(ctx, first); err != nil {
			t.Fatal(err)
		}
		err := b.reopen(t).Save(ctx, second)
		if !errors.Is(err, ErrConflict) {
			t.Fatalf("second first-sync Save: %v; want ErrConflict", err)
		}
		if !strings.Contains(err.Error(), `sync "users"`) || !strings.Contains(err.Error(), "checkpoints/users.json") {
			t.Errorf("conflict error does not name the sync and file: %v", err)
		}

		// Two runners load the same generation; only the first save wins.
		a, err := b.store.Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		other := b.reopen(t)
		c, err := other.Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		a.LastRunID, c.LastRunID = "run-a", "run-c"
		if err := b.store.Save(ctx, a); err != nil {
			t.Fatal(err)
		}
		if err := other.Save(ctx, c); !errors.Is(err, ErrConflict) {
			t.Fatalf("stale Save: %v; want ErrConflict", err)
		}
		if got, _ := b.store.Load(ctx, "users"); got.LastRunID != "run-a" {
			t.Fatalf("the losing runner overwrote the checkpoint: %q", got.LastRunID)
		}
		// A runner that reloads may save again.
		c, err = other.Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if err := other.Save(ctx, c); err != nil {
			t.Fatalf("Save after reload: %v", err)
		}
	})
}

func TestConflictConcurrentSaves(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		if err := b.store.Save(ctx, sampleCheckpoint("users")); err != nil {
			t.Fatal(err)
		}
		const runners = 8
		cps := make([]*Checkpoint, runners)
		stores := make([]Store, runners)
		for i := range cps {
			stores[i] = b.reopen(t)
			cp, err := stores[i].Load(ctx, "users")
			if err != nil {
				t.Fatal(err)
			}
			cp.LastRunID = fmt.Sprintf("run-%d", i)
			cps[i] = cp
		}
		errs := make([]error, runners)
		var wg sync.WaitGroup
		for i := range cps {
			wg.Go(func() { errs[i] = stores[i].Save(ctx, cps[i]) })
		}
		wg.Wait()
		winner := -1
		for i, err := range errs {
			switch {
			case err == nil && winner >= 0:
				t.Fatalf("runners %d and %d both saved from the same generation", winner, i)
			case err == nil:
				winner = i
			case !errors.Is(err, ErrConflict):
				t.Fatalf("runner %d: %v; want ErrConflict", i, err)
			}
		}
		if winner < 0 {
			t.Fatal("no runner saved")
		}
		got, err := b.store.Load(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if want := fmt.Sprintf("run-%d", winner); got.LastRunID != want {
			t.Fatalf("stored run %q, want the winner's %q", got.LastRunID, want)
		}
	})
}

func TestCorruptCheckpoint(t *testing.T) {
	valid, err := encodeCheckpoint(sampleCheckpoint("users"), "g1")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name, data string
		want       error
		contains   string
	}{
		{"truncated", string(valid[:len(valid)/2]), ErrCorrupt, "unexpected end of JSON input"},
		{"garbage", "\x00\x01PAR1 not json", ErrCorrupt, "invalid character"},
		{"empty", "", ErrCorrupt, "empty"},
		{"not an object", `[1,2,3]`, ErrCorrupt, "cannot unmarshal"},
		{"no version", `{"sync":"users","files":{}}`, ErrCorrupt, "no format version"},
		{"other sync", `{"version":1,"sync":"orders","files":{}}`, ErrCorrupt, `belongs to sync "orders"`},
		{"null file", `{"version":1,"sync":"users","files":{"a.parquet":null}}`, ErrCorrupt, `file "a.parquet" has no entry`},
		{"negative ack", `{"version":1,"sync":"users","files":{"a":{"rows":3,"acked":{"d":-1}}}}`, ErrCorrupt, "negative"},
		{"newer", `{"version":3,"sync":"users","files":{},"something_new":true}`, ErrNewerFormat, "newer backflow (format 3"},
		{"segments in format 1", `{"version":1,"sync":"users","files":{},"segments":["A1"]}`, ErrCorrupt, "format 1 has no segments"},
		{"bad segment id", `{"version":2,"sync":"users","files":{},"segments":["../x"]}`, ErrCorrupt, "not valid"},
		{"missing segment", `{"version":2,"sync":"users","files":{},"segments":["A1"]}`, ErrCorrupt, "segment is missing"},
	}
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		where := b.store.String() + "/checkpoints/users.json"
		for _, tc := range cases {
			t.Run(tc.name, func(t *testing.T) {
				b.put(t, "checkpoints/users.json", []byte(tc.data))
				cp, err := b.store.Load(ctx, "users")
				if !errors.Is(err, tc.want) {
					t.Fatalf("Load = %v, %v; want %v", cp, err, tc.want)
				}
				msg := err.Error()
				for _, want := range []string{where, tc.contains} {
					if !strings.Contains(msg, want) {
						t.Errorf("error %q does not contain %q", msg, want)
					}
				}
				if tc.want == ErrCorrupt && (!strings.Contains(msg, "is corrupt") || !strings.Contains(msg, "backflow state reset --sync users")) {
					t.Errorf("error %q does not say what to do", msg)
				}
				// A first-sync Save never replaces the damaged file silently.
				if err := b.store.Save(ctx, sampleCheckpoint("users")); err == nil {
					t.Error("Save over a damaged checkpoint succeeded")
				}
				if got := b.get(t, "checkpoints/users.json"); string(got) != tc.data {
					t.Errorf("the damaged checkpoint was changed to %q", got)
				}
			})
		}
	})
}

func TestReset(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		if err := b.store.Reset(ctx, "users"); err != nil {
			t.Fatalf("Reset of a sync with no state: %v", err)
		}
		cp := sampleCheckpoint("users")
		if err := b.store.Save(ctx, cp); err != nil {
			t.Fatal(err)
		}
		if err := b.store.Save(ctx, sampleCheckpoint("orders")); err != nil {
			t.Fatal(err)
		}
		h, err := b.store.Hashes(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if err := h.Put(ctx, 0, []string{"k1"}, []string{"h1"}); err != nil {
			t.Fatal(err)
		}
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
		r, err := b.store.Rejects(ctx, "users", "run-1")
		if err != nil {
			t.Fatal(err)
		}
		fmt.Fprintln(r, `{"file":"a","row":1,"reason":"x"}`)
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if err := b.store.AppendHistory(ctx, "users", []byte(`{"run":1}`), 5); err != nil {
			t.Fatal(err)
		}

		if err := b.store.Reset(ctx, "users"); err != nil {
			t.Fatal(err)
		}
		if got, err := b.store.Load(ctx, "users"); err != nil || got != nil {
			t.Fatalf("Load after Reset = %v, %v", got, err)
		}
		if b.get(t, "hashes/users.db") != nil {
			t.Error("Reset left the row-hash store")
		}
		h, err = b.store.Hashes(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if n, err := h.Len(ctx); err != nil || n != 0 {
			t.Errorf("hashes after Reset: %d, %v", n, err)
		}
		if err := h.Close(ctx); err != nil {
			t.Fatal(err)
		}
		// Rejects, history and other syncs are kept.
		if b.get(t, "rejects/users/run-1.jsonl") == nil {
			t.Error("Reset deleted the rejects")
		}
		if hist, err := b.store.History(ctx, "users"); err != nil || len(hist) != 1 {
			t.Errorf("history after Reset: %d, %v", len(hist), err)
		}
		if got, err := b.store.Load(ctx, "orders"); err != nil || got == nil {
			t.Errorf("Reset of users touched orders: %v, %v", got, err)
		}
		// A run that loaded before the reset cannot resurrect the old checkpoint.
		if err := b.store.Save(ctx, cp); !errors.Is(err, ErrConflict) {
			t.Errorf("Save of a checkpoint loaded before Reset: %v; want ErrConflict", err)
		}
	})
}

// openHashes opens the sync's row-hash store with the given bound on pending bytes
// (1: every Put is written at once).
func openHashes(t *testing.T, st Store, sync string, pendingLimit int) HashStore {
	t.Helper()
	h, err := st.Hashes(context.Background(), sync)
	if err != nil {
		t.Fatal(err)
	}
	h.(*boltHashes).pendingLimit = pendingLimit
	return h
}

func TestHashes(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		for _, limit := range []int{defaultPendingLimit, 1} {
			t.Run(fmt.Sprintf("pending-limit-%d", limit), func(t *testing.T) { testHashes(t, b, limit) })
		}
	})
}

func testHashes(t *testing.T, b *backend, limit int) {
	ctx := context.Background()
	sync := fmt.Sprintf("users%d", limit)
	h := openHashes(t, b.store, sync, limit)
	if n, err := h.Len(ctx); err != nil || n != 0 {
		t.Fatalf("Len of a new store = %d, %v", n, err)
	}
	// Hex of every shape and plain strings must all come back exactly.
	keys := []string{"0123456789abcdef0123456789abcdef", "identify:u1", "ABCDEF", "abc", "00", "", "x\x00y"}
	hashes := []string{"ffffffffffffffffffffffffffffffff", "h1", "AB", "0", "deadbeef", "empty key", "z"}
	if err := h.Put(ctx, 0, keys, hashes); err != nil {
		t.Fatal(err)
	}
	got, err := hashStrings(h.Get(ctx, append(keys, "unknown", "abcd")))
	if err != nil {
		t.Fatal(err)
	}
	if want := append(append([]string{}, hashes...), "", ""); !reflect.DeepEqual(got, want) {
		t.Fatalf("Get = %q, want %q", got, want)
	}
	// The last of repeated keys wins; an empty hash deletes.
	if err := h.Put(ctx, 0, []string{"identify:u1", "identify:u1", "abc"}, []string{"h2", "h3", ""}); err != nil {
		t.Fatal(err)
	}
	if got, _ := hashStrings(h.Get(ctx, []string{"identify:u1", "abc"})); got[0] != "h3" || got[1] != "" {
		t.Fatalf("after overwrite/delete: %q", got)
	}
	if err := h.Put(ctx, 0, []string{"a"}, nil); err == nil {
		t.Error("Put with fewer hashes than keys succeeded")
	}
	if err := h.Put(ctx, 0, []string{strings.Repeat("k", 40000)}, []string{"h"}); err == nil {
		t.Error("Put of a 40 kB key succeeded")
	}
	// 10,000 keys in one call.
	many, manyHashes := make([]string, 10000), make([]string, 10000)
	for i := range many {
		many[i] = fmt.Sprintf("%032x", i*7919)
		manyHashes[i] = fmt.Sprintf("%032x", i)
	}
	if err := h.Put(ctx, 0, many, manyHashes); err != nil {
		t.Fatal(err)
	}
	wantLen := len(keys) - 1 + len(many)
	if n, err := h.Len(ctx); err != nil || n != wantLen {
		t.Fatalf("Len = %d, %v; want %d", n, err, wantLen)
	}
	// Pending and written pairs mix: overwrite some after Len wrote everything.
	if err := h.Put(ctx, 0, many[:10], manyHashes[:3]); err == nil {
		t.Error("Put with mismatched lengths succeeded")
	}
	manyHashes[0], manyHashes[1] = "changed0", "changed1"
	if err := h.Put(ctx, 0, many[:2], manyHashes[:2]); err != nil {
		t.Fatal(err)
	}
	if err := h.Commit(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := h.Put(ctx, 0, []string{"a"}, []string{"b"}); err == nil {
		t.Error("Put after Close succeeded")
	}
	if _, err := hashStrings(h.Get(ctx, []string{"a"})); err == nil {
		t.Error("Get after Close succeeded")
	}
	if err := h.Close(ctx); err != nil {
		t.Errorf("second Close: %v", err)
	}

	// Persisted: a new Store instance sees everything.
	h = openHashes(t, b.reopen(t), sync, limit)
	if n, err := h.Len(ctx); err != nil || n != wantLen {
		t.Fatalf("Len after reopen = %d, %v; want %d", n, err, wantLen)
	}
	got, err = hashStrings(h.Get(ctx, many))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, manyHashes) {
		t.Fatal("hashes changed across reopen")
	}
	if err := h.Put(ctx, 0, []string{"before-clear"}, []string{"1"}); err != nil {
		t.Fatal(err)
	}
	if err := h.Clear(ctx); err != nil {
		t.Fatal(err)
	}
	if n, _ := h.Len(ctx); n != 0 {
		t.Fatalf("Len after Clear = %d", n)
	}
	if err := h.Put(ctx, 0, []string{"after-clear"}, []string{"1"}); err != nil {
		t.Fatal(err)
	}
	// Close without Commit still makes the Put durable.
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	h = openHashes(t, b.reopen(t), sync, limit)
	defer h.Close(ctx)
	if n, _ := h.Len(ctx); n != 1 {
		t.Fatalf("Len after Clear and reopen = %d, want 1", n)
	}
	if got, _ := hashStrings(h.Get(ctx, []string{"after-clear", "before-clear", many[0]})); got[0] != "1" || got[1] != "" || got[2] != "" {
		t.Fatalf("after Clear and reopen: %q", got)
	}
}

func TestCorruptHashes(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		junk := bytes.Repeat([]byte("not a bbolt file "), 1000)
		b.put(t, "hashes/users.db", junk)
		h, err := b.store.Hashes(context.Background(), "users")
		if err == nil {
			h.Close(context.Background())
			t.Fatal("opened a damaged row-hash store")
		}
		if !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), b.store.String()+"/hashes/users.db") ||
			!strings.Contains(err.Error(), "backflow state reset --sync users") {
			t.Fatalf("error %q: want a corrupt row-hash store error naming the file and the fix", err)
		}
	})
}

func TestRejects(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		r, err := b.store.Rejects(ctx, "users", "run-1")
		if err != nil {
			t.Fatal(err)
		}
		if r.Location() != "" {
			t.Errorf("Location before any Write = %q", r.Location())
		}
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if b.get(t, "rejects/users/run-1.jsonl") != nil {
			t.Fatal("a rejects file was created with nothing to write")
		}

		r, err = b.store.Rejects(ctx, "users", "run-2")
		if err != nil {
			t.Fatal(err)
		}
		lines := []string{
			`{"file":"users/a.parquet","row":3,"destination":"segment","reason":"400 bad","message":{"type":"identify"}}`,
			`{"file":"users/a.parquet","row":7,"reason":"no identifier"}`,
		}
		for _, l := range lines {
			if _, err := fmt.Fprintln(r, l); err != nil {
				t.Fatal(err)
			}
		}
		if err := r.Flush(ctx); err != nil {
			t.Fatal(err)
		}
		// Durable (visible) after Flush, before Close.
		if got, want := string(b.get(t, "rejects/users/run-2.jsonl")), strings.Join(lines, "\n")+"\n"; got != want {
			t.Fatalf("after Flush: %q, want %q", got, want)
		}
		if want := b.store.String() + "/rejects/users/run-2.jsonl"; r.Location() != want {
			t.Errorf("Location = %q, want %q", r.Location(), want)
		}
		// Concurrent writers: every line arrives whole.
		var wg sync.WaitGroup
		for g := range 4 {
			wg.Go(func() {
				for i := range 50 {
					fmt.Fprintf(r, "{\"file\":\"f%d\",\"row\":%d,\"reason\":\"%s\"}\n", g, i, strings.Repeat("r", 100))
				}
			})
		}
		wg.Wait()
		if err := r.Close(ctx); err != nil {
			t.Fatal(err)
		}
		if _, err := r.Write([]byte("late\n")); err == nil {
			t.Error("Write after Close succeeded")
		}
		got := strings.Split(strings.TrimSuffix(string(b.get(t, "rejects/users/run-2.jsonl")), "\n"), "\n")
		if len(got) != len(lines)+200 {
			t.Fatalf("%d lines, want %d", len(got), len(lines)+200)
		}
		for i, l := range got {
			if !json.Valid([]byte(l)) {
				t.Fatalf("line %d is not whole JSON: %q", i, l)
			}
		}
	})
}

func TestHistory(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		if hist, err := b.store.History(ctx, "users"); err != nil || len(hist) != 0 {
			t.Fatalf("History of a new sync = %q, %v", hist, err)
		}
		for i := 1; i <= 5; i++ {
			if err := b.store.AppendHistory(ctx, "users", fmt.Appendf(nil, `{"run":%d}`, i), 3); err != nil {
				t.Fatal(err)
			}
		}
		if err := b.store.AppendHistory(ctx, "orders", []byte(`{"run":"o1"}`), 3); err != nil {
			t.Fatal(err)
		}
		hist, err := b.reopen(t).History(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		var got []string
		for _, h := range hist {
			got = append(got, string(h))
		}
		if want := []string{`{"run":5}`, `{"run":4}`, `{"run":3}`}; !reflect.DeepEqual(got, want) {
			t.Fatalf("History = %q, want %q", got, want)
		}
		if err := b.store.AppendHistory(ctx, "users", []byte(`{"run":`), 3); err == nil {
			t.Error("AppendHistory accepted invalid JSON")
		}
		if err := b.store.AppendHistory(ctx, "users", []byte(`{}`), 0); err == nil {
			t.Error("AppendHistory accepted keep 0")
		}
		b.put(t, "history/users.json", []byte(`{"version":1,"sync":"users","runs":[{"run":5}`))
		if _, err := b.store.History(ctx, "users"); !errors.Is(err, ErrCorrupt) || !strings.Contains(err.Error(), b.store.String()+"/history/users.json is corrupt") ||
			!strings.Contains(err.Error(), "delete it") {
			t.Errorf("History of a damaged file: %v", err)
		}
		if err := b.store.AppendHistory(ctx, "users", []byte(`{}`), 3); !errors.Is(err, ErrCorrupt) {
			t.Errorf("AppendHistory over a damaged file: %v", err)
		}
	})
}

func TestConcurrentHistoryAppends(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		const writers, each = 4, 5
		var wg sync.WaitGroup
		errs := make(chan error, writers*each)
		for w := range writers {
			st := b.reopen(t)
			wg.Go(func() {
				for i := range each {
					errs <- st.AppendHistory(ctx, "users", fmt.Appendf(nil, `{"w":%d,"i":%d}`, w, i), 100)
				}
			})
		}
		wg.Wait()
		close(errs)
		for err := range errs {
			if err != nil {
				t.Fatal(err)
			}
		}
		hist, err := b.store.History(ctx, "users")
		if err != nil {
			t.Fatal(err)
		}
		if len(hist) != writers*each {
			t.Fatalf("%d runs recorded, want %d: an append was lost", len(hist), writers*each)
		}
	})
}

func TestNames(t *testing.T) {
	forEachStore(t, func(t *testing.T, b *backend) {
		ctx := context.Background()
		for _, name := range []string{"", "../users", "a/b", ".hidden", "a b", strings.Repeat("x", 201)} {
			if _, err := b.store.Load(ctx, name); err == nil {
				t.Errorf("Load(%q) succeeded", name)
			}
			if err := b.store.Save(ctx, &Checkpoint{Sync: name}); err == nil {
				t.Errorf("Save(%q) succeeded", name)
			}
			if _, err := b.store.Hashes(ctx, name); err == nil {
				t.Errorf("Hashes(%q) succeeded", name)
			}
			if _, err := b.store.Rejects(ctx, "users", name); err == nil {
				t.Errorf("Rejects(users, %q) succeeded", name)
			}
		}
		if err := b.store.Save(ctx, nil); err == nil {
			t.Error("Save(nil) succeeded")
		}
	})
}

func TestOpen(t *testing.T) {
	ctx := context.Background()
	for _, u := range []string{"", "  ", "http://example.com/state", "s3://"} {
		if _, err := Open(ctx, config.StateConfig{URL: u}); err == nil {
			t.Errorf("Open(%q) succeeded", u)
		}
	}
	file := filepath.Join(t.TempDir(), "file")
	if err := os.WriteFile(file, nil, 0o644); err != nil {
		t.Fatal(err)
	}
	if _, err := Open(ctx, config.StateConfig{URL: file}); err == nil || !strings.Contains(err.Error(), file) {
		t.Errorf("Open of a file: %v", err)
	}
	dir := filepath.Join(t.TempDir(), "state")
	st, err := Open(ctx, config.StateConfig{URL: "file://" + dir})
	if err != nil {
		t.Fatal(err)
	}
	if st.String() != dir {
		t.Errorf("String = %q, want %q", st.String(), dir)
	}
	// Reading creates nothing.
	if _, err := st.Load(ctx, "users"); err != nil {
		t.Fatal(err)
	}
	if _, err := st.History(ctx, "users"); err != nil {
		t.Fatal(err)
	}
	if err := st.Reset(ctx, "users"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(dir); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("read-only calls created the state directory: %v", err)
	}
}

func TestCheckpointClone(t *testing.T) {
	cp := sampleCheckpoint("users")
	cp.Generation = "g"
	c := cp.Clone()
	if !reflect.DeepEqual(c, cp) {
		t.Fatalf("Clone = %+v, want %+v", c, cp)
	}
	c.Files["users/a.parquet"].Acked["segment"] = 1
	c.Files["users/b.parquet"].AckedRanges["segment"][0][0] = 3
	c.Files["users/c.parquet"] = &File{}
	if cp.Files["users/a.parquet"].Acked["segment"] != 1000 || cp.Files["users/b.parquet"].AckedRanges["segment"][0][0] != 2 || len(cp.Files) != 2 {
		t.Fatal("Clone shares state with the original")
	}
	if (*Checkpoint)(nil).Clone() != nil {
		t.Fatal("Clone of nil")
	}
}

func TestLocalHashesInUse(t *testing.T) {
	ctx := context.Background()
	st, err := Open(ctx, config.StateConfig{URL: t.TempDir()})
	if err != nil {
		t.Fatal(err)
	}
	ls := st.(*localStore)
	ls.hashLockTimeout = 50 * time.Millisecond
	h, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if _, err := st.Hashes(ctx, "users"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("second Hashes while open: %v", err)
	}
	if err := st.Reset(ctx, "users"); err == nil || !strings.Contains(err.Error(), "in use") {
		t.Errorf("Reset while the row-hash store is open: %v", err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	if err := st.Reset(ctx, "users"); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(ls.hashesPath("users")); !errors.Is(err, os.ErrNotExist) {
		t.Errorf("Reset left %s: %v", ls.hashesPath("users"), err)
	}
}

func TestLocalSaveRemovesStaleTemps(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	st, err := Open(ctx, config.StateConfig{URL: dir})
	if err != nil {
		t.Fatal(err)
	}
	stale := filepath.Join(dir, "checkpoints", "users.json"+tmpInfix+"123")
	other := filepath.Join(dir, "checkpoints", "users2.json"+tmpInfix+"123")
	for _, p := range []string{stale, other} {
		if err := os.MkdirAll(filepath.Dir(p), 0o755); err != nil {
			t.Fatal(err)
		}
		if err := os.WriteFile(p, []byte("{"), 0o600); err != nil {
			t.Fatal(err)
		}
	}
	if err := st.Save(ctx, sampleCheckpoint("users")); err != nil {
		t.Fatal(err)
	}
	if _, err := os.Stat(stale); !errors.Is(err, os.ErrNotExist) {
		t.Error("a crashed writer's temporary file was kept")
	}
	if _, err := os.Stat(other); err != nil {
		t.Error("another sync's temporary file was removed")
	}
	entries, _ := os.ReadDir(filepath.Join(dir, "checkpoints"))
	var names []string
	for _, e := range entries {
		names = append(names, e.Name())
	}
	if want := []string{"users.json", "users.lock", "users2.json" + tmpInfix + "123"}; !sameSet(names, want) {
		t.Errorf("checkpoints/ holds %q, want %q", names, want)
	}
}

func sameSet(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	m := map[string]int{}
	for _, s := range a {
		m[s]++
	}
	for _, s := range b {
		m[s]--
	}
	for _, n := range m {
		if n != 0 {
			return false
		}
	}
	return true
}

// TestLocalHandWrittenCheckpoint: a checkpoint without a generation token (edited by
// hand) still loads, saves, and is protected against lost updates.
func TestLocalHandWrittenCheckpoint(t *testing.T) {
	ctx := context.Background()
	b := localBackend(t)
	b.put(t, "checkpoints/users.json", []byte(`{"version":1,"sync":"users","files":{"a":{"rows":2,"acked":{"d":2}}}}`))
	a, err := b.store.Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	c, err := b.reopen(t).Load(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if a.Files["a"].Key != "a" || a.Generation == "" {
		t.Fatalf("loaded %+v", a)
	}
	if err := b.store.Save(ctx, a); err != nil {
		t.Fatal(err)
	}
	if err := b.store.Save(ctx, c); !errors.Is(err, ErrConflict) {
		t.Fatalf("stale Save: %v", err)
	}
}

// TestMinIOConditionalWrites checks that the S3 server honours If-None-Match and
// If-Match on PutObject and on a multipart upload's completion: the S3 store's
// protection against two runners rests on it.
func TestMinIOConditionalWrites(t *testing.T) {
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	ctx := context.Background()
	put := func(data string, ifMatch, ifNoneMatch *string) (string, error) {
		out, err := m.Client.PutObject(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("k"),
			Body: strings.NewReader(data), IfMatch: ifMatch, IfNoneMatch: ifNoneMatch})
		if err != nil {
			return "", err
		}
		return aws.ToString(out.ETag), nil
	}
	etag, err := put("one", nil, aws.String("*"))
	if err != nil {
		t.Fatalf("If-None-Match * on a new key: %v", err)
	}
	if _, err := put("two", nil, aws.String("*")); !isPreconditionFailure(err, false) {
		t.Fatalf("If-None-Match * on an existing key: %v; want a precondition failure", err)
	}
	if _, err := put("two", aws.String(`"0123"`), nil); !isPreconditionFailure(err, true) {
		t.Fatalf("If-Match with a stale ETag: %v; want a precondition failure", err)
	}
	if _, err := put("two", aws.String(etag), nil); err != nil {
		t.Fatalf("If-Match with the current ETag: %v", err)
	}
	if got := string(m.Get(t, bucket, "k")); got != "two" {
		t.Fatalf("object holds %q", got)
	}

	// Multipart: through the row-hash store's upload path with a small part size.
	st := newS3Store(m.Client, bucket, "p")
	st.partSize = 5 << 20 // the S3 minimum
	h, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	const n = 150000
	keys, hashes := make([]string, n), make([]string, n)
	for i := range keys {
		keys[i] = fmt.Sprintf("%016x%016x", uint64(i)*0x9e3779b97f4a7c15, i)
		hashes[i] = fmt.Sprintf("%032x", i)
	}
	if err := h.Put(ctx, 0, keys, hashes); err != nil {
		t.Fatal(err)
	}
	// A second opener, from before the first upload.
	h2, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	if err := h.Close(ctx); err != nil {
		t.Fatal(err)
	}
	head, err := m.Client.HeadObject(ctx, &s3.HeadObjectInput{Bucket: aws.String(bucket), Key: aws.String("p/hashes/users.db")})
	if err != nil {
		t.Fatal(err)
	}
	if aws.ToInt64(head.ContentLength) <= st.partSize || !strings.Contains(aws.ToString(head.ETag), "-") {
		t.Fatalf("row-hash store of %d bytes (ETag %s): want a multipart upload over %d bytes", aws.ToInt64(head.ContentLength), aws.ToString(head.ETag), st.partSize)
	}
	if err := h2.Put(ctx, 0, []string{"x"}, []string{"y"}); err != nil {
		t.Fatal(err)
	}
	if err := h2.Close(ctx); !errors.Is(err, ErrConflict) {
		t.Fatalf("the second opener's upload: %v; want ErrConflict", err)
	}
	h3, err := st.Hashes(ctx, "users")
	if err != nil {
		t.Fatal(err)
	}
	defer h3.Close(ctx)
	got, err := hashStrings(h3.Get(ctx, keys))
	if err != nil {
		t.Fatal(err)
	}
	if !reflect.DeepEqual(got, hashes) {
		t.Fatal("multipart row-hash store did not round-trip")
	}
	if n, _ := h3.Len(ctx); n != len(keys) {
		t.Fatalf("Len = %d", n)
	}
}

// TestS3RetriedPutIsNotAConflict: when the SDK retries a conditional PUT whose first
// attempt landed but whose answer was lost, the retry fails its precondition against our
// own write. That must count as success, and a foreign write as a conflict.
func TestS3RetriedPutIsNotAConflict(t *testing.T) {
	m := testutil.StartMinIO(t)
	st := newS3Store(m.Client, m.Bucket(t), "p")
	ctx := context.Background()
	etag, conflict, err := st.putConditional(ctx, "k", []byte("a"), "", "gen-1")
	if err != nil || conflict {
		t.Fatalf("first write: %v, conflict %v", err, conflict)
	}
	// The "retry" of the same write (same token, same precondition).
	again, conflict, err := st.putConditional(ctx, "k", []byte("a"), "", "gen-1")
	if err != nil || conflict || again != etag {
		t.Fatalf("retried write: etag %s (want %s), conflict %v, %v", again, etag, conflict, err)
	}
	// Another writer's token under the same stale precondition is a conflict.
	if _, conflict, err := st.putConditional(ctx, "k", []byte("b"), "", "gen-2"); err != nil || !conflict {
		t.Fatalf("foreign write: conflict %v, %v", conflict, err)
	}
	if _, conflict, err := st.putConditional(ctx, "missing", []byte("b"), etag, "gen-3"); err != nil || !conflict {
		t.Fatalf("If-Match on a deleted object: conflict %v, %v", conflict, err)
	}
}

// hashStrings keeps the hashes of Get's entries, for tests that look at one destination.
func hashStrings(es []HashEntry, err error) ([]string, error) {
	if err != nil {
		return nil, err
	}
	out := make([]string, len(es))
	for i, e := range es {
		out[i] = e.Hash
	}
	return out, nil
}
