package main

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"fmt"
	"io"
	"os"
	"path/filepath"
	"strings"

	"github.com/apache/arrow-go/v18/parquet/file"
	"github.com/aws/aws-sdk-go-v2/aws"
	"github.com/aws/aws-sdk-go-v2/service/s3"

	"github.com/backflowhq/backflow/internal/testutil"
)

// s3Bucket receives the objects of scenario s3-dest.
const s3Bucket = "bench-out"

// scenarioS3Dest syncs the map scenario's export (from local disk) to the s3 destination
// on MinIO — JSON lines, gzipped JSON lines and Parquet — against the same sync to the
// file destination. After every run the bench reads every object back and counts its
// rows (lines, or the Parquet footers' row counts): every row must be there.
func scenarioS3Dest(ctx context.Context, e *env, res *results) error {
	if _, err := testutil.MinIOBinary(); err != nil {
		res.note("s3-dest skipped: %v", err)
		return nil
	}
	d, err := e.dataset(1, e.o.rows, mapRowGroupRows)
	if err != nil {
		return err
	}
	if err := e.startMinIO(ctx); err != nil {
		return err
	}
	if err := e.minio.upload(ctx, s3Bucket, "", nil); err != nil { // creates the bucket
		return err
	}
	dir := filepath.Join(e.dir, "s3-dest")
	keys := syncConfig{s3Endpoint: e.minio.endpoint}.env() // the destination's credentials
	fileM := res.measure("s3-dest", "backflow sync (file)", d.rows, "rows")
	fileSide, err := e.fileSide(fileM, filepath.Join(dir, "file"), syncConfig{source: d.dir}, d.rows)
	if err != nil {
		return err
	}
	sides := []side{fileSide}
	for _, f := range []struct{ name, format, compression string }{
		{"jsonl", "jsonl", "none"}, {"jsonl+gzip", "jsonl", "gzip"}, {"parquet", "parquet", "none"},
	} {
		m := res.measure("s3-dest", "backflow sync (s3 "+f.name+")", d.rows, "rows")
		prefix := "users-" + strings.ReplaceAll(f.name, "+", "-") + "/"
		cfgDir := filepath.Join(dir, f.name)
		c := syncConfig{source: d.dir}
		c.destination = fmt.Sprintf("type: s3\n        url: s3://%s/%s\n        format: %s\n        compression: %s\n"+
			"        endpoint: %s\n        region: us-east-1\n        path_style: true\n"+
			"        auth:\n          mode: keys\n          access_key_id: ${BENCH_S3_ACCESS_KEY}\n          secret_access_key: ${BENCH_S3_SECRET_KEY}",
			s3Bucket, prefix, f.format, f.compression, e.minio.endpoint)
		cfg, err := writeConfig(cfgDir, c)
		if err != nil {
			return err
		}
		format, gz := f.format, f.compression == "gzip"
		sides = append(sides, side{m: m, run: func(ctx context.Context, _ int) error {
			if err := e.minio.empty(ctx, s3Bucket, prefix); err != nil {
				return err
			}
			_ = os.RemoveAll(filepath.Join(cfgDir, "state"))
			r, err := e.backflowSync(ctx, cfg, d.rows, keys...)
			if err != nil {
				return err
			}
			m.add(r.wall, r.cpu, r.maxRSS)
			rows, size, err := e.minio.countRows(ctx, s3Bucket, prefix, format, gz)
			if err != nil {
				return err
			}
			if rows != d.rows {
				return fmt.Errorf("s3://%s/%s holds %d rows, want %d", s3Bucket, prefix, rows, d.rows)
			}
			m.outBytes = size
			return e.minio.empty(ctx, s3Bucket, prefix)
		}})
		target := 0.7
		if format == "parquet" {
			target = 0.5
		}
		res.comparisons = append(res.comparisons, comparison{"s3-dest", "s3 " + f.name + " ÷ file (rows/s)", m, fileM, target})
	}
	res.note("s3-dest: backflow syncs the local export to MinIO (on the same 2 CPUs; its CPU time counts on neither side) and to a file; every object is read back and its rows counted after each run. The gzip target is the jsonl one; the issue sets none of its own.")
	return alternate(ctx, e.o.runs, e.o.verbose, sides)
}

// empty deletes every object under prefix.
func (s *minioServer) empty(ctx context.Context, bucket, prefix string) error {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return err
		}
		for _, o := range page.Contents {
			if _, err := s.client.DeleteObject(ctx, &s3.DeleteObjectInput{Bucket: aws.String(bucket), Key: o.Key}); err != nil {
				return err
			}
		}
	}
	return nil
}

// countRows reads back every object under prefix and counts its rows: lines of JSON lines
// (gunzipped when gz), the row count of a Parquet file's footer. size is the objects' bytes.
func (s *minioServer) countRows(ctx context.Context, bucket, prefix, format string, gz bool) (rows, size int64, err error) {
	p := s3.NewListObjectsV2Paginator(s.client, &s3.ListObjectsV2Input{Bucket: aws.String(bucket), Prefix: aws.String(prefix)})
	for p.HasMorePages() {
		page, err := p.NextPage(ctx)
		if err != nil {
			return 0, 0, err
		}
		for _, o := range page.Contents {
			out, err := s.client.GetObject(ctx, &s3.GetObjectInput{Bucket: aws.String(bucket), Key: o.Key})
			if err != nil {
				return 0, 0, err
			}
			b, err := io.ReadAll(out.Body)
			out.Body.Close()
			if err != nil {
				return 0, 0, err
			}
			size += int64(len(b))
			n, err := objectRows(b, format, gz)
			if err != nil {
				return 0, 0, fmt.Errorf("s3://%s/%s: %w", bucket, *o.Key, err)
			}
			rows += n
		}
	}
	return rows, size, nil
}

func objectRows(b []byte, format string, gz bool) (int64, error) {
	if format == "parquet" {
		r, err := file.NewParquetReader(bytes.NewReader(b))
		if err != nil {
			return 0, err
		}
		defer r.Close()
		return r.NumRows(), nil
	}
	var in io.Reader = bytes.NewReader(b)
	if gz {
		zr, err := gzip.NewReader(in)
		if err != nil {
			return 0, err
		}
		defer zr.Close()
		in = zr
	}
	var n int64
	sc := bufio.NewReaderSize(in, 1<<20)
	for {
		line, err := sc.ReadSlice('\n')
		if len(line) > 0 && line[len(line)-1] == '\n' {
			n++
		}
		switch err {
		case nil, bufio.ErrBufferFull:
		case io.EOF:
			return n, nil
		default:
			return 0, err
		}
	}
}
