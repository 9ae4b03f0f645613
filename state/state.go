// Package state keeps what every destination acknowledged: one checkpoint per sync in a
// local directory or under an S3 prefix, written atomically, plus the row-hash store of
// mode diff and the run history.
package state

import (
	"time"
)

// Version is the newest checkpoint format this build reads and writes; a newer one is
// refused. A checkpoint is written in format 1 (one JSON document) while it has no
// segment, in format 2 (a head naming its segments) once it has one, so that an older
// build refuses a segmented checkpoint as newer instead of reading only its head.
const Version = 2

// versionWhole is format 1: every file entry in the one document.
const versionWhole = 1

// Checkpoint records what every destination of a sync acknowledged.
type Checkpoint struct {
	Version int    `json:"version"`
	Sync    string `json:"sync"`
	// Fingerprints of what the checkpoint is valid for; a change forces a full sync.
	MappingFingerprint string `json:"mapping_fingerprint"`
	SourceFingerprint  string `json:"source_fingerprint"`
	SchemaFingerprint  string `json:"schema_fingerprint"`
	// Files by key.
	Files     map[string]*File `json:"files"`
	UpdatedAt time.Time        `json:"updated_at"`
	LastRunID string           `json:"last_run_id,omitempty"`
	// Generation is the store's version token (an ETag for S3) the checkpoint was loaded
	// with; Save refuses to overwrite a checkpoint another runner wrote since.
	Generation string `json:"-"`

	// segments are the ids of the settled segments under the head, oldest first. The
	// slice is never changed in place: clones and snapshots share it.
	segments []string
	// live is nil for an untracked checkpoint, whose every entry in Files is saved in
	// the head. Otherwise it holds the keys whose entry (or absence) differs from what
	// the segments hold, each with the tick of its last change: Save writes those alone.
	// An entry of a tracked checkpoint whose key is not live is settled: it is shared
	// by reference with clones and snapshots and must not be changed in place (Own).
	live map[string]uint64
	// tick counts the changes recorded in live; a snapshot remembers it so that Saved
	// can tell which live entries a compaction settled.
	tick uint64
	// partial marks a Snapshot: Files holds the live entries only.
	partial bool
}

// File is the progress of one source file.
type File struct {
	Key       string `json:"key"`
	Size      int64  `json:"size"`
	ETag      string `json:"etag,omitempty"`
	VersionID string `json:"version_id,omitempty"`
	Rows      int64  `json:"rows"`
	// Acked is, per destination name, how many leading rows of the file that destination
	// acknowledged (rejected rows count as handled).
	Acked map[string]int64 `json:"acked"`
	// AckedRanges is, per destination, the row ranges [start, end) beyond Acked that the
	// destination also acknowledged (batches are acknowledged out of order): a run that
	// stopped resends only the rows in neither.
	AckedRanges map[string][][2]int64 `json:"acked_ranges,omitempty"`
}

// Done tells whether every destination in dests acknowledged every row of the file.
func (f *File) Done(dests []string) bool {
	for _, d := range dests {
		if f.Acked[d] < f.Rows {
			return false
		}
	}
	return true
}

// Clone returns a copy of c that can be changed without changing c: live entries are
// copied deeply, settled entries (immutable) are shared by reference.
func (c *Checkpoint) Clone() *Checkpoint {
	if c == nil {
		return nil
	}
	out := *c
	if c.Files != nil {
		out.Files = make(map[string]*File, len(c.Files))
		for k, f := range c.Files {
			if c.live != nil && !c.isLive(k) {
				out.Files[k] = f
				continue
			}
			out.Files[k] = f.Clone()
		}
	}
	if c.live != nil {
		out.live = make(map[string]uint64, len(c.live))
		for k, t := range c.live {
			out.live[k] = t
		}
	}
	return &out
}

func (c *Checkpoint) isLive(key string) bool {
	_, ok := c.live[key]
	return ok
}

// Segments returns the ids of the checkpoint's settled segments, oldest first.
func (c *Checkpoint) Segments() []string { return append([]string(nil), c.segments...) }

// Track starts recording changes: from now on Save writes only the entries marked with
// Changed, Put or Delete (and removals) in the head. Every entry present now counts as
// changed unless it came from a segment. A checkpoint loaded with segments is tracked
// already.
func (c *Checkpoint) Track() {
	if c.live != nil {
		return
	}
	c.live = make(map[string]uint64, len(c.Files))
	c.tick++
	for k := range c.Files {
		c.live[k] = c.tick
	}
}

// Changed records that the entry of key was changed in place, added or removed, so that
// the next Save writes it. It does nothing on an untracked checkpoint (Save writes every
// entry of those).
func (c *Checkpoint) Changed(key string) {
	if c.live == nil {
		return
	}
	c.tick++
	c.live[key] = c.tick
}

// Put sets the entry of f.Key and records the change.
func (c *Checkpoint) Put(f *File) {
	if c.Files == nil {
		c.Files = map[string]*File{}
	}
	c.Files[f.Key] = f
	c.Changed(f.Key)
}

// Delete removes the entry of key and records the change.
func (c *Checkpoint) Delete(key string) {
	delete(c.Files, key)
	c.Changed(key)
}

// Own returns the entry of key ready to be changed in place (nil when there is none): a
// settled entry, shared with clones, is replaced by a private copy first. The copy is not
// marked changed — its content is what the segments hold — so the caller calls Changed
// once it changes it. Call it once per key.
func (c *Checkpoint) Own(key string) *File {
	f := c.Files[key]
	if f == nil || c.live == nil || c.isLive(key) {
		return f
	}
	f = f.Clone()
	c.Files[key] = f
	return f
}

// Snapshot returns what Save needs to write c as it is now, at a cost that grows with
// the live entries only: their deep copies, the segment ids and the fingerprints. Its
// Files holds the live entries alone, so it is good for Save (and then Saved), not as a
// view of the checkpoint. An untracked checkpoint is cloned whole.
func (c *Checkpoint) Snapshot() *Checkpoint {
	if c.live == nil {
		return c.Clone()
	}
	out := *c
	out.Files = make(map[string]*File, len(c.live))
	out.live = make(map[string]uint64, len(c.live))
	for k, t := range c.live {
		out.live[k] = t
		if f := c.Files[k]; f != nil {
			out.Files[k] = f.Clone()
		}
	}
	out.partial = true
	return &out
}

// Saved records in c that snap, a Snapshot of c, was saved: c takes its generation and,
// when the save compacted the live entries into a segment, its segments; the entries
// not changed since the snapshot are then settled.
func (c *Checkpoint) Saved(snap *Checkpoint) {
	c.Generation = snap.Generation
	c.Version = snap.Version
	if sameIDs(c.segments, snap.segments) {
		return
	}
	c.segments = snap.segments
	if c.live == nil {
		// Without a record of changes every entry must stay in the head, or one
		// deleted since the snapshot would come back from the segment.
		c.Track()
		return
	}
	for k, t := range c.live {
		if t <= snap.tick {
			delete(c.live, k)
		}
	}
}

func sameIDs(a, b []string) bool {
	if len(a) != len(b) {
		return false
	}
	for i := range a {
		if a[i] != b[i] {
			return false
		}
	}
	return true
}

// Clone returns a deep copy of f.
func (f *File) Clone() *File {
	if f == nil {
		return nil
	}
	out := *f
	if f.Acked != nil {
		out.Acked = make(map[string]int64, len(f.Acked))
		for d, n := range f.Acked {
			out.Acked[d] = n
		}
	}
	if f.AckedRanges != nil {
		out.AckedRanges = make(map[string][][2]int64, len(f.AckedRanges))
		for d, r := range f.AckedRanges {
			out.AckedRanges[d] = append([][2]int64(nil), r...)
		}
	}
	return &out
}
