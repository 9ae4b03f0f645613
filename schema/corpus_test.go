package schema_test

import (
	"bytes"
	"context"
	"fmt"
	"os"
	"path/filepath"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/internal/testutil"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
)

// corpusTimeout bounds the work on one corpus file: open, infer, check and read every
// row group. The largest corpus file takes well under a second.
const corpusTimeout = 30 * time.Second

// TestCorpus runs every file of the parquet-testing corpus (data and bad_data) through
// OpenFile, Infer, Check and a read of every row group: each is read or refused with
// an error naming it — never a panic, never a hang.
func TestCorpus(t *testing.T) {
	root, paths := testutil.CorpusFiles(t)
	var read, refused int
	for _, path := range paths {
		name, _ := filepath.Rel(root, path)
		t.Run(name, func(t *testing.T) {
			mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
			summary, err := within(t, corpusTimeout, func() (string, error) { return corpusRun(path, name, mem) })
			if err != nil {
				if !strings.Contains(err.Error(), name) {
					t.Errorf("the error does not name the file: %v", err)
				}
				if !schema.IsInvalid(err) {
					t.Errorf("a corrupt local file is not IsInvalid: %T %v", err, err)
				}
				refused++
				t.Logf("refused: %v", err)
			} else {
				read++
				t.Logf("read: %s", summary)
			}
			// arrow-go v18.8.0 itself leaks small buffers to the allocator on some paths
			// (its DELTA_BINARY_PACKED decoder, a page reader whose codec is missing):
			// with the Go allocator the garbage collector takes them back. Our own
			// tests, on files without those, assert that nothing is left.
			if n := mem.CurrentAlloc(); n != 0 {
				t.Logf("arrow-go left %d bytes allocated", n)
			}
		})
	}
	t.Logf("%d files read, %d refused", read, refused)
}

func corpusRun(path, key string, mem memory.Allocator) (string, error) {
	data, err := os.ReadFile(path)
	if err != nil {
		return "", err
	}
	f, err := reader.OpenFile(context.Background(), bytesBlob{bytes.NewReader(data)}, reader.Object{Key: key, Size: int64(len(data))},
		reader.FileOptions{BatchSize: 1024, Allocator: mem})
	if err != nil {
		return "", err
	}
	defer f.Close()
	s, err := schema.Infer(f)
	if err != nil {
		return "", err
	}
	if _, err := schema.Check(context.Background(), f, limits(512<<20), nil); err != nil {
		return "", err
	}
	var rows int64
	for i := 0; i < f.NumRowGroups(); i++ {
		rr, err := f.ReadRowGroup(context.Background(), i)
		if err != nil {
			return "", err
		}
		for rr.Next() {
			rows += rr.RecordBatch().NumRows()
		}
		err = rr.Err()
		rr.Release()
		if err != nil {
			return "", err
		}
	}
	cols := make([]string, len(s.Columns))
	for i, c := range s.Columns {
		cols[i] = fmt.Sprintf("%s %s/%s", c.Name, c.Parquet, c.JSON)
	}
	return fmt.Sprintf("%d rows; %s", rows, strings.Join(cols, ", ")), nil
}

// within runs fn in a goroutine, failing the test when a panic escapes it or when it
// runs longer than d.
func within[T any](t testing.TB, d time.Duration, fn func() (T, error)) (T, error) {
	t.Helper()
	type result struct {
		v     T
		err   error
		panic any
	}
	done := make(chan result, 1)
	go func() {
		var r result
		defer func() {
			r.panic = recover()
			done <- r
		}()
		r.v, r.err = fn()
	}()
	timer := time.NewTimer(d)
	defer timer.Stop()
	select {
	case r := <-done:
		if r.panic != nil {
			t.Fatalf("panic escaped: %v", r.panic)
		}
		return r.v, r.err
	case <-timer.C:
		t.Fatalf("still running after %v", d)
		var zero T
		return zero, nil
	}
}
