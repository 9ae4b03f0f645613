package schedule

import (
	"sync/atomic"
	"time"

	"github.com/backflowhq/backflow/config"
)

// liveRun is what the status page shows of a sync's run in progress: the counts the
// pipeline reports through the Observer as it goes. Every field is atomic, so that the
// pipeline's goroutines never wait for a page being rendered. A sync never runs twice
// at once, so one liveRun per sync is enough; begin resets it when a run starts.
type liveRun struct {
	runID        atomic.Pointer[string]
	started      atomic.Int64 // unix nanoseconds; 0 before the first run
	rowsRead     atomic.Int64
	bytesRead    atomic.Int64
	filesPlanned atomic.Int64 // -1 until the run has planned
	bytesPlanned atomic.Int64
	filesRead    atomic.Int64
	// dests are the sync's destinations by name, fixed at start-up: the map is only
	// read afterwards, so it needs no lock.
	dests map[string]*liveDest
	order []string // config order
}

type liveDest struct {
	delivered atomic.Int64
	failed    atomic.Int64
	inFlight  atomic.Int64
}

func newLiveRuns(syncs []config.Sync) map[string]*liveRun {
	out := make(map[string]*liveRun, len(syncs))
	for _, sc := range syncs {
		l := &liveRun{dests: make(map[string]*liveDest, len(sc.Destinations))}
		l.filesPlanned.Store(-1)
		for _, d := range sc.Destinations {
			n := destinationName(d)
			if _, dup := l.dests[n]; !dup {
				l.dests[n] = &liveDest{}
				l.order = append(l.order, n)
			}
		}
		out[sc.Name] = l
	}
	return out
}

// begin resets the counts for the run id that starts at now.
func (l *liveRun) begin(id string, now time.Time) {
	if l == nil {
		return
	}
	l.rowsRead.Store(0)
	l.bytesRead.Store(0)
	l.filesPlanned.Store(-1)
	l.bytesPlanned.Store(0)
	l.filesRead.Store(0)
	for _, d := range l.dests {
		d.delivered.Store(0)
		d.failed.Store(0)
		d.inFlight.Store(0)
	}
	l.started.Store(now.UnixNano())
	l.runID.Store(&id)
}

// LiveRun is a snapshot of a run in progress.
type LiveRun struct {
	// RunID is the run counted: a page compares it with the sync's current run, as
	// the counts of the previous run remain until the next one begins.
	RunID     string
	Started   time.Time
	RowsRead  int64
	BytesRead int64
	// FilesPlanned is -1 while the run is still listing and planning.
	FilesPlanned int64
	BytesPlanned int64
	FilesRead    int64
	Destinations []LiveDestination
}

// LiveDestination is what one destination has done so far in a run.
type LiveDestination struct {
	Name      string
	Delivered int64
	Failed    int64
	InFlight  int64 // batches being written now
}

func (l *liveRun) snapshot() LiveRun {
	s := LiveRun{
		Started:      time.Unix(0, l.started.Load()),
		RowsRead:     l.rowsRead.Load(),
		BytesRead:    l.bytesRead.Load(),
		FilesPlanned: l.filesPlanned.Load(),
		BytesPlanned: l.bytesPlanned.Load(),
		FilesRead:    l.filesRead.Load(),
	}
	if id := l.runID.Load(); id != nil {
		s.RunID = *id
	}
	for _, n := range l.order {
		d := l.dests[n]
		s.Destinations = append(s.Destinations, LiveDestination{
			Name: n, Delivered: d.delivered.Load(), Failed: d.failed.Load(), InFlight: max(d.inFlight.Load(), 0),
		})
	}
	return s
}

// RowsSent is what the run report will count as sent: the rows of the destination
// that has acknowledged the most.
func (s LiveRun) RowsSent() int64 {
	var n int64
	for _, d := range s.Destinations {
		n = max(n, d.Delivered)
	}
	return n
}

// Progress is the share of the planned bytes read so far, in [0, 1]; -1 when unknown
// (still planning, or nothing to read).
func (s LiveRun) Progress() float64 {
	if s.FilesPlanned < 0 || s.BytesPlanned <= 0 {
		return -1
	}
	return min(float64(s.BytesRead)/float64(s.BytesPlanned), 1)
}

// Rate is rows read per second since the run started. Reading runs ahead of delivery
// by the bounded queues, so early in a run it is far above SendRate.
func (s LiveRun) Rate(now time.Time) float64 { return perSecond(s.RowsRead, s.Started, now) }

// SendRate is rows sent (RowsSent) per second since the run started.
func (s LiveRun) SendRate(now time.Time) float64 { return perSecond(s.RowsSent(), s.Started, now) }

func perSecond(n int64, since, now time.Time) float64 {
	el := now.Sub(since).Seconds()
	if el <= 0 {
		return 0
	}
	return float64(n) / el
}

// The liveRun side of the observer (metrics.go): a few atomic additions per call.

func (l *liveRun) read(rows, bytes int64) {
	if l == nil {
		return
	}
	l.rowsRead.Add(max(rows, 0))
	l.bytesRead.Add(max(bytes, 0))
}

func (l *liveRun) dest(name string) *liveDest {
	if l == nil {
		return nil
	}
	return l.dests[name]
}

func (l *liveRun) planned(files int, bytes int64) {
	if l == nil {
		return
	}
	l.bytesPlanned.Store(bytes)
	l.filesPlanned.Store(int64(files))
}

func (l *liveRun) fileRead() {
	if l != nil {
		l.filesRead.Add(1)
	}
}
