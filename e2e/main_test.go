// Package e2e holds black-box end-to-end tests of the backflow binary: each test writes a
// config and Parquet files into a temporary directory, runs the real binary (built once
// per test process) and checks its exit code, its output, the run report, the rejects
// file and what the receivers got.
package e2e

import (
	"fmt"
	"os"
	"os/exec"
	"path/filepath"
	"testing"

	"github.com/backflowhq/backflow/internal/testutil"
)

// binary is the backflow binary under test, built by TestMain.
var binary string

func TestMain(m *testing.M) {
	os.Exit(runMain(m))
}

func runMain(m *testing.M) int {
	dir, err := os.MkdirTemp("", "backflow-e2e-")
	if err != nil {
		fmt.Fprintln(os.Stderr, "e2e:", err)
		return 1
	}
	defer os.RemoveAll(dir)
	binary = filepath.Join(dir, "backflow")
	// Built without -race whatever the test's flags: the binary is what users run.
	build := exec.Command("go", "build", "-o", binary, "../cmd/backflow")
	build.Stdout, build.Stderr = os.Stderr, os.Stderr
	if err := build.Run(); err != nil {
		fmt.Fprintln(os.Stderr, "e2e: building backflow:", err)
		return 1
	}
	code := m.Run()
	testutil.StopMinIO()
	testutil.StopPostgres()
	return code
}
