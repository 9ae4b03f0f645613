package schema_test

import (
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/file"
	pqschema "github.com/apache/arrow-go/v18/parquet/schema"

	"github.com/backflowhq/backflow/schema"
)

// typeCase is one column of allTypes: its Arrow type as written, a JSON value for it,
// and what Infer must say of it.
type typeCase struct {
	name    string
	dt      arrow.DataType
	value   string // JSON, as array.RecordFromJSON reads it
	parquet string
	json    string
	arrow   string // TypeName of the type read back
}

var allTypes = []typeCase{
	{"s", arrow.BinaryTypes.String, `"héllo"`, "BYTE_ARRAY (STRING)", "string", "utf8"},
	{"ls", arrow.BinaryTypes.LargeString, `""`, "BYTE_ARRAY (STRING)", "string", "utf8"},
	{"b", arrow.FixedWidthTypes.Boolean, `true`, "BOOLEAN", "boolean", "bool"},
	{"i8", arrow.PrimitiveTypes.Int8, `-8`, "INT32 (INTEGER(8,true))", "number", "int8"},
	{"u8", arrow.PrimitiveTypes.Uint8, `8`, "INT32 (INTEGER(8,false))", "number", "uint8"},
	{"i16", arrow.PrimitiveTypes.Int16, `-16`, "INT32 (INTEGER(16,true))", "number", "int16"},
	{"u16", arrow.PrimitiveTypes.Uint16, `16`, "INT32 (INTEGER(16,false))", "number", "uint16"},
	{"i32", arrow.PrimitiveTypes.Int32, `-32`, "INT32", "number", "int32"},
	{"u32", arrow.PrimitiveTypes.Uint32, `32`, "INT32 (INTEGER(32,false))", "number", "uint32"},
	{"i64", arrow.PrimitiveTypes.Int64, `-64`, "INT64", "number", "int64"},
	{"u64", arrow.PrimitiveTypes.Uint64, `64`, "INT64 (INTEGER(64,false))", "number", "uint64"},
	{"f16", arrow.FixedWidthTypes.Float16, `1.5`, "FIXED_LEN_BYTE_ARRAY (FLOAT16)", "number", "float16"},
	{"f32", arrow.PrimitiveTypes.Float32, `2.5`, "FLOAT", "number", "float32"},
	{"f64", arrow.PrimitiveTypes.Float64, `3.25`, "DOUBLE", "number", "float64"},
	{"dec_i32", &arrow.Decimal128Type{Precision: 9, Scale: 2}, `"12.30"`, "INT32 (DECIMAL(9,2))", "number", "decimal(9, 2)"},
	{"dec_i64", &arrow.Decimal128Type{Precision: 18, Scale: 3}, `"-1.500"`, "INT64 (DECIMAL(18,3))", "number", "decimal(18, 3)"},
	{"dec_fixed", &arrow.Decimal128Type{Precision: 30, Scale: 4}, `"123456789012345.6789"`, "FIXED_LEN_BYTE_ARRAY (DECIMAL(30,4))", "number", "decimal(30, 4)"},
	{"dec256", &arrow.Decimal256Type{Precision: 50, Scale: 5}, `"1.00001"`, "FIXED_LEN_BYTE_ARRAY (DECIMAL(50,5))", "number", "decimal256(50, 5)"},
	{"ts_s", &arrow.TimestampType{Unit: arrow.Second, TimeZone: "UTC"}, `"2024-01-01T00:00:00Z"`, "INT64 (TIMESTAMP(MILLIS,true))", "string", "timestamp[ms, tz=UTC]"},
	{"ts_ms", &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}, `"2024-01-01T00:00:00.5Z"`, "INT64 (TIMESTAMP(MILLIS,true))", "string", "timestamp[ms, tz=UTC]"},
	{"ts_us", &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "UTC"}, `"2024-01-01T00:00:00.000001Z"`, "INT64 (TIMESTAMP(MICROS,true))", "string", "timestamp[us, tz=UTC]"},
	{"ts_ns", &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "UTC"}, `"2024-01-01T00:00:00.000000001Z"`, "INT64 (TIMESTAMP(NANOS,true))", "string", "timestamp[ns, tz=UTC]"},
	{"ts_local", &arrow.TimestampType{Unit: arrow.Microsecond}, `"2024-01-01T00:00:00"`, "INT64 (TIMESTAMP(MICROS,false))", "string", "timestamp[us]"},
	{"d32", arrow.FixedWidthTypes.Date32, `"2024-01-01"`, "INT32 (DATE)", "string", "date32"},
	{"d64", arrow.FixedWidthTypes.Date64, `"2024-01-01"`, "INT32 (DATE)", "string", "date32"},
	{"t32", arrow.FixedWidthTypes.Time32ms, `"15:04:05.123"`, "INT32 (TIME(MILLIS,false))", "string", "time32[ms]"},
	{"t64us", arrow.FixedWidthTypes.Time64us, `"15:04:05.000001"`, "INT64 (TIME(MICROS,false))", "string", "time64[us]"},
	{"t64ns", arrow.FixedWidthTypes.Time64ns, `"15:04:05.000000001"`, "INT64 (TIME(NANOS,false))", "string", "time64[ns]"},
	{"bin", arrow.BinaryTypes.Binary, `"AAEC"`, "BYTE_ARRAY", "string", "binary"},
	{"fsb", &arrow.FixedSizeBinaryType{ByteWidth: 3}, `"AAEC"`, "FIXED_LEN_BYTE_ARRAY", "string", "fixed_size_binary[3]"},
	{"uuid", extensions.NewUUIDType(), `"3f2504e0-4f89-11d3-9a0c-0305e82c3301"`, "FIXED_LEN_BYTE_ARRAY (UUID)", "string", "extension<arrow.uuid>"},
	{"list", arrow.ListOf(arrow.PrimitiveTypes.Int32), `[1, null, 3]`, "group (LIST)", "array", "list<int32>"},
	{"empty_list", arrow.ListOf(arrow.BinaryTypes.String), `[]`, "group (LIST)", "array", "list<utf8>"},
	{"struct", arrow.StructOf(field("a", arrow.PrimitiveTypes.Int32), field("b", arrow.BinaryTypes.String)), `{"a": 1, "b": "x"}`, "group", "object", "struct<a: int32, b: utf8>"},
	{"map", arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int64), `[{"key": "k", "value": 1}]`, "group (MAP)", "object", "map<utf8, int64>"},
	{"nested", arrow.ListOf(arrow.StructOf(field("tags", arrow.ListOf(arrow.BinaryTypes.String)))), `[{"tags": ["a"]}]`, "group (LIST)", "array", "list<struct<tags: list<utf8>>>"},
	{"dict", &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}, `"red"`, "BYTE_ARRAY (STRING)", "string", "utf8"},
}

func allTypesSchema() *arrow.Schema {
	fs := make([]arrow.Field, len(allTypes))
	for i, c := range allTypes {
		fs[i] = field(c.name, c.dt)
	}
	return fields(fs...)
}

// allTypesRows is a JSON array of rows of allTypes: each row has every value, except
// that row nullRow (when >= 0) has column nullCol null.
func allTypesRows(n, nullRow, nullCol int) string {
	var b strings.Builder
	b.WriteString("[")
	for r := 0; r < n; r++ {
		if r > 0 {
			b.WriteString(",")
		}
		b.WriteString("{")
		for i, c := range allTypes {
			if i > 0 {
				b.WriteString(",")
			}
			v := c.value
			if r == nullRow && i == nullCol {
				v = "null"
			}
			b.WriteString(`"` + c.name + `":` + v)
		}
		b.WriteString("}")
	}
	b.WriteString("]")
	return b.String()
}

func TestInferEveryType(t *testing.T) {
	dir := t.TempDir()
	for _, store := range []bool{false, true} {
		name := "plain.parquet"
		if store {
			name = "stored.parquet"
		}
		t.Run(name, func(t *testing.T) {
			mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
			defer mem.AssertSize(t, 0)
			path := writeJSON(t, dir, name, allTypesSchema(), allTypesRows(3, -1, -1), writeOpts{storeSchema: store})
			f := mustOpen(t, path, mem)
			s, err := schema.Infer(f)
			if err != nil {
				t.Fatal(err)
			}
			if len(s.Columns) != len(allTypes) || s.Arrow.NumFields() != len(allTypes) {
				t.Fatalf("%d columns, want %d", len(s.Columns), len(allTypes))
			}
			for i, c := range allTypes {
				got := s.Columns[i]
				if got.Name != c.name || got.Parquet != c.parquet || got.JSON != c.json || got.TypeName() != c.arrow {
					t.Errorf("column %d: got {%q %q %q %q}, want {%q %q %q %q}", i,
						got.Name, got.Parquet, got.JSON, got.TypeName(), c.name, c.parquet, c.json, c.arrow)
				}
			}
			// With the Arrow schema stored, dictionary and large types come back as
			// written: the Arrow types differ, the comparison does not.
			dict, _ := s.Column("dict")
			if _, isDict := dict.Type.(*arrow.DictionaryType); isDict != store {
				t.Errorf("dict column read as %s", dict.Type)
			}
			// Every file of every type passes Check.
			if _, err := schema.Check(t.Context(), f, limits(1<<30), nil); err != nil {
				t.Fatal(err)
			}
		})
	}
}

func TestInferINT96(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	sc := fields(field("ts", &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "UTC"}), field("id", arrow.PrimitiveTypes.Int64))
	path := writeJSON(t, t.TempDir(), "int96.parquet", sc, `[{"ts": "2024-01-01T00:00:00.5Z", "id": 1}]`, writeOpts{int96: true})
	f := mustOpen(t, path, mem)
	s, err := schema.Check(t.Context(), f, limits(1<<30), nil)
	if err != nil {
		t.Fatal(err)
	}
	c, ok := s.Column("ts")
	if !ok || c.Parquet != "INT96" || c.JSON != "string" || c.TypeName() != "timestamp[ns, tz=UTC]" {
		t.Fatalf("INT96 column: %+v %s", c, c.TypeName())
	}
}

// TestInferByteArrayDecimal writes, with the low-level Parquet writer, what pqarrow
// never writes: a decimal stored as BYTE_ARRAY, and a legacy UTF8 converted type.
func TestInferByteArrayDecimal(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	dec, err := pqschema.NewPrimitiveNodeLogical("amount", parquet.Repetitions.Required,
		pqschema.NewDecimalLogicalType(10, 2), parquet.Types.ByteArray, -1, -1)
	if err != nil {
		t.Fatal(err)
	}
	utf8, err := pqschema.NewPrimitiveNodeConverted("name", parquet.Repetitions.Optional, parquet.Types.ByteArray,
		pqschema.ConvertedTypes.UTF8, -1, 0, 0, -1)
	if err != nil {
		t.Fatal(err)
	}
	root, err := pqschema.NewGroupNode("schema", parquet.Repetitions.Required, pqschema.FieldList{dec, utf8}, -1)
	if err != nil {
		t.Fatal(err)
	}
	path := t.TempDir() + "/bytedec.parquet"
	writeLowLevel(t, path, root, func(rg file.SerialRowGroupWriter) {
		cw, err := rg.NextColumn()
		if err != nil {
			t.Fatal(err)
		}
		// 12.34 and -0.05 as big-endian two's complement unscaled values.
		if _, err := cw.(*file.ByteArrayColumnChunkWriter).WriteBatch([]parquet.ByteArray{{0x04, 0xd2}, {0xfb}}, nil, nil); err != nil {
			t.Fatal(err)
		}
		cw.Close()
		cw, err = rg.NextColumn()
		if err != nil {
			t.Fatal(err)
		}
		if _, err := cw.(*file.ByteArrayColumnChunkWriter).WriteBatch([]parquet.ByteArray{[]byte("a"), []byte("")}, []int16{1, 1}, nil); err != nil {
			t.Fatal(err)
		}
		cw.Close()
	})
	f := mustOpen(t, path, mem)
	s, err := schema.Check(t.Context(), f, limits(1<<30), nil)
	if err != nil {
		t.Fatal(err)
	}
	if c := s.Columns[0]; c.Parquet != "BYTE_ARRAY (DECIMAL(10,2))" || c.JSON != "number" || c.TypeName() != "decimal(10, 2)" {
		t.Errorf("byte-array decimal: %+v %s", c, c.TypeName())
	}
	if c := s.Columns[1]; c.Parquet != "BYTE_ARRAY (STRING)" || c.JSON != "string" || c.TypeName() != "utf8" {
		t.Errorf("UTF8 converted type: %+v %s", c, c.TypeName())
	}
	rec, err := f.ReadFirstRows(t.Context(), 2)
	if err != nil {
		t.Fatal(err)
	}
	defer rec.Release()
	if got := rec.Column(0).ValueStr(0) + " " + rec.Column(0).ValueStr(1); got != "12.34 -0.05" {
		t.Errorf("decimals read back as %s", got)
	}
}

func writeLowLevel(t *testing.T, path string, root *pqschema.GroupNode, fill func(file.SerialRowGroupWriter)) {
	t.Helper()
	out, err := createFile(path)
	if err != nil {
		t.Fatal(err)
	}
	w := file.NewParquetWriter(out, root)
	rg := w.AppendRowGroup()
	fill(rg)
	if err := rg.Close(); err != nil {
		t.Fatal(err)
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}

func TestJSONType(t *testing.T) {
	for _, tc := range []struct {
		dt   arrow.DataType
		want string
	}{
		{arrow.Null, "null"},
		{arrow.FixedWidthTypes.Duration_ms, "number"},
		{arrow.BinaryTypes.StringView, "string"},
		{arrow.LargeListOf(arrow.PrimitiveTypes.Int8), "array"},
		{arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Int8), "array"},
		{arrow.RunEndEncodedOf(arrow.PrimitiveTypes.Int32, arrow.FixedWidthTypes.Boolean), "boolean"},
		{&arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.PrimitiveTypes.Float64}, "number"},
		{arrow.FixedWidthTypes.MonthDayNanoInterval, "string"},
	} {
		if got := schema.JSONType(tc.dt); got != tc.want {
			t.Errorf("JSONType(%s) = %s, want %s", tc.dt, got, tc.want)
		}
	}
}

func TestParquetTypeOfLegacyNodes(t *testing.T) {
	must := func(n pqschema.Node, err error) pqschema.Node {
		t.Helper()
		if err != nil {
			t.Fatal(err)
		}
		return n
	}
	repeated := must(pqschema.NewPrimitiveNode("ids", parquet.Repetitions.Repeated, parquet.Types.Int32, -1, -1))
	interval := must(pqschema.NewPrimitiveNodeConverted("span", parquet.Repetitions.Optional, parquet.Types.FixedLenByteArray,
		pqschema.ConvertedTypes.Interval, 12, 0, 0, -1))
	kv := must(pqschema.NewGroupNodeConverted("map", parquet.Repetitions.Repeated, pqschema.FieldList{
		must(pqschema.NewPrimitiveNode("key", parquet.Repetitions.Required, parquet.Types.Int64, -1, -1)),
	}, pqschema.ConvertedTypes.MapKeyValue, -1))
	jsonCol := must(pqschema.NewPrimitiveNodeLogical("doc", parquet.Repetitions.Optional, pqschema.JSONLogicalType{},
		parquet.Types.ByteArray, -1, -1))
	small := must(pqschema.NewPrimitiveNodeLogical("n", parquet.Repetitions.Optional, pqschema.NewIntLogicalType(16, true),
		parquet.Types.Int32, -1, -1))
	for n, want := range map[pqschema.Node]string{
		repeated: "repeated INT32",
		interval: "FIXED_LEN_BYTE_ARRAY (INTERVAL)",
		kv:       "repeated group (MAP)", // arrow-go reads MAP_KEY_VALUE as MAP
		jsonCol:  "BYTE_ARRAY (JSON)",
		small:    "INT32 (INTEGER(16,true))",
	} {
		if got := schema.ParquetType(n); got != want {
			t.Errorf("ParquetType(%s) = %q, want %q", n.Name(), got, want)
		}
	}
}
