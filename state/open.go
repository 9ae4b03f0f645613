package state

import (
	"bytes"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"path/filepath"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/internal/s3conn"
)

// Layout below the state location, the same for a local directory and an S3 prefix:
//
//	checkpoints/<sync>.json           the checkpoint (JSON, with its generation token)
//	hashes/<sync>.db                  the row-hash store of mode diff (bbolt)
//	rejects/<sync>/<run id>.jsonl     rejected rows of one run
//	history/<sync>.json               the newest run reports (JSON)
const (
	checkpointsDir = "checkpoints"
	hashesDir      = "hashes"
	rejectsDir     = "rejects"
	historyDir     = "history"
)

// Open returns the store at cfg.URL: s3://bucket/prefix (a client built from cfg.S3), or
// a local directory (absolute after config loading; a file:// URL is accepted too). A
// local directory is created on the first write, not by Open, so that read-only commands
// leave no trace.
func Open(ctx context.Context, cfg config.StateConfig) (Store, error) {
	u := strings.TrimSpace(cfg.URL)
	if u == "" {
		return nil, errors.New("state.url is empty: set it to a local directory or s3://bucket/prefix")
	}
	if s3conn.IsURL(u) {
		bucket, prefix, ok := s3conn.ParseURL(u)
		if !ok {
			return nil, fmt.Errorf("state.url %q: no bucket (want s3://bucket/prefix)", u)
		}
		client, err := s3conn.New(ctx, cfg.S3, bucket, 0)
		if err != nil {
			return nil, fmt.Errorf("state %s: %w", u, err)
		}
		return newS3Store(client, bucket, prefix), nil
	}
	if strings.Contains(u, "://") && !strings.HasPrefix(u, "file://") {
		return nil, fmt.Errorf("state.url %q: unsupported scheme (want a local directory or s3://bucket/prefix)", u)
	}
	dir, err := filepath.Abs(strings.TrimPrefix(u, "file://"))
	if err != nil {
		return nil, fmt.Errorf("state.url %q: %w", u, err)
	}
	return newLocalStore(dir)
}

// checkName refuses sync names and run ids that could escape their directory or make an
// awkward file name; the config already restricts sync names to [a-z0-9_-]+.
func checkName(what, name string) error {
	if name == "" {
		return fmt.Errorf("%s is empty", what)
	}
	if len(name) > 200 {
		return fmt.Errorf("%s %q is longer than 200 characters", what, name[:40]+"…")
	}
	if name[0] == '.' {
		return fmt.Errorf("%s %q may not start with a dot", what, name)
	}
	for _, r := range name {
		switch {
		case r >= 'a' && r <= 'z', r >= 'A' && r <= 'Z', r >= '0' && r <= '9', r == '-', r == '_', r == '.':
		default:
			return fmt.Errorf("%s %q: only letters, digits, '-', '_' and '.' are allowed", what, name)
		}
	}
	return nil
}

// newGeneration returns a fresh random token. A random token, unlike a counter, cannot
// come back after a reset (a runner holding generation 3 must not match a new file that
// happens to reach 3 again).
func newGeneration() string { return rand.Text() }

// headFile is a checkpoint's head as stored: the checkpoint's own fields, the live file
// entries, the segments under it and the generation token of this write. Format 1 has
// neither segments nor removed keys.
type headFile struct {
	Version            int              `json:"version"`
	Sync               string           `json:"sync"`
	MappingFingerprint string           `json:"mapping_fingerprint"`
	SourceFingerprint  string           `json:"source_fingerprint"`
	SchemaFingerprint  string           `json:"schema_fingerprint"`
	Files              map[string]*File `json:"files"`
	// Segments are the ids of the settled segments, oldest first.
	Segments []string `json:"segments,omitempty"`
	// Removed are keys that are gone although a segment may still hold them.
	Removed    []string  `json:"removed,omitempty"`
	UpdatedAt  time.Time `json:"updated_at"`
	LastRunID  string    `json:"last_run_id,omitempty"`
	Generation string    `json:"generation"`
}

// encodeCheckpoint returns the stored form of cp as one document holding every entry of
// cp.Files and no segment (format 1), with the generation token gen.
func encodeCheckpoint(cp *Checkpoint, gen string) ([]byte, error) {
	if cp == nil {
		return nil, errors.New("saving a nil checkpoint")
	}
	return encodeHead(cp, gen, cp.Files, nil, nil)
}

// encodeHead returns the stored head of cp with the given entries, segments and removed
// keys. It sets cp.Version to the format written: 1 without segments, so that a
// checkpoint that never grew stays readable by older builds.
func encodeHead(cp *Checkpoint, gen string, files map[string]*File, segments, removed []string) ([]byte, error) {
	if err := checkName("sync name", cp.Sync); err != nil {
		return nil, fmt.Errorf("saving checkpoint: %w", err)
	}
	if files == nil {
		files = map[string]*File{}
	}
	version := versionWhole
	if len(segments) > 0 {
		version = Version
	} else {
		removed = nil // nothing below the head to remove from
	}
	h := headFile{
		Version: version, Sync: cp.Sync,
		MappingFingerprint: cp.MappingFingerprint, SourceFingerprint: cp.SourceFingerprint, SchemaFingerprint: cp.SchemaFingerprint,
		Files: files, Segments: segments, Removed: removed,
		UpdatedAt: cp.UpdatedAt, LastRunID: cp.LastRunID, Generation: gen,
	}
	var data []byte
	var err error
	if version == versionWhole {
		data, err = json.MarshalIndent(h, "", "  ") // as every earlier build wrote it
	} else {
		// A head is rewritten by every save: unindented JSON, its entries written by
		// the segments' fast encoder (encoding/json would be most of a save's cost).
		h.Files = map[string]*File{}
		if data, err = json.Marshal(h); err == nil {
			data, err = spliceFiles(data, files)
		}
	}
	if err != nil {
		return nil, fmt.Errorf("encoding checkpoint of sync %q: %w", cp.Sync, err)
	}
	cp.Version = version
	return append(data, '\n'), nil
}

// spliceFiles replaces the empty "files" object of an encoded head by files. The first
// `,"files":{}` is the field: the fields before it are strings, whose quotes would be
// escaped.
func spliceFiles(data []byte, files map[string]*File) ([]byte, error) {
	const empty = `,"files":{}`
	i := bytes.Index(data, []byte(empty))
	if i < 0 {
		return nil, errors.New("no files field in the encoded head")
	}
	out := make([]byte, 0, len(data)+len(files)*256)
	out = append(out, data[:i]...)
	out = append(out, `,"files":{`...)
	first := true
	var entry []byte
	for k, f := range files {
		if !first {
			out = append(out, ',')
		}
		first = false
		key, ok := appendPlain(out, k)
		if !ok {
			b, err := json.Marshal(k)
			if err != nil {
				return nil, err
			}
			key = append(out[:len(out):len(out)], b...)
		}
		out = append(key, ':')
		if k != f.Key && f.Key != "" {
			return nil, fmt.Errorf("file %q is recorded under key %q", f.Key, k)
		}
		if entry = appendEntry(entry[:0], f); entry != nil {
			out = append(out, entry[:len(entry)-1]...) // without its newline
			continue
		}
		b, err := json.Marshal(f)
		if err != nil {
			return nil, err
		}
		out = append(out, b...)
	}
	out = append(out, '}')
	return append(out, data[i+len(empty):]...), nil
}

// decodeCheckpoint parses a stored head of sync found at where (a path or URL) and
// checks it. gen is the generation token stored in it ("" when the file has none). The
// head's segments are in cp.segments, not yet read; removed lists the keys the head
// removes from them.
func decodeCheckpoint(data []byte, sync, where string) (cp *Checkpoint, gen string, err error) {
	cp, gen, _, err = decodeHead(data, sync, where)
	return cp, gen, err
}

func decodeHead(data []byte, sync, where string) (cp *Checkpoint, gen string, removed []string, err error) {
	corrupt := func(format string, args ...any) error {
		return &CorruptError{What: "checkpoint", Where: where, Sync: sync, Err: fmt.Errorf(format, args...)}
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, "", nil, corrupt("the file is empty")
	}
	var h headFile
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, "", nil, corrupt("%v", err)
	}
	switch {
	case h.Version > Version:
		return nil, "", nil, &NewerFormatError{What: "checkpoint", Where: where, Version: h.Version}
	case h.Version < 1:
		return nil, "", nil, corrupt("no format version")
	case h.Sync != sync:
		return nil, "", nil, corrupt("it belongs to sync %q", h.Sync)
	case h.Version == versionWhole && (len(h.Segments) > 0 || len(h.Removed) > 0):
		return nil, "", nil, corrupt("format 1 has no segments")
	}
	for _, id := range h.Segments {
		if !validSegmentID(id) {
			return nil, "", nil, corrupt("segment id %q is not valid", id)
		}
	}
	cp = &Checkpoint{
		Version: h.Version, Sync: h.Sync,
		MappingFingerprint: h.MappingFingerprint, SourceFingerprint: h.SourceFingerprint, SchemaFingerprint: h.SchemaFingerprint,
		Files: h.Files, UpdatedAt: h.UpdatedAt, LastRunID: h.LastRunID,
		segments: h.Segments,
	}
	if cp.Files == nil {
		cp.Files = map[string]*File{}
	}
	for key, file := range cp.Files {
		if err := checkFile(key, file); err != nil {
			return nil, "", nil, corrupt("%v", err)
		}
	}
	return cp, h.Generation, h.Removed, nil
}

// checkFile checks a stored entry of key and fills in what may be left out.
func checkFile(key string, file *File) error {
	if file == nil {
		return fmt.Errorf("file %q has no entry", key)
	}
	if file.Key == "" {
		file.Key = key
	} else if file.Key != key {
		return fmt.Errorf("file %q is recorded under key %q", file.Key, key)
	}
	if file.Rows < 0 || file.Size < 0 {
		return fmt.Errorf("file %q has a negative size or row count", key)
	}
	if file.Acked == nil {
		file.Acked = map[string]int64{}
	}
	for dest, n := range file.Acked {
		if n < 0 {
			return fmt.Errorf("file %q: destination %q acknowledged a negative row count", key, dest)
		}
	}
	return nil
}

// storedGeneration reads only the generation token of a stored checkpoint (Save compares
// it). A file without one (written by hand) is identified by its content instead.
func storedGeneration(data []byte) (string, error) {
	var f struct {
		Generation string `json:"generation"`
	}
	if err := json.Unmarshal(data, &f); err != nil {
		return "", err
	}
	if f.Generation == "" {
		return contentGeneration(data), nil
	}
	return f.Generation, nil
}

// historyFile is a sync's run history as stored.
type historyFile struct {
	Version int               `json:"version"`
	Sync    string            `json:"sync"`
	Runs    []json.RawMessage `json:"runs"` // newest first
}

// historyVersion is the run history's format; it did not change with the checkpoint's.
const historyVersion = 1

func decodeHistory(data []byte, sync, where string) ([]json.RawMessage, error) {
	corrupt := func(format string, args ...any) error {
		return &CorruptError{What: "run history", Where: where, Sync: sync, Err: fmt.Errorf(format, args...)}
	}
	if len(strings.TrimSpace(string(data))) == 0 {
		return nil, corrupt("the file is empty")
	}
	var h historyFile
	if err := json.Unmarshal(data, &h); err != nil {
		return nil, corrupt("%v", err)
	}
	switch {
	case h.Version > historyVersion:
		return nil, &NewerFormatError{What: "run history", Where: where, Version: h.Version}
	case h.Version < 1:
		return nil, corrupt("no format version")
	case h.Sync != sync:
		return nil, corrupt("it belongs to sync %q", h.Sync)
	}
	return h.Runs, nil
}

// prependHistory returns the stored history with report as its newest run, keeping keep.
func prependHistory(runs []json.RawMessage, sync string, report []byte, keep int) ([]byte, error) {
	out := make([]json.RawMessage, 0, min(len(runs)+1, keep))
	out = append(out, json.RawMessage(report))
	for _, r := range runs {
		if len(out) == keep {
			break
		}
		out = append(out, r)
	}
	data, err := json.Marshal(historyFile{Version: historyVersion, Sync: sync, Runs: out})
	if err != nil {
		return nil, fmt.Errorf("encoding run history of sync %q: %w", sync, err)
	}
	return append(data, '\n'), nil
}

func checkHistoryArgs(sync string, report []byte, keep int) error {
	if err := checkName("sync name", sync); err != nil {
		return err
	}
	if keep < 1 {
		return fmt.Errorf("keeping the run history of sync %q: keep is %d, want at least 1", sync, keep)
	}
	if !json.Valid(report) {
		return fmt.Errorf("recording a run of sync %q: the report is not valid JSON", sync)
	}
	return nil
}

func historyToBytes(runs []json.RawMessage) [][]byte {
	out := make([][]byte, len(runs))
	for i, r := range runs {
		out[i] = []byte(r)
	}
	return out
}

// CorruptError is a stored checkpoint, history or row-hash store that cannot be read.
// It matches ErrCorrupt.
type CorruptError struct {
	What  string // "checkpoint", "run history", "row-hash store"
	Where string // path or s3:// URL
	Sync  string
	Err   error
}

func (e *CorruptError) Error() string {
	if e.What == "run history" {
		// Reset keeps the history; the file only holds past reports.
		return fmt.Sprintf("%s %s is corrupt: %v; delete it to start a new history", e.What, e.Where, e.Err)
	}
	return fmt.Sprintf("%s %s is corrupt: %v; run `backflow state reset --sync %s` to start over", e.What, e.Where, e.Err, e.Sync)
}
func (e *CorruptError) Unwrap() error        { return e.Err }
func (e *CorruptError) Is(target error) bool { return target == ErrCorrupt }

// NewerFormatError is stored state written by a newer backflow. It matches ErrNewerFormat.
type NewerFormatError struct {
	What    string
	Where   string
	Version int
}

func (e *NewerFormatError) Error() string {
	return fmt.Sprintf("%s %s was written by a newer backflow (format %d; this build reads format %d and older): upgrade backflow", e.What, e.Where, e.Version, Version)
}
func (e *NewerFormatError) Is(target error) bool { return target == ErrNewerFormat }

func conflictError(where, sync string) error {
	return fmt.Errorf("saving checkpoint %s: %w: another backflow run of sync %q saved it (or it was reset) since this run loaded it; this run stops so that it does not overwrite that progress", where, ErrConflict, sync)
}
