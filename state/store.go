package state

import (
	"context"
	"errors"
	"io"
)

// ErrConflict is returned by Save when another runner saved the checkpoint since it was
// loaded (two runners of one sync at once): the later one fails cleanly.
var ErrConflict = errors.New("checkpoint was changed by another run since it was loaded")

// ErrCorrupt is matched (errors.Is) by the error of a Load or Hashes call that found a
// stored checkpoint, history or row-hash store it cannot read. Nothing is reset silently:
// the user decides (`backflow state reset`).
var ErrCorrupt = errors.New("stored state is corrupt")

// ErrNewerFormat is matched (errors.Is) by the error of a Load that found a checkpoint or
// history written by a newer backflow (a format version above Version).
var ErrNewerFormat = errors.New("stored state was written by a newer backflow")

// Store keeps checkpoints, row hashes, rejects and run history for every sync of a config.
// Its methods are safe for concurrent use by different syncs; ctx bounds each call.
type Store interface {
	// Load returns the sync's checkpoint, or (nil, nil) when there is none. A corrupt
	// checkpoint or one written by a newer version is an error, never a silent reset.
	Load(ctx context.Context, sync string) (*Checkpoint, error)
	// Save writes cp atomically: a crash at any moment leaves the previous or the new
	// checkpoint. It returns ErrConflict (wrapped) when cp.Generation no longer matches
	// the stored one; on success it updates cp.Generation.
	Save(ctx context.Context, cp *Checkpoint) error
	// Reset deletes the sync's checkpoint and row-hash store; the next run is a first sync.
	Reset(ctx context.Context, sync string) error
	// Hashes opens the sync's row-hash store for mode diff. Close (or Commit) makes what
	// was Put durable.
	Hashes(ctx context.Context, sync string) (HashStore, error)
	// ReadHashes opens the sync's row-hash store for reading only (a dry run): nothing
	// is created or written. It returns (nil, nil) when the sync has no store yet.
	ReadHashes(ctx context.Context, sync string) (HashStore, error)
	// Rejects opens the rejects file of one run: <state>/rejects/<sync>/<runID>.jsonl.
	Rejects(ctx context.Context, sync, runID string) (RejectsFile, error)
	// RejectsRuns returns the ids of the sync's runs that wrote a rejects file, newest
	// first.
	RejectsRuns(ctx context.Context, sync string) ([]string, error)
	// OpenRejects opens the rejects file of one run for reading, and says where it is (a
	// path or an s3:// URL). It returns an error matching ErrNoRejects when there is none.
	OpenRejects(ctx context.Context, sync, runID string) (io.ReadCloser, string, error)
	// AppendHistory records a run report (JSON), keeping the newest keep of the sync.
	AppendHistory(ctx context.Context, sync string, report []byte, keep int) error
	// History returns the sync's kept run reports, newest first.
	History(ctx context.Context, sync string) ([][]byte, error)
	// States lists the checkpoints stored for the sync and for its shards
	// ("<sync>.shard-I-of-N"): every method of the store takes such a state name where it
	// takes a sync.
	States(ctx context.Context, sync string) ([]StateInfo, error)
	// Leaser: one run of a sync at a time, across processes sharing the store.
	Leaser
	// Probe proves that the sync's state can be written (it writes and deletes a probe).
	Probe(ctx context.Context, sync string) error
	// String is the store's URL, with no secret.
	String() string
}

// HashStore maps a message key (mapper.Message.Key) to the hash of the content last
// acknowledged for it (mapper.Message.ID) and the destinations that acknowledged that
// content, so that mode diff judges "unchanged" per destination. It is used by one run
// at a time; its methods are safe for concurrent use.
type HashStore interface {
	// Bits returns each destination's bit in the entries' masks, giving new names
	// their own. The first call on a store written before masks existed says which
	// destinations its entries stand for (legacy).
	Bits(ctx context.Context, dests, legacy []string) ([]uint, error)
	// Get returns the stored entry of each key (a zero HashEntry where none), in order.
	Get(ctx context.Context, keys []string) ([]HashEntry, error)
	// Put records that the destination of bit acknowledged hashes[i] for keys[i].
	Put(ctx context.Context, bit uint, keys, hashes []string) error
	// Clear removes every entry (a full sync rebuilds the store).
	Clear(ctx context.Context) error
	// Commit makes every Put so far durable.
	Commit(ctx context.Context) error
	// Len is the number of keys stored.
	Len(ctx context.Context) (int, error)
	// Close commits and releases the store.
	Close(ctx context.Context) error
}

// RejectsFile receives the rejected rows of one run, one JSON object a line. Nothing is
// created until the first Write.
type RejectsFile interface {
	io.Writer
	// Flush makes every line written so far durable (before a checkpoint counts them).
	Flush(ctx context.Context) error
	// Close flushes and releases the file.
	Close(ctx context.Context) error
	// Location is where the file is (a path or an s3:// URL), "" when nothing was written.
	Location() string
}
