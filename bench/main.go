// Command bench measures backflow against reference tools on the same data, side by side
// in one run: DuckDB for reading Parquet and writing JSON, analytics-go for delivering to a
// Segment-compatible API, and the peak memory of `backflow sync` as the export grows.
//
// It is a separate module (bench/go.mod) so that DuckDB, a cgo dependency, never becomes
// one of backflow's. Run it from this folder:
//
//	go run . -scenarios map,sync-minio,rss,segment -runs 3
//
// Every scenario builds the real backflow binary once and runs `backflow sync` as a child
// process, the way a user does. The sides of a comparison alternate (A B, B A, A B, …) so
// that neither always runs on a warmer machine, and the median of the runs is reported.
package main

import (
	"context"
	"flag"
	"fmt"
	"os"
	"os/signal"
	"path/filepath"
	"runtime"
	"strings"
	"syscall"
	"time"
)

// options are the command-line flags.
type options struct {
	scenarios   []string
	rows        int64
	rssRows     []int64
	rssRowGroup int64
	segmentRows int64
	runs        int
	threads     int
	out         string
	dataDir     string
	keep        bool
	cpuProfile  string
	verbose     bool
}

var allScenarios = []string{"map", "sync-minio", "s3-dest", "rss", "segment"}

func main() {
	if len(os.Args) == 2 {
		switch os.Args[1] {
		case spawnerArg:
			os.Exit(spawnerMain())
		case segmentServerArg:
			os.Exit(serveSegment())
		}
	}
	o, err := parseFlags(os.Args[1:])
	if err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(2)
	}
	ctx, stop := signal.NotifyContext(context.Background(), os.Interrupt, syscall.SIGTERM)
	defer stop()
	if err := run(ctx, o); err != nil {
		fmt.Fprintln(os.Stderr, "bench:", err)
		os.Exit(1)
	}
}

func parseFlags(args []string) (options, error) {
	fs := flag.NewFlagSet("bench", flag.ContinueOnError)
	var o options
	scen := fs.String("scenarios", strings.Join(allScenarios, ","), "comma-separated scenarios to run: "+strings.Join(allScenarios, ", ")+" (sync-minio is skipped with a note when no minio binary is found)")
	fs.Int64Var(&o.rows, "rows", 1_000_000, "rows of the export in scenarios map and sync-minio")
	rss := fs.String("rss-rows", "1000000,10000000", "comma-separated export sizes (rows) for scenario rss; each is one Parquet file")
	fs.Int64Var(&o.rssRowGroup, "rss-row-group", 512<<10, "rows per row group of the rss exports")
	fs.Int64Var(&o.segmentRows, "segment-rows", 200_000, "messages sent in scenario segment")
	fs.IntVar(&o.runs, "runs", 3, "runs of each side of a comparison (the median is reported)")
	fs.IntVar(&o.threads, "threads", runtime.GOMAXPROCS(0), "threads for every side: GOMAXPROCS of backflow, DuckDB's SET threads, workers of the in-process mapper")
	fs.StringVar(&o.out, "out", "", "also write the results as markdown to this file")
	fs.StringVar(&o.dataDir, "data", "", "keep generated Parquet (and the backflow binary) in this folder and reuse it on later runs (default: a temporary folder, removed at the end)")
	fs.StringVar(&o.cpuProfile, "cpuprofile", "", "write a CPU profile of the in-process mapper side (scenario map) to this file")
	fs.BoolVar(&o.verbose, "v", false, "print every run as it finishes")
	if err := fs.Parse(args); err != nil {
		return o, err
	}
	if fs.NArg() > 0 {
		return o, fmt.Errorf("unexpected arguments %q", fs.Args())
	}
	for _, s := range strings.Split(*scen, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		known := false
		for _, k := range allScenarios {
			known = known || k == s
		}
		if !known {
			return o, fmt.Errorf("-scenarios: unknown scenario %q (want some of %s)", s, strings.Join(allScenarios, ","))
		}
		o.scenarios = append(o.scenarios, s)
	}
	for _, s := range strings.Split(*rss, ",") {
		s = strings.TrimSpace(s)
		if s == "" {
			continue
		}
		var n int64
		if _, err := fmt.Sscan(s, &n); err != nil || n <= 0 {
			return o, fmt.Errorf("-rss-rows: %q is not a positive number of rows", s)
		}
		o.rssRows = append(o.rssRows, n)
	}
	if o.rows <= 0 || o.rssRowGroup <= 0 || o.segmentRows <= 0 || o.runs <= 0 || o.threads <= 0 {
		return o, fmt.Errorf("-rows, -rss-row-group, -segment-rows, -runs and -threads must be positive")
	}
	return o, nil
}

func run(ctx context.Context, o options) error {
	env, err := newEnv(ctx, o)
	if err != nil {
		return err
	}
	defer env.close()
	res := &results{threads: o.threads, started: time.Now()}
	fmt.Printf("bench: %d scenario(s), %d run(s) a side, %d thread(s), %s, %d CPU(s)\n",
		len(o.scenarios), o.runs, o.threads, runtime.Version(), runtime.NumCPU())
	var failed []string
	for _, s := range o.scenarios {
		if err := ctx.Err(); err != nil {
			return err
		}
		start := time.Now()
		fmt.Printf("\n== %s\n", s)
		var err error
		switch s {
		case "map":
			err = scenarioMap(ctx, env, res)
		case "sync-minio":
			err = scenarioMinIO(ctx, env, res)
		case "s3-dest":
			err = scenarioS3Dest(ctx, env, res)
		case "rss":
			err = scenarioRSS(ctx, env, res)
		case "segment":
			err = scenarioSegment(ctx, env, res)
		}
		if err != nil {
			if ctx.Err() != nil {
				return fmt.Errorf("scenario %s: %w", s, err)
			}
			// One broken scenario must not cost the figures of the others.
			failed = append(failed, s)
			res.note("scenario %s FAILED: %v", s, err)
		}
		fmt.Printf("   (%s took %s)\n", s, time.Since(start).Round(time.Second))
	}
	res.rssChecks()
	res.elapsed = time.Since(res.started)
	fmt.Println()
	fmt.Print(res.text())
	if o.out != "" {
		if dir := filepath.Dir(o.out); dir != "." {
			if err := os.MkdirAll(dir, 0o755); err != nil {
				return err
			}
		}
		if err := os.WriteFile(o.out, []byte(res.markdown()), 0o644); err != nil {
			return fmt.Errorf("writing %s: %w", o.out, err)
		}
		fmt.Printf("\nmarkdown written to %s\n", o.out)
	}
	if len(failed) > 0 {
		return fmt.Errorf("scenario(s) failed: %s", strings.Join(failed, ", "))
	}
	return nil
}
