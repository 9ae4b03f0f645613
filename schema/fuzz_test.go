package schema_test

import (
	"bytes"
	"context"
	"os"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
)

// fuzzTimeout is how long one input may take before the fuzzer calls it a hang.
const fuzzTimeout = 10 * time.Second

// FuzzCheck feeds arbitrary bytes to OpenFile, Check and a read of every row group:
// whatever the bytes, no panic escapes, nothing hangs, and every error names the key
// and says the file is invalid.
func FuzzCheck(f *testing.F) {
	dir := f.TempDir()
	seed := func(path string) {
		data, err := os.ReadFile(path)
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data)
	}
	seed(writeJSON(f, dir, "users.parquet", usersSchema, usersRows, writeOpts{}))
	seed(writeJSON(f, dir, "groups.parquet", usersSchema, usersRows, writeOpts{rowGroup: 1, storeSchema: true}))
	seed(writeJSON(f, dir, "nested.parquet", fields(
		field("tags", arrow.ListOf(arrow.BinaryTypes.String)),
		field("m", arrow.MapOf(arrow.BinaryTypes.String, arrow.PrimitiveTypes.Int32)),
		field("s", arrow.StructOf(field("a", arrow.FixedWidthTypes.Date32))),
	), `[{"tags": ["a", null], "m": [{"key": "k", "value": 1}], "s": {"a": "2024-01-01"}}, {"tags": null, "m": null, "s": null}]`, writeOpts{}))
	seed(writeJSON(f, dir, "int96.parquet", fields(field("ts", &arrow.TimestampType{Unit: arrow.Nanosecond})),
		`[{"ts": "2024-01-01T00:00:00"}]`, writeOpts{int96: true}))
	f.Add([]byte("PAR1"))
	f.Add([]byte("PAR1\x00\x00\x00\x00PAR1"))
	if os.Getenv(testutil.EnvParquetTesting) != "" {
		_, paths := testutil.CorpusFiles(f)
		for _, p := range paths {
			if st, err := os.Stat(p); err == nil && st.Size() <= 16<<10 {
				seed(p)
			}
		}
	}

	f.Fuzz(func(t *testing.T, data []byte) {
		// A hang is a crash: the fuzzer keeps the input that caused it.
		timer := time.AfterFunc(fuzzTimeout, func() { panic("FuzzCheck: still reading after " + fuzzTimeout.String()) })
		defer timer.Stop()
		const key = "fuzz/input.parquet"
		check := func(err error) {
			if err == nil {
				return
			}
			if !schema.IsInvalid(err) || !strings.HasPrefix(err.Error(), key+": ") {
				t.Fatalf("error %T %q: want an invalid-file error naming the key", err, err)
			}
		}
		file, err := reader.OpenFile(context.Background(), bytesBlob{bytes.NewReader(data)}, reader.Object{Key: key, Size: int64(len(data))},
			reader.FileOptions{BatchSize: 256})
		if err != nil {
			check(err)
			return
		}
		defer file.Close()
		if _, err := schema.Check(context.Background(), file, limits(64<<20), nil); err != nil {
			check(err)
			return
		}
		var rows int64
		for i := 0; i < file.NumRowGroups() && rows < 1<<16; i++ {
			rr, err := file.ReadRowGroup(context.Background(), i)
			if err != nil {
				check(err)
				return
			}
			for rows < 1<<16 && rr.Next() {
				if n := rr.RecordBatch().NumRows(); n > 256 || n <= 0 {
					t.Fatalf("batch of %d rows", n)
				}
				rows += rr.RecordBatch().NumRows()
			}
			err = rr.Err()
			rr.Release()
			check(err)
		}
	})
}
