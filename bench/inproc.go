package main

import (
	"bufio"
	"context"
	"fmt"
	"os"
	"strings"
	"sync"

	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/internal/arrowmem"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
)

// Read settings of pipeline.Run's defaults, so the in-process side reads as `sync` does.
const (
	batchRows   = 4096
	bufferBytes = 4 << 20
	readBytes   = 32 << 20 // pipeline.DefaultReadBytes: it sizes the column buffers
)

// mapInProcess reads every file of the config's sync with backflow's reader and maps it
// with backflow's mapper — the core of `backflow sync` without destinations, state or
// process start — on `workers` goroutines, one row group each at a time, writing the
// messages as JSON lines to out through one buffer (no fsync). out == "" discards them.
// It returns the number of messages written. emit, when not nil, sees every message.
// env holds NAME=value pairs the config's ${NAME} may use besides the environment's.
func mapInProcess(ctx context.Context, cfgPath, out string, workers int, env []string, emit func([]mapper.Message)) (int64, error) {
	lookup := func(name string) (string, bool) {
		for _, kv := range env {
			if k, v, ok := strings.Cut(kv, "="); ok && k == name {
				return v, true
			}
		}
		return os.LookupEnv(name)
	}
	cfg, err := config.Load(cfgPath, lookup, all.Registry())
	if err != nil {
		return 0, err
	}
	s := &cfg.Syncs[0]
	src, err := reader.NewSource(ctx, s.Source)
	if err != nil {
		return 0, err
	}
	listing, err := src.List(ctx)
	if err != nil {
		return 0, err
	}
	if len(listing.Objects) == 0 {
		return 0, fmt.Errorf("%s: no Parquet file", s.Source.URL)
	}
	buffers := arrowmem.NewPool(0) // one for the run's files, as pipeline.Run
	open := func(obj reader.Object) (*reader.File, error) {
		blob, err := src.Open(ctx, obj)
		if err != nil {
			return nil, err
		}
		f, err := reader.OpenFile(ctx, blob, obj, reader.FileOptions{BatchSize: batchRows, BufferSize: bufferBytes, MemoryBudget: readBytes, Allocator: buffers})
		if err != nil {
			blob.Close()
			return nil, err
		}
		return f, nil
	}
	var files []*reader.File
	defer func() {
		for _, f := range files {
			f.Close()
		}
	}()
	var sch *schema.Schema
	for _, obj := range listing.Objects {
		f, err := open(obj)
		if err != nil {
			return 0, err
		}
		files = append(files, f)
		got, err := schema.Check(ctx, f, s.Source.Limits, sch)
		if err != nil {
			return 0, err
		}
		if sch == nil {
			sch = got
		}
	}
	m, err := mapper.New(mapper.Options{
		Sync: s.Name, Mapping: s.Mapping, Schema: sch.Arrow,
		MaxRecordBytes: s.Source.Limits.MaxRecordBytes, Version: "bench",
		// As `backflow sync` maps: the content key is hashed in mode diff only.
		SkipKeys: s.Mode != "diff",
	})
	if err != nil {
		return 0, err
	}

	var w *bufio.Writer
	var outFile *os.File
	if out != "" {
		outFile, err = os.Create(out)
		if err != nil {
			return 0, err
		}
		defer outFile.Close()
		w = bufio.NewWriterSize(outFile, 1<<20)
	}
	var mu sync.Mutex // guards w and n
	var n int64

	type job struct {
		f     *reader.File
		rg    int
		first int64
	}
	jobs := make(chan job)
	g, gctx := errgroup.WithContext(ctx)
	g.Go(func() error {
		defer close(jobs)
		for _, f := range files {
			var first int64
			for rg := range f.NumRowGroups() {
				select {
				case jobs <- job{f, rg, first}:
				case <-gctx.Done():
					return gctx.Err()
				}
				first += f.RowGroupRows(rg)
			}
		}
		return nil
	})
	for range workers {
		g.Go(func() error {
			var msgs []mapper.Message
			for j := range jobs {
				rr, err := j.f.ReadRowGroup(gctx, j.rg)
				if err != nil {
					return err
				}
				row := j.first
				for rr.Next() {
					rec := rr.RecordBatch()
					var rejects []mapper.Reject
					msgs, rejects = m.Map(rec, row, msgs[:0], nil)
					if len(rejects) > 0 {
						rr.Release()
						return fmt.Errorf("%s: row %d: %s", j.f.Object().Key, rejects[0].Row, rejects[0].Reason)
					}
					row += rec.NumRows()
					if emit != nil {
						emit(msgs)
					}
					mu.Lock()
					n += int64(len(msgs))
					if w != nil {
						for i := range msgs {
							w.Write(msgs[i].JSON)
							w.WriteByte('\n')
						}
					}
					mu.Unlock()
				}
				err = rr.Err()
				rr.Release()
				if err != nil {
					return err
				}
			}
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return n, err
	}
	if w != nil {
		if err := w.Flush(); err != nil {
			return n, err
		}
		if err := outFile.Close(); err != nil {
			return n, err
		}
	}
	return n, nil
}
