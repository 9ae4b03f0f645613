package procstat

import (
	"runtime"
	"testing"
)

func TestPeakRSSGrowsWithMemoryTouched(t *testing.T) {
	before, ok := PeakRSS()
	if !ok {
		if runtime.GOOS == "linux" {
			t.Fatal("no peak RSS on Linux")
		}
		t.Skip("peak RSS is read from /proc on Linux only")
	}
	buf := make([]byte, 64<<20)
	for i := range buf {
		if i%4096 == 0 {
			buf[i] = 1
		}
	}
	after, _ := PeakRSS()
	if after < before+60<<20 {
		t.Errorf("peak RSS %d → %d after touching 64 MiB", before, after)
	}
	runtime.KeepAlive(buf)
}
