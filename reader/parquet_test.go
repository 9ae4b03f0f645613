package reader_test

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"sync"
	"sync/atomic"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/reader"
)

// pqBlob is a reader.Blob over a local file, counting and optionally failing reads.
type pqBlob struct {
	*os.File
	size      int64
	reads     atomic.Int64
	mu        sync.Mutex
	ranges    [][2]int64 // [off, off+len) of every read
	failAfter int64      // when > 0, every read after the first failAfter ones fails
	closed    atomic.Bool
}

var errPQInjected = errors.New("injected I/O failure")

func (b *pqBlob) ReadAt(p []byte, off int64) (int, error) {
	n := b.reads.Add(1)
	b.mu.Lock()
	b.ranges = append(b.ranges, [2]int64{off, off + int64(len(p))})
	b.mu.Unlock()
	if b.failAfter > 0 && n > b.failAfter {
		return 0, errPQInjected
	}
	return b.File.ReadAt(p, off)
}

func (b *pqBlob) Size() int64 { return b.size }

func (b *pqBlob) Close() error {
	b.closed.Store(true)
	return b.File.Close()
}

func pqOpenBlob(t testing.TB, path string) *pqBlob {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return &pqBlob{File: f, size: st.Size()}
}

func pqOpen(t testing.TB, path string, opts reader.FileOptions) (*reader.File, *pqBlob) {
	t.Helper()
	b := pqOpenBlob(t, path)
	f, err := reader.OpenFile(context.Background(), b, reader.Object{Key: filepath.Base(path), Size: b.size}, opts)
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f, b
}

// pqWriteInts writes a file with an int64 column "id" (0..rows-1) and a string column
// "name", in row groups of rowGroup rows.
func pqWriteInts(t testing.TB, path string, rows, rowGroup int64) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	sc := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	b := array.NewRecordBuilder(mem, sc)
	defer b.Release()
	for i := int64(0); i < rows; i++ {
		b.Field(0).(*array.Int64Builder).Append(i)
		b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("row %d", i))
	}
	rec := b.NewRecordBatch()
	defer rec.Release()
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	w, err := pqarrow.NewFileWriter(sc, out,
		parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(rowGroup), parquet.WithAllocator(mem)),
		pqarrow.NewArrowWriterProperties(pqarrow.WithAllocator(mem)))
	if err != nil {
		t.Fatal(err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestParquetReadRowGroupBoundsBatches(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 1000, 1000)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f, _ := pqOpen(t, path, reader.FileOptions{BatchSize: 100, Allocator: mem})
	if f.NumRowGroups() != 1 || f.NumRows() != 1000 || f.RowGroupRows(0) != 1000 {
		t.Fatalf("got %d row groups, %d rows", f.NumRowGroups(), f.NumRows())
	}
	rr, err := f.ReadRowGroup(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	var next int64
	batches := 0
	for rr.Next() {
		rec := rr.RecordBatch()
		if rec.NumRows() > 100 {
			t.Fatalf("batch of %d rows, want at most 100", rec.NumRows())
		}
		ids := rec.Column(0).(*array.Int64)
		for i := 0; i < ids.Len(); i++ {
			if ids.Value(i) != next {
				t.Fatalf("row %d: id %d", next, ids.Value(i))
			}
			next++
		}
		batches++
	}
	if err := rr.Err(); err != nil {
		t.Fatal(err)
	}
	if next != 1000 || batches != 10 {
		t.Fatalf("read %d rows in %d batches, want 1000 in 10", next, batches)
	}
	if rr.Next() {
		t.Fatal("Next after the end returned true")
	}
}

func TestParquetDefaultBatchSize(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 10000, 10000)
	f, _ := pqOpen(t, path, reader.FileOptions{})
	if f.BatchSize() != reader.DefaultBatchSize {
		t.Fatalf("batch size %d", f.BatchSize())
	}
	rr, err := f.ReadRowGroup(context.Background(), 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	if !rr.Next() || rr.RecordBatch().NumRows() != reader.DefaultBatchSize {
		t.Fatalf("first batch: %v, err %v", rr.RecordBatch(), rr.Err())
	}
}

func TestParquetMemoryBudget(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 30000, 10000)
	for _, tc := range []struct {
		budget, buffer int64
	}{
		{0, reader.DefaultBufferSize},
		{64 << 20, reader.DefaultBufferSize}, // 8 MiB a column, at most BufferSize
		{8 << 20, 1 << 20},                   // a quarter of the budget, shared by 2 columns
		{1, reader.MinBufferSize},
	} {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		f, _ := pqOpen(t, path, reader.FileOptions{MemoryBudget: tc.budget, BatchSize: 1000, Allocator: mem})
		if got := f.BufferSize(); got != tc.buffer {
			t.Errorf("budget %d: buffer %d, want %d", tc.budget, got, tc.buffer)
		}
		est := f.RowGroupMemory(0)
		if est <= 0 || est > 2*f.BufferSize()+4<<20 {
			t.Errorf("budget %d: row group memory estimate %d", tc.budget, est)
		}
		if f.RowGroupMemory(-1) != 0 || f.RowGroupMemory(3) != 0 {
			t.Error("estimate of a row group the file does not have")
		}
		var next int64
		for rg := range f.NumRowGroups() {
			rr, err := f.ReadRowGroup(context.Background(), rg)
			if err != nil {
				t.Fatal(err)
			}
			for rr.Next() {
				ids := rr.RecordBatch().Column(0).(*array.Int64)
				for i := range ids.Len() {
					if ids.Value(i) != next {
						t.Fatalf("budget %d: row %d: id %d", tc.budget, next, ids.Value(i))
					}
					next++
				}
			}
			if err := rr.Err(); err != nil {
				t.Fatal(err)
			}
			rr.Release()
		}
		if next != 30000 {
			t.Errorf("budget %d: read %d rows", tc.budget, next)
		}
		mem.AssertSize(t, 0)
	}
}

func TestParquetReadFirstRows(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 30, 10) // three row groups of 10 rows
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f, blob := pqOpen(t, path, reader.FileOptions{BatchSize: 4, Allocator: mem})
	if f.NumRowGroups() != 3 {
		t.Fatalf("%d row groups", f.NumRowGroups())
	}

	for _, tc := range []struct{ n, want int64 }{{0, 0}, {1, 1}, {10, 10}, {15, 15}, {30, 30}, {1000, 30}} {
		blob.mu.Lock()
		blob.ranges = nil
		blob.mu.Unlock()
		rec, err := f.ReadFirstRows(context.Background(), tc.n)
		if err != nil {
			t.Fatal(err)
		}
		if rec.NumRows() != tc.want || rec.NumCols() != 2 {
			t.Fatalf("n=%d: %d rows, %d columns", tc.n, rec.NumRows(), rec.NumCols())
		}
		ids := rec.Column(0).(*array.Int64)
		names := rec.Column(1).(*array.String)
		for i := 0; i < int(tc.want); i++ {
			if ids.Value(i) != int64(i) || names.Value(i) != fmt.Sprintf("row %d", i) {
				t.Fatalf("n=%d: row %d is %d %q", tc.n, i, ids.Value(i), names.Value(i))
			}
		}
		rec.Release()

		// Only the row groups holding the rows are read: nothing of the last one
		// unless the rows reach it.
		if tc.want <= 20 {
			rg := f.Metadata().RowGroup(2)
			for c := 0; c < rg.NumColumns(); c++ {
				cc, err := rg.ColumnChunk(c)
				if err != nil {
					t.Fatal(err)
				}
				start := cc.DataPageOffset()
				if cc.HasDictionaryPage() && cc.DictionaryPageOffset() < start {
					start = cc.DictionaryPageOffset()
				}
				end := start + cc.TotalCompressedSize()
				blob.mu.Lock()
				for _, r := range blob.ranges {
					if r[0] < end && r[1] > start {
						t.Errorf("n=%d: read [%d,%d) of row group 2 [%d,%d)", tc.n, r[0], r[1], start, end)
					}
				}
				blob.mu.Unlock()
			}
		}
	}
}

func TestParquetOpenFileRefuses(t *testing.T) {
	dir := t.TempDir()
	good := filepath.Join(dir, "good.parquet")
	pqWriteInts(t, good, 10, 10)
	data, err := os.ReadFile(good)
	if err != nil {
		t.Fatal(err)
	}
	write := func(name string, b []byte) string {
		p := filepath.Join(dir, name)
		if err := os.WriteFile(p, b, 0o644); err != nil {
			t.Fatal(err)
		}
		return p
	}
	encrypted := append([]byte(nil), data...)
	copy(encrypted[len(encrypted)-4:], "PARE")
	badLen := append([]byte(nil), data...)
	copy(badLen[len(badLen)-8:], []byte{0xff, 0xff, 0xff, 0x7f})
	garbledFooter := append([]byte(nil), data...)
	for i := len(garbledFooter) - 60; i < len(garbledFooter)-8; i++ {
		garbledFooter[i] ^= 0x5a
	}

	for _, tc := range []struct {
		name string
		data []byte
		want string
	}{
		{"empty.parquet", nil, "not a Parquet file: 0 bytes are too few for one"},
		{"text.parquet", []byte("id,name\n1,alice\n2,bob\n"), "not a Parquet file (it does not end with the PAR1 magic bytes)"},
		{"truncated.parquet", data[:len(data)-3], "not a Parquet file"},
		{"encrypted.parquet", encrypted, "encrypted Parquet files are not supported"},
		{"badlen.parquet", badLen, "unreadable Parquet footer"},
		{"garbled.parquet", garbledFooter, "unreadable Parquet footer"},
	} {
		t.Run(tc.name, func(t *testing.T) {
			blob := pqOpenBlob(t, write(tc.name, tc.data))
			f, err := reader.OpenFile(context.Background(), blob, reader.Object{Key: "users/" + tc.name}, reader.FileOptions{})
			if err == nil {
				f.Close()
				t.Fatal("no error")
			}
			var pe *reader.ParquetError
			if !errors.As(err, &pe) || pe.Key != "users/"+tc.name || pe.RowGroup != -1 {
				t.Fatalf("error %T %v is not a ParquetError naming the key", err, err)
			}
			if !strings.HasPrefix(err.Error(), "users/"+tc.name+": ") || !strings.Contains(err.Error(), tc.want) {
				t.Fatalf("error %q, want it to name the key and say %q", err, tc.want)
			}
			if tc.name == "encrypted.parquet" && !errors.Is(err, reader.ErrEncrypted) {
				t.Fatalf("error %v does not match ErrEncrypted", err)
			}
			if !blob.closed.Load() {
				t.Fatal("OpenFile failed without closing the blob")
			}
		})
	}
}

func TestParquetOpenFileOneRead(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 100, 10)
	f, blob := pqOpen(t, path, reader.FileOptions{})
	// The footer is read with one ranged read: over S3, one GET.
	if n := blob.reads.Load(); n != 1 {
		t.Fatalf("opening took %d reads, want 1", n)
	}
	// The File owns the blob: closing it closes the blob, once.
	if err := f.Close(); err != nil || !blob.closed.Load() {
		t.Fatalf("Close: %v, blob closed %v", err, blob.closed.Load())
	}
	if err := f.Close(); err != nil {
		t.Fatalf("second Close: %v", err)
	}
}

func BenchmarkParquetReadRowGroup(b *testing.B) {
	path := filepath.Join(b.TempDir(), "a.parquet")
	const rows = 200_000
	pqWriteInts(b, path, rows, rows)
	f, _ := pqOpen(b, path, reader.FileOptions{})
	b.ResetTimer()
	for range b.N {
		pqDrainRowGroup(b, f, 0)
	}
	b.ReportMetric(float64(rows*b.N)/b.Elapsed().Seconds(), "rows/s")
}

// pqDrainRowGroup reads every batch of row group rg and releases them.
func pqDrainRowGroup(tb testing.TB, f *reader.File, rg int) {
	tb.Helper()
	rr, err := f.ReadRowGroup(context.Background(), rg)
	if err != nil {
		tb.Fatal(err)
	}
	defer rr.Release()
	for rr.Next() {
	}
	if err := rr.Err(); err != nil {
		tb.Fatal(err)
	}
}

func TestParquetIOErrorIsNotCorruption(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 100, 100)
	blob := pqOpenBlob(t, path)
	blob.failAfter = 1 // every read but the footer's fails
	f, err := reader.OpenFile(context.Background(), blob, reader.Object{Key: "a.parquet"}, reader.FileOptions{})
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	rr, err := f.ReadRowGroup(context.Background(), 0)
	if err == nil {
		defer rr.Release()
		if rr.Next() {
			t.Fatal("read a batch through a failing blob")
		}
		err = rr.Err()
	}
	var pe *reader.ParquetError
	if !errors.Is(err, errPQInjected) || errors.As(err, &pe) || !strings.Contains(err.Error(), "a.parquet") {
		t.Fatalf("error %T %v: want the blob's error, naming the key, not a ParquetError", err, err)
	}
}

func TestParquetContextCancelled(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 1000, 1000)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f, _ := pqOpen(t, path, reader.FileOptions{BatchSize: 10, Allocator: mem})
	ctx, cancel := context.WithCancel(context.Background())
	rr, err := f.ReadRowGroup(ctx, 0)
	if err != nil {
		t.Fatal(err)
	}
	defer rr.Release()
	if !rr.Next() {
		t.Fatal(rr.Err())
	}
	cancel()
	if rr.Next() {
		t.Fatal("Next went on after the context was cancelled")
	}
	if err := rr.Err(); !errors.Is(err, context.Canceled) || !strings.Contains(err.Error(), "a.parquet: row group 0") {
		t.Fatalf("error %v", err)
	}
	if _, err := f.ReadRowGroup(ctx, 0); !errors.Is(err, context.Canceled) {
		t.Fatalf("ReadRowGroup on a cancelled context: %v", err)
	}
}

func TestParquetRowGroupOutOfRange(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 10, 10)
	f, _ := pqOpen(t, path, reader.FileOptions{})
	for _, i := range []int{-1, 1} {
		if _, err := f.ReadRowGroup(context.Background(), i); err == nil || !strings.Contains(err.Error(), "a.parquet: no row group") {
			t.Fatalf("row group %d: %v", i, err)
		}
		if n := f.RowGroupRows(i); n != 0 {
			t.Fatalf("RowGroupRows(%d) = %d", i, n)
		}
	}
}

func TestParquetConcurrentRowGroups(t *testing.T) {
	path := filepath.Join(t.TempDir(), "a.parquet")
	pqWriteInts(t, path, 4000, 1000)
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f, _ := pqOpen(t, path, reader.FileOptions{BatchSize: 128, Allocator: mem})
	var wg sync.WaitGroup
	sums := make([]int64, f.NumRowGroups())
	errs := make([]error, f.NumRowGroups())
	for i := range sums {
		wg.Go(func() {
			rr, err := f.ReadRowGroup(context.Background(), i)
			if err != nil {
				errs[i] = err
				return
			}
			defer rr.Release()
			for rr.Next() {
				for _, v := range rr.RecordBatch().Column(0).(*array.Int64).Int64Values() {
					sums[i] += v
				}
			}
			errs[i] = rr.Err()
		})
	}
	wg.Wait()
	var total int64
	for i := range sums {
		if errs[i] != nil {
			t.Fatal(errs[i])
		}
		total += sums[i]
	}
	if total != 3999*4000/2 {
		t.Fatalf("sum of ids %d", total)
	}
}

// TestParquetCorpus reads every file of the parquet-testing corpus to the end: each
// is either read or refused with an error naming it, never a panic or a hang.
func TestParquetCorpus(t *testing.T) {
	root := os.Getenv("BACKFLOW_PARQUET_TESTING")
	_, paths := testutil.CorpusFiles(t)
	for _, path := range paths {
		name, _ := filepath.Rel(root, path)
		t.Run(name, func(t *testing.T) {
			key := filepath.Base(path)
			rows, err := pqWithin(t, 30*time.Second, func() (int64, error) {
				blob := pqOpenBlob(t, path)
				f, err := reader.OpenFile(context.Background(), blob, reader.Object{Key: key}, reader.FileOptions{BatchSize: 1024})
				if err != nil {
					return 0, err
				}
				defer f.Close()
				var rows int64
				for i := 0; i < f.NumRowGroups(); i++ {
					rr, err := f.ReadRowGroup(context.Background(), i)
					if err != nil {
						return rows, err
					}
					for rr.Next() {
						if n := rr.RecordBatch().NumRows(); n > 1024 {
							rr.Release()
							return rows, fmt.Errorf("batch of %d rows", n)
						}
						rows += rr.RecordBatch().NumRows()
					}
					err = rr.Err()
					rr.Release()
					if err != nil {
						return rows, err
					}
				}
				return rows, nil
			})
			if err != nil {
				if !strings.Contains(err.Error(), key) {
					t.Errorf("error does not name the file: %v", err)
				}
				t.Logf("refused: %v", err)
				return
			}
			t.Logf("read %d rows", rows)
		})
	}
}

// pqWithin runs fn, failing the test when it panics or takes longer than d.
func pqWithin[T any](t *testing.T, d time.Duration, fn func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v     T
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			if p := recover(); p != nil {
				r.panic = p
			}
			done <- r
		}()
		r.v, r.err = fn()
	}()
	select {
	case r := <-done:
		if r.panic != nil {
			t.Fatalf("panic escaped: %v", r.panic)
		}
		return r.v, r.err
	case <-time.After(d):
		t.Fatalf("still reading after %v", d)
		panic("unreachable")
	}
}
