// Package procstat reads the process's own resource figures where the system tells them.
package procstat

import (
	"bufio"
	"bytes"
	"os"
	"strconv"
)

// PeakRSS returns the peak resident set size of this process's own memory, in bytes
// (Linux: VmHWM of /proc/self/status), and false where it is not known. Unlike the
// ru_maxrss of getrusage, it does not include the memory of the parent the process was
// started from (Linux keeps that in ru_maxrss across exec).
func PeakRSS() (int64, bool) {
	data, err := os.ReadFile("/proc/self/status")
	if err != nil {
		return 0, false
	}
	sc := bufio.NewScanner(bytes.NewReader(data))
	for sc.Scan() {
		line := sc.Bytes()
		if !bytes.HasPrefix(line, []byte("VmHWM:")) {
			continue
		}
		f := bytes.Fields(line[len("VmHWM:"):])
		if len(f) != 2 || string(f[1]) != "kB" {
			return 0, false
		}
		kb, err := strconv.ParseInt(string(f[0]), 10, 64)
		if err != nil {
			return 0, false
		}
		return kb << 10, true
	}
	return 0, false
}
