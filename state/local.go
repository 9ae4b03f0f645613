package state

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"io/fs"
	"os"
	"path/filepath"
	"time"
)

// localStore keeps state in a directory. Read-modify-write sequences (Save,
// AppendHistory, Reset) run under an exclusive flock on a <sync>.lock file beside the data,
// so two processes — or two goroutines — never interleave them.
type localStore struct {
	dir string
	// hashLockTimeout bounds the wait for another run's row-hash store (tests shorten it).
	hashLockTimeout time.Duration
}

func newLocalStore(dir string) (*localStore, error) {
	if fi, err := os.Stat(dir); err == nil && !fi.IsDir() {
		return nil, fmt.Errorf("state directory %s is a file", dir)
	}
	return &localStore{dir: dir, hashLockTimeout: 10 * time.Second}, nil
}

func (s *localStore) String() string { return s.dir }

func (s *localStore) checkpointPath(sync string) string {
	return filepath.Join(s.dir, checkpointsDir, sync+".json")
}

func (s *localStore) hashesPath(sync string) string {
	return filepath.Join(s.dir, hashesDir, sync+".db")
}

func (s *localStore) historyPath(sync string) string {
	return filepath.Join(s.dir, historyDir, sync+".json")
}

// withLock runs fn holding the exclusive lock <dir>/<sync>.lock, creating dir as needed.
func (s *localStore) withLock(ctx context.Context, dir, sync string, fn func() error) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if err := mkdirAll(dir); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	path := filepath.Join(dir, sync+".lock")
	f, err := os.OpenFile(path, os.O_CREATE|os.O_RDWR, filePerm)
	if err != nil {
		return fmt.Errorf("opening lock %s: %w", path, err)
	}
	defer f.Close()
	if err := lockFile(f); err != nil {
		return fmt.Errorf("locking %s: %w", path, err)
	}
	// Closing f releases the lock.
	return fn()
}

func (s *localStore) Load(ctx context.Context, sync string) (*Checkpoint, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	var err error
	for range loadAttempts {
		var cp *Checkpoint
		cp, err = s.load(ctx, sync)
		if !errors.Is(err, errSegmentMissing) {
			return cp, err
		}
		// A save merged the segment away after this load read the head: the head read
		// again names the merged one.
	}
	return nil, &CorruptError{What: "checkpoint", Where: s.checkpointPath(sync), Sync: sync, Err: err}
}

func (s *localStore) load(ctx context.Context, sync string) (*Checkpoint, error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := s.checkpointPath(sync)
	// Save replaces the file by a rename, so a plain read sees one whole version.
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading checkpoint %s: %w", path, err)
	}
	cp, gen, removed, err := decodeHead(data, sync, path)
	if err != nil {
		return nil, err
	}
	if gen == "" {
		gen = contentGeneration(data)
	}
	cp.Generation = gen
	if err := loadSegments(ctx, s, cp, removed); err != nil {
		return nil, err
	}
	return cp, nil
}

func (s *localStore) Save(ctx context.Context, cp *Checkpoint) error {
	if cp == nil {
		return errors.New("saving a nil checkpoint")
	}
	if err := checkName("sync name", cp.Sync); err != nil {
		return fmt.Errorf("saving checkpoint: %w", err)
	}
	gen := newGeneration()
	path := s.checkpointPath(cp.Sync)
	return s.withLock(ctx, filepath.Dir(path), cp.Sync, func() error {
		stored := ""
		old, err := os.ReadFile(path)
		switch {
		case errors.Is(err, fs.ErrNotExist):
		case err != nil:
			return fmt.Errorf("reading checkpoint %s: %w", path, err)
		default:
			if stored, err = storedGeneration(old); err != nil {
				return &CorruptError{What: "checkpoint", Where: path, Sync: cp.Sync, Err: err}
			}
		}
		// Checked before a compaction writes a segment, which a conflict would waste.
		if stored != cp.Generation {
			return conflictError(path, cp.Sync)
		}
		plan, err := planSave(ctx, s, cp, gen)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(path, plan.head); err != nil {
			return fmt.Errorf("saving checkpoint %s: %w", path, err)
		}
		cp.Generation = gen
		plan.finish(ctx, s, cp)
		return nil
	})
}

func (s *localStore) segmentPath(sync, id string) string {
	return filepath.Join(s.dir, checkpointsDir, segmentName(sync, id))
}

func (s *localStore) segmentWhere(sync, id string) string { return s.segmentPath(sync, id) }

func (s *localStore) readSegment(_ context.Context, sync, id string) ([]byte, error) {
	path := s.segmentPath(sync, id)
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, fmt.Errorf("reading checkpoint segment %s: %w", path, errSegmentMissing)
	}
	if err != nil {
		return nil, fmt.Errorf("reading checkpoint segment %s: %w", path, err)
	}
	return data, nil
}

// writeSegment makes the segment durable (fsync of the file and of the directory)
// before the head that names it is written.
func (s *localStore) writeSegment(_ context.Context, sync, id string, data []byte) error {
	path := s.segmentPath(sync, id)
	if err := mkdirAll(filepath.Dir(path)); err != nil {
		return fmt.Errorf("creating state directory: %w", err)
	}
	if err := writeFileAtomic(path, data); err != nil {
		return fmt.Errorf("writing %s: %w", path, err)
	}
	return nil
}

func (s *localStore) listSegments(_ context.Context, sync string) (map[string]segmentInfo, error) {
	dir := filepath.Join(s.dir, checkpointsDir)
	entries, err := os.ReadDir(dir)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("listing checkpoint segments in %s: %w", dir, err)
	}
	out := map[string]segmentInfo{}
	for _, e := range entries {
		id := segmentIDOf(sync, e.Name())
		if id == "" {
			continue
		}
		info, err := e.Info()
		if err != nil {
			continue // deleted meanwhile
		}
		out[id] = segmentInfo{age: time.Since(info.ModTime()), size: info.Size()}
	}
	return out, nil
}

func (s *localStore) deleteSegment(_ context.Context, sync, id string) error {
	if err := os.Remove(s.segmentPath(sync, id)); err != nil && !errors.Is(err, fs.ErrNotExist) {
		return fmt.Errorf("deleting checkpoint segment: %w", err)
	}
	return nil
}

func (s *localStore) Reset(ctx context.Context, sync string) error {
	if err := checkName("sync name", sync); err != nil {
		return err
	}
	path := s.checkpointPath(sync)
	if _, err := os.Stat(s.dir); errors.Is(err, fs.ErrNotExist) {
		return nil // nothing was ever stored
	}
	// Under the checkpoint lock, so that a Save in progress finishes first; a run that
	// saves later finds no checkpoint where it expected one and fails with ErrConflict.
	return s.withLock(ctx, filepath.Dir(path), sync, func() error {
		if err := s.removeHashes(sync); err != nil {
			return err
		}
		if err := os.Remove(path); err != nil && !errors.Is(err, fs.ErrNotExist) {
			return fmt.Errorf("deleting checkpoint %s: %w", path, err)
		}
		// The head first: without it the segments are orphans, never a checkpoint.
		ids, err := s.listSegments(ctx, sync)
		if err != nil {
			return err
		}
		for id := range ids {
			if err := s.deleteSegment(ctx, sync, id); err != nil {
				return fmt.Errorf("resetting sync %q: %w", sync, err)
			}
		}
		return syncDir(filepath.Dir(path))
	})
}

// removeHashes deletes the row-hash store unless a run has it open: bbolt holds an
// exclusive flock on the file while it is open for writing.
func (s *localStore) removeHashes(sync string) error {
	path := s.hashesPath(sync)
	f, err := os.OpenFile(path, os.O_RDWR, 0)
	if errors.Is(err, fs.ErrNotExist) {
		return nil
	}
	if err != nil {
		return fmt.Errorf("opening row-hash store %s: %w", path, err)
	}
	defer f.Close()
	busy, err := tryLockFile(f)
	if err != nil {
		return fmt.Errorf("locking row-hash store %s: %w", path, err)
	}
	if busy {
		return fmt.Errorf("row-hash store %s is in use by a running backflow of sync %q: stop it before resetting", path, sync)
	}
	if err := os.Remove(path); err != nil {
		return fmt.Errorf("deleting row-hash store %s: %w", path, err)
	}
	return syncDir(filepath.Dir(path))
}

func (s *localStore) Hashes(ctx context.Context, sync string) (HashStore, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := s.hashesPath(sync)
	if err := mkdirAll(filepath.Dir(path)); err != nil {
		return nil, fmt.Errorf("creating state directory: %w", err)
	}
	return openBoltHashes(path, path, sync, false, s.hashLockTimeout)
}

func (s *localStore) ReadHashes(ctx context.Context, sync string) (HashStore, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	path := s.hashesPath(sync)
	if _, err := os.Stat(path); errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	return openBolt(path, path, sync, true, true, s.hashLockTimeout)
}

func (s *localStore) Rejects(ctx context.Context, sync, runID string) (RejectsFile, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := checkName("run id", runID); err != nil {
		return nil, err
	}
	dir := filepath.Join(s.dir, rejectsDir, sync)
	return &localRejects{dir: dir, path: filepath.Join(dir, runID+".jsonl")}, nil
}

func (s *localStore) AppendHistory(ctx context.Context, sync string, report []byte, keep int) error {
	if err := checkHistoryArgs(sync, report, keep); err != nil {
		return err
	}
	path := s.historyPath(sync)
	return s.withLock(ctx, filepath.Dir(path), sync, func() error {
		runs, err := s.readHistory(sync, path)
		if err != nil {
			return err
		}
		data, err := prependHistory(runs, sync, report, keep)
		if err != nil {
			return err
		}
		if err := writeFileAtomic(path, data); err != nil {
			return fmt.Errorf("saving run history %s: %w", path, err)
		}
		return nil
	})
}

func (s *localStore) History(ctx context.Context, sync string) ([][]byte, error) {
	if err := checkName("sync name", sync); err != nil {
		return nil, err
	}
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	runs, err := s.readHistory(sync, s.historyPath(sync))
	if err != nil {
		return nil, err
	}
	return historyToBytes(runs), nil
}

func (s *localStore) readHistory(sync, path string) ([]json.RawMessage, error) {
	data, err := os.ReadFile(path)
	if errors.Is(err, fs.ErrNotExist) {
		return nil, nil
	}
	if err != nil {
		return nil, fmt.Errorf("reading run history %s: %w", path, err)
	}
	return decodeHistory(data, sync, path)
}
