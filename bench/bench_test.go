package main

import (
	"bufio"
	"bytes"
	"context"
	"encoding/json"
	"math/big"
	"os"
	"os/exec"
	"path/filepath"
	"syscall"
	"testing"
	"time"

	"github.com/backflowhq/backflow/internal/exampledata"
)

// TestMain lets the test binary play the bench's helper processes, as the bench binary does.
func TestMain(m *testing.M) {
	if len(os.Args) == 2 {
		switch os.Args[1] {
		case spawnerArg:
			os.Exit(spawnerMain())
		case segmentServerArg:
			os.Exit(serveSegment())
		}
	}
	os.Exit(m.Run())
}

// TestDuckDBWritesBackflowsMessages checks that the map scenario compares like with like:
// DuckDB's "same fields" query writes, for every row, the message backflow's mapper
// writes — same fields, same values — but for messageId (another hash) and the library
// version.
func TestDuckDBWritesBackflowsMessages(t *testing.T) {
	ctx := context.Background()
	dir := t.TempDir()
	data := filepath.Join(dir, "data")
	files, err := exampledata.Write(data, exampledata.Options{Files: 2, RowsPerFile: 1500, RowGroupRows: 1000, Seed: 7})
	if err != nil {
		t.Fatal(err)
	}
	cfg, err := writeConfig(filepath.Join(dir, "cfg"), syncConfig{source: data, destination: "type: stdout"})
	if err != nil {
		t.Fatal(err)
	}
	ours := filepath.Join(dir, "backflow.jsonl")
	n, err := mapInProcess(ctx, cfg, ours, 2, nil, nil)
	if err != nil {
		t.Fatal(err)
	}
	if n != 3000 {
		t.Fatalf("mapped %d rows, want 3000", n)
	}
	db, err := openDuckDB(ctx, 2)
	if err != nil {
		t.Fatal(err)
	}
	defer db.close()
	theirs := filepath.Join(dir, "duckdb.json")
	if _, err := db.copyJSON(ctx, duckSelect(files, true), theirs); err != nil {
		t.Fatal(err)
	}

	a, b := readMessages(t, ours), readMessages(t, theirs)
	if len(a) != 3000 || len(b) != 3000 {
		t.Fatalf("backflow wrote %d distinct users, DuckDB %d; want 3000 each", len(a), len(b))
	}
	for id, m := range a {
		d, ok := b[id]
		if !ok {
			t.Fatalf("userId %s: missing from DuckDB's output", id)
		}
		for _, m := range []map[string]any{m, d} {
			if _, ok := m["messageId"].(string); !ok {
				t.Fatalf("userId %s: no messageId in %v", id, m)
			}
			delete(m, "messageId")
			m["context"].(map[string]any)["library"].(map[string]any)["version"] = "-"
			// backflow writes the fraction a timestamp has (.5), DuckDB always six digits.
			ts, err := time.Parse(time.RFC3339Nano, m["timestamp"].(string))
			if err != nil {
				t.Fatalf("userId %s: %v", id, err)
			}
			m["timestamp"] = ts.UTC().Format(time.RFC3339Nano)
		}
		if !equalJSON(m, d) {
			ja, _ := json.Marshal(m)
			jb, _ := json.Marshal(d)
			t.Fatalf("userId %s:\nbackflow %s\nDuckDB   %s", id, ja, jb)
		}
	}
}

// readMessages decodes a JSON-lines file into messages keyed by userId, numbers as
// json.Number so that 12.30 and 12.3 compare equal below.
func readMessages(t *testing.T, path string) map[string]map[string]any {
	t.Helper()
	f, err := os.Open(path)
	if err != nil {
		t.Fatal(err)
	}
	defer f.Close()
	out := map[string]map[string]any{}
	sc := bufio.NewScanner(f)
	sc.Buffer(nil, 1<<20)
	for sc.Scan() {
		dec := json.NewDecoder(bytes.NewReader(sc.Bytes()))
		dec.UseNumber()
		var m map[string]any
		if err := dec.Decode(&m); err != nil {
			t.Fatalf("%s: %v: %s", path, err, sc.Bytes())
		}
		out[m["userId"].(string)] = m
	}
	if err := sc.Err(); err != nil {
		t.Fatal(err)
	}
	return out
}

// equalJSON compares decoded JSON, numbers by value.
func equalJSON(a, b any) bool {
	switch x := a.(type) {
	case map[string]any:
		y, ok := b.(map[string]any)
		if !ok || len(x) != len(y) {
			return false
		}
		for k, v := range x {
			if !equalJSON(v, y[k]) {
				return false
			}
		}
		return true
	case json.Number:
		y, ok := b.(json.Number)
		if !ok {
			return false
		}
		p, ok1 := new(big.Rat).SetString(x.String())
		q, ok2 := new(big.Rat).SetString(y.String())
		return ok1 && ok2 && p.Cmp(q) == 0
	default:
		return a == b
	}
}

// TestSpawnerPeakRSSIsTheChildsOwn shows why the bench starts processes from a helper:
// started from a process that has touched a lot of memory, a child's ru_maxrss reports
// that memory; started from the helper, it does not.
func TestSpawnerPeakRSSIsTheChildsOwn(t *testing.T) {
	if testing.Short() {
		t.Skip("touches 256 MiB")
	}
	truePath, err := exec.LookPath("true")
	if err != nil {
		t.Skip("no true binary")
	}
	s, err := startSpawner()
	if err != nil {
		t.Fatal(err)
	}
	defer s.stop()

	const big = 256 << 20
	ballast := make([]byte, big)
	for i := 0; i < len(ballast); i += 4096 {
		ballast[i] = 1
	}
	direct := exec.Command(truePath)
	if err := direct.Run(); err != nil {
		t.Fatal(err)
	}
	directKiB := direct.ProcessState.SysUsage().(*syscall.Rusage).Maxrss
	res, err := s.run(context.Background(), spawnRequest{Path: truePath, Env: os.Environ()})
	if err != nil || res.Err != "" {
		t.Fatalf("spawner: %v %s", err, res.Err)
	}
	t.Logf("true started directly: %d KiB; from the helper: %d KiB (helper's own peak %d KiB)", directKiB, res.MaxRSSKiB, s.floorKiB)
	if res.MaxRSSKiB >= big>>10/2 {
		t.Errorf("started from the helper, true reports %d KiB: the bench's memory leaks into the figure", res.MaxRSSKiB)
	}
	if directKiB < big>>10 {
		t.Logf("this kernel does not count the parent's memory in a child's ru_maxrss (%d KiB); the helper is harmless there", directKiB)
	}
	ballast[len(ballast)-1] = 2 // keep the ballast alive until here
}

func TestMedian(t *testing.T) {
	for _, c := range []struct {
		in   []time.Duration
		want time.Duration
	}{
		{nil, 0},
		{[]time.Duration{3}, 3},
		{[]time.Duration{5, 1, 3}, 3},
		{[]time.Duration{4, 1, 3, 2}, 2}, // (2+3)/2 in integer nanoseconds
	} {
		if got := medianDur(c.in); got != c.want {
			t.Errorf("medianDur(%v) = %v, want %v", c.in, got, c.want)
		}
	}
}

func TestParseFlags(t *testing.T) {
	o, err := parseFlags([]string{"-scenarios", "map, rss", "-rss-rows", "10,20", "-runs", "5"})
	if err != nil {
		t.Fatal(err)
	}
	if len(o.scenarios) != 2 || o.scenarios[1] != "rss" || len(o.rssRows) != 2 || o.rssRows[1] != 20 || o.runs != 5 {
		t.Errorf("parsed %+v", o)
	}
	for _, bad := range [][]string{{"-scenarios", "mapp"}, {"-rss-rows", "x"}, {"-runs", "0"}, {"extra"}} {
		if _, err := parseFlags(bad); err == nil {
			t.Errorf("parseFlags(%q): no error", bad)
		}
	}
}
