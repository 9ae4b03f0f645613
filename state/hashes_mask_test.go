package state

import (
	"context"
	"encoding/binary"
	"path/filepath"
	"testing"
	"time"

	bolt "go.etcd.io/bbolt"
)

// Mode diff judges "unchanged" per destination: the store keeps which destinations
// acknowledged the content of each key, across flushes and reopenings.
func TestHashStoreMasksPerDestination(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	h, err := openBoltHashes(path, path, "users", false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bits, err := h.Bits(ctx, []string{"a", "b"}, nil)
	if err != nil || bits[0] == bits[1] {
		t.Fatalf("Bits = %v, %v", bits, err)
	}
	a, b := bits[0], bits[1]
	get := func(key string) HashEntry {
		t.Helper()
		es, err := h.Get(ctx, []string{key})
		if err != nil {
			t.Fatal(err)
		}
		return es[0]
	}
	must := func(err error) {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
	}
	must(h.Put(ctx, a, []string{"k"}, []string{"h1"}))
	if e := get("k"); !e.Acked(a, "h1") || e.Acked(b, "h1") {
		t.Fatalf("after a acknowledged h1: %+v", e)
	}
	must(h.Commit(ctx)) // written: b's acknowledgement must merge with the stored entry
	must(h.Put(ctx, b, []string{"k"}, []string{"h1"}))
	if e := get("k"); !e.Acked(a, "h1") || !e.Acked(b, "h1") {
		t.Fatalf("pending b over stored a: %+v", e)
	}
	must(h.Commit(ctx))
	if e := get("k"); !e.Acked(a, "h1") || !e.Acked(b, "h1") {
		t.Fatalf("after both were written: %+v", e)
	}
	// New content acknowledged by a only: b has not got it.
	must(h.Put(ctx, a, []string{"k"}, []string{"h2"}))
	must(h.Commit(ctx))
	if e := get("k"); !e.Acked(a, "h2") || e.Acked(b, "h2") || e.Acked(b, "h1") {
		t.Fatalf("after a acknowledged h2: %+v", e)
	}
	must(h.Close(ctx))

	// Reopened: the bits are the same, a new name gets a new one.
	h, err = openBoltHashes(path, path, "users", false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	bits2, err := h.Bits(ctx, []string{"b", "c", "a"}, []string{"x"})
	if err != nil || bits2[0] != b || bits2[2] != a || bits2[1] == a || bits2[1] == b {
		t.Fatalf("Bits after reopening = %v (a=%d b=%d), %v", bits2, a, b, err)
	}
	if e := get("k"); !e.Acked(a, "h2") || e.Acked(bits2[1], "h2") {
		t.Fatalf("after reopening: %+v", e)
	}
	must(h.Close(ctx))
}

// A store written before masks existed: its entries stand for the destinations the
// first Bits call names as legacy, and only for them.
func TestHashStoreLegacyEntries(t *testing.T) {
	ctx := context.Background()
	path := filepath.Join(t.TempDir(), "h.db")
	db, err := bolt.Open(path, 0o600, nil)
	if err != nil {
		t.Fatal(err)
	}
	err = db.Update(func(tx *bolt.Tx) error {
		meta, _ := tx.CreateBucket(metaBucket)
		if err := meta.Put(versionKey, []byte("1")); err != nil {
			return err
		}
		hb, _ := tx.CreateBucket(hashesBucket)
		return hb.Put(appendEncoded(nil, "k"), appendEncoded(nil, "abcd"))
	})
	if err != nil {
		t.Fatal(err)
	}
	db.Close()
	h, err := openBoltHashes(path, path, "users", false, time.Second)
	if err != nil {
		t.Fatal(err)
	}
	defer h.Close(ctx)
	bits, err := h.Bits(ctx, []string{"old", "new"}, []string{"old"})
	if err != nil {
		t.Fatal(err)
	}
	es, err := h.Get(ctx, []string{"k"})
	if err != nil {
		t.Fatal(err)
	}
	if !es[0].Acked(bits[0], "abcd") || es[0].Acked(bits[1], "abcd") {
		t.Fatalf("legacy entry %+v: want acknowledged by old (bit %d) only", es[0], bits[0])
	}
	if v := binary.AppendUvarint(nil, h.legacy); len(v) == 0 || h.legacy != 1<<bits[0] {
		t.Fatalf("legacy mask %b", h.legacy)
	}
}
