// Package state keeps what every destination acknowledged: one checkpoint per sync in a
// local directory or under an S3 prefix, written atomically, plus the row-hash store of
// mode diff and the run history.
package state

import "time"

// Version is the checkpoint format this build writes; a newer one is refused.
const Version = 1

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

// Clone returns a deep copy of c: the pipeline saves snapshots of the checkpoint while it
// keeps mutating its working copy, so no map or pointer may be shared between the two.
func (c *Checkpoint) Clone() *Checkpoint {
	if c == nil {
		return nil
	}
	out := *c
	if c.Files != nil {
		out.Files = make(map[string]*File, len(c.Files))
		for k, f := range c.Files {
			out.Files[k] = f.Clone()
		}
	}
	return &out
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
