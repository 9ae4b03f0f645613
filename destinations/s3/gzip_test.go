package s3

import (
	"context"
	"encoding/base64"
	"errors"
	"fmt"
	"math/rand/v2"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/mapper"
)

// noisyMessages are track messages with a body of about pad bytes that gzip cannot
// shrink much (base64 of random bytes), so that a gzip object needs several parts.
func noisyMessages(prefix string, n, pad int) []mapper.Message {
	rng := rand.New(rand.NewPCG(1, 2))
	raw := make([]byte, pad*3/4)
	msgs := make([]mapper.Message, n)
	for i := range msgs {
		for j := range raw {
			raw[j] = byte(rng.Uint32())
		}
		body := fmt.Sprintf(`{"n":%d,"pad":"%s"}`, i, base64.StdEncoding.EncodeToString(raw))
		msgs[i] = newMsg("track", fmt.Sprintf("%s-%d", prefix, i), fmt.Sprintf("u%d", i), body, "")
	}
	return msgs
}

// TestGzipMultipart: a gzip object of several parts, compressed on the gzip goroutine
// while the parts upload, reads back whole.
func TestGzipMultipart(t *testing.T) {
	e := newEnv(t)
	cfg := e.cfg("jsonl")
	optsOf(cfg).Compression = "gzip"
	d := e.newDest(t, cfg, tuning{partSize: 5 << 20, partsInFlight: 1})
	msgs := noisyMessages("gm", 10000, 1400) // ~11 MB compressed: three parts
	rec := newDurables()
	for w, b := range batches(msgs, 700) {
		if err := d.WriteDeferred(context.Background(), b, rec.fn(w)); err != nil {
			t.Fatal(err)
		}
	}
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got := rec.done(t); len(got) != (len(msgs)+699)/700 {
		t.Fatalf("%d writes durable, want all", len(got))
	}
	data := gunzip(t, e.mio.Get(t, e.bucket, wantKey(0, "jsonl.gz")))
	lines := strings.Split(strings.TrimSuffix(string(data), "\n"), "\n")
	if len(lines) != len(msgs) {
		t.Fatalf("%d lines, want %d", len(lines), len(msgs))
	}
	for i, l := range lines {
		if l != string(msgs[i].JSON) {
			t.Fatalf("line %d differs", i)
		}
	}
	e.assertClean2(t, 1)
}

// TestGzipPartFailure: a part the store refuses, behind the gzip goroutine, fails a
// later Write or the Flush; the accepted messages are lost, never durable, and nothing
// remains in the bucket.
func TestGzipPartFailure(t *testing.T) {
	e := newEnv(t)
	hook := &hookClient{s3API: e.mio.Client}
	hook.uploadPart = func(_ context.Context, n int32) error {
		if n == 2 {
			return errors.New("injected failure")
		}
		return nil
	}
	cfg := e.cfg("jsonl")
	optsOf(cfg).Compression = "gzip"
	d := e.newDest(t, cfg, tuning{partSize: 5 << 20, client: hook})
	rec := newDurables()
	var err error
	for w, b := range batches(noisyMessages("gf", 12000, 1400), 500) {
		if err = d.WriteDeferred(context.Background(), b, rec.fn(w)); err != nil {
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
	if got := rec.done(t); len(got) != 0 {
		t.Fatalf("writes %v durable, want none", got)
	}
	e.assertClean(t)
}

// TestGzipCancelWhileCompressing: the Write's context ends while the gzip goroutine
// waits for a part buffer (every part upload hangs): the Write returns, the goroutine
// stops, the object is aborted and nothing remains.
func TestGzipCancelWhileCompressing(t *testing.T) {
	e := newEnv(t)
	ctx, cancel := context.WithCancel(context.Background())
	defer cancel()
	hook := &hookClient{s3API: e.mio.Client}
	hook.uploadPart = func(callCtx context.Context, n int32) error {
		if n == 2 {
			// Both part buffers are taken: the gzip goroutine is about to wait, and the
			// Write with it, as its messages need more parts than can be in flight.
			cancel()
		}
		<-callCtx.Done()
		return callCtx.Err()
	}
	cfg := e.cfg("jsonl")
	optsOf(cfg).Compression = "gzip"
	d := e.newDest(t, cfg, tuning{partSize: 5 << 20, partsInFlight: 1, client: hook})
	durable := false
	err := d.WriteDeferred(ctx, noisyMessages("gc", 20000, 1400), func() { durable = true })
	if err == nil || !errors.Is(err, context.Canceled) {
		t.Fatalf("WriteDeferred = %v, want it cancelled", err)
	}
	if durable {
		t.Fatal("a cancelled write became durable")
	}
	// Nothing was accepted before: the destination goes on with a new object.
	if err := d.WriteDeferred(context.Background(), testMessages("gc2", 3), func() { durable = true }); err != nil {
		t.Fatal(err)
	}
	if err := d.Flush(context.Background()); err != nil || !durable {
		t.Fatalf("Flush = %v, durable %t", err, durable)
	}
	e.assertClean2(t, 1)
}
