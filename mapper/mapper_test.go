package mapper

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
)

func mustNew(t testing.TB, opts Options) *Mapper {
	t.Helper()
	if opts.Version == "" {
		opts.Version = "test"
	}
	m, err := New(opts)
	if err != nil {
		t.Fatal(err)
	}
	return m
}

// valuesOf maps arr as the trait "v" of rows whose user id is r0, r1, … and returns the
// JSON text of v in each message.
func valuesOf(t *testing.T, mem memory.Allocator, arr arrow.Array) []string {
	t.Helper()
	ib := array.NewStringBuilder(mem)
	defer ib.Release()
	for i := range arr.Len() {
		ib.Append(fmt.Sprintf("r%d", i))
	}
	ids := ib.NewArray()
	defer ids.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}, {Name: "v", Type: arr.DataType(), Nullable: true}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{ids, arr}, int64(arr.Len()))
	defer rec.Release()
	m := mustNew(t, Options{Sync: "s", Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "id"}})
	msgs, rejects := m.Map(rec, 0, nil, nil)
	if len(rejects) > 0 {
		t.Fatalf("rejects: %+v", rejects)
	}
	checkMessages(t, msgs)
	out := make([]string, len(msgs))
	for i, msg := range msgs {
		body := string(msg.Body())
		if !strings.HasPrefix(body, `{"v":`) || !strings.HasSuffix(body, "}") {
			t.Fatalf("body %s", body)
		}
		out[i] = body[len(`{"v":`) : len(body)-1]
	}
	return out
}

// build builds one array of type dt from values (see appendAny).
func build(t *testing.T, mem memory.Allocator, dt arrow.DataType, values ...any) arrow.Array {
	t.Helper()
	b := array.NewBuilder(mem, dt)
	defer b.Release()
	for _, v := range values {
		if err := appendAny(b, v); err != nil {
			t.Fatal(err)
		}
	}
	return b.NewArray()
}

// TestArrowOnlyTypes covers the types a Parquet file does not give through pqarrow, or
// that pqarrow cannot write, and edge values the golden files leave out.
func TestArrowOnlyTypes(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)

	jsonType, err := extensions.NewJSONType(arrow.BinaryTypes.String)
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		name  string
		arr   func() arrow.Array
		want  []string
		valid bool // only check that the output is valid JSON
	}{
		{name: "string view", arr: func() arrow.Array {
			return build(t, mem, arrow.BinaryTypes.StringView, "short", "a much longer string, over twelve bytes ✓", nil, "\x00")
		}, want: []string{`"short"`, `"a much longer string, over twelve bytes ✓"`, `null`, `"\u0000"`}},
		{name: "binary view", arr: func() arrow.Array {
			return build(t, mem, arrow.BinaryTypes.BinaryView, "hello", "a much longer binary value", nil)
		}, want: []string{`"aGVsbG8="`, `"YSBtdWNoIGxvbmdlciBiaW5hcnkgdmFsdWU="`, `null`}},
		{name: "list view", arr: func() arrow.Array {
			return build(t, mem, arrow.ListViewOf(arrow.PrimitiveTypes.Int32), []any{1, 2}, []any{}, nil, []any{nil})
		}, want: []string{`[1,2]`, `[]`, `null`, `[null]`}},
		{name: "decimal32", arr: func() arrow.Array {
			return build(t, mem, &arrow.Decimal32Type{Precision: 5, Scale: 2}, 1230, -5, 0, nil)
		}, want: []string{`12.30`, `-0.05`, `0.00`, `null`}},
		{name: "decimal64", arr: func() arrow.Array {
			return build(t, mem, &arrow.Decimal64Type{Precision: 18, Scale: 4}, int64(-999999999999999999), 1, nil)
		}, want: []string{`-99999999999999.9999`, `0.0001`, `null`}},
		{name: "decimal negative scale", arr: func() arrow.Array {
			return build(t, mem, &arrow.Decimal128Type{Precision: 5, Scale: -3}, "12000", "0", "-1000")
		}, want: []string{`12000`, `0`, `-1000`}},
		{name: "duration", arr: func() arrow.Array {
			return build(t, mem, arrow.FixedWidthTypes.Duration_ms, 1500, -1, nil)
		}, want: []string{`1500`, `-1`, `null`}},
		{name: "null type", arr: func() arrow.Array { return array.NewNull(2) }, want: []string{`null`, `null`}},
		{name: "null fixed-size list", arr: func() arrow.Array {
			return build(t, mem, arrow.FixedSizeListOf(2, arrow.PrimitiveTypes.Int8), []any{1, 2}, nil, []any{nil, 3})
		}, want: []string{`[1,2]`, `null`, `[null,3]`}},
		{name: "bool8", arr: func() arrow.Array {
			return build(t, mem, extensions.NewBool8Type(), true, false, nil)
		}, want: []string{`true`, `false`, `null`}},
		{name: "json extension", arr: func() arrow.Array {
			return build(t, mem, jsonType, `{"a":1}`, nil)
		}, want: []string{`"{\"a\":1}"`, `null`}},
		{name: "run-end encoded", arr: func() arrow.Array {
			ends := build(t, mem, arrow.PrimitiveTypes.Int32, 2, 3, 5)
			defer ends.Release()
			values := build(t, mem, arrow.BinaryTypes.String, "a", nil, "c")
			defer values.Release()
			return array.NewRunEndEncodedArray(ends, values, 5, 0)
		}, want: []string{`"a"`, `"a"`, `null`, `"c"`, `"c"`}},
		{name: "dictionary with a null value", arr: func() arrow.Array {
			idx := build(t, mem, arrow.PrimitiveTypes.Int8, 1, 0, nil, 1)
			defer idx.Release()
			dict := build(t, mem, arrow.BinaryTypes.String, nil, "x")
			defer dict.Release()
			return array.NewDictionaryArray(&arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}, idx, dict)
		}, want: []string{`"x"`, `null`, `null`, `"x"`}},
		{name: "map keys of other types", arr: func() arrow.Array {
			return build(t, mem, arrow.MapOf(arrow.FixedWidthTypes.Boolean, arrow.PrimitiveTypes.Int8), [][2]any{{true, 1}, {false, nil}})
		}, want: []string{`{"true":1,"false":null}`}},
		{name: "map float and binary keys", arr: func() arrow.Array {
			return build(t, mem, arrow.MapOf(arrow.BinaryTypes.Binary, arrow.MapOf(arrow.PrimitiveTypes.Float64, arrow.BinaryTypes.String)),
				[][2]any{{"k", [][2]any{{1.5, "a"}, {1e300, "b"}}}})
		}, want: []string{`{"aw==":{"1.5":"a","1e+300":"b"}}`}},
		{name: "timestamps beyond 0000-9999", arr: func() arrow.Array {
			return build(t, mem, arrow.FixedWidthTypes.Timestamp_s, int64(253402300800), int64(-62135596801), int64(-62198755200), int64(-62230291200))
		}, want: []string{`"+10000-01-01T00:00:00Z"`, `"0000-12-31T23:59:59Z"`, `"-0001-01-01T00:00:00Z"`, `"-0002-01-01T00:00:00Z"`}},
		{name: "times out of a day", arr: func() arrow.Array {
			return build(t, mem, arrow.FixedWidthTypes.Time64ns, int64(90000e9), int64(-1), int64(400*3600e9))
		}, want: []string{`"25:00:00"`, `"-00:00:00.000000001"`, `"400:00:00"`}},
		{name: "dense union", arr: func() arrow.Array {
			codes := build(t, mem, arrow.PrimitiveTypes.Int8, 0, 1)
			defer codes.Release()
			offsets := build(t, mem, arrow.PrimitiveTypes.Int32, 0, 0)
			defer offsets.Release()
			a := build(t, mem, arrow.BinaryTypes.String, "s")
			defer a.Release()
			b := build(t, mem, arrow.PrimitiveTypes.Int64, 7)
			defer b.Release()
			u, err := array.NewDenseUnionFromArrays(codes, offsets, []arrow.Array{a, b})
			if err != nil {
				t.Fatal(err)
			}
			return u
		}, valid: true},
		{name: "month interval", arr: func() arrow.Array {
			return build(t, mem, arrow.FixedWidthTypes.MonthInterval, 3, nil)
		}, valid: true},
	}
	for _, c := range cases {
		t.Run(c.name, func(t *testing.T) {
			arr := c.arr()
			defer arr.Release()
			got := valuesOf(t, mem, arr)
			if c.valid {
				return // checkMessages validated the JSON
			}
			if strings.Join(got, " ") != strings.Join(c.want, " ") {
				t.Errorf("got  %s\nwant %s", strings.Join(got, " "), strings.Join(c.want, " "))
			}
		})
	}
}

// TestSlices maps slices of a record (arrays with an offset, nested ones included) and
// expects the same bytes as for the rows of the whole record.
func TestSlices(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := nested(t, mem)
	defer rec.Release()
	m := mustNew(t, Options{Sync: "s", Schema: rec.Schema(), Mapping: config.Mapping{Type: "identify", UserID: "id"}})
	whole, _ := m.Map(rec, 100, nil, nil)
	for from := range int(rec.NumRows()) {
		for to := from + 1; to <= int(rec.NumRows()); to++ {
			part := rec.NewSlice(int64(from), int64(to))
			msgs, rejects := m.Map(part, int64(100+from), nil, nil)
			part.Release()
			if len(rejects) > 0 || len(msgs) != to-from {
				t.Fatalf("slice [%d:%d): %d messages, rejects %+v", from, to, len(msgs), rejects)
			}
			for i, msg := range msgs {
				w := whole[from+i]
				if msg.Row != w.Row || !bytes.Equal(msg.JSON, w.JSON) || msg.Key != w.Key {
					t.Fatalf("slice [%d:%d) row %d:\n got %s\nwant %s", from, to, msg.Row, msg.JSON, w.JSON)
				}
			}
		}
	}
}

func TestMapRecordMismatch(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := people(t, mem)
	defer rec.Release()
	m := mustNew(t, Options{Sync: "s", Schema: rec.Schema(), Mapping: config.Mapping{Type: "identify", UserID: "customer_id", Timestamp: "updated_at"}})

	// Columns found by name wherever they are.
	cols := rec.Columns()
	fields := rec.Schema().Fields()
	rev := make([]arrow.Array, len(cols))
	revFields := make([]arrow.Field, len(cols))
	for i := range cols {
		rev[len(cols)-1-i], revFields[len(cols)-1-i] = cols[i], fields[i]
	}
	reversed := array.NewRecordBatch(arrow.NewSchema(revFields, nil), rev, rec.NumRows())
	defer reversed.Release()
	a, _ := m.Map(rec, 0, nil, nil)
	b, _ := m.Map(reversed, 0, nil, nil)
	if len(a) != len(b) || len(a) == 0 {
		t.Fatalf("%d and %d messages", len(a), len(b))
	}
	for i := range a {
		if !bytes.Equal(a[i].JSON, b[i].JSON) {
			t.Fatalf("column order changed the message:\n%s\n%s", a[i].JSON, b[i].JSON)
		}
	}

	// A missing column, or an identifier of another type, rejects every row with the reason.
	for name, mutate := range map[string]func(i int, f arrow.Field) arrow.Field{
		"missing": func(i int, f arrow.Field) arrow.Field {
			if f.Name == "email" {
				f.Name = "mail"
			}
			return f
		},
		"id type": func(i int, f arrow.Field) arrow.Field { return f },
	} {
		t.Run(name, func(t *testing.T) {
			var fs []arrow.Field
			var cs []arrow.Array
			for i, f := range fields {
				f = mutate(i, f)
				c := cols[i]
				if name == "id type" && f.Name == "customer_id" {
					c = cols[7] // the float64 score
					f.Type = c.DataType()
				}
				fs, cs = append(fs, f), append(cs, c)
			}
			bad := array.NewRecordBatch(arrow.NewSchema(fs, nil), cs, rec.NumRows())
			defer bad.Release()
			msgs, rejects := m.Map(bad, 10, nil, nil)
			if len(msgs) != 0 || len(rejects) != int(rec.NumRows()) {
				t.Fatalf("%d messages, %d rejects", len(msgs), len(rejects))
			}
			for i, r := range rejects {
				if r.Row != int64(10+i) || r.Message != nil {
					t.Errorf("reject %+v", r)
				}
			}
			t.Log(rejects[0].Reason)
			if !strings.Contains(rejects[0].Reason, "email") && !strings.Contains(rejects[0].Reason, "customer_id") {
				t.Errorf("reason does not name the column: %s", rejects[0].Reason)
			}
		})
	}
}

// TestIDsAndKeys: messageId follows the sync, identifiers and content; Key follows the
// type and identifiers (and for track, the event and timestamp).
func TestIDsAndKeys(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "u", Type: arrow.BinaryTypes.String},
		{Name: "plan", Type: arrow.BinaryTypes.String},
		{Name: "at", Type: arrow.FixedWidthTypes.Timestamp_s},
	}, nil)
	rec := buildRecord(t, mem, schema, [][]any{
		{"u1", "free", t2024},
		{"u1", "free", t2024},         // same as row 0
		{"u1", "pro", t2024},          // same user, other content
		{"u2", "free", t2024},         // other user, same content
		{"u1", "free", tMilli},        // other timestamp
		{"u1\xff", "free", t2024},     // invalid UTF-8 in an identifier
		{"u1\ufffd", "free", t2024},   // what it is sent as
		{"a\x00b", "free", t2024},     // NUL in an identifier
		{"a", "free", t2024},          // a prefix of it
		{"b", "\x00b\x00free", t2024}, // moving bytes between fields
	})
	defer rec.Release()
	mapWith := func(sync, typ string) []Message {
		mp := config.Mapping{Type: typ, UserID: "u", Timestamp: "at"}
		if typ == "track" {
			mp.Event = "E"
		}
		msgs, rejects := mustNew(t, Options{Sync: sync, Schema: schema, Mapping: mp}).Map(rec, 0, nil, nil)
		if len(rejects) > 0 {
			t.Fatal(rejects)
		}
		checkMessages(t, msgs)
		return msgs
	}
	id := mapWith("s1", "identify")
	same := func(what string, a, b string, want bool) {
		t.Helper()
		if (a == b) != want {
			t.Errorf("%s: %q vs %q, want equal=%v", what, a, b, want)
		}
	}
	same("ID of identical rows", id[0].ID, id[1].ID, true)
	same("Key of identical rows", id[0].Key, id[1].Key, true)
	same("ID of changed content", id[0].ID, id[2].ID, false)
	same("Key of changed content", id[0].Key, id[2].Key, true)
	same("ID of another user", id[0].ID, id[3].ID, false)
	same("Key of another user", id[0].Key, id[3].Key, false)
	same("ID of another timestamp", id[0].ID, id[4].ID, false)
	same("Key of another timestamp (identify)", id[0].Key, id[4].Key, true)
	same("UserID sent for invalid UTF-8", id[5].UserID, "u1\ufffd", true)
	same("ID of the sanitized user", id[5].ID, id[6].ID, true)
	same("Key with NUL", id[7].Key, id[8].Key, false)
	same("ID with NUL", id[7].ID, id[8].ID, false)

	other := mapWith("s2", "identify")
	same("ID in another sync", id[0].ID, other[0].ID, false)
	same("Key in another sync", id[0].Key, other[0].Key, true)

	tr := mapWith("s1", "track")
	same("Key of track vs identify", id[0].Key, tr[0].Key, false)
	same("Key of track at another timestamp", tr[0].Key, tr[4].Key, false)
	same("Key of the same track", tr[0].Key, tr[1].Key, true)
	same("ID of track vs identify", id[0].ID, tr[0].ID, false)
}

// TestConcurrentMap maps records from several goroutines at once, each its own records
// (run with -race), and expects each to get what one goroutine alone gets.
func TestConcurrentMap(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	builders := []func(testing.TB, memory.Allocator) arrow.RecordBatch{people, nested, texts}
	const goroutines = 8
	recs := make([][]arrow.RecordBatch, goroutines)
	for g := range recs {
		for _, b := range builders {
			rec := b(t, mem)
			defer rec.Release()
			recs[g] = append(recs[g], rec)
		}
	}
	mappers := make([]*Mapper, len(builders))
	want := make([][]Message, len(builders))
	for i := range builders {
		user := "id"
		if i == 0 {
			user = "customer_id"
		}
		mappers[i] = mustNew(t, Options{Sync: "s", Schema: recs[0][i].Schema(), Mapping: config.Mapping{Type: "identify", UserID: user}})
		want[i], _ = mappers[i].Map(builders[i](t, memory.NewGoAllocator()), 0, nil, nil)
	}
	var wg sync.WaitGroup
	errs := make(chan error, goroutines)
	for g := range goroutines {
		wg.Go(func() {
			for n := range 50 {
				i := (g + n) % len(builders)
				got, _ := mappers[i].Map(recs[g][i], 0, nil, nil)
				for j := range got {
					if !bytes.Equal(got[j].JSON, want[i][j].JSON) || got[j].ID != want[i][j].ID || got[j].UserID != want[i][j].UserID {
						errs <- fmt.Errorf("goroutine %d: record %d row %d differs", g, i, j)
						return
					}
				}
			}
		})
	}
	wg.Wait()
	close(errs)
	for err := range errs {
		t.Error(err)
	}
}

func TestFormatCell(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	for _, c := range []struct {
		dt   arrow.DataType
		v    any
		want string
	}{
		{arrow.BinaryTypes.String, "plain", "plain"},
		{arrow.BinaryTypes.String, `a "quoted" \ word`, `a "quoted" \ word`},
		{arrow.BinaryTypes.String, "two\nlines\x1b", `two\nlines\u001b`},
		{arrow.BinaryTypes.String, nil, "null"},
		{arrow.PrimitiveTypes.Int64, -12, "-12"},
		{arrow.PrimitiveTypes.Float64, 0.5, "0.5"},
		{arrow.FixedWidthTypes.Timestamp_ms, tHalf, "2024-01-01T00:00:00.5Z"},
		{arrow.ListOf(arrow.BinaryTypes.String), []any{"a", nil}, `["a",null]`},
		{extensions.NewUUIDType(), "123e4567-e89b-12d3-a456-426614174000", "123e4567-e89b-12d3-a456-426614174000"},
		{arrow.BinaryTypes.Binary, "hi", "aGk="},
	} {
		arr := build(t, mem, c.dt, c.v)
		if got := FormatCell(arr, 0); got != c.want {
			t.Errorf("FormatCell(%s %v) = %q, want %q", c.dt, c.v, got, c.want)
		}
		if got := FormatCell(arr, 1); got != "" {
			t.Errorf("FormatCell out of range = %q", got)
		}
		arr.Release()
	}
}

func TestColumns(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := people(t, mem)
	defer rec.Release()
	m := mustNew(t, Options{Schema: rec.Schema(), Mapping: config.Mapping{Type: "track", UserID: "customer_id", AnonymousID: "anon_id", EventColumn: "event_name", Timestamp: "updated_at"}})
	if got, want := strings.Join(m.Columns(), ","), "email,plan,city,zip,age,score,company_id"; got != want {
		t.Errorf("Columns() = %s, want %s", got, want)
	}
	m = mustNew(t, Options{Schema: rec.Schema(), Mapping: config.Mapping{Type: "identify", UserID: "customer_id", Columns: []string{"zip", "email"}}})
	if got, want := strings.Join(m.Columns(), ","), "email,zip"; got != want {
		t.Errorf("Columns() = %s, want %s", got, want)
	}
}

func TestNewErrors(t *testing.T) {
	if _, err := New(Options{Mapping: config.Mapping{Type: "identify", UserID: "x"}}); err == nil {
		t.Error("New without a schema succeeded")
	}
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}, {Name: "id", Type: arrow.BinaryTypes.String}}, nil)
	_, err := New(Options{Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "id"}})
	var ce *ConfigError
	if !errors.As(err, &ce) || ce.Path != "mapping.user_id" || !strings.Contains(ce.Msg, "2 times") {
		t.Errorf("duplicate column: %v", err)
	}
	schema = arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, nil)
	_, err = New(Options{Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "id", Constants: map[string]any{"f": func() {}}}})
	if !errors.As(err, &ce) || ce.Path != "mapping.constants.f" {
		t.Errorf("unencodable constant: %v", err)
	}
}

// TestAllocations: mapping a record costs a few allocations, not some per row.
func TestAllocations(t *testing.T) {
	mem := memory.NewGoAllocator()
	rec := benchRecord(t, mem, 4096)
	defer rec.Release()
	m := mustNew(t, Options{Sync: "bench", Schema: rec.Schema(), Mapping: benchMapping})
	msgs := make([]Message, 0, rec.NumRows())
	allocs := testing.AllocsPerRun(5, func() {
		msgs, _ = m.Map(rec, 0, msgs[:0], nil)
	})
	if perRow := allocs / float64(rec.NumRows()); perRow > 0.05 {
		t.Errorf("%.0f allocations for %d rows (%.3f a row)", allocs, rec.NumRows(), perRow)
	}
	checkMessages(t, msgs[:10])
}

// TestMessageJSONIsolated: appending to one message's JSON never touches another's.
func TestMessageJSONIsolated(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	rec := people(t, mem)
	defer rec.Release()
	m := mustNew(t, Options{Schema: rec.Schema(), Mapping: config.Mapping{Type: "identify", UserID: "customer_id", AnonymousID: "anon_id"}})
	msgs, _ := m.Map(rec, 0, nil, nil)
	checkIsolated(t, msgs)
}

func TestConstantsOfYAMLShapes(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}}, nil)
	rec := buildRecord(t, mem, schema, [][]any{{"u"}})
	defer rec.Release()
	m := mustNew(t, Options{Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "id", Constants: map[string]any{
		"m":    map[any]any{"z": 1, 2: "two", "a": []any{map[any]any{"k": true}}},
		"when": time.Date(2024, 1, 1, 0, 0, 0, 0, time.UTC),
	}}})
	msgs, _ := m.Map(rec, 0, nil, nil)
	checkMessages(t, msgs)
	if got, want := string(msgs[0].Body()), `{"m":{"2":"two","a":[{"k":true}],"z":1},"when":"2024-01-01T00:00:00Z"}`; got != want {
		t.Errorf("body %s, want %s", got, want)
	}
}

func TestAppendStringMatchesEncodingJSON(t *testing.T) {
	for _, s := range []string{"", "a", "\u2028", "\x7f", "\u0080", "<>&", "\xed\xa0\x80", "\xf4\x90\x80\x80", "€", "\t\"\\"} {
		got := appendString(nil, s)
		var back string
		if err := json.Unmarshal(got, &back); err != nil {
			t.Fatalf("%q: %v", s, err)
		}
		if want := string([]rune(s)); back != want {
			t.Errorf("%q: decoded %q, want %q", s, back, want)
		}
	}
}

// TestPlainASCII8 checks the word-at-a-time test against the byte table, every byte value
// at every position.
func TestPlainASCII8(t *testing.T) {
	for b := range 256 {
		for p := range 8 {
			w := []byte("abcdefgh")
			w[p] = byte(b)
			want := b < 0x80 && safeASCII[b]
			if got := plainASCII8(load8(w, 0)); got != want {
				t.Errorf("byte %#x at %d: %v, want %v", b, p, got, want)
			}
		}
	}
}

// TestCorruptRecord: a record whose arrays break their own invariants (a dictionary index
// past the dictionary's end) costs its rows, as rejects naming the failure, not a panic.
func TestCorruptRecord(t *testing.T) {
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	idx := build(t, mem, arrow.PrimitiveTypes.Int8, 0, 5)
	defer idx.Release()
	dict := build(t, mem, arrow.BinaryTypes.String, "only")
	defer dict.Release()
	arr := array.NewDictionaryArray(&arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}, idx, dict)
	defer arr.Release()
	ids := build(t, mem, arrow.BinaryTypes.String, "u1", "u2")
	defer ids.Release()
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}, {Name: "v", Type: arr.DataType()}}, nil)
	rec := array.NewRecordBatch(schema, []arrow.Array{ids, arr}, 2)
	defer rec.Release()
	m := mustNew(t, Options{Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "id"}})
	prior := []Message{{Row: -1}}
	msgs, rejects := m.Map(rec, 7, prior, nil)
	if len(msgs) != 1 || msgs[0].Row != -1 || len(rejects) != 2 {
		t.Fatalf("%d messages, %d rejects", len(msgs), len(rejects))
	}
	for i, r := range rejects {
		if r.Row != int64(7+i) || !strings.HasPrefix(r.Reason, "mapping failed: ") {
			t.Errorf("reject %+v", r)
		}
	}
}

// Every column the schema lacks is reported by one New: three typos, one run.
func TestNewReportsEveryMissingColumn(t *testing.T) {
	schema := arrow.NewSchema([]arrow.Field{{Name: "id", Type: arrow.BinaryTypes.String}, {Name: "email", Type: arrow.BinaryTypes.String}}, nil)
	_, err := New(Options{Schema: schema, Mapping: config.Mapping{Type: "identify", UserID: "idd",
		Columns: []string{"emial", "plan"}, Rename: map[string]string{"cty": "address.city"}}})
	for _, want := range []string{"mapping.user_id: ", "mapping.columns[0]: ", `"emial"`, "mapping.columns[1]: ", "mapping.rename.cty: "} {
		if err == nil || !strings.Contains(err.Error(), want) {
			t.Errorf("error %v lacks %q", err, want)
		}
	}
	var ce *ConfigError
	if !errors.As(err, &ce) {
		t.Errorf("%v is no *ConfigError", err)
	}
}
