package testutil

import (
	"bufio"
	"os"
	"strconv"
	"strings"
	"testing"
)

// ResetPeakRSS resets the process's VmHWM to its current RSS (Linux: clear_refs 5), so
// that a figure test measures the peak of what it runs, not of the tests before it.
func ResetPeakRSS(t testing.TB) {
	t.Helper()
	if err := os.WriteFile("/proc/self/clear_refs", []byte("5"), 0); err != nil {
		t.Logf("cannot reset the peak RSS (%v): VmHWM is the process's peak since it started", err)
	}
}

// ProcStatus returns a field of /proc/self/status (VmRSS, VmHWM) in KiB; it skips the
// test where there is none.
func ProcStatus(t testing.TB, field string) int64 {
	t.Helper()
	f, err := os.Open("/proc/self/status")
	if err != nil {
		t.Skipf("no /proc/self/status: %v", err)
	}
	defer f.Close()
	sc := bufio.NewScanner(f)
	for sc.Scan() {
		if v, ok := strings.CutPrefix(sc.Text(), field+":"); ok {
			n, _ := strconv.ParseInt(strings.Fields(v)[0], 10, 64)
			return n
		}
	}
	t.Fatalf("no %s in /proc/self/status", field)
	return 0
}
