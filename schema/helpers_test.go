package schema_test

import (
	"bytes"
	"context"
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
)

// fileBlob is a reader.Blob over a local file.
type fileBlob struct {
	*os.File
	size int64
}

func (b fileBlob) Size() int64 { return b.size }

// bytesBlob is a reader.Blob over bytes in memory.
type bytesBlob struct{ *bytes.Reader }

func (b bytesBlob) Close() error { return nil }

func openPath(t testing.TB, path string, opts reader.FileOptions) (*reader.File, error) {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	st, err := f.Stat()
	if err != nil {
		t.Fatal(err)
	}
	return reader.OpenFile(context.Background(), fileBlob{f, st.Size()}, reader.Object{Key: "users/" + filepath.Base(path), Size: st.Size()}, opts)
}

func mustOpen(t testing.TB, path string, mem memory.Allocator) *reader.File {
	t.Helper()
	f, err := openPath(t, path, reader.FileOptions{Allocator: mem})
	if err != nil {
		t.Fatal(err)
	}
	t.Cleanup(func() { f.Close() })
	return f
}

// writeOpts says how writeJSON writes a file.
type writeOpts struct {
	rowGroup    int64 // rows per row group; 0: one row group
	int96       bool  // timestamps as deprecated INT96
	storeSchema bool  // keep the Arrow schema in the file (dictionary columns stay dictionary)
}

// writeJSON writes the rows (a JSON array of objects) with schema sc to dir/name
// and returns the path.
func writeJSON(t testing.TB, dir, name string, sc *arrow.Schema, rows string, o writeOpts) string {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec, _, err := array.RecordFromJSON(mem, sc, strings.NewReader(rows))
	if err != nil {
		t.Fatalf("building %s: %v", name, err)
	}
	defer rec.Release()
	return writeRecord(t, dir, name, rec, mem, o)
}

func writeRecord(t testing.TB, dir, name string, rec arrow.RecordBatch, mem memory.Allocator, o writeOpts) string {
	t.Helper()
	path := filepath.Join(dir, name)
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	rg := o.rowGroup
	if rg == 0 {
		rg = max(rec.NumRows(), 1)
	}
	props := parquet.NewWriterProperties(parquet.WithAllocator(mem), parquet.WithMaxRowGroupLength(rg),
		parquet.WithStoreDecimalAsInteger(true))
	aopts := []pqarrow.WriterOption{pqarrow.WithAllocator(mem)}
	if o.int96 {
		aopts = append(aopts, pqarrow.WithDeprecatedInt96Timestamps(true))
	}
	if o.storeSchema {
		aopts = append(aopts, pqarrow.WithStoreSchema())
	}
	w, err := pqarrow.NewFileWriter(rec.Schema(), out, props, pqarrow.NewArrowWriterProperties(aopts...))
	if err != nil {
		t.Fatalf("writing %s: %v", name, err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatalf("writing %s: %v", name, err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("writing %s: %v", name, err)
	}
	return path
}

func fields(fs ...arrow.Field) *arrow.Schema { return arrow.NewSchema(fs, nil) }

func field(name string, dt arrow.DataType) arrow.Field {
	return arrow.Field{Name: name, Type: dt, Nullable: true}
}

func createFile(path string) (*os.File, error) { return os.Create(path) }

func limits(maxRowGroupBytes int64) config.Limits {
	return config.Limits{MaxRowGroupBytes: maxRowGroupBytes, MaxRecordBytes: 1 << 20}
}

// writeRowGroups writes one row group per JSON array of rows to out, and closes it.
func writeRowGroups(t testing.TB, out *os.File, sc *arrow.Schema, mem memory.Allocator, groups ...string) {
	t.Helper()
	w, err := pqarrow.NewFileWriter(sc, out, parquet.NewWriterProperties(parquet.WithAllocator(mem)),
		pqarrow.NewArrowWriterProperties(pqarrow.WithAllocator(mem)))
	if err != nil {
		t.Fatal(err)
	}
	for _, rows := range groups {
		rec, _, err := array.RecordFromJSON(mem, sc, strings.NewReader(rows))
		if err != nil {
			t.Fatal(err)
		}
		err = w.Write(rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
