package schema_test

import (
	"bytes"
	"errors"
	"fmt"
	"os"
	"slices"
	"strings"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
)

var usersSchema = fields(
	field("id", arrow.PrimitiveTypes.Int64),
	field("email", arrow.BinaryTypes.String),
	field("age", arrow.PrimitiveTypes.Int64),
)

const usersRows = `[{"id": 1, "email": "a@b.c", "age": 30}, {"id": 2, "email": "", "age": null}]`

// checkErr runs Check on path and returns its *FileError.
func checkErr(t *testing.T, path string, l int64, want *schema.Schema) *schema.FileError {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f := mustOpen(t, path, mem)
	s, err := schema.Check(t.Context(), f, limits(l), want)
	if err == nil {
		t.Fatalf("Check passed, schema %v", s.Columns)
	}
	var fe *schema.FileError
	if !errors.As(err, &fe) {
		t.Fatalf("error %T %v is not a *FileError", err, err)
	}
	if !schema.IsInvalid(err) {
		t.Fatal("IsInvalid is false for a FileError")
	}
	return fe
}

func checkOK(t *testing.T, path string, want *schema.Schema) *schema.Schema {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	f := mustOpen(t, path, mem)
	s, err := schema.Check(t.Context(), f, limits(1<<30), want)
	if err != nil {
		t.Fatal(err)
	}
	return s
}

func TestCheckRowGroupTooLarge(t *testing.T) {
	dir := t.TempDir()
	var rows strings.Builder
	rows.WriteString("[")
	for i := 0; i < 300; i++ {
		if i > 0 {
			rows.WriteString(",")
		}
		fmt.Fprintf(&rows, `{"id": %d, "email": "user%d@example.com", "age": %d}`, i, i, i%90)
	}
	rows.WriteString("]")
	// Row groups of 100, 100 and 100 rows, then the limit set just under the
	// largest: the message names that row group and both sizes.
	path := writeJSON(t, dir, "b.parquet", usersSchema, rows.String(), writeOpts{rowGroup: 100})
	f := mustOpen(t, path, memory.DefaultAllocator)
	sizes := make([]int64, f.NumRowGroups())
	largest := 0
	for i := range sizes {
		var err error
		if sizes[i], err = schema.RowGroupBytes(f, i); err != nil || sizes[i] <= 0 {
			t.Fatalf("row group %d: %d bytes, %v", i, sizes[i], err)
		}
		if sizes[i] > sizes[largest] {
			largest = i
		}
	}
	if len(sizes) != 3 {
		t.Fatalf("%d row groups", len(sizes))
	}
	fe := checkErr(t, path, sizes[largest]-1, nil)
	want := fmt.Sprintf("users/b.parquet: row group %d: uncompressed size %s is over max_row_group_bytes (%s)",
		largest, schema.FormatBytes(sizes[largest]), schema.FormatBytes(sizes[largest]-1))
	if fe.Error() != want || fe.RowGroup != largest || fe.Key != "users/b.parquet" {
		t.Fatalf("got  %q\nwant %q", fe, want)
	}
	// A tiny limit stops at the first row group.
	if fe := checkErr(t, path, 1, nil); fe.RowGroup != 0 || !strings.Contains(fe.Error(), "over max_row_group_bytes (1 B)") {
		t.Fatalf("got %q", fe)
	}
	// At the limit exactly, and with no limit, the file passes.
	checkOK(t, path, nil)
	f2 := mustOpen(t, path, memory.DefaultAllocator)
	if _, err := schema.Check(t.Context(), f2, limits(sizes[largest]), nil); err != nil {
		t.Fatal(err)
	}
	if _, err := schema.Check(t.Context(), f2, limits(0), nil); err != nil {
		t.Fatal(err)
	}
}

func TestCheckSchemaDifferences(t *testing.T) {
	dir := t.TempDir()
	want := checkOK(t, writeJSON(t, dir, "a.parquet", usersSchema, usersRows, writeOpts{}), nil)

	for _, tc := range []struct {
		name   string
		sc     *arrow.Schema
		rows   string
		column string
		msg    string
	}{
		{"missing", fields(field("id", arrow.PrimitiveTypes.Int64), field("age", arrow.PrimitiveTypes.Int64)),
			`[{"id": 1, "age": 3}]`, "email",
			`users/missing.parquet: column "email": missing from the file (the sync's schema, from users/a.parquet, has utf8)`},
		{"extra", fields(field("id", arrow.PrimitiveTypes.Int64), field("email", arrow.BinaryTypes.String),
			field("age", arrow.PrimitiveTypes.Int64), field("nickname", arrow.BinaryTypes.String)),
			`[{"id": 1, "email": "x", "age": 3, "nickname": "z"}]`, "nickname",
			`users/extra.parquet: column "nickname": not in the sync's schema, from users/a.parquet (utf8)`},
		{"changed", fields(field("id", arrow.PrimitiveTypes.Int64), field("email", arrow.BinaryTypes.String), field("age", arrow.PrimitiveTypes.Int32)),
			`[{"id": 1, "email": "x", "age": 3}]`, "age",
			`users/changed.parquet: column "age": type int32, the sync's schema, from users/a.parquet, has int64`},
		{"several", fields(field("id", arrow.BinaryTypes.String), field("nickname", arrow.BinaryTypes.String)),
			`[{"id": "1", "nickname": "z"}]`, "id",
			`users/several.parquet: column "id": type utf8, the sync's schema, from users/a.parquet, has int64 (and 3 more schema differences)`},
	} {
		t.Run(tc.name, func(t *testing.T) {
			path := writeJSON(t, dir, tc.name+".parquet", tc.sc, tc.rows, writeOpts{})
			fe := checkErr(t, path, 1<<30, want)
			if fe.Error() != tc.msg || fe.Column != tc.column || fe.RowGroup != -1 {
				t.Fatalf("got  %q\nwant %q", fe, tc.msg)
			}
		})
	}
	// Full words every difference, for `backflow schema`.
	fe := checkErr(t, writeJSON(t, dir, "all.parquet", fields(field("id", arrow.BinaryTypes.String), field("nickname", arrow.BinaryTypes.String)),
		`[{"id": "1", "nickname": "z"}]`, writeOpts{}), 1<<30, want)
	full := fe.Full()
	for _, w := range []string{`column "id": type utf8`, `column "email": missing`, `column "age": missing`, `column "nickname": not in`} {
		if !strings.Contains(full, w) {
			t.Errorf("Full() = %q, lacks %q", full, w)
		}
	}
	if len(fe.Differences) != 4 {
		t.Errorf("Differences = %q, want 4", fe.Differences)
	}
}

func TestCheckSameSchemaOtherwiseWritten(t *testing.T) {
	dir := t.TempDir()
	want := checkOK(t, writeJSON(t, dir, "a.parquet", usersSchema, usersRows, writeOpts{}), nil)
	// Columns in another order, the string column large, the Arrow schema stored:
	// the file passes, but the schema is not Equal (the order differs).
	other := fields(
		field("age", arrow.PrimitiveTypes.Int64),
		field("email", arrow.BinaryTypes.LargeString),
		field("id", arrow.PrimitiveTypes.Int64),
	)
	got := checkOK(t, writeJSON(t, dir, "b.parquet", other, `[{"id": 1, "email": "e", "age": 3}]`, writeOpts{storeSchema: true}), want)
	if got.Equal(want) {
		t.Fatal("schemas in another column order are Equal")
	}
	// The string column dictionary-encoded: the same schema, the same fingerprint.
	same := checkOK(t, writeJSON(t, dir, "c.parquet", fields(
		field("id", arrow.PrimitiveTypes.Int64),
		field("email", &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int16, ValueType: arrow.BinaryTypes.String}),
		field("age", arrow.PrimitiveTypes.Int64),
	), `[{"id": 1, "email": "e", "age": 3}]`, writeOpts{storeSchema: true}), want)
	if _, ok := same.Columns[1].Type.(*arrow.DictionaryType); !ok {
		t.Fatalf("email read back as %s, not as a dictionary", same.Columns[1].Type)
	}
	if !same.Equal(want) || same.Fingerprint() != want.Fingerprint() {
		t.Fatalf("a dictionary-encoded string column changed the schema: %s vs %s", same.Fingerprint(), want.Fingerprint())
	}
}

func TestCheckNullFirstRow(t *testing.T) {
	dir := t.TempDir()
	sc := allTypesSchema()
	for i, c := range allTypes {
		t.Run(c.name, func(t *testing.T) {
			path := writeJSON(t, dir, c.name+".parquet", sc, allTypesRows(2, 0, i), writeOpts{storeSchema: true})
			fe := checkErr(t, path, 1<<30, nil)
			want := fmt.Sprintf("users/%s.parquet: column %q: null in the first row (source.limits.first_row_nulls: warn accepts such a file)", c.name, c.name)
			if fe.Error() != want || fe.Column != c.name {
				t.Fatalf("got  %q\nwant %q", fe, want)
			}
		})
	}
	// first_row_nulls: warn lets the file through and names the columns.
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	f := mustOpen(t, writeJSON(t, dir, "warn.parquet", sc, allTypesRows(2, 0, 0), writeOpts{}), mem)
	l := limits(1 << 30)
	l.FirstRowNulls = config.FirstRowNullsWarn
	s, err := schema.Check(t.Context(), f, l, nil)
	f.Close()
	mem.AssertSize(t, 0)
	if err != nil || !slices.Equal(s.FirstRowNulls, []string{allTypes[0].name}) || s.Origin != "users/warn.parquet" {
		t.Fatalf("first_row_nulls warn: err %v, FirstRowNulls %q, Origin %q", err, s.FirstRowNulls, s.Origin)
	}
	// A null in the second row is fine: only the first row is checked.
	checkOK(t, writeJSON(t, dir, "second.parquet", sc, allTypesRows(2, 1, 0), writeOpts{}), nil)
}

func TestCheckEmptyStringsAndEmptyFiles(t *testing.T) {
	dir := t.TempDir()
	sc := fields(field("id", arrow.PrimitiveTypes.Int64), field("email", arrow.BinaryTypes.String))
	checkOK(t, writeJSON(t, dir, "empty-string.parquet", sc, `[{"id": 1, "email": ""}]`, writeOpts{}), nil)

	// A file with no rows is valid and still has a schema.
	s := checkOK(t, writeJSON(t, dir, "no-rows.parquet", sc, `[]`, writeOpts{}), nil)
	if len(s.Columns) != 2 {
		t.Fatalf("schema of an empty file: %v", s.Columns)
	}
}

func TestCheckFirstRowInALaterRowGroup(t *testing.T) {
	// An empty first row group: the first row is in the second.
	dir := t.TempDir()
	sc := fields(field("id", arrow.PrimitiveTypes.Int64), field("email", arrow.BinaryTypes.String))
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	path := dir + "/later.parquet"
	out, err := createFile(path)
	if err != nil {
		t.Fatal(err)
	}
	writeRowGroups(t, out, sc, mem, `[]`, `[{"id": 1, "email": null}]`)
	f := mustOpen(t, path, mem)
	if f.NumRowGroups() != 2 || f.RowGroupRows(0) != 0 {
		t.Fatalf("%d row groups, the first of %d rows", f.NumRowGroups(), f.RowGroupRows(0))
	}
	_, err = schema.Check(t.Context(), f, limits(1<<30), nil)
	var fe *schema.FileError
	if !errors.As(err, &fe) || fe.Column != "email" {
		t.Fatalf("got %v", err)
	}
}

func TestCheckDuplicateColumn(t *testing.T) {
	sc := fields(field("id", arrow.PrimitiveTypes.Int64), field("id", arrow.BinaryTypes.String))
	path := writeJSON(t, t.TempDir(), "dup.parquet", sc, `[]`, writeOpts{})
	fe := checkErr(t, path, 1<<30, nil)
	if fe.Error() != `users/dup.parquet: column "id": more than one top-level column has this name` {
		t.Fatalf("got %q", fe)
	}
}

func TestCheckUnreadableIsInvalid(t *testing.T) {
	path := writeJSON(t, t.TempDir(), "a.parquet", usersSchema, usersRows, writeOpts{})
	data, err := os.ReadFile(path)
	if err != nil {
		t.Fatal(err)
	}
	// Garble the data pages, keep the footer: the file opens, its first row does not read.
	for i := 4; i < 200 && i < len(data)/2; i++ {
		data[i] = 0xff
	}
	g, err := reader.OpenFile(t.Context(), bytesBlob{bytes.NewReader(data)}, reader.Object{Key: "users/garbled.parquet"}, reader.FileOptions{})
	if err != nil {
		t.Fatalf("the footer is intact, yet: %v", err)
	}
	defer g.Close()
	_, err = schema.Check(t.Context(), g, limits(1<<30), nil)
	if err == nil || !schema.IsInvalid(err) || !strings.Contains(err.Error(), "users/garbled.parquet") {
		t.Fatalf("Check of a garbled file: %v", err)
	}
	t.Log(err)
	if schema.IsInvalid(errors.New("connection refused")) {
		t.Fatal("IsInvalid of another error")
	}
}

func TestFormatBytes(t *testing.T) {
	for n, want := range map[int64]string{
		0: "0 B", 1023: "1023 B", 1024: "1.0 KiB", 1536: "1.5 KiB",
		512 << 20: "512.0 MiB", 612 << 20: "612.0 MiB", 3 << 30: "3.0 GiB", 1 << 62: "4.0 EiB",
	} {
		if got := schema.FormatBytes(n); got != want {
			t.Errorf("FormatBytes(%d) = %q, want %q", n, got, want)
		}
	}
}

func TestFileErrorMessage(t *testing.T) {
	for _, tc := range []struct {
		e    schema.FileError
		want string
	}{
		{schema.FileError{Key: "k", RowGroup: -1, Reason: "r"}, "k: r"},
		{schema.FileError{Key: "k", RowGroup: 0, Reason: "r"}, "k: row group 0: r"},
		{schema.FileError{Key: "k", RowGroup: 2, Column: "c", Reason: "r"}, `k: row group 2: column "c": r`},
	} {
		if got := tc.e.Error(); got != tc.want {
			t.Errorf("got %q, want %q", got, tc.want)
		}
	}
}
