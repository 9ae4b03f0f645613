package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io"
	"os"
	"os/exec"
	"path/filepath"
	"strings"
	"syscall"
	"time"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// env is what the scenarios share: a work folder, the generated data sets (made once per
// run, or reused from -data), the backflow binary and, once started, MinIO.
type env struct {
	o        options
	dir      string // work folder
	temp     bool   // dir is ours to remove
	repo     string // the backflow module's root
	bin      string // the backflow binary
	minio    *minioServer
	spawner  *spawner
	datasets map[string]*dataset
}

// dataset is a generated copy of the example users table.
type dataset struct {
	dir   string   // the folder holding only its files
	files []string // absolute paths
	rows  int64
	bytes int64
}

func newEnv(ctx context.Context, o options) (*env, error) {
	e := &env{o: o, datasets: map[string]*dataset{}}
	repo, err := findRepo()
	if err != nil {
		return nil, err
	}
	e.repo = repo
	if e.spawner, err = startSpawner(); err != nil {
		return nil, err
	}
	if o.dataDir != "" {
		e.dir, err = filepath.Abs(o.dataDir)
		if err == nil {
			err = os.MkdirAll(e.dir, 0o755)
		}
	} else {
		e.dir, err = os.MkdirTemp("", "backflow-bench-")
		e.temp = err == nil
	}
	if err != nil {
		e.close()
		return nil, err
	}
	e.bin = filepath.Join(e.dir, "backflow")
	start := time.Now()
	build := exec.CommandContext(ctx, "go", "build", "-o", e.bin, "./cmd/backflow")
	build.Dir = repo
	if out, err := build.CombinedOutput(); err != nil {
		e.close()
		return nil, fmt.Errorf("building backflow (go build ./cmd/backflow in %s): %v\n%s", repo, err, out)
	}
	fmt.Printf("bench: built %s in %s; work folder %s\n", e.bin, time.Since(start).Round(time.Millisecond), e.dir)
	return e, nil
}

func (e *env) close() {
	if e.spawner != nil {
		e.spawner.stop()
	}
	if e.minio != nil {
		e.minio.stop()
		e.minio = nil
	}
	if e.temp {
		_ = os.RemoveAll(e.dir)
	}
}

// findRepo walks up from the working directory to the backflow module's go.mod.
func findRepo() (string, error) {
	dir, err := os.Getwd()
	if err != nil {
		return "", err
	}
	for {
		b, err := os.ReadFile(filepath.Join(dir, "go.mod"))
		if err == nil && modulePath(b) == "github.com/backflowhq/backflow" {
			return dir, nil
		}
		parent := filepath.Dir(dir)
		if parent == dir {
			return "", errors.New("cannot find the backflow module (github.com/backflowhq/backflow) above the working directory: run from bench/")
		}
		dir = parent
	}
}

func modulePath(gomod []byte) string {
	sc := bufio.NewScanner(bytes.NewReader(gomod))
	for sc.Scan() {
		if rest, ok := strings.CutPrefix(strings.TrimSpace(sc.Text()), "module "); ok {
			return strings.Trim(strings.TrimSpace(rest), `"`)
		}
	}
	return ""
}

// dataset returns the example users table as `files` Parquet files of rowsPerFile rows
// each, in row groups of rowGroupRows, writing it the first time it is asked for.
func (e *env) dataset(files int, rowsPerFile, rowGroupRows int64) (*dataset, error) {
	name := fmt.Sprintf("users-%dx%d-rg%d", files, rowsPerFile, rowGroupRows)
	if d, ok := e.datasets[name]; ok {
		return d, nil
	}
	dir := filepath.Join(e.dir, "data", name)
	done := filepath.Join(e.dir, "data", name+".done")
	if _, err := os.Stat(done); err != nil {
		_ = os.RemoveAll(dir)
		start := time.Now()
		if _, err := exampledata.Write(dir, exampledata.Options{
			Files: files, RowsPerFile: rowsPerFile, RowGroupRows: rowGroupRows, Seed: 42,
		}); err != nil {
			return nil, fmt.Errorf("generating %s: %w", name, err)
		}
		if err := os.WriteFile(done, nil, 0o644); err != nil {
			return nil, err
		}
		fmt.Printf("   generated %s in %s\n", name, time.Since(start).Round(time.Millisecond))
	}
	d := &dataset{dir: dir, rows: int64(files) * rowsPerFile}
	entries, err := os.ReadDir(dir)
	if err != nil {
		return nil, err
	}
	for _, en := range entries {
		if !strings.HasSuffix(en.Name(), ".parquet") {
			continue
		}
		info, err := en.Info()
		if err != nil {
			return nil, err
		}
		d.files = append(d.files, filepath.Join(dir, en.Name()))
		d.bytes += info.Size()
	}
	if len(d.files) != files {
		return nil, fmt.Errorf("%s holds %d Parquet files, want %d: remove it and run again", dir, len(d.files), files)
	}
	e.datasets[name] = d
	return d, nil
}

// syncConfig is what a scenario varies in backflow's config file.
type syncConfig struct {
	source      string // local folder or s3://bucket/prefix
	s3Endpoint  string // for an s3:// source: the MinIO endpoint
	destination string // YAML of the one destination, indented as a list item's body
	extraEnv    []string
}

// writeConfig writes a backflow config with one sync, "users", in mode full (every run
// sends everything) and its state in the run's folder, and returns its path.
func writeConfig(dir string, c syncConfig) (string, error) {
	var b strings.Builder
	fmt.Fprintf(&b, "state:\n  url: %s\n", filepath.Join(dir, "state"))
	b.WriteString("syncs:\n  - name: users\n    source:\n")
	fmt.Fprintf(&b, "      url: %s\n", c.source)
	if c.s3Endpoint != "" {
		fmt.Fprintf(&b, "      endpoint: %s\n      region: us-east-1\n      path_style: true\n", c.s3Endpoint)
		b.WriteString("      auth:\n        mode: keys\n        access_key_id: ${BENCH_S3_ACCESS_KEY}\n        secret_access_key: ${BENCH_S3_SECRET_KEY}\n")
	}
	b.WriteString(`    mapping:
      type: identify
      user_id: customer_id
      anonymous_id: anon_id
      timestamp: updated_at
    mode: full
    destinations:
      - `)
	b.WriteString(c.destination)
	b.WriteString("\n")
	if err := os.MkdirAll(dir, 0o755); err != nil {
		return "", err
	}
	p := filepath.Join(dir, "backflow.yaml")
	return p, os.WriteFile(p, []byte(b.String()), 0o644)
}

// procResult is one `backflow sync` run.
type procResult struct {
	wall   time.Duration
	cpu    time.Duration // user + system
	maxRSS int64         // KiB (Linux)
	report syncReport
}

// syncReport is the part of the run report (sync --report) the bench checks.
type syncReport struct {
	Status string `json:"status"`
	Rows   struct {
		Read     int64 `json:"read"`
		Sent     int64 `json:"sent"`
		Rejected int64 `json:"rejected"`
	} `json:"rows"`
	Error string `json:"error"`
}

// backflowSync runs `backflow sync` on cfg with GOMAXPROCS set to the bench's threads,
// and checks that it sent every one of want rows.
func (e *env) backflowSync(ctx context.Context, cfg string, want int64, extraEnv ...string) (procResult, error) {
	rep := filepath.Join(filepath.Dir(cfg), "report.json")
	_ = os.Remove(rep)
	env := append(os.Environ(), fmt.Sprintf("GOMAXPROCS=%d", e.o.threads))
	env = append(env, extraEnv...)
	res, err := e.spawner.run(ctx, spawnRequest{Path: e.bin, Args: []string{"sync", "-c", cfg, "--progress", "never", "--report", rep}, Env: env})
	if err != nil {
		return procResult{}, err
	}
	r := procResult{wall: res.Wall, cpu: res.CPU, maxRSS: res.MaxRSSKiB}
	if res.Err != "" {
		return r, fmt.Errorf("backflow sync -c %s: %s: %s", cfg, res.Err, errorLines(res.Stderr))
	}
	b, err := os.ReadFile(rep)
	if err != nil {
		return r, fmt.Errorf("reading the run report: %w", err)
	}
	if err := json.Unmarshal(b, &r.report); err != nil {
		return r, fmt.Errorf("decoding the run report %s: %w", rep, err)
	}
	if r.report.Status != "ok" || r.report.Rows.Read != want || r.report.Rows.Sent != want {
		return r, fmt.Errorf("backflow sync: status %q, %d rows read, %d sent, %d rejected; want %d sent (%s)",
			r.report.Status, r.report.Rows.Read, r.report.Rows.Sent, r.report.Rows.Rejected, want, errorLines(res.Stderr))
	}
	return r, nil
}

// processCPU is this process's user + system CPU time so far.
func processCPU() time.Duration {
	var ru syscall.Rusage
	if err := syscall.Getrusage(syscall.RUSAGE_SELF, &ru); err != nil {
		return 0
	}
	return time.Duration(ru.Utime.Nano() + ru.Stime.Nano())
}

// countLines counts the lines and bytes of a file (a check that a side wrote every row).
func countLines(path string) (lines, size int64, err error) {
	f, err := os.Open(path)
	if err != nil {
		return 0, 0, err
	}
	defer f.Close()
	buf := make([]byte, 1<<20)
	for {
		n, err := f.Read(buf)
		lines += int64(bytes.Count(buf[:n], []byte{'\n'}))
		size += int64(n)
		if errors.Is(err, io.EOF) {
			return lines, size, nil
		}
		if err != nil {
			return lines, size, err
		}
	}
}

// errorLines keeps what matters of backflow's stderr: its error lines and its last line.
func errorLines(stderr string) string {
	lines := strings.Split(strings.TrimSpace(stderr), "\n")
	var keep []string
	for i, l := range lines {
		if strings.Contains(l, "level=ERROR") || strings.HasPrefix(l, "backflow:") || i == len(lines)-1 {
			keep = append(keep, strings.TrimSpace(l))
		}
	}
	s := strings.Join(keep, " | ")
	if len(s) > 800 {
		s = s[:800] + "…"
	}
	return s
}
