package mapper

import (
	"context"
	"encoding/json"
	"path/filepath"
	"testing"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/testutil"
)

// TestCorpus maps every file of Apache's parquet-testing data/ that pqarrow can read,
// with the first integer or string column as user_id and every other column as traits
// (its first 5000 rows, to keep the suite fast): no panic, and every message is valid JSON.
func TestCorpus(t *testing.T) {
	root, paths := testutil.CorpusFiles(t, "data")
	dir := filepath.Join(root, "data")
	var mapped int
	for _, path := range paths {
		rel, _ := filepath.Rel(dir, path)
		t.Run(rel, func(t *testing.T) {
			if mapCorpusFile(t, path) {
				mapped++
			}
		})
	}
	if mapped < 20 {
		t.Errorf("only %d files mapped; the corpus should give dozens", mapped)
	}
}

func mapCorpusFile(t *testing.T, path string) bool {
	mem := memory.NewGoAllocator()
	pf, err := openParquet(path, mem, 1000)
	if err != nil {
		t.Skipf("pqarrow cannot open it: %v", err)
	}
	defer pf.Close()
	schema, err := pf.schema()
	if err != nil {
		t.Skipf("pqarrow cannot convert its schema: %v", err)
	}
	user, synthetic := "", false
	for _, f := range schema.Fields() {
		if idType(f.Type) {
			user = f.Name
			break
		}
	}
	if user == "" {
		// No column can be an identifier: add one holding the row number, so that the
		// file's other columns are still mapped.
		user, synthetic = "backflow_test_row", true
		schema = arrow.NewSchema(append(schema.Fields(), arrow.Field{Name: user, Type: arrow.PrimitiveTypes.Int64}), nil)
	}
	var ms []*Mapper
	for _, mp := range []config.Mapping{
		{Type: "identify", UserID: user},
		{Type: "track", AnonymousID: user, Event: "Corpus", SkipNulls: true},
	} {
		m, err := New(Options{Sync: "corpus", Mapping: mp, Schema: schema, Version: "test"})
		if err != nil {
			t.Fatalf("New: %v", err)
		}
		ms = append(ms, m)
	}
	var msgs, rejects int
	err = pf.each(context.Background(), 5000, func(rec arrow.RecordBatch, firstRow int64) {
		if synthetic {
			b := array.NewInt64Builder(mem)
			for i := range rec.NumRows() {
				b.Append(firstRow + i)
			}
			rows := b.NewArray()
			b.Release()
			defer rows.Release()
			rec = array.NewRecordBatch(schema, append(rec.Columns(), rows), rec.NumRows())
			defer rec.Release()
		}
		for _, m := range ms {
			out, rej := m.Map(rec, firstRow, nil, nil)
			for _, msg := range out {
				if !json.Valid(msg.JSON) {
					t.Fatalf("row %d: invalid JSON %q", msg.Row, msg.JSON)
				}
			}
			checkMessages(t, out)
			for _, r := range rej {
				if r.Message != nil || r.Reason == "" {
					t.Fatalf("row %d: reject %+v", r.Row, r)
				}
			}
			msgs += len(out)
			rejects += len(rej)
		}
	})
	if err != nil {
		t.Logf("reading stopped: %v", err)
	}
	t.Logf("user_id %s: %d messages, %d rejects", user, msgs, rejects)
	return msgs+rejects > 0
}
