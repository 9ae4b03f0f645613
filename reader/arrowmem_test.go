package reader_test

import (
	"context"
	"os"
	"path/filepath"
	"sync"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/internal/arrowmem"
	"github.com/backflowhq/backflow/internal/exampledata"
	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/reader"
)

// poisonPool is an arrowmem.Pool that overwrites every buffer it is given back before keeping
// it: a buffer freed while an array still uses it shows up as 0xA5 in that array.
type poisonPool struct{ *arrowmem.Pool }

func (p poisonPool) Free(b []byte) {
	for i := range b[:cap(b)] {
		b[:cap(b)][i] = 0xA5
	}
	p.Pool.Free(b)
}

func (p poisonPool) Reallocate(size int, b []byte) []byte {
	if size <= cap(b) {
		return p.Pool.Reallocate(size, b)
	}
	nb := p.Allocate(size)
	copy(nb, b)
	p.Free(b)
	return nb
}

// TestPoolReadsLikeGoAllocator reads files with a poisoning pool shared by every
// file and two concurrent readers, holding each row group's batches until the row group
// ends (as the sync's decoders do), and compares every batch with the same batch read
// with Go's allocator: a buffer reused while a batch still uses it would show.
func TestPoolReadsLikeGoAllocator(t *testing.T) {
	dir := t.TempDir()
	paths, err := exampledata.Write(dir, exampledata.Options{Files: 2, RowsPerFile: 12000, RowGroupRows: 5000, Seed: 3})
	if err != nil {
		t.Fatal(err)
	}
	if os.Getenv("BACKFLOW_PARQUET_TESTING") != "" {
		_, corpus := testutil.CorpusFiles(t)
		paths = append(paths, corpus...)
	}
	pool := poisonPool{arrowmem.NewPool(0)}
	var mu sync.Mutex
	compared := 0
	var wg sync.WaitGroup
	work := make(chan string)
	for range 2 {
		wg.Go(func() {
			for path := range work {
				n := compareReads(t, path, pool)
				mu.Lock()
				compared += n
				mu.Unlock()
			}
		})
	}
	for _, p := range paths {
		work <- p
	}
	close(work)
	wg.Wait()
	if compared < 24000 {
		t.Fatalf("compared %d rows, want at least the example's 24000", compared)
	}
}

// compareReads reads path with mem and with Go's allocator and compares every batch; it
// returns the rows compared. A file the reader refuses is skipped (the corpus has some).
func compareReads(t *testing.T, path string, mem memory.Allocator) int {
	t.Helper()
	open := func(a memory.Allocator) *reader.File {
		blob := pqOpenBlob(t, path)
		f, err := reader.OpenFile(context.Background(), blob, reader.Object{Key: filepath.Base(path)}, reader.FileOptions{BatchSize: 1000, Allocator: a})
		if err != nil {
			blob.Close()
			return nil
		}
		return f
	}
	f, ref := open(mem), open(memory.NewGoAllocator())
	if f == nil || ref == nil {
		return 0
	}
	defer f.Close()
	defer ref.Close()
	rows := 0
	for rg := range f.NumRowGroups() {
		got, gotErr := readAll(f, rg)
		want, wantErr := readAll(ref, rg)
		if (gotErr == nil) != (wantErr == nil) {
			t.Errorf("%s row group %d: error %v with the pool, %v without", path, rg, gotErr, wantErr)
		}
		if len(got) != len(want) {
			t.Errorf("%s row group %d: %d batches with the pool, %d without", path, rg, len(got), len(want))
		}
		for i := range min(len(got), len(want)) {
			if !array.RecordApproxEqual(got[i], want[i], array.WithNaNsEqual(true), array.WithAbsTolerance(0)) {
				t.Errorf("%s row group %d batch %d differs from the batch read with Go's allocator", path, rg, i)
			}
			rows += int(got[i].NumRows())
		}
		for _, r := range append(got, want...) {
			r.Release()
		}
	}
	return rows
}

// readAll returns every batch of a row group, retained.
func readAll(f *reader.File, rg int) ([]arrow.RecordBatch, error) {
	rr, err := f.ReadRowGroup(context.Background(), rg)
	if err != nil {
		return nil, err
	}
	defer rr.Release()
	var out []arrow.RecordBatch
	for rr.Next() {
		rec := rr.RecordBatch()
		rec.Retain()
		out = append(out, rec)
	}
	return out, rr.Err()
}

// BenchmarkReadExample reads the example table (200,000 rows, ten columns, row groups of
// 64 Ki rows) with Go's allocator and with an arrowmem.Pool, releasing each batch as the
// sync does once it is mapped:
//
//	go test -run '^$' -bench BenchmarkReadExample -count 8 ./reader/ | benchstat -col /alloc -
func BenchmarkReadExample(b *testing.B) {
	paths, err := exampledata.Write(b.TempDir(), exampledata.Options{Files: 1, RowsPerFile: 200_000, Seed: 1})
	if err != nil {
		b.Fatal(err)
	}
	for _, tc := range []struct {
		name string
		mem  func() memory.Allocator
	}{
		{"go", func() memory.Allocator { return memory.NewGoAllocator() }},
		{"pool", func() memory.Allocator { return arrowmem.NewPool(0) }},
	} {
		b.Run("alloc="+tc.name, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				f, _ := pqOpen(b, paths[0], reader.FileOptions{BatchSize: 4096, Allocator: tc.mem()})
				for rg := range f.NumRowGroups() {
					pqDrainRowGroup(b, f, rg)
				}
				f.Close()
			}
			b.ReportMetric(float64(200_000*b.N)/b.Elapsed().Seconds(), "rows/s")
		})
	}
}
