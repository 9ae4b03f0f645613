package main

import (
	"bytes"
	"os"
	"path/filepath"
	"strings"
	"testing"
)

func TestStartCPUProfile(t *testing.T) {
	path := filepath.Join(t.TempDir(), "cpu.pprof")
	var stderr bytes.Buffer
	stop := startCPUProfile(path, &stderr)
	stop()
	if info, err := os.Stat(path); err != nil || info.Size() == 0 {
		t.Fatalf("no profile written: %v", err)
	}
	if stderr.Len() != 0 {
		t.Fatalf("stderr: %q", stderr.String())
	}

	startCPUProfile("", &stderr)() // nothing to profile, nothing said
	if stderr.Len() != 0 {
		t.Fatalf("stderr: %q", stderr.String())
	}

	stop = startCPUProfile(filepath.Join(t.TempDir(), "missing", "cpu.pprof"), &stderr)
	stop()
	if got := stderr.String(); strings.Count(got, "\n") != 1 || !strings.HasPrefix(got, "backflow: BACKFLOW_CPUPROFILE: ") {
		t.Fatalf("a profile that cannot be written: stderr %q, want one line naming BACKFLOW_CPUPROFILE", got)
	}
}
