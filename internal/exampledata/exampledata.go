// Package exampledata writes the bundled example export: a "users" table as Parquet
// files, deterministic for a given seed. The quick start, the end-to-end tests and the
// benchmarks all use it.
package exampledata

import (
	"fmt"
	"math/rand/v2"
	"os"
	"path/filepath"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// Options say how much to write.
type Options struct {
	Files        int   // number of files (default 3)
	RowsPerFile  int64 // rows in each file (default 1000)
	RowGroupRows int64 // rows per row group (default 64 Ki)
	Seed         uint64
	// FirstID is the customer_id of the first row (ids are consecutive across files).
	FirstID int64
	// Prefix names the files: <Prefix><n>.parquet (default "part-").
	Prefix string
	// ChangeEvery, when > 0, adds 1 to the logins of every row whose customer_id is a
	// multiple of it: a second snapshot of the same table with a fraction of rows changed.
	ChangeEvery int64
}

// Schema is the example table's schema: ten columns of the common warehouse types.
var Schema = arrow.NewSchema([]arrow.Field{
	{Name: "customer_id", Type: arrow.PrimitiveTypes.Int64},
	{Name: "anon_id", Type: arrow.BinaryTypes.String},
	{Name: "email", Type: arrow.BinaryTypes.String},
	{Name: "plan", Type: arrow.BinaryTypes.String},
	{Name: "city", Type: arrow.BinaryTypes.String, Nullable: true},
	{Name: "logins", Type: arrow.PrimitiveTypes.Int32},
	{Name: "lifetime_value", Type: &arrow.Decimal128Type{Precision: 12, Scale: 2}},
	{Name: "score", Type: arrow.PrimitiveTypes.Float64},
	{Name: "is_active", Type: arrow.FixedWidthTypes.Boolean},
	{Name: "updated_at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}},
}, nil)

var (
	plans  = []string{"free", "starter", "pro", "enterprise"}
	cities = []string{"Oslo", "Lisbon", "Montréal", "São Paulo", "Kraków", "Tokyo", "Austin", "Nairobi"}
)

// Write writes the files into dir (created if needed) and returns their paths.
func Write(dir string, o Options) ([]string, error) {
	if o.Files <= 0 {
		o.Files = 3
	}
	if o.RowsPerFile <= 0 {
		o.RowsPerFile = 1000
	}
	if o.RowGroupRows <= 0 {
		o.RowGroupRows = 64 << 10
	}
	if o.Prefix == "" {
		o.Prefix = "part-"
	}
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return nil, err
	}
	var paths []string
	id := o.FirstID
	for n := 0; n < o.Files; n++ {
		p := filepath.Join(dir, fmt.Sprintf("%s%05d.parquet", o.Prefix, n))
		if err := writeFile(p, o, uint64(n), id); err != nil {
			return nil, fmt.Errorf("writing %s: %w", p, err)
		}
		id += o.RowsPerFile
		paths = append(paths, p)
	}
	return paths, nil
}

func writeFile(path string, o Options, n uint64, firstID int64) error {
	tmp := path + ".tmp"
	f, err := os.Create(tmp)
	if err != nil {
		return err
	}
	defer os.Remove(tmp)
	props := parquet.NewWriterProperties(
		parquet.WithCompression(compress.Codecs.Snappy),
		parquet.WithMaxRowGroupLength(o.RowGroupRows),
	)
	w, err := pqarrow.NewFileWriter(Schema, f, props, pqarrow.NewArrowWriterProperties(pqarrow.WithStoreSchema()))
	if err != nil {
		f.Close()
		return err
	}
	rng := rand.New(rand.NewPCG(o.Seed, n))
	mem := memory.DefaultAllocator
	base := time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC).UnixMicro()
	const batch = 16384
	for done := int64(0); done < o.RowsPerFile; done += batch {
		rows := min(batch, o.RowsPerFile-done)
		b := array.NewRecordBuilder(mem, Schema)
		for i := int64(0); i < rows; i++ {
			id := firstID + done + i
			b.Field(0).(*array.Int64Builder).Append(id)
			b.Field(1).(*array.StringBuilder).Append(fmt.Sprintf("anon-%08x", uint32(id*2654435761)))
			b.Field(2).(*array.StringBuilder).Append(fmt.Sprintf("user%d@example.com", id))
			b.Field(3).(*array.StringBuilder).Append(plans[rng.IntN(len(plans))])
			if i > 0 && rng.IntN(10) == 0 {
				b.Field(4).(*array.StringBuilder).AppendNull() // never in a file's first row
			} else {
				b.Field(4).(*array.StringBuilder).Append(cities[rng.IntN(len(cities))])
			}
			logins := int32(rng.IntN(500))
			if o.ChangeEvery > 0 && id%o.ChangeEvery == 0 {
				logins++
			}
			b.Field(5).(*array.Int32Builder).Append(logins)
			b.Field(6).(*array.Decimal128Builder).Append(decimal128.FromI64(int64(rng.IntN(10_000_000))))
			b.Field(7).(*array.Float64Builder).Append(float64(rng.IntN(100000)) / 1000)
			b.Field(8).(*array.BooleanBuilder).Append(rng.IntN(4) != 0)
			b.Field(9).(*array.TimestampBuilder).Append(arrow.Timestamp(base + id*1_000_000 + int64(rng.IntN(1_000_000))))
		}
		rec := b.NewRecordBatch()
		b.Release()
		err := w.WriteBuffered(rec)
		rec.Release()
		if err != nil {
			w.Close()
			return err
		}
	}
	if err := w.Close(); err != nil {
		return err
	}
	return os.Rename(tmp, path)
}
