package mapper

import (
	"bytes"
	"cmp"
	"context"
	"encoding/json"
	"fmt"
	"os"
	"path/filepath"
	"slices"
	"strings"
	"testing"
	"time"
	"unsafe"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/decimal"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/decimal256"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/float16"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
)

// buildRecord builds a record of schema from rows, one []any a row, one value a column,
// appended by appendAny. The caller releases it.
func buildRecord(t testing.TB, mem memory.Allocator, schema *arrow.Schema, rows [][]any) arrow.RecordBatch {
	t.Helper()
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for r, row := range rows {
		if len(row) != schema.NumFields() {
			t.Fatalf("row %d has %d values, the schema %d columns", r, len(row), schema.NumFields())
		}
		for c, v := range row {
			if err := appendAny(b.Field(c), v); err != nil {
				t.Fatalf("row %d column %s: %v", r, schema.Field(c).Name, err)
			}
		}
	}
	return b.NewRecordBatch()
}

// appendAny appends a Go value to an Arrow builder: nil is null; numbers are int, int64,
// uint64 or float64; timestamps and dates time.Time or a raw int64; decimals a string;
// lists []any; structs []any (one a field); maps [][2]any.
func appendAny(b array.Builder, v any) error {
	if v == nil {
		b.AppendNull()
		return nil
	}
	switch b := b.(type) {
	case *array.BooleanBuilder:
		b.Append(v.(bool))
	case *array.Int8Builder:
		b.Append(int8(toI64(v)))
	case *array.Int16Builder:
		b.Append(int16(toI64(v)))
	case *array.Int32Builder:
		b.Append(int32(toI64(v)))
	case *array.Int64Builder:
		b.Append(toI64(v))
	case *array.Uint8Builder:
		b.Append(uint8(toU64(v)))
	case *array.Uint16Builder:
		b.Append(uint16(toU64(v)))
	case *array.Uint32Builder:
		b.Append(uint32(toU64(v)))
	case *array.Uint64Builder:
		b.Append(toU64(v))
	case *array.Float16Builder:
		if h, ok := v.(float16.Num); ok {
			b.Append(h)
		} else {
			b.Append(float16.New(float32(v.(float64))))
		}
	case *array.Float32Builder:
		b.Append(float32(v.(float64)))
	case *array.Float64Builder:
		b.Append(v.(float64))
	case *array.StringBuilder:
		b.Append(v.(string))
	case *array.LargeStringBuilder:
		b.Append(v.(string))
	case *array.StringViewBuilder:
		b.Append(v.(string))
	case *array.BinaryBuilder:
		b.Append(toBytes(v))
	case *array.BinaryViewBuilder:
		b.Append(toBytes(v))
	case *array.FixedSizeBinaryBuilder:
		b.Append(toBytes(v))
	case *array.Decimal128Builder:
		if n, ok := v.(decimal128.Num); ok {
			b.Append(n)
			return nil
		}
		dt := b.Type().(*arrow.Decimal128Type)
		n, err := decimal128.FromString(v.(string), dt.Precision, dt.Scale)
		if err != nil {
			return err
		}
		b.Append(n)
	case *array.Decimal256Builder:
		if n, ok := v.(decimal256.Num); ok {
			b.Append(n)
			return nil
		}
		dt := b.Type().(*arrow.Decimal256Type)
		n, err := decimal256.FromString(v.(string), dt.Precision, dt.Scale)
		if err != nil {
			return err
		}
		b.Append(n)
	case *array.TimestampBuilder:
		if tm, ok := v.(time.Time); ok {
			ts, err := arrow.TimestampFromTime(tm, b.Type().(*arrow.TimestampType).Unit)
			if err != nil {
				return err
			}
			b.Append(ts)
		} else {
			b.Append(arrow.Timestamp(toI64(v)))
		}
	case *array.Date32Builder:
		if tm, ok := v.(time.Time); ok {
			b.Append(arrow.Date32FromTime(tm))
		} else {
			b.Append(arrow.Date32(toI64(v)))
		}
	case *array.Date64Builder:
		if tm, ok := v.(time.Time); ok {
			b.Append(arrow.Date64FromTime(tm))
		} else {
			b.Append(arrow.Date64(toI64(v)))
		}
	case *array.Time32Builder:
		b.Append(arrow.Time32(toI64(v)))
	case *array.Time64Builder:
		b.Append(arrow.Time64(toI64(v)))
	case *array.DurationBuilder:
		b.Append(arrow.Duration(toI64(v)))
	case *array.MapBuilder: // before ListLikeBuilder: a map builder is one
		b.Append(true)
		for _, kv := range v.([][2]any) {
			if err := appendAny(b.KeyBuilder(), kv[0]); err != nil {
				return err
			}
			if err := appendAny(b.ItemBuilder(), kv[1]); err != nil {
				return err
			}
		}
	case *array.FixedSizeListBuilder:
		b.Append(true)
		for _, e := range v.([]any) {
			if err := appendAny(b.ValueBuilder(), e); err != nil {
				return err
			}
		}
	case array.VarLenListLikeBuilder:
		elems := v.([]any)
		b.AppendWithSize(true, len(elems))
		for _, e := range elems {
			if err := appendAny(b.ValueBuilder(), e); err != nil {
				return err
			}
		}
	case *array.StructBuilder:
		b.Append(true)
		fields := v.([]any)
		for j := range b.NumField() {
			if err := appendAny(b.FieldBuilder(j), fields[j]); err != nil {
				return err
			}
		}
	case *array.Decimal32Builder:
		b.Append(decimal.Decimal32(toI64(v)))
	case *array.Decimal64Builder:
		b.Append(decimal.Decimal64(toI64(v)))
	case *array.MonthIntervalBuilder:
		b.Append(arrow.MonthInterval(toI64(v)))
	case *extensions.Bool8Builder:
		b.Append(v.(bool))
	case *array.BinaryDictionaryBuilder:
		return b.AppendString(v.(string))
	case *extensions.UUIDBuilder:
		return b.AppendValueFromString(v.(string))
	case interface{ StorageBuilder() array.Builder }:
		return appendAny(b.StorageBuilder(), v)
	default:
		return fmt.Errorf("appendAny: no case for %T", b)
	}
	return nil
}

func toI64(v any) int64 {
	switch v := v.(type) {
	case int:
		return int64(v)
	case int64:
		return v
	case uint64:
		return int64(v)
	}
	panic(fmt.Sprintf("not an integer: %T", v))
}

func toU64(v any) uint64 {
	switch v := v.(type) {
	case int:
		return uint64(v)
	case int64:
		return uint64(v)
	case uint64:
		return v
	}
	panic(fmt.Sprintf("not an integer: %T", v))
}

func toBytes(v any) []byte {
	if s, ok := v.(string); ok {
		return []byte(s)
	}
	return v.([]byte)
}

// writeOptions say how a test writes its Parquet file.
type writeOptions struct {
	int96         bool // timestamps[ns] as the deprecated INT96
	noStoreSchema bool // leave out the Arrow schema, as most writers outside Arrow do
}

// writeParquet writes rec to a Parquet file in dir and returns its path.
func writeParquet(t testing.TB, dir string, rec arrow.RecordBatch, wo writeOptions) string {
	t.Helper()
	path := filepath.Join(dir, "input.parquet")
	f, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	var opts []pqarrow.WriterOption
	if !wo.noStoreSchema {
		opts = append(opts, pqarrow.WithStoreSchema())
	}
	if wo.int96 {
		opts = append(opts, pqarrow.WithDeprecatedInt96Timestamps(true))
	}
	w, err := pqarrow.NewFileWriter(rec.Schema(), f, parquet.NewWriterProperties(parquet.WithMaxRowGroupLength(5)),
		pqarrow.NewArrowWriterProperties(opts...))
	if err != nil {
		t.Fatalf("writing parquet: %v", err)
	}
	if err := w.Write(rec); err != nil {
		t.Fatalf("writing parquet: %v", err)
	}
	if err := w.Close(); err != nil {
		t.Fatalf("writing parquet: %v", err)
	}
	return path
}

// parquetFile is an open Parquet file read through pqarrow.
type parquetFile struct {
	f  *os.File
	fr *pqarrow.FileReader
}

func openParquet(path string, mem memory.Allocator, batchSize int64) (_ *parquetFile, err error) {
	defer func() {
		// arrow-go v18.8.0 panics on some footers (unknown-logical-type.parquet: "invalid
		// logical type"); the reader package must guard the same way.
		if p := recover(); p != nil {
			err = fmt.Errorf("pqarrow panicked: %v", p)
		}
	}()
	f, err := os.Open(path)
	if err != nil {
		return nil, err
	}
	rdr, err := file.NewParquetReader(f, file.WithReadProps(parquet.NewReaderProperties(mem)))
	if err != nil {
		f.Close()
		return nil, err
	}
	fr, err := pqarrow.NewFileReader(rdr, pqarrow.ArrowReadProperties{BatchSize: batchSize}, mem)
	if err != nil {
		rdr.Close()
		return nil, err
	}
	return &parquetFile{f: f, fr: fr}, nil
}

func (p *parquetFile) Close() { p.fr.ParquetReader().Close() }

func (p *parquetFile) schema() (*arrow.Schema, error) { return p.fr.Schema() }

// each calls fn with every record of the file (the first limit rows, if limit > 0) and
// the file index of its first row.
func (p *parquetFile) each(ctx context.Context, limit int64, fn func(rec arrow.RecordBatch, firstRow int64)) error {
	rr, err := p.fr.GetRecordReader(ctx, nil, nil)
	if err != nil {
		return err
	}
	defer rr.Release()
	var row int64
	for (limit <= 0 || row < limit) && rr.Next() {
		rec := rr.RecordBatch()
		fn(rec, row)
		row += rec.NumRows()
	}
	return rr.Err()
}

// checkMessages asserts what every message must satisfy: valid JSON whose fields agree
// with the Message's, its body and timestamp where the offsets say, a messageId of at
// most 100 characters.
func checkMessages(t testing.TB, msgs []Message) {
	t.Helper()
	for _, m := range msgs {
		if !json.Valid(m.JSON) {
			t.Fatalf("row %d: invalid JSON: %q", m.Row, m.JSON)
		}
		var got struct {
			Type        string          `json:"type"`
			UserID      *string         `json:"userId"`
			AnonymousID *string         `json:"anonymousId"`
			GroupID     *string         `json:"groupId"`
			Event       *string         `json:"event"`
			Traits      json.RawMessage `json:"traits"`
			Properties  json.RawMessage `json:"properties"`
			Timestamp   *string         `json:"timestamp"`
			MessageID   string          `json:"messageId"`
			Context     struct {
				Library struct{ Name, Version string }
			} `json:"context"`
		}
		dec := json.NewDecoder(bytes.NewReader(m.JSON))
		dec.DisallowUnknownFields()
		if err := dec.Decode(&got); err != nil {
			t.Fatalf("row %d: %v: %s", m.Row, err, m.JSON)
		}
		str := func(p *string) string {
			if p == nil {
				return ""
			}
			if *p == "" {
				t.Errorf("row %d: an empty identifier is sent: %s", m.Row, m.JSON)
			}
			return *p
		}
		if got.Type != m.Type || str(got.UserID) != m.UserID || str(got.AnonymousID) != m.AnonymousID ||
			str(got.GroupID) != m.GroupID || got.MessageID != m.ID {
			t.Errorf("row %d: fields %+v disagree with the JSON %s", m.Row, m, m.JSON)
		}
		if got.Event == nil && m.Event != "" || got.Event != nil && *got.Event != m.Event {
			t.Errorf("row %d: Event %q, JSON %s", m.Row, m.Event, m.JSON)
		}
		if m.UserID == "" && m.AnonymousID == "" {
			t.Errorf("row %d: message without identifiers", m.Row)
		}
		body := got.Traits
		if m.Type == "track" {
			body = got.Properties
			if got.Traits != nil {
				t.Errorf("row %d: track with traits", m.Row)
			}
		} else if got.Properties != nil {
			t.Errorf("row %d: %s with properties", m.Row, m.Type)
		}
		if !bytes.Equal(body, m.Body()) || len(body) == 0 || body[0] != '{' {
			t.Errorf("row %d: Body() %s, JSON body %s", m.Row, m.Body(), body)
		}
		var ts string
		if got.Timestamp != nil {
			ts = *got.Timestamp
		}
		if raw := m.Timestamp(); !strings.Contains(string(raw), `\`) && raw != ts {
			t.Errorf("row %d: Timestamp() %q, JSON %q", m.Row, raw, ts)
		}
		if len(m.ID) > 100 || !strings.HasPrefix(m.ID, "bf-") {
			t.Errorf("row %d: messageId %q", m.Row, m.ID)
		}
		if len(m.Key) != 32 {
			t.Errorf("row %d: Key %q", m.Row, m.Key)
		}
		if got.Context.Library.Name != "backflow" {
			t.Errorf("row %d: context %s", m.Row, m.JSON)
		}
		if cap(m.JSON) != len(m.JSON) {
			t.Errorf("row %d: JSON has spare capacity: an append would overwrite the next message", m.Row)
		}
	}
}

// checkIsolated fails unless the messages' JSON share no byte of memory and appending to
// one message's JSON leaves every other message as it was.
func checkIsolated(t testing.TB, msgs []Message) {
	t.Helper()
	type extent struct {
		start, end uintptr
		k          int
	}
	var extents []extent
	for k := range msgs {
		if len(msgs[k].JSON) > 0 {
			start := uintptr(unsafe.Pointer(unsafe.SliceData(msgs[k].JSON)))
			extents = append(extents, extent{start, start + uintptr(len(msgs[k].JSON)), k})
		}
	}
	slices.SortFunc(extents, func(a, b extent) int { return cmp.Compare(a.start, b.start) })
	for j := 1; j < len(extents); j++ {
		if extents[j].start < extents[j-1].end {
			t.Fatalf("messages %d and %d share memory", extents[j-1].k, extents[j].k)
		}
	}
	before := make([]string, len(msgs))
	for k := range msgs {
		before[k] = string(msgs[k].JSON)
	}
	for k := range msgs {
		_ = append(msgs[k].JSON, "XXXXXXXX"...)
	}
	for k := range msgs {
		if string(msgs[k].JSON) != before[k] {
			t.Fatalf("appending to another message changed message %d", k)
		}
	}
}
