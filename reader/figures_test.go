package reader

import (
	"context"
	"encoding/binary"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/memory"
	"github.com/apache/arrow-go/v18/parquet"
	"github.com/apache/arrow-go/v18/parquet/compress"
	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/apache/arrow-go/v18/parquet/pqarrow"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/feature/s3/manager"
	"github.com/aws/aws-sdk-go-v2/service/s3"
	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/internal/testutil"
)

// The figures below measure what listing and opening Parquet files costs over S3. They
// upload a lot of data, so they only run with BACKFLOW_FIGURES=1:
//
//	BACKFLOW_FIGURES=1 go test -run 'TestFigure' -v ./reader/

func requireFigures(t *testing.T) {
	if os.Getenv("BACKFLOW_FIGURES") != "1" {
		t.Skip("set BACKFLOW_FIGURES=1 to measure")
	}
}

// openFooter reads obj's footer with arrow-go's own reader over our Blob.
func openFooter(ctx context.Context, src Source, obj Object) (int64, error) {
	blob, err := src.Open(ctx, obj)
	if err != nil {
		return 0, err
	}
	defer blob.Close()
	pf, err := file.NewParquetReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		return 0, fmt.Errorf("%s: %w", obj.Key, err)
	}
	return pf.NumRows(), nil
}

// TestFigureFooters1000 lists 1,000 small Parquet files on MinIO and reads every footer,
// one file after another, then 16 at a time.
func TestFigureFooters1000(t *testing.T) {
	requireFigures(t)
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	data := smallParquet(t, 200)
	keys := make([]string, 1000)
	for i := range keys {
		keys[i] = fmt.Sprintf("fig/dt=2025-01-%02d/part-%04d.parquet", i%28+1, i)
	}
	putMany(t, m, bucket, keys, func(string) []byte { return data })
	ctx := context.Background()

	for _, workers := range []int{1, 16} {
		src := newS3(t, m.Options(), "s3://"+bucket+"/fig/", "", "")
		start := time.Now()
		l, err := src.List(ctx)
		if err != nil {
			t.Fatal(err)
		}
		listed := time.Since(start)
		g, gctx := errgroup.WithContext(ctx)
		g.SetLimit(workers)
		for _, o := range l.Objects {
			g.Go(func() error {
				rows, err := openFooter(gctx, src, o)
				if err == nil && rows != 200 {
					err = fmt.Errorf("%s: %d rows", o.Key, rows)
				}
				return err
			})
		}
		if err := g.Wait(); err != nil {
			t.Fatal(err)
		}
		total := time.Since(start)
		st := src.Stats()
		t.Logf("%d files of %d bytes, %2d at a time: list %v (%d LIST), list+footers %v; %d GET, %d bytes read",
			len(l.Objects), len(data), workers, listed.Round(time.Millisecond), st.ListRequests,
			total.Round(time.Millisecond), st.GetRequests, st.BytesRead)
		if st.GetRequests != int64(len(l.Objects)) {
			t.Errorf("%d GETs for %d footers, want one each", st.GetRequests, len(l.Objects))
		}
	}
}

// TestFigureFooter1GB writes a real Parquet file of about 1 GiB, uploads it and reads
// only its footer.
func TestFigureFooter1GB(t *testing.T) {
	requireFigures(t)
	m := testutil.StartMinIO(t)
	bucket := m.Bucket(t)
	ctx := context.Background()

	path := filepath.Join(t.TempDir(), "big.parquet")
	start := time.Now()
	writeBigParquet(t, path, 65536, 16<<10, 8192)
	info, err := os.Stat(path)
	if err != nil {
		t.Fatal(err)
	}
	t.Logf("wrote %d bytes in %v", info.Size(), time.Since(start).Round(time.Millisecond))

	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	start = time.Now()
	up := manager.NewUploader(m.Client, func(u *manager.Uploader) { u.PartSize = 64 << 20; u.Concurrency = 4 })
	if _, err := up.Upload(ctx, &s3.PutObjectInput{Bucket: aws.String(bucket), Key: aws.String("big/data.parquet"), Body: f}); err != nil {
		t.Fatal(err)
	}
	t.Logf("uploaded in %v", time.Since(start).Round(time.Millisecond))

	src := newS3(t, m.Options(), "s3://"+bucket+"/big/", "", "")
	l, err := src.List(ctx)
	if err != nil || len(l.Objects) != 1 {
		t.Fatalf("list: %+v %v", l, err)
	}
	obj := l.Objects[0]
	start = time.Now()
	blob, err := src.Open(ctx, obj)
	if err != nil {
		t.Fatal(err)
	}
	defer blob.Close()
	pf, err := file.NewParquetReader(io.NewSectionReader(blob, 0, blob.Size()))
	if err != nil {
		t.Fatal(err)
	}
	took := time.Since(start)
	st := src.Stats()
	t.Logf("footer of a %d-byte object (%d rows, %d row groups, metadata %d bytes): %d GET, %d bytes read, %v",
		obj.Size, pf.NumRows(), pf.NumRowGroups(), pf.MetaData().Size(), st.GetRequests, st.BytesRead, took.Round(time.Microsecond))
	if st.GetRequests != 1 || st.BytesRead != TailSize {
		t.Errorf("footer cost %+v, want one GET of %d bytes", st, TailSize)
	}
}

// writeBigParquet writes rows rows of (id int64, payload binary of payloadSize bytes),
// uncompressed and without dictionaries or payload statistics, so that a gigabyte is
// cheap to produce but still a real Parquet file with several row groups.
func writeBigParquet(t *testing.T, path string, rows, payloadSize, rowGroup int) {
	t.Helper()
	mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
	defer mem.AssertSize(t, 0)
	schema := arrow.NewSchema([]arrow.Field{
		{Name: "id", Type: arrow.PrimitiveTypes.Int64},
		{Name: "payload", Type: arrow.BinaryTypes.Binary},
	}, nil)
	out, err := os.Create(path)
	if err != nil {
		t.Fatal(err)
	}
	defer out.Close()
	w, err := pqarrow.NewFileWriter(schema, out,
		parquet.NewWriterProperties(
			parquet.WithAllocator(mem),
			parquet.WithCompression(compress.Codecs.Uncompressed),
			parquet.WithDictionaryDefault(false),
			parquet.WithStatsFor("payload", false),
			parquet.WithMaxRowGroupLength(int64(rowGroup)),
		),
		pqarrow.NewArrowWriterProperties(pqarrow.WithAllocator(mem)))
	if err != nil {
		t.Fatal(err)
	}
	payload := make([]byte, payloadSize)
	for i := range payload {
		payload[i] = byte(i * 31)
	}
	b := array.NewRecordBuilder(mem, schema)
	defer b.Release()
	for first := 0; first < rows; first += rowGroup {
		for i := first; i < min(first+rowGroup, rows); i++ {
			b.Field(0).(*array.Int64Builder).Append(int64(i))
			binary.LittleEndian.PutUint64(payload, uint64(i))
			b.Field(1).(*array.BinaryBuilder).Append(payload)
		}
		rec := b.NewRecordBatch()
		err := w.Write(rec)
		rec.Release()
		if err != nil {
			t.Fatal(err)
		}
	}
	if err := w.Close(); err != nil {
		t.Fatal(err)
	}
}
