package main

import (
	"context"
	"fmt"
	"path/filepath"
	"time"

	"github.com/backflowhq/backflow/internal/testutil"
)

// scenarioMinIO syncs the map scenario's export from a MinIO bucket (ranged GETs over
// loopback HTTP) to a file, against DuckDB reading the same file from local disk: DuckDB
// reads S3 through its httpfs extension, which it downloads at run time, and this machine
// has no network to download it from.
func scenarioMinIO(ctx context.Context, e *env, res *results) error {
	if _, err := testutil.MinIOBinary(); err != nil {
		res.note("sync-minio skipped: %v", err)
		return nil
	}
	d, err := e.dataset(1, e.o.rows, mapRowGroupRows)
	if err != nil {
		return err
	}
	if err := e.startMinIO(ctx); err != nil {
		return err
	}
	start := time.Now()
	if err := e.minio.upload(ctx, "bench", "users/", d.files); err != nil {
		return err
	}
	fmt.Printf("   uploaded %.1f MiB to s3://bench/users/ in %s\n", float64(d.bytes)/(1<<20), time.Since(start).Round(time.Millisecond))

	db, err := openDuckDB(ctx, e.o.threads)
	if err != nil {
		return err
	}
	defer db.close()
	dir := filepath.Join(e.dir, "sync-minio")
	cli := res.measure("sync-minio", "backflow sync (MinIO → file)", d.rows, "rows")
	s3src := syncConfig{source: "s3://bench/users/", s3Endpoint: e.minio.endpoint}
	cliSide, err := e.fileSide(cli, filepath.Join(dir, "cli"), s3src, d.rows)
	if err != nil {
		return err
	}
	inproc := res.measure("sync-minio", "backflow reader+mapper (MinIO)", d.rows, "rows")
	ipSide, _, err := inProcessSide(inproc, filepath.Join(dir, "inproc"), s3src, d.rows, e.o.threads)
	if err != nil {
		return err
	}
	duck := res.measure("sync-minio", "DuckDB COPY (local disk)", d.rows, "rows")
	dSide := duckSide(duck, db, d.files, true, filepath.Join(dir, "duck", "out.json"), d.rows)
	res.note("sync-minio: DuckDB reads the Parquet from local disk, not MinIO: its S3 reader (the httpfs extension) is downloaded at run time, and this machine cannot download it. MinIO runs on the same 2 CPUs as backflow.")
	// The comparisons are recorded first, so that a failing side still shows in the table.
	res.comparisons = append(res.comparisons,
		comparison{"sync-minio", "backflow sync from MinIO ÷ DuckDB from disk", cli, duck, 1.0},
		comparison{"sync-minio", "reader+mapper from MinIO ÷ DuckDB from disk", inproc, duck, 1.0})
	if err := alternate(ctx, e.o.runs, e.o.verbose, []side{cliSide, dSide, ipSide}); err != nil {
		return err
	}
	return nil
}

// startMinIO starts the MinIO server the scenarios share, once.
func (e *env) startMinIO(ctx context.Context) error {
	if e.minio != nil {
		return nil
	}
	start := time.Now()
	s, err := startMinIO(ctx, filepath.Join(e.dir, "minio"))
	if err != nil {
		return err
	}
	e.minio = s
	fmt.Printf("   MinIO up at %s in %s\n", s.endpoint, time.Since(start).Round(time.Millisecond))
	return nil
}
