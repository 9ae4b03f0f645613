// Package pipeline runs one sync: list, check, plan against the checkpoint, read row
// groups, map, fan out to every destination, advance the checkpoint from their
// acknowledgements, and report.
package pipeline

import "time"

// Status of a run.
const (
	StatusOK      = "ok"      // exit 0
	StatusPartial = "partial" // exit 3: some files or rows were rejected
	StatusFailed  = "failed"  // exit 1
)

// Report is the run report of SPEC.md (`sync --report FILE`, `GET /syncs`).
type Report struct {
	Sync   string `json:"sync"`
	RunID  string `json:"run_id"`
	Status string `json:"status"`
	Mode   string `json:"mode"`
	// Shard is "I/N" for a run of one shard of the sync, absent for the whole sync.
	Shard          string                       `json:"shard,omitempty"`
	DryRun         bool                         `json:"dry_run,omitempty"`
	FullSync       bool                         `json:"full_sync"`
	FullSyncReason string                       `json:"full_sync_reason"`
	Files          FileCounts                   `json:"files"`
	Rows           RowCounts                    `json:"rows"`
	Destinations   map[string]*DestinationCount `json:"destinations"`
	StartedAt      time.Time                    `json:"started_at"`
	DurationMS     int64                        `json:"duration_ms"`
	Error          string                       `json:"error,omitempty"`
	RejectsFile    string                       `json:"rejects_file,omitempty"`
	// RetryOf is, for a run of `backflow rejects retry`, the run whose rejected rows it
	// sent again.
	RetryOf string `json:"retry_of,omitempty"`
	// FileErrors names each rejected or vanished file and why.
	FileErrors []FileError `json:"file_errors,omitempty"`
	// PeakRSSBytes is the process's peak resident memory when the run ended (where the
	// system tells it; `backflow sync` only).
	PeakRSSBytes int64 `json:"peak_rss_bytes,omitempty"`
	// Discovery is what a sync discovered by S3 event notifications received from its
	// queue (absent for a sync that lists its prefix).
	Discovery *DiscoveryCounts `json:"discovery,omitempty"`
	// CheckpointSaves counts the checkpoints this run wrote.
	CheckpointSaves int64 `json:"checkpoint_saves,omitempty"`
	// ScheduledFor is the due time of the schedule slot a run of `serve` was started
	// for (absent for a run started by hand or by `backflow sync`). Replicas of serve
	// sharing a state compare it with the newest stored report, so that each slot runs
	// on one replica only.
	ScheduledFor time.Time `json:"scheduled_for,omitzero"`
}

// FileCounts counts the files of a run.
type FileCounts struct {
	Listed   int `json:"listed"`
	Read     int `json:"read"`
	Skipped  int `json:"skipped"`
	Rejected int `json:"rejected"`
	// Unchanged files were synced by an earlier run and not read again.
	Unchanged int `json:"unchanged"`
	// Deleted files were in the checkpoint but are no longer listed.
	Deleted int `json:"deleted"`
	// Vanished files were listed but gone when read.
	Vanished int `json:"vanished,omitempty"`
	// Changed files (a retry) are no longer the ones whose rows were rejected.
	Changed int `json:"changed,omitempty"`
}

// RowCounts counts the rows of a run.
type RowCounts struct {
	Read      int64 `json:"read"`
	Sent      int64 `json:"sent"`
	Unchanged int64 `json:"unchanged"`
	Rejected  int64 `json:"rejected"`
	// WouldSend is what a dry run would have sent.
	WouldSend int64 `json:"would_send,omitempty"`
	// NotRetried rows (a retry) were not sent: their file changed or vanished since, or
	// the destination that refused them is no longer in the sync.
	NotRetried int64 `json:"not_retried,omitempty"`
}

// DestinationCount counts what one destination did.
type DestinationCount struct {
	Delivered int64 `json:"delivered"`
	Failed    int64 `json:"failed"`
	// Unchanged counts the rows mode diff left out for this destination: it had
	// acknowledged the same content for their identifiers before.
	Unchanged int64 `json:"unchanged,omitempty"`
}

// FileError is a file that was rejected or could not be read.
type FileError struct {
	Key   string `json:"key"`
	Error string `json:"error"`
}
