package pipeline

import (
	"sync"

	"github.com/backflowhq/backflow/state"
)

// ledger alone owns a run's acknowledgement accounting: per destination and file, the
// rows that are handled — durable at the destination (after a Deferred destination said
// so), or handled otherwise (rejected, unchanged, acknowledged by an earlier run) — plus
// per-destination counts. It is plain data under its own lock and does no I/O; the saver
// writes its snapshots.
//
// Its contract, which its tests check against a reference model:
//   - a row is handled for destination d only after handled(d, …) named it, and never
//     for another destination;
//   - the caller calls handled for a row refused by the destination (or by the mapper)
//     only after that row's line was handed to the rejects writer, so a snapshot that
//     counts it is written after the rejects file holding it was flushed (the saver
//     flushes after taking the snapshot);
//   - a snapshot holds every file opened in this run with the handled rows as leading
//     rows plus ranges, files planned but not opened are left out (the next run reads
//     them as new), and the files of the previous checkpoint that this run did not plan
//     stay as they were.
type ledger struct {
	mu    sync.Mutex
	dests []string
	cp    *state.Checkpoint // the working checkpoint: File entries change under mu
	acked map[*state.File][]*rangeSet
	// version counts changes; the saver saves when it moved since its last save.
	version uint64
	// wake is signalled (without blocking) on every change.
	wake chan struct{}
	// pending is the last snapshot handed to the saver, which saved records once saved.
	pending *state.Checkpoint

	delivered, failed, unchanged []int64
}

func newLedger(cp *state.Checkpoint, dests []string) *ledger {
	// Snapshots copy only the entries this run changes (and the head's live ones): the
	// settled entries of a large checkpoint are shared, never copied.
	cp.Track()
	n := len(dests)
	return &ledger{
		dests: dests, cp: cp,
		acked:     map[*state.File][]*rangeSet{},
		wake:      make(chan struct{}, 1),
		delivered: make([]int64, n), failed: make([]int64, n), unchanged: make([]int64, n),
	}
}

func (l *ledger) changedLocked() {
	l.version++
	select {
	case l.wake <- struct{}{}:
	default:
	}
}

// touch records a change made outside the ledger's methods (files deleted while
// planning) so that the next snapshot is saved.
func (l *ledger) touch() {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.changedLocked()
}

// open records that entry has rows rows and returns, per destination, the rows handled
// by earlier runs (a copy the caller owns). A checkpoint entry that does not fit the
// file (more rows than it has) is dropped: the file is sent again whole.
func (l *ledger) open(entry *state.File, rows int64) []*rangeSet {
	l.mu.Lock()
	defer l.mu.Unlock()
	entry.Rows = rows
	sets := make([]*rangeSet, len(l.dests))
	resume := make([]*rangeSet, len(l.dests))
	for d, name := range l.dests {
		lead, more := entry.Acked[name], entry.AckedRanges[name]
		if lead > rows || lead < 0 {
			lead, more = 0, nil
		}
		for _, rg := range more {
			if rg[0] < 0 || rg[1] > rows {
				lead, more = 0, nil
				break
			}
		}
		sets[d] = newRangeSet(lead, more)
		resume[d] = sets[d].clone()
		l.writeLocked(entry, d, sets[d])
	}
	l.acked[entry] = sets
	l.cp.Changed(entry.Key)
	l.changedLocked()
	return resume
}

// remove drops a file from the checkpoint (it vanished or changed between listing and
// reading: the next run reads it as new).
func (l *ledger) remove(entry *state.File) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.cp.Delete(entry.Key)
	delete(l.acked, entry)
	l.changedLocked()
}

// span is rows [start, end) of one file.
type span struct {
	file  *openFile
	start int64
	end   int64
}

// handled marks the rows of spans handled for destination d, and counts delivered
// (acknowledged) and refused messages among them. It returns the ledger's version with
// the change: a snapshot of that version or later counts them.
func (l *ledger) handled(d int, spans []span, delivered, refused int) uint64 {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.delivered[d] += int64(delivered)
	l.failed[d] += int64(refused)
	for _, s := range spans {
		sets := l.acked[s.file.entry]
		if sets == nil {
			continue // removed meanwhile
		}
		sets[d].add(s.start, s.end)
		l.writeLocked(s.file.entry, d, sets[d])
		l.cp.Changed(s.file.entry.Key)
	}
	l.changedLocked()
	return l.version
}

// notDelivered counts messages destination d did not take (it failed); their rows stay
// unhandled.
func (l *ledger) notDelivered(d int, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.failed[d] += int64(n)
}

// sameContent counts messages mode diff left out for destination d.
func (l *ledger) sameContent(d int, n int) {
	l.mu.Lock()
	defer l.mu.Unlock()
	l.unchanged[d] += int64(n)
}

// writeLocked copies a destination's set into the file's checkpoint entry.
func (l *ledger) writeLocked(entry *state.File, d int, set *rangeSet) {
	name := l.dests[d]
	entry.Acked[name] = set.leading()
	if more := set.beyond(); more != nil {
		if entry.AckedRanges == nil {
			entry.AckedRanges = map[string][][2]int64{}
		}
		entry.AckedRanges[name] = more
	} else if entry.AckedRanges != nil {
		delete(entry.AckedRanges, name)
		if len(entry.AckedRanges) == 0 {
			entry.AckedRanges = nil
		}
	}
}

// snapshot returns what the saver saves and the version it reflects. It costs the
// entries changed since the last compaction (state.Checkpoint.Snapshot), not the
// checkpoint: at a million files the settled ones are shared.
func (l *ledger) snapshot() (*state.Checkpoint, uint64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	snap := l.cp.Snapshot()
	for key, f := range snap.Files {
		if f.Rows < 0 {
			// Planned but not opened (rejected, or the run stopped first): absent from
			// the checkpoint, the file is read as new by the next run. (Its key is live
			// in the snapshot: a segment's entry of it is removed.)
			delete(snap.Files, key)
		}
	}
	l.pending = snap
	return snap, l.version
}

// saved records the generation token a save returned, for the next save, and — when the
// save was of the last snapshot and compacted it — that the entries it held are settled.
func (l *ledger) saved(generation string) {
	l.mu.Lock()
	defer l.mu.Unlock()
	if p := l.pending; p != nil && p.Generation == generation {
		l.cp.Saved(p)
	} else {
		l.cp.Generation = generation
	}
	l.pending = nil
}

// done tells whether every file of files was opened and is handled for every
// destination.
func (l *ledger) done(files []*state.File, rejected func(key string) bool) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	for _, f := range files {
		if rejected(f.Key) {
			continue
		}
		if f.Rows < 0 || !f.Done(l.dests) {
			return false
		}
	}
	return true
}

// fileDone tells whether the file of key was opened and is handled for every
// destination.
func (l *ledger) fileDone(key string) bool {
	l.mu.Lock()
	defer l.mu.Unlock()
	f := l.cp.Files[key]
	return f != nil && f.Rows >= 0 && f.Done(l.dests)
}

// counts returns the per-destination counts.
func (l *ledger) counts() (delivered, failed, unchanged []int64) {
	l.mu.Lock()
	defer l.mu.Unlock()
	return append([]int64(nil), l.delivered...), append([]int64(nil), l.failed...), append([]int64(nil), l.unchanged...)
}
