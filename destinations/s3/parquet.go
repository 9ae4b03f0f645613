package s3

import (
	"errors"
	"fmt"
	"io"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/backflowhq/backflow/mapper"
)

// Row groups are cut by rows or by the bytes of values held in the builders, whichever
// comes first: that bounds memory (the builders hold one row group) while keeping row
// groups large enough for warehouse readers.
const (
	defaultRowGroupRows = 64 << 10
	rowGroupBytes       = 16 << 20
)

// parquetEncoder builds Arrow arrays from the messages and writes a row group each time
// they reach rowGroupRows or rowGroupBytes. The schema is the object's columns: every
// column nullable; strings (and JSON text of arrays and objects) as UTF-8, integers as
// int64, other numbers as float64, booleans as boolean. Snappy compression.
type parquetEncoder struct {
	cols    *columns
	f       *flattener
	schema  *arrow.Schema
	rb      *array.RecordBuilder
	fw      *pqarrow.FileWriter
	row     row
	rows    int
	bytes   int
	maxRows int // rows per row group
}

// parquetSink hides the upload's other methods from pqarrow, which would otherwise
// close an io.Closer sink itself.
type parquetSink struct{ w io.Writer }

func (s parquetSink) Write(p []byte) (int, error) { return s.w.Write(p) }

func newParquetEncoder(sink io.Writer, cols *columns, f *flattener, mem memory.Allocator, createdBy string, rowGroupRows int) (encoder, error) {
	fields := make([]arrow.Field, len(cols.names))
	for i, name := range cols.names {
		fields[i] = arrow.Field{Name: name, Type: arrowType(cols.types[i]), Nullable: true}
	}
	schema := arrow.NewSchema(fields, nil)
	props := parquet.NewWriterProperties(
		parquet.WithAllocator(mem),
		parquet.WithCompression(compress.Codecs.Snappy),
		parquet.WithCreatedBy(createdBy),
		parquet.WithMaxRowGroupLength(int64(rowGroupRows)),
		// Every messageId differs, and so, in an export of one row per user or group, do
		// the identifiers and timestamps: a dictionary would only cost memory and time
		// (a quarter of the encoding's CPU) before the writer falls back to plain
		// encoding. Types, events and traits keep theirs.
		parquet.WithDictionaryFor("messageId", false),
		parquet.WithDictionaryFor("userId", false),
		parquet.WithDictionaryFor("anonymousId", false),
		parquet.WithDictionaryFor("groupId", false),
		parquet.WithDictionaryFor("timestamp", false),
	)
	fw, err := pqarrow.NewFileWriter(schema, parquetSink{sink}, props,
		pqarrow.NewArrowWriterProperties(pqarrow.WithAllocator(mem), pqarrow.WithStoreSchema()))
	if err != nil {
		return nil, fmt.Errorf("starting the Parquet writer: %w", err)
	}
	// The builders grow as rows come rather than reserving a whole row group's rows up
	// front: reserved at each flush, a row group's buffers were allocated while the last
	// one's were still garbage, and the Parquet sync of the bench peaked 10 MiB higher
	// (191–208 against 184–193 MiB, docs/performance.md) for no speed.
	return &parquetEncoder{
		cols: cols, f: f, schema: schema, fw: fw, maxRows: rowGroupRows,
		rb: array.NewRecordBuilder(mem, schema),
	}, nil
}

func arrowType(t colType) arrow.DataType {
	switch t {
	case typeInt64:
		return arrow.PrimitiveTypes.Int64
	case typeFloat64:
		return arrow.PrimitiveTypes.Float64
	case typeBool:
		return arrow.FixedWidthTypes.Boolean
	}
	return arrow.BinaryTypes.String
}

func (e *parquetEncoder) write(msgs []mapper.Message, reject func(int, error)) (int, error) {
	defer e.row.forget()
	for i := range msgs {
		if err := e.cols.fill(e.f, &msgs[i], &e.row); err != nil {
			if isMisfit(err) {
				return i, nil
			}
			reject(i, err)
			continue
		}
		if err := e.appendRow(); err != nil {
			return i, fmt.Errorf("message %s (row %d): %w", msgs[i].ID, msgs[i].Row, err)
		}
		if e.rows >= e.maxRows || e.bytes >= rowGroupBytes {
			if err := e.flush(); err != nil {
				// The rows of this row group are lost with the object.
				return i, err
			}
		}
	}
	return len(msgs), nil
}

// appendRow appends e.row to the builders. fill has checked that every value fits.
func (e *parquetEncoder) appendRow() error {
	r := &e.row
	for c := range e.cols.names {
		b := e.rb.Field(c)
		switch {
		case c == 5:
			sb := b.(*array.StringBuilder)
			if len(r.ts) == 0 {
				sb.AppendNull()
			} else {
				sb.BinaryBuilder.Append(r.ts)
				e.bytes += len(r.ts)
			}
			continue
		case c < numFieldColumns:
			sb := b.(*array.StringBuilder)
			if v := r.field(c); v == "" {
				sb.AppendNull()
			} else {
				sb.BinaryBuilder.AppendString(v)
				e.bytes += len(v)
			}
			continue
		case !r.set[c]:
			b.AppendNull()
			continue
		}
		v := r.vals[c]
		e.bytes += len(v.raw) + 8
		switch b := b.(type) {
		case *array.StringBuilder:
			b.BinaryBuilder.Append(v.raw)
		case *array.Int64Builder:
			n, ok := parseInt(v.raw)
			if !ok {
				return fmt.Errorf("column %s: %q is not an int64", e.cols.names[c], v.raw)
			}
			b.Append(n)
		case *array.Float64Builder:
			// A literal beyond float64's range (1e400) parses as ±Inf with ErrRange.
			x, err := strconv.ParseFloat(string(v.raw), 64)
			if err != nil && !errors.Is(err, strconv.ErrRange) {
				return fmt.Errorf("column %s: %q is not a float64: %w", e.cols.names[c], v.raw, err)
			}
			b.Append(x)
		case *array.BooleanBuilder:
			b.Append(v.raw[0] == 't')
		default:
			return fmt.Errorf("column %s: unexpected builder %T", e.cols.names[c], b)
		}
	}
	e.rows++
	return nil
}

// flush writes the rows held in the builders as one row group.
func (e *parquetEncoder) flush() error {
	if e.rows == 0 {
		return nil
	}
	rec := e.rb.NewRecordBatch()
	e.rows, e.bytes = 0, 0
	err := e.fw.Write(rec)
	rec.Release()
	if err != nil {
		return fmt.Errorf("writing a Parquet row group: %w", err)
	}
	return nil
}

func (e *parquetEncoder) finish() error {
	err := e.flush()
	if cerr := e.fw.Close(); err == nil && cerr != nil {
		err = fmt.Errorf("writing the Parquet footer: %w", cerr)
	}
	e.rb.Release()
	return err
}

func (e *parquetEncoder) release() {
	_ = e.fw.Close()
	e.rb.Release()
}
