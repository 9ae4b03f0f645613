package s3

import (
	"bytes"
	"context"
	"encoding/json"
	"strconv"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"

	"github.com/backflowhq/backflow/mapper"
)

// readParquet reads a whole Parquet object as an Arrow table.
func readParquet(t *testing.T, data []byte, mem memory.Allocator) (arrow.Table, *file.Reader) {
	t.Helper()
	pf, err := file.NewParquetReader(bytes.NewReader(data), file.WithReadProps(nil))
	if err != nil {
		t.Fatalf("opening Parquet: %v", err)
	}
	fr, err := pqarrow.NewFileReader(pf, pqarrow.ArrowReadProperties{BatchSize: 1024}, mem)
	if err != nil {
		t.Fatalf("pqarrow reader: %v", err)
	}
	tbl, err := fr.ReadTable(context.Background())
	if err != nil {
		t.Fatalf("reading Parquet: %v", err)
	}
	return tbl, pf
}

// cell returns row i of a chunked column as (value, valid).
func cell(col *arrow.Chunked, i int) (any, bool) {
	for _, c := range col.Chunks() {
		if i >= c.Len() {
			i -= c.Len()
			continue
		}
		if c.IsNull(i) {
			return nil, false
		}
		switch a := c.(type) {
		case *array.String:
			return a.Value(i), true
		case *array.Int64:
			return a.Value(i), true
		case *array.Float64:
			return a.Value(i), true
		case *array.Boolean:
			return a.Value(i), true
		}
		return c.ValueStr(i), true
	}
	return nil, false
}

// checkParquet reads data back and compares it column by column with msgs.
func checkParquet(t *testing.T, data []byte, msgs []mapper.Message) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	tbl, pf := readParquet(t, data, mem)
	defer tbl.Release()
	defer pf.Close()
	cc, err := pf.MetaData().RowGroup(0).ColumnChunk(0)
	if err != nil {
		t.Fatal(err)
	}
	if cc.Compression() != compress.Codecs.Snappy {
		t.Errorf("column chunk compression %v, want snappy", cc.Compression())
	}
	if int(tbl.NumRows()) != len(msgs) {
		t.Fatalf("%d rows, want %d", tbl.NumRows(), len(msgs))
	}
	sc := tbl.Schema()
	for i := range msgs {
		want := expectedColumns(t, msgs[i])
		for c := 0; c < int(tbl.NumCols()); c++ {
			f := sc.Field(c)
			if !f.Nullable {
				t.Errorf("column %s is not nullable", f.Name)
			}
			got, valid := cell(tbl.Column(c).Data(), i)
			w, ok := want[f.Name]
			delete(want, f.Name)
			if !ok {
				if valid {
					t.Errorf("row %d column %s = %v, want null", i, f.Name, got)
				}
				continue
			}
			if !valid {
				t.Errorf("row %d column %s is null, want %v", i, f.Name, w)
				continue
			}
			if !sameTyped(t, got, w) {
				t.Errorf("row %d column %s (%s) = %v, want %v", i, f.Name, f.Type, got, w)
			}
		}
		for name := range want {
			t.Errorf("row %d: no column %s", i, name)
		}
	}
}

// sameTyped compares a Parquet value with the reference value of encoding/json.
func sameTyped(t *testing.T, got, want any) bool {
	switch g := got.(type) {
	case string:
		return sameValue(t, g, want)
	case int64:
		n, ok := want.(json.Number)
		return ok && n.String() == strconv.FormatInt(g, 10)
	case float64:
		n, ok := want.(json.Number)
		if !ok {
			return false
		}
		f, err := n.Float64()
		return err == nil && f == g
	case bool:
		b, ok := want.(bool)
		return ok && b == g
	}
	return false
}

// parquetColumn returns the values of a string column.
func parquetColumn(t *testing.T, data []byte, name string) []string {
	t.Helper()
	tbl, pf := readParquet(t, data, memory.NewGoAllocator())
	defer tbl.Release()
	defer pf.Close()
	idx := tbl.Schema().FieldIndices(name)
	if len(idx) != 1 {
		t.Fatalf("no column %s", name)
	}
	var out []string
	for i := 0; i < int(tbl.NumRows()); i++ {
		v, _ := cell(tbl.Column(idx[0]).Data(), i)
		s, _ := v.(string)
		out = append(out, s)
	}
	return out
}

func TestParquet(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("parquet"), tuning{})
	msgs := testMessages("p", 300)
	write(t, d, batches(msgs, 128)...)
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	if got, want := e.keys(t), []string{wantKey(0, "parquet")}; !equal(got, want) {
		t.Fatalf("keys = %v, want %v", got, want)
	}
	data := e.mio.Get(t, e.bucket, wantKey(0, "parquet"))
	checkParquet(t, data, msgs)

	tbl, pf := readParquet(t, data, memory.NewGoAllocator())
	defer tbl.Release()
	defer pf.Close()
	types := map[string]string{}
	for _, f := range tbl.Schema().Fields() {
		types[f.Name] = f.Type.String()
	}
	for name, want := range map[string]string{
		"type": "utf8", "userId": "utf8", "timestamp": "utf8", "messageId": "utf8",
		"email": "utf8", "amount": "float64", "big": "int64", "active": "bool", "address.city": "utf8",
		"address.geo.lat": "float64", "tags": "utf8", "missing": "utf8", "n": "int64", "traits.type": "utf8", "empty": "utf8",
	} {
		if types[name] != want {
			t.Errorf("column %s is %s, want %s", name, types[name], want)
		}
	}
	if !strings.HasPrefix(pf.MetaData().GetCreatedBy(), "backflow") {
		t.Errorf("created_by = %q", pf.MetaData().GetCreatedBy())
	}
}

// TestParquetTypeWidening: a value that does not fit its column's type (a float in an
// int64 column, a string in a boolean one) starts a new object with the wider type.
func TestParquetTypeWidening(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("parquet"), tuning{})
	a := []mapper.Message{newMsg("identify", "m1", "u1", `{"x":1,"f":true,"s":null}`, "")}
	b := []mapper.Message{
		newMsg("identify", "m2", "u2", `{"x":2,"f":false,"s":"later"}`, ""), // s was all null: a string column takes it
		newMsg("identify", "m3", "u3", `{"x":2.5,"f":"maybe"}`, ""),
		newMsg("identify", "m4", "u4", `{"x":7}`, ""),
	}
	write(t, d, a, b)
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	keys := e.keys(t)
	if len(keys) != 2 {
		t.Fatalf("keys = %v, want 2 objects", keys)
	}
	schemas := []string{}
	for i, k := range keys {
		data := e.mio.Get(t, e.bucket, k)
		checkParquet(t, data, [][]mapper.Message{{a[0], b[0]}, b[1:]}[i])
		tbl, pf := readParquet(t, data, memory.NewGoAllocator())
		var s []string
		for _, f := range tbl.Schema().Fields()[numFieldColumns:] {
			s = append(s, f.Name+":"+f.Type.String())
		}
		schemas = append(schemas, strings.Join(s, ","))
		tbl.Release()
		pf.Close()
	}
	if want := "x:int64,f:bool,s:utf8"; schemas[0] != want {
		t.Errorf("object 0 schema %s, want %s", schemas[0], want)
	}
	if want := "x:float64,f:utf8,s:utf8"; schemas[1] != want {
		t.Errorf("object 1 schema %s, want %s", schemas[1], want)
	}
}

// TestParquetRowGroups writes more rows than one row group holds.
func TestParquetRowGroups(t *testing.T) {
	e := newEnv(t)
	d := e.newDest(t, e.cfg("parquet"), tuning{rowGroupRows: 1000})
	msgs := largeMessages("rg", 2500, 10)
	write(t, d, batches(msgs, 300)...)
	if err := d.Flush(context.Background()); err != nil {
		t.Fatal(err)
	}
	data := e.mio.Get(t, e.bucket, wantKey(0, "parquet"))
	pf, err := file.NewParquetReader(bytes.NewReader(data))
	if err != nil {
		t.Fatal(err)
	}
	defer pf.Close()
	if pf.NumRowGroups() != 3 || pf.NumRows() != int64(len(msgs)) {
		t.Fatalf("%d row groups, %d rows; want 3, %d", pf.NumRowGroups(), pf.NumRows(), len(msgs))
	}
	ids := parquetColumn(t, data, "messageId")
	for i, m := range msgs {
		if ids[i] != m.ID {
			t.Fatalf("row %d: messageId %s, want %s", i, ids[i], m.ID)
		}
	}
}
