package mapper

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"flag"
	"math"
	"os"
	"path/filepath"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/float16"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/go-viper/mapstructure/v2"
	"go.yaml.in/yaml/v3"

	"github.com/backflowhq/backflow/config"
)

var update = flag.Bool("update", false, "rewrite the expected files of testdata/<case>/")

// goldenCase builds the input of testdata/<name>/: the test writes it to Parquet, reads it
// back with pqarrow (in batches of 4 rows, so that rows span several records) and maps it
// with the case's mapping.yaml.
type goldenCase struct {
	build func(t testing.TB, mem memory.Allocator) arrow.RecordBatch
	write writeOptions
}

var goldenCases = map[string]goldenCase{
	"identify_basic":     {build: people},
	"identify_int_ids":   {build: intIDs},
	"track_event":        {build: orders},
	"track_event_column": {build: events},
	"group_basic":        {build: companies},
	"integers":           {build: integers},
	"floats":             {build: floats},
	"decimals":           {build: decimals},
	"timestamps":         {build: timestamps},
	"int96":              {build: int96, write: writeOptions{int96: true, noStoreSchema: true}},
	"dates_times":        {build: datesTimes},
	"binary":             {build: binaries},
	"uuid":               {build: uuids},
	"strings":            {build: texts},
	"nested":             {build: nested},
	"nested_plain":       {build: nested, write: writeOptions{noStoreSchema: true}},
	"rename_nested":      {build: people},
	"columns":            {build: people},
	"constants":          {build: people},
	"skip_nulls":         {build: people},
	"max_record_bytes":   {build: people},
	"timestamp_string":   {build: stringTimes},
	"timestamp_date":     {build: stringTimes},

	"err_type":                 {build: people},
	"err_no_identifier":        {build: people},
	"err_group_no_group_id":    {build: people},
	"err_group_id_not_group":   {build: people},
	"err_track_no_event":       {build: people},
	"err_event_both":           {build: people},
	"err_event_not_track":      {build: people},
	"err_missing_column":       {build: people},
	"err_missing_column_list":  {build: intIDs},
	"err_id_type":              {build: people},
	"err_event_column_type":    {build: people},
	"err_timestamp_type":       {build: people},
	"err_columns_missing":      {build: people},
	"err_columns_duplicate":    {build: people},
	"err_rename_missing":       {build: people},
	"err_rename_not_selected":  {build: people},
	"err_rename_id_column":     {build: people},
	"err_rename_collision":     {build: people},
	"err_rename_prefix":        {build: people},
	"err_rename_under_leaf":    {build: people},
	"err_rename_empty_segment": {build: people},
	"err_constant_collision":   {build: people},
	"err_constant_under_leaf":  {build: people},
	"err_same_identifier":      {build: people},
}

// goldenOptions is testdata/<case>/options.yaml, when present.
type goldenOptions struct {
	MaxRecordBytes int64 `yaml:"max_record_bytes"`
}

func TestGolden(t *testing.T) {
	dirs, err := os.ReadDir("testdata")
	if err != nil {
		t.Fatal(err)
	}
	seen := map[string]bool{}
	for _, d := range dirs {
		if !d.IsDir() || d.Name() == "fuzz" {
			continue
		}
		name := d.Name()
		seen[name] = true
		t.Run(name, func(t *testing.T) {
			c, ok := goldenCases[name]
			if !ok {
				t.Fatalf("testdata/%s has no builder in goldenCases", name)
			}
			runGolden(t, filepath.Join("testdata", name), c)
		})
	}
	for name := range goldenCases {
		if !seen[name] {
			t.Errorf("goldenCases[%q] has no folder testdata/%s", name, name)
		}
	}
}

func runGolden(t *testing.T, dir string, c goldenCase) {
	mp := readMapping(t, filepath.Join(dir, "mapping.yaml"))
	var gopts goldenOptions
	if b, err := os.ReadFile(filepath.Join(dir, "options.yaml")); err == nil {
		if err := yaml.Unmarshal(b, &gopts); err != nil {
			t.Fatal(err)
		}
	}

	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := c.build(t, mem)
	defer rec.Release()
	path := writeParquet(t, t.TempDir(), rec, c.write)

	pf, err := openParquet(path, mem, 4)
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	schema, err := pf.schema()
	if err != nil {
		t.Fatal(err)
	}

	m, err := New(Options{Sync: "golden", Mapping: mp, Schema: schema, MaxRecordBytes: gopts.MaxRecordBytes, Version: "test"})
	errFile := filepath.Join(dir, "expected.err")
	if err != nil {
		var ce *ConfigError
		if !errors.As(err, &ce) {
			t.Fatalf("New returned %T, not a *ConfigError: %v", err, err)
		}
		compareGolden(t, errFile, []byte(err.Error()+"\n"))
		return
	}
	if _, statErr := os.Stat(errFile); statErr == nil && !*update {
		t.Fatalf("New succeeded; expected.err wants an error")
	}

	var msgs []Message
	var rejects []Reject
	if err := pf.each(context.Background(), 0, func(rec arrow.RecordBatch, firstRow int64) {
		msgs, rejects = m.Map(rec, firstRow, msgs, rejects)
	}); err != nil {
		t.Fatal(err)
	}
	checkMessages(t, msgs)

	// Map again in one batch: the same rows must give the same bytes and ids.
	var again []Message
	if err := pf.each(context.Background(), 0, func(rec arrow.RecordBatch, firstRow int64) {
		again, _ = m.Map(rec, firstRow, again, nil)
	}); err != nil {
		t.Fatal(err)
	}
	for i := range again {
		if !bytes.Equal(again[i].JSON, msgs[i].JSON) || again[i].Key != msgs[i].Key {
			t.Errorf("row %d maps differently the second time", msgs[i].Row)
		}
	}

	compareGolden(t, filepath.Join(dir, "expected.jsonl"), goldenLines(t, msgs, rejects))
}

// goldenLines writes, in row order, each message as sent and each reject as
// {"row":…,"reject":"…","message":…}.
func goldenLines(t *testing.T, msgs []Message, rejects []Reject) []byte {
	type line struct {
		row  int64
		text []byte
	}
	var lines []line
	for _, m := range msgs {
		lines = append(lines, line{m.Row, m.JSON})
	}
	for _, r := range rejects {
		b, err := json.Marshal(struct {
			Row     int64           `json:"row"`
			Reject  string          `json:"reject"`
			Message json.RawMessage `json:"message,omitempty"`
		}{r.Row, r.Reason, r.Message})
		if err != nil {
			t.Fatal(err)
		}
		lines = append(lines, line{r.Row, b})
	}
	sort.SliceStable(lines, func(i, j int) bool { return lines[i].row < lines[j].row })
	var out bytes.Buffer
	for i, l := range lines {
		if l.row != int64(i) {
			t.Errorf("row %d is missing or mapped twice", i)
		}
		out.Write(l.text)
		out.WriteByte('\n')
	}
	return out.Bytes()
}

func compareGolden(t *testing.T, path string, got []byte) {
	t.Helper()
	if *update {
		if err := os.WriteFile(path, got, 0o644); err != nil {
			t.Fatal(err)
		}
		return
	}
	want, err := os.ReadFile(path)
	if err != nil {
		t.Fatalf("%v (run with -update to write it, then review it)", err)
	}
	if !bytes.Equal(got, want) {
		gl, wl := strings.Split(string(got), "\n"), strings.Split(string(want), "\n")
		for i := range max(len(gl), len(wl)) {
			var g, w string
			if i < len(gl) {
				g = gl[i]
			}
			if i < len(wl) {
				w = wl[i]
			}
			if g != w {
				t.Fatalf("%s line %d:\n got: %s\nwant: %s", path, i+1, g, w)
			}
		}
	}
}

// readMapping decodes a mapping section the way the config package does: YAML, then
// mapstructure into config.Mapping, unknown keys refused.
func readMapping(t *testing.T, path string) config.Mapping {
	t.Helper()
	b, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	var raw map[string]any
	if err := yaml.Unmarshal(b, &raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	var mp config.Mapping
	dec, err := mapstructure.NewDecoder(&mapstructure.DecoderConfig{Result: &mp, ErrorUnused: true, TagName: "mapstructure"})
	if err != nil {
		t.Fatal(err)
	}
	if err := dec.Decode(raw); err != nil {
		t.Fatalf("%s: %v", path, err)
	}
	return mp
}

// ---- The case builders. ----

var (
	t2024  = time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC)
	tHalf  = time.Date(2024, 1, 1, 0, 0, 0, 500_000_000, time.UTC)
	tMilli = time.Date(2025, 4, 14, 11, 23, 45, 123_000_000, time.UTC)
)

func people(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "customer_id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "anon_id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "email", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "plan", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "city", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "zip", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "age", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "score", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
		{Name: "updated_at", Type: &arrow.TimestampType{Unit: arrow.Millisecond, TimeZone: "UTC"}, Nullable: true},
		{Name: "company_id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "event_name", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"u1", "a1", "ada@example.com", "pro", "Oslo", "0150", 36, 9.5, t2024, 10, "Signed Up"},
		{"u2", nil, "bob@example.com", "free", nil, nil, nil, nil, nil, 11, "Logged In"},
		{nil, "a3", nil, "free", "Bergen", nil, 41, 0.25, tHalf, nil, nil},
		{nil, nil, "nobody@example.com", "free", "Oslo", "0151", 20, 1.0, tMilli, 12, "Signed Up"},
		{"", "", "empty@example.com", "pro", "Oslo", "0152", 21, 2.0, tMilli, 13, ""},
		{"", "a6", "anon@example.com", "team", nil, "5003", 22, -3.5, tMilli, 14, "Signed Up"},
		{"u7", "a7", "x@example.com", nil, "Tromsø", "9008", 70, math.Inf(1), t2024, 15, "Churned"},
	})
}

func intIDs(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "anon", Type: arrow.PrimitiveTypes.Uint64, Nullable: true},
		{Name: "n", Type: arrow.PrimitiveTypes.Int8, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{1, 2, 1},
		{-5, nil, 2},
		{int64(math.MaxInt64), uint64(math.MaxUint64), 3},
		{int64(math.MinInt64), 0, 4},
		{nil, 42, 5},
		{nil, nil, 6},
		{0, nil, -128},
	})
}

func orders(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "customer_id", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "order_id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "total", Type: &arrow.Decimal128Type{Precision: 10, Scale: 2}, Nullable: true},
		{Name: "items", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "ordered_at", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "Europe/Oslo"}, Nullable: true},
	}, nil)
	oslo := time.FixedZone("CET", 3600)
	return buildRecord(t, mem, schema, [][]any{
		{"u1", 1001, "12.30", 2, time.Date(2024, 3, 1, 10, 0, 0, 0, oslo)},
		{"u1", 1002, "-0.05", 1, time.Date(2024, 3, 1, 10, 0, 0, 1000, oslo)},
		{"u2", 1003, "99999999.99", nil, nil},
		{nil, 1004, "1.00", 1, t2024},
	})
}

func events(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "user", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "event", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int32, ValueType: arrow.BinaryTypes.String}, Nullable: true},
		{Name: "page", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}, Nullable: true},
		{Name: "at", Type: arrow.FixedWidthTypes.Timestamp_ns, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{1, "Signed Up", "/", time.Date(2024, 1, 1, 0, 0, 0, 123456789, time.UTC)},
		{1, "Page Viewed", "/pricing", time.Date(2024, 1, 1, 0, 0, 1, 0, time.UTC)},
		{2, nil, "/", t2024},
		{3, "", "/", t2024},
		{4, "Logged\nIn", nil, t2024},
		{5, "Page Viewed", "/pricing", nil},
	})
}

func companies(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "company_id", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "member", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "employees", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "industry", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{100, "u1", "Acme", 250, "Manufacturing"},
		{101, "u2", "Globex", 10, nil},
		{nil, "u3", "No Id Inc", 1, "Retail"},
		{102, nil, "Nobody Corp", 3, "Retail"},
		{103, "u5", "Initech", nil, "Software"},
	})
}

func integers(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "i8", Type: arrow.PrimitiveTypes.Int8, Nullable: true},
		{Name: "i16", Type: arrow.PrimitiveTypes.Int16, Nullable: true},
		{Name: "i32", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		{Name: "i64", Type: arrow.PrimitiveTypes.Int64, Nullable: true},
		{Name: "u8", Type: arrow.PrimitiveTypes.Uint8, Nullable: true},
		{Name: "u16", Type: arrow.PrimitiveTypes.Uint16, Nullable: true},
		{Name: "u32", Type: arrow.PrimitiveTypes.Uint32, Nullable: true},
		{Name: "u64", Type: arrow.PrimitiveTypes.Uint64, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"min", math.MinInt8, math.MinInt16, math.MinInt32, int64(math.MinInt64), 0, 0, 0, 0},
		{"max", math.MaxInt8, math.MaxInt16, math.MaxInt32, int64(math.MaxInt64), math.MaxUint8, math.MaxUint16, math.MaxUint32, uint64(math.MaxUint64)},
		{"zero", 0, 0, 0, 0, 0, 0, 0, 0},
		{"nulls", nil, nil, nil, nil, nil, nil, nil, nil},
		{"some", -1, 1000, -70000, 1 << 53, 7, 60000, 4000000000, uint64(1) << 63},
	})
}

func floats(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "f16", Type: arrow.FixedWidthTypes.Float16, Nullable: true},
		{Name: "f32", Type: arrow.PrimitiveTypes.Float32, Nullable: true},
		{Name: "f64", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"tenth", 0.1, 0.1, 0.1},
		{"nan", math.NaN(), math.NaN(), math.NaN()},
		{"inf", math.Inf(1), math.Inf(1), math.Inf(1)},
		{"-inf", math.Inf(-1), math.Inf(-1), math.Inf(-1)},
		{"-0", math.Copysign(0, -1), math.Copysign(0, -1), math.Copysign(0, -1)},
		{"big", 65504.0, 1e21, 1e21},
		{"below-exp", 1000.0, 1e20, 123456789012345678901.0},
		{"small", 0.000061035156, 1e-7, 1e-7},
		{"tiny", float16.FromBits(1), 1.401298464324817e-45, 5e-324},
		{"subnormal", float16.FromBits(0x3ff), 1e-40, 2.2250738585072014e-308},
		{"max", 65504.0, math.MaxFloat32, math.MaxFloat64},
		{"whole", 3.0, 42.0, -1234567.0},
		{"nulls", nil, nil, nil},
		{"third", 1.0 / 3, 1.0 / 3, 1.0 / 3},
	})
}

func decimals(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "price", Type: &arrow.Decimal128Type{Precision: 9, Scale: 2}, Nullable: true},
		{Name: "count", Type: &arrow.Decimal128Type{Precision: 18, Scale: 0}, Nullable: true},
		{Name: "ratio", Type: &arrow.Decimal128Type{Precision: 38, Scale: 10}, Nullable: true},
		{Name: "fraction", Type: &arrow.Decimal128Type{Precision: 38, Scale: 38}, Nullable: true},
		{Name: "wide", Type: &arrow.Decimal256Type{Precision: 76, Scale: 20}, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"a", "12.30", "42", "3.1415926535", "0.5", "1.5"},
		{"negative", "-12.30", "-42", "-0.0000000001", "-0.00000000000000000000000000000000000001", "-123456789012345678901234567890.12345678901234567890"},
		{"zero", "0.00", "0", "0", "0", "0"},
		{"max", "9999999.99", "999999999999999999",
			"9999999999999999999999999999.9999999999",
			"0.99999999999999999999999999999999999999",
			"99999999999999999999999999999999999999999999999999999999.99999999999999999999"},
		{"min", "-9999999.99", "-999999999999999999",
			"-9999999999999999999999999999.9999999999",
			"-0.99999999999999999999999999999999999999",
			"-99999999999999999999999999999999999999999999999999999999.99999999999999999999"},
		{"small", "0.01", "1", "0.0000000001", "0.00000000000000000000000000000000000001", "0.00000000000000000001"},
		{"nulls", nil, nil, nil, nil, nil},
	})
}

func timestamps(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "s", Type: &arrow.TimestampType{Unit: arrow.Second, TimeZone: "UTC"}, Nullable: true},
		{Name: "ms", Type: &arrow.TimestampType{Unit: arrow.Millisecond}, Nullable: true},
		{Name: "us", Type: &arrow.TimestampType{Unit: arrow.Microsecond, TimeZone: "America/New_York"}, Nullable: true},
		{Name: "ns", Type: &arrow.TimestampType{Unit: arrow.Nanosecond, TimeZone: "+05:30"}, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"epoch", 0, 0, 0, 0},
		{"whole", t2024, t2024, t2024, t2024},
		{"half", t2024, tHalf, tHalf, tHalf},
		{"fractions", t2024, 1704067200001, 1704067200000001, 1704067200000000001},
		{"before-1970", -1, -1, -1, -1},
		{"before-1970-fraction", -86401, -1500, -1500, -1500},
		{"extremes", time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), time.Date(9999, 12, 31, 23, 59, 59, 999_000_000, time.UTC),
			time.Date(1900, 2, 28, 12, 0, 0, 0, time.UTC), time.Date(2262, 4, 11, 23, 47, 16, 854775807, time.UTC)},
		{"leap-day", time.Date(2000, 2, 29, 23, 59, 59, 0, time.UTC), time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC),
			time.Date(1600, 3, 1, 0, 0, 0, 0, time.UTC), time.Date(1970, 1, 1, 0, 0, 0, 100, time.UTC)},
		{"nulls", nil, nil, nil, nil},
	})
}

func int96(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "at", Type: arrow.FixedWidthTypes.Timestamp_ns, Nullable: true},
		{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"u1", time.Date(2024, 1, 1, 12, 30, 0, 123456789, time.UTC), []any{"a", "b"}},
		{"u2", time.Date(1969, 12, 31, 23, 59, 59, 500_000_000, time.UTC), []any{}},
		{"u3", nil, nil},
		{"u4", t2024, []any{nil, "c"}},
	})
}

func datesTimes(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "d32", Type: arrow.FixedWidthTypes.Date32, Nullable: true},
		{Name: "d64", Type: arrow.FixedWidthTypes.Date64, Nullable: true},
		{Name: "t32s", Type: arrow.FixedWidthTypes.Time32s, Nullable: true},
		{Name: "t32ms", Type: arrow.FixedWidthTypes.Time32ms, Nullable: true},
		{Name: "t64us", Type: arrow.FixedWidthTypes.Time64us, Nullable: true},
		{Name: "t64ns", Type: arrow.FixedWidthTypes.Time64ns, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"a", t2024, t2024, 15*3600 + 4*60 + 5, 54245000, 54245000001, 54245000000001},
		{"b", 0, 0, 0, 0, 0, 0},
		{"c", -1, time.Date(1969, 12, 31, 0, 0, 0, 0, time.UTC), 86399, 86399999, 86399999999, 86399999999999},
		{"d", time.Date(9999, 12, 31, 0, 0, 0, 0, time.UTC), time.Date(1, 1, 1, 0, 0, 0, 0, time.UTC), 1, 500, 1500000, 100},
		{"nulls", nil, nil, nil, nil, nil, nil},
	})
}

func binaries(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "bin", Type: arrow.BinaryTypes.Binary, Nullable: true},
		{Name: "large", Type: arrow.BinaryTypes.LargeBinary, Nullable: true},
		{Name: "fixed", Type: &arrow.FixedSizeBinaryType{ByteWidth: 4}, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"a", "hello", "hi", []byte{0, 1, 2, 3}},
		{"b", []byte{0xff, 0xfe, 0x00}, []byte{0xfb}, []byte{0xff, 0xff, 0xff, 0xff}},
		{"empty", []byte{}, []byte{}, "abcd"},
		{"nulls", nil, nil, nil},
	})
}

func uuids(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: extensions.NewUUIDType(), Nullable: true},
		{Name: "ref", Type: extensions.NewUUIDType(), Nullable: true},
		{Name: "refs", Type: arrow.ListOf(extensions.NewUUIDType()), Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"123e4567-e89b-12d3-a456-426614174000", "00000000-0000-0000-0000-000000000000", []any{"ffffffff-ffff-ffff-ffff-ffffffffffff"}},
		{"A0EEBC99-9C0B-4EF8-BB6D-6BB9BD380A11", nil, []any{nil}},
		{nil, "123e4567-e89b-12d3-a456-426614174000", nil},
	})
}

func texts(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "text", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "large", Type: arrow.BinaryTypes.LargeString, Nullable: true},
		{Name: "dict", Type: &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"ascii", "plain text", "plain", "x"},
		{"emoji", "héllo wörld 🎉👩‍👩‍👧 日本語", "ça va? 🇳🇴", "😀"},
		{"quotes", `say "hi" \ back\slash / slash`, `"`, `\`},
		{"controls", "nul\x00 bell\x07 bs\b tab\t nl\n ff\f cr\r esc\x1b us\x1f del\x7f", "\u0085 next-line \u2028 \u2029", "\u009f"},
		{"html", "<script>&amp;</script>", "a<b>c", "&"},
		{"invalid-utf8", "bad \xff byte", "cut \xe2\x82", "\xc0\xaf overlong"},
		{"invalid-id-\xfe", "", "", ""},
		{"nulls", nil, nil, nil},
	})
}

func nested(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	point := arrow.StructOf(
		arrow.Field{Name: "x", Type: arrow.PrimitiveTypes.Int32, Nullable: true},
		arrow.Field{Name: "y", Type: arrow.PrimitiveTypes.Float64, Nullable: true},
	)
	deep := arrow.StructOf(
		arrow.Field{Name: "name", Type: arrow.BinaryTypes.String, Nullable: true},
		arrow.Field{Name: "inner", Type: arrow.StructOf(
			arrow.Field{Name: "tags", Type: arrow.ListOf(arrow.BinaryTypes.String), Nullable: true},
			arrow.Field{Name: "when", Type: arrow.FixedWidthTypes.Date32, Nullable: true},
		), Nullable: true},
	)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "ints", Type: arrow.ListOf(arrow.PrimitiveTypes.Int64), Nullable: true},
		{Name: "points", Type: arrow.ListOf(point), Nullable: true},
		{Name: "deep", Type: deep, Nullable: true},
		{Name: "attrs", Type: arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int32), Nullable: true},
		{Name: "by_id", Type: arrow.MapOf(arrow.PrimitiveTypes.Int64, arrow.ListOf(arrow.BinaryTypes.String)), Nullable: true},
		{Name: "by_day", Type: arrow.MapOf(arrow.FixedWidthTypes.Date32, arrow.FixedWidthTypes.Boolean), Nullable: true},
		{Name: "matrix", Type: arrow.ListOf(arrow.ListOf(arrow.PrimitiveTypes.Float32)), Nullable: true},
		{Name: "fixed", Type: arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Int16), Nullable: true},
		{Name: "large", Type: arrow.LargeListOf(arrow.BinaryTypes.String), Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"full", []any{1, 2, 3}, []any{[]any{1, 0.5}, []any{-2, 1e-7}},
			[]any{"n", []any{[]any{"a", "b"}, t2024}},
			[][2]any{{"a", 1}, {"b\"q", 2}}, [][2]any{{7, []any{"x"}}, {-8, []any{}}},
			[][2]any{{t2024, true}}, []any{[]any{1.5, 2.5}, []any{}}, []any{1, 2}, []any{"l"}},
		{"nulls-inside", []any{nil, 4}, []any{nil, []any{nil, nil}},
			[]any{nil, []any{[]any{nil}, nil}},
			[][2]any{{"a", nil}}, [][2]any{{1, nil}}, [][2]any{{t2024, nil}}, []any{nil, []any{nil}}, []any{nil, 3}, []any{nil}},
		{"null-inner-struct", []any{}, []any{}, []any{"only-name", nil}, [][2]any{}, [][2]any{}, [][2]any{}, []any{}, []any{0, 0}, []any{}},
		// (a null fixed-size list cannot be written to Parquet by pqarrow: see TestArrowOnly)
		{"nulls", nil, nil, nil, nil, nil, nil, nil, []any{nil, nil}, nil},
		{"unicode-keys", []any{int64(math.MaxInt64)}, []any{[]any{math.MaxInt32, math.NaN()}},
			[]any{"🎉", []any{[]any{"\x00"}, time.Date(1969, 7, 20, 0, 0, 0, 0, time.UTC)}},
			[][2]any{{"ключ", 1}, {"\n", 2}}, [][2]any{{int64(math.MinInt64), []any{nil}}},
			[][2]any{}, []any{[]any{float64(math.Inf(1))}}, []any{math.MaxInt16, math.MinInt16}, []any{"\xff"}},
	})
}

func stringTimes(t testing.TB, mem memory.Allocator) arrow.RecordBatch {
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.BinaryTypes.String},
		{Name: "at", Type: arrow.BinaryTypes.String, Nullable: true},
		{Name: "day", Type: arrow.FixedWidthTypes.Date32, Nullable: true},
		{Name: "note", Type: arrow.BinaryTypes.String, Nullable: true},
	}, nil)
	return buildRecord(t, mem, schema, [][]any{
		{"u1", "2024-01-01T10:00:00+02:00", t2024, "a"},
		{"u2", "", time.Date(1999, 12, 31, 0, 0, 0, 0, time.UTC), "b"},
		{"u3", nil, nil, "c"},
		{"u4", "yesterday \"noon\"", time.Date(2024, 2, 29, 0, 0, 0, 0, time.UTC), "d"},
	})
}
