package main

import (
	"context"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime/pprof"
	"slices"
	"time"
)

// mapRowGroupRows is the row group size of the map and sync-minio exports: the example
// generator's default (64 Ki rows), so both sides have row groups to spread over threads.
const mapRowGroupRows = 64 << 10

// side is one contender of a comparison: run does one timed run.
type side struct {
	m   *measurement
	run func(ctx context.Context, i int) error
}

// alternate runs every side `runs` times, in turn, reversing the order every other round
// (A B C, C B A, A B C, …) so that no side always runs first or last. A side that fails
// is not run again; the others go on, and the failures are returned together.
func alternate(ctx context.Context, runs int, verbose bool, sides []side) error {
	failed := make([]error, len(sides))
	for i := range runs {
		order := make([]int, len(sides))
		for k := range order {
			order[k] = k
		}
		if i%2 == 1 {
			slices.Reverse(order)
		}
		for _, k := range order {
			s := sides[k]
			if failed[k] != nil {
				continue
			}
			if err := ctx.Err(); err != nil {
				return err
			}
			if err := s.run(ctx, i); err != nil {
				if ctx.Err() != nil {
					return ctx.Err()
				}
				failed[k] = fmt.Errorf("%s: %w", s.m.side, err)
				s.m.failed = true
				fmt.Printf("   run %d %-28s FAILED: %v\n", i+1, s.m.side, err)
				continue
			}
			if verbose {
				n := len(s.m.walls) - 1
				fmt.Printf("   run %d %-28s %7.2f s  cpu %6.2f s\n", i+1, s.m.side, s.m.walls[n].Seconds(), s.m.cpus[n].Seconds())
			}
		}
	}
	return errors.Join(failed...)
}

// fileSide is `backflow sync` from src to a file destination.
func (e *env) fileSide(m *measurement, dir string, src syncConfig, rows int64) (side, error) {
	out := filepath.Join(dir, "out.jsonl")
	src.destination = "type: file\n        path: " + out
	cfg, err := writeConfig(dir, src)
	if err != nil {
		return side{}, err
	}
	return side{m: m, run: func(ctx context.Context, _ int) error {
		_ = os.Remove(out)
		_ = os.RemoveAll(filepath.Join(dir, "state"))
		r, err := e.backflowSync(ctx, cfg, rows, src.env()...)
		if err != nil {
			return err
		}
		m.add(r.wall, r.cpu, r.maxRSS)
		lines, size, err := countLines(out)
		if err != nil {
			return err
		}
		if lines != rows {
			return fmt.Errorf("%s holds %d lines, want %d", out, lines, rows)
		}
		m.outBytes = size
		return os.Remove(out)
	}}, nil
}

// duckSide is DuckDB's COPY … TO … (FORMAT json) over the files.
func duckSide(m *measurement, db *duckDB, files []string, full bool, out string, rows int64) side {
	query := duckSelect(files, full)
	return side{m: m, run: func(ctx context.Context, _ int) error {
		c0 := processCPU()
		wall, err := db.copyJSON(ctx, query, out)
		if err != nil {
			return err
		}
		m.add(wall, processCPU()-c0, 0)
		lines, size, err := countLines(out)
		if err != nil {
			return err
		}
		if lines != rows {
			return fmt.Errorf("%s holds %d lines, want %d", out, lines, rows)
		}
		m.outBytes = size
		return os.Remove(out)
	}}
}

func scenarioMap(ctx context.Context, e *env, res *results) error {
	d, err := e.dataset(1, e.o.rows, mapRowGroupRows)
	if err != nil {
		return err
	}
	db, err := openDuckDB(ctx, e.o.threads)
	if err != nil {
		return err
	}
	defer db.close()
	fmt.Printf("   %d rows in %d file(s), %.1f MiB of Parquet; DuckDB %s\n", d.rows, len(d.files), float64(d.bytes)/(1<<20), db.version)
	dir := filepath.Join(e.dir, "map")
	src := syncConfig{source: d.dir}

	cli := res.measure("map", "backflow sync (file)", d.rows, "rows")
	cliSide, err := e.fileSide(cli, filepath.Join(dir, "cli"), src, d.rows)
	if err != nil {
		return err
	}

	inproc := res.measure("map", "backflow reader+mapper", d.rows, "rows")
	ipSide, ipCfg, err := inProcessSide(inproc, filepath.Join(dir, "inproc"), src, d.rows, e.o.threads)
	if err != nil {
		return err
	}
	ipOut := filepath.Join(dir, "inproc", "out.jsonl")

	duck := res.measure("map", "DuckDB COPY (same fields)", d.rows, "rows")
	duckSide1 := duckSide(duck, db, d.files, true, filepath.Join(dir, "duck", "out.json"), d.rows)
	duckMin := res.measure("map", "DuckDB COPY (5 fields)", d.rows, "rows")
	duckSide2 := duckSide(duckMin, db, d.files, false, filepath.Join(dir, "duck", "out-min.json"), d.rows)

	res.comparisons = append(res.comparisons,
		// For context only: the whole sync against the plain export (docs/performance.md).
		comparison{"map", "backflow sync ÷ DuckDB, 5 fields", cli, duckMin, 0},
		comparison{"map", "backflow sync ÷ DuckDB, same fields", cli, duck, 1.0},
		comparison{"map", "reader+mapper ÷ DuckDB, 5 fields", inproc, duckMin, 0.9},
		comparison{"map", "reader+mapper ÷ DuckDB, same fields", inproc, duck, 1.0},
	)
	if err := alternate(ctx, e.o.runs, e.o.verbose, []side{cliSide, duckSide1, ipSide, duckSide2}); err != nil {
		return err
	}
	if e.o.cpuProfile != "" {
		if err := profileInProcess(ctx, e.o.cpuProfile, e.o.runs, ipCfg, ipOut, e.o.threads); err != nil {
			return err
		}
	}
	return nil
}

// env lists the environment variables a sync config needs (the S3 keys).
func (c syncConfig) env() []string {
	if c.s3Endpoint == "" {
		return c.extraEnv
	}
	return append([]string{"BENCH_S3_ACCESS_KEY=" + minioUser, "BENCH_S3_SECRET_KEY=" + minioPassword}, c.extraEnv...)
}

// profileInProcess writes a CPU profile of `runs` more runs of the in-process side, after
// the timed ones (the profiler's cost stays out of the figures).
func profileInProcess(ctx context.Context, path string, runs int, cfg, out string, threads int) error {
	f, err := os.Create(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := pprof.StartCPUProfile(f); err != nil {
		return err
	}
	defer pprof.StopCPUProfile()
	for range runs {
		if _, err := mapInProcess(ctx, cfg, out, threads, nil, nil); err != nil {
			return err
		}
	}
	pprof.StopCPUProfile()
	fmt.Printf("   CPU profile of %d in-process run(s) written to %s (go tool pprof -top %s)\n", runs, path, path)
	return os.Remove(out)
}

// inProcessSide is backflow's reader and mapper in this process (mapInProcess) from src,
// writing JSON lines to a file.
func inProcessSide(m *measurement, dir string, src syncConfig, rows int64, threads int) (side, string, error) {
	src.destination = "type: stdout"
	cfg, err := writeConfig(dir, src)
	if err != nil {
		return side{}, "", err
	}
	out := filepath.Join(dir, "out.jsonl")
	return side{m: m, run: func(ctx context.Context, _ int) error {
		c0, start := processCPU(), time.Now()
		n, err := mapInProcess(ctx, cfg, out, threads, src.env(), nil)
		if err != nil {
			return err
		}
		m.add(time.Since(start), processCPU()-c0, 0)
		if n != rows {
			return fmt.Errorf("mapped %d rows, want %d", n, rows)
		}
		info, err := os.Stat(out)
		if err != nil {
			return err
		}
		m.outBytes = info.Size()
		return os.Remove(out)
	}}, cfg, nil
}
