package destinationstest

import (
	"bufio"
	"bytes"
	"errors"
	"io/fs"
	"os"
	"slices"
	"sync"
)

// Receiver is the far end of a destination under test: what the suite reads back, and
// the faults it can inject there.
type Receiver interface {
	// Received returns every message received so far, in arrival order, duplicates included.
	Received() []Received
	// Capabilities tells which of the fault methods below work.
	Capabilities() Capabilities
	// RefuseUsers makes the receiver refuse for good every later request holding a message
	// of one of these userIds (HTTP 400), whatever else the request holds.
	RefuseUsers(userIDs ...string)
	// FailNext makes the next n requests fail transiently (HTTP 500).
	FailNext(n int)
	// Stall holds every later request until release is called or the client gives up;
	// arrived is closed once a request is held.
	Stall() (arrived <-chan struct{}, release func())
}

// Capabilities says which faults a Receiver can inject.
type Capabilities struct {
	Refuse bool // RefuseUsers
	Fail   bool // FailNext
	Stall  bool // Stall

	// Idempotent: the receiver keeps one copy of a message delivered twice (a table
	// that upserts by key and ignores a known messageId), so DuplicateIDs wants a
	// message written twice read back once — and still both Writes acknowledged.
	Idempotent bool
	// NumbersByValue: the receiver keeps numbers as values, not as the text they were
	// sent as (PostgreSQL's numeric reads 1.5e-7 back as 0.00000015, though 12.30 stays
	// 12.30), so Deliver compares numbers by value (CheckSameValues).
	NumbersByValue bool
}

// NoFaults is embedded by receivers that cannot inject faults (a file, a writer).
type NoFaults struct{}

func (NoFaults) Capabilities() Capabilities { return Capabilities{} }
func (NoFaults) RefuseUsers(...string)      { panic("destinationstest: receiver cannot refuse") }
func (NoFaults) FailNext(int)               { panic("destinationstest: receiver cannot fail") }
func (NoFaults) Stall() (<-chan struct{}, func()) {
	panic("destinationstest: receiver cannot stall")
}

// FileReceiver reads back a JSON-lines file.
type FileReceiver struct {
	NoFaults
	Path string
}

// Received parses the file's lines; a line that is not a message is returned with an
// empty ID (and fails the suite's checks). A missing file holds no message.
func (r FileReceiver) Received() []Received {
	b, err := os.ReadFile(r.Path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return []Received{{JSON: []byte(err.Error())}}
	}
	return parseLines(b)
}

// LineBuffer is an io.Writer that collects JSON lines (the stdout destination's output)
// and a Receiver of them. It is safe for concurrent use.
type LineBuffer struct {
	NoFaults
	mu  sync.Mutex
	buf bytes.Buffer
}

func (b *LineBuffer) Write(p []byte) (int, error) {
	b.mu.Lock()
	defer b.mu.Unlock()
	return b.buf.Write(p)
}

// Bytes returns everything written so far.
func (b *LineBuffer) Bytes() []byte {
	b.mu.Lock()
	defer b.mu.Unlock()
	return slices.Clone(b.buf.Bytes())
}

// Received parses the lines written so far.
func (b *LineBuffer) Received() []Received { return parseLines(b.Bytes()) }

func parseLines(b []byte) []Received {
	var out []Received
	sc := bufio.NewScanner(bytes.NewReader(b))
	sc.Buffer(nil, 64<<20)
	for sc.Scan() {
		line := slices.Clone(sc.Bytes())
		id, user, _ := idAndUser(line)
		out = append(out, Received{ID: id, UserID: user, JSON: line})
	}
	return out
}
