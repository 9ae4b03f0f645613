package state

import (
	"bufio"
	"bytes"
	"compress/gzip"
	"context"
	"crypto/rand"
	"encoding/json"
	"errors"
	"fmt"
	"math"
	"strconv"
	"strings"
	"time"
	"unicode/utf8"
)

// A checkpoint with many files is a small head (checkpoints/<sync>.json) plus settled
// segments (checkpoints/<sync>.seg-<id>.jsonl.gz), so that a save costs what changed
// since the last compaction, not the whole checkpoint:
//
//   - a segment is gzipped JSON lines — a header line, then one file entry a line, or a
//     tombstone {"removed": key} for a key an older segment may hold — written once
//     under a fresh id and never changed;
//   - the head names its segments, oldest first, and holds the live entries: those
//     changed since the last compaction, and the keys removed since (removed);
//   - loading reads the head, then the segments in order; a newer segment overrides an
//     older one, the head overrides them all.
//
// When the head would hold more than compactAt live entries (or removed keys), Save
// first writes them as a new segment, then the head naming it with no live entry; with
// more than mergeAt segments it merges them all (and the live entries) into one. A crash
// between the two writes leaves the old head, valid, and an orphan segment that a later
// compaction deletes. Segments a saved head no longer names are deleted after it is
// saved.
var (
	// compactAt keeps the largest head's save within tens of milliseconds: encoding the
	// head's entries is the save's cost (about 30 µs an entry on a busy 2-CPU machine),
	// while writing them as a segment costs a fraction of that.
	compactAt = 1000
	mergeAt   = 8
	// orphanAge is how old a segment no head names must be before a compaction deletes
	// it: younger ones may belong to a save under way (a runner that lost the sync's
	// lease without knowing it), whose head would otherwise name a deleted segment.
	orphanAge = time.Hour
)

const (
	segmentInfix  = ".seg-"
	segmentSuffix = ".jsonl.gz"
	// loadAttempts bounds the reloads of a head whose segment vanished under a Load:
	// a concurrent save merged it away, and the newer head names its replacement.
	loadAttempts = 3
)

// segmentName is the file name (or last key element) of a segment of sync.
func segmentName(sync, id string) string { return sync + segmentInfix + id + segmentSuffix }

// segmentIDOf returns the id of a segment file name of sync ("" when name is not one).
func segmentIDOf(sync, name string) string {
	rest, ok := strings.CutPrefix(name, sync+segmentInfix)
	if !ok {
		return ""
	}
	id, ok := strings.CutSuffix(rest, segmentSuffix)
	if !ok || !validSegmentID(id) {
		return "" // e.g. a segment of a sync named "<sync>.seg-x"
	}
	return id
}

func validSegmentID(id string) bool {
	if id == "" || len(id) > 64 {
		return false
	}
	for _, r := range id {
		if !(r >= 'A' && r <= 'Z' || r >= 'a' && r <= 'z' || r >= '0' && r <= '9') {
			return false
		}
	}
	return true
}

// newSegmentID sorts by creation time (for people reading a listing) and is unique.
func newSegmentID() string {
	return time.Now().UTC().Format("20060102T150405") + rand.Text()[:12]
}

// errSegmentMissing is a segment named by a head that is not there.
var errSegmentMissing = errors.New("segment is missing")

// segmentStore is what a store offers for segments: whole objects, written once.
type segmentStore interface {
	readSegment(ctx context.Context, sync, id string) ([]byte, error) // errSegmentMissing
	writeSegment(ctx context.Context, sync, id string, data []byte) error
	// listSegments returns the ids of the sync's stored segments with their age and size.
	listSegments(ctx context.Context, sync string) (map[string]segmentInfo, error)
	deleteSegment(ctx context.Context, sync, id string) error
	segmentWhere(sync, id string) string
}

type segmentInfo struct {
	age  time.Duration
	size int64
}

// segmentHeader is a segment's first line.
type segmentHeader struct {
	Version int    `json:"version"`
	Sync    string `json:"sync"`
	Segment string `json:"segment"`
}

// segmentLine is one entry line, or a tombstone when Removed is set.
type segmentLine struct {
	File
	Removed string `json:"removed,omitempty"`
}

type tombstone struct {
	Removed string `json:"removed"`
}

// encodeSegment writes the entries of files and the tombstones of removed as a segment.
func encodeSegment(sync, id string, files map[string]*File, removed []string) ([]byte, error) {
	var buf bytes.Buffer
	// Fastest compression: a merge writes every entry once, and the segment is still
	// several times smaller than the JSON it replaces.
	zw, err := gzip.NewWriterLevel(&buf, gzip.BestSpeed)
	if err != nil {
		return nil, err
	}
	bw := bufio.NewWriterSize(zw, 256<<10)
	enc := json.NewEncoder(bw)
	// Keys with <, > or & stay as they are (and in decodeLine's fast path).
	enc.SetEscapeHTML(false)
	if err := enc.Encode(segmentHeader{Version: Version, Sync: sync, Segment: id}); err != nil {
		return nil, err
	}
	var line []byte
	for _, f := range files {
		// encoding/json is the slow half of a merge: most entries take the fast path.
		if line = appendEntry(line[:0], f); line != nil {
			if _, err := bw.Write(line); err != nil {
				return nil, err
			}
			continue
		}
		if err := enc.Encode(f); err != nil {
			return nil, fmt.Errorf("encoding entry %q: %w", f.Key, err)
		}
	}
	for _, k := range removed {
		if err := enc.Encode(tombstone{Removed: k}); err != nil {
			return nil, err
		}
	}
	if err := bw.Flush(); err != nil {
		return nil, err
	}
	if err := zw.Close(); err != nil {
		return nil, err
	}
	return buf.Bytes(), nil
}

// applySegment reads a segment into files: entries override, tombstones delete. With
// tombs, it also records the keys whose last word is a tombstone.
func applySegment(data []byte, sync, id, where string, files map[string]*File, tombs map[string]bool) error {
	corrupt := func(format string, args ...any) error {
		return &CorruptError{What: "checkpoint segment", Where: where, Sync: sync, Err: fmt.Errorf(format, args...)}
	}
	zr, err := gzip.NewReader(bytes.NewReader(data))
	if err != nil {
		return corrupt("%v", err)
	}
	sc := bufio.NewScanner(zr)
	// An entry with many acknowledged ranges can be long; the limit only guards memory.
	sc.Buffer(make([]byte, 0, 64<<10), 256<<20)
	if !sc.Scan() {
		if err := sc.Err(); err != nil {
			return corrupt("%v", err)
		}
		return corrupt("no header")
	}
	var h segmentHeader
	if err := json.Unmarshal(sc.Bytes(), &h); err != nil {
		return corrupt("header: %v", err)
	}
	switch {
	case h.Version > Version:
		return &NewerFormatError{What: "checkpoint segment", Where: where, Version: h.Version}
	case h.Sync != sync || h.Segment != id:
		return corrupt("it is segment %q of sync %q", h.Segment, h.Sync)
	}
	for sc.Scan() {
		var l segmentLine
		if err := decodeLine(sc.Bytes(), &l); err != nil {
			return corrupt("%v", err)
		}
		if l.Removed != "" {
			delete(files, l.Removed)
			if tombs != nil {
				tombs[l.Removed] = true
			}
			continue
		}
		f := &l.File
		if f.Key == "" {
			return corrupt("an entry has no key")
		}
		if err := checkFile(f.Key, f); err != nil {
			return corrupt("%v", err)
		}
		files[f.Key] = f
		delete(tombs, f.Key)
	}
	if err := sc.Err(); err != nil {
		// A truncated gzip stream ends here too: segments are written whole, so this is
		// damage, not a crash.
		return corrupt("%v", err)
	}
	return nil
}

// loadSegments completes a decoded head: it reads the head's segments into cp.Files
// under the head's own entries, drops removed, and starts tracking changes. A head
// without segments stays untracked: Save writes it whole, as format 1 always did.
func loadSegments(ctx context.Context, st segmentStore, cp *Checkpoint, removed []string) error {
	if len(cp.segments) == 0 {
		return nil
	}
	head := cp.Files
	files := make(map[string]*File, len(head))
	for _, id := range cp.segments {
		if err := ctx.Err(); err != nil {
			return err
		}
		data, err := st.readSegment(ctx, cp.Sync, id)
		if err != nil {
			return err
		}
		if err := applySegment(data, cp.Sync, id, st.segmentWhere(cp.Sync, id), files, nil); err != nil {
			return err
		}
	}
	cp.live = make(map[string]uint64, len(head)+len(removed))
	cp.tick = 1
	for _, k := range removed {
		delete(files, k)
		cp.live[k] = cp.tick
	}
	for k, f := range head {
		files[k] = f
		cp.live[k] = cp.tick
	}
	cp.Files = files
	return nil
}

// headDelta returns what the head of cp holds: the live entries and the removed keys.
func headDelta(cp *Checkpoint) (files map[string]*File, removed []string) {
	if cp.live == nil {
		return cp.Files, nil
	}
	files = make(map[string]*File, len(cp.live))
	for k := range cp.live {
		if f := cp.Files[k]; f != nil {
			files[k] = f
		} else if len(cp.segments) > 0 {
			removed = append(removed, k)
		}
	}
	return files, removed
}

// savePlan is one save: the head to write and what to do once it is written.
type savePlan struct {
	head     []byte
	segments []string // the head's segments
	// compacted: the head holds no live entry; after the write cp.live empties.
	compacted bool
	// obsolete are segments the new head no longer names (merged away).
	obsolete []string
}

// planSave encodes the head of cp with generation gen, compacting first (writing a
// segment) when the head would be too big. Nothing it writes is reachable before the
// head is: a crash or a failed conditional write leaves at worst an orphan segment.
func planSave(ctx context.Context, st segmentStore, cp *Checkpoint, gen string) (*savePlan, error) {
	if cp == nil {
		return nil, errors.New("saving a nil checkpoint")
	}
	if err := checkName("sync name", cp.Sync); err != nil {
		return nil, fmt.Errorf("saving checkpoint: %w", err)
	}
	files, removed := headDelta(cp)
	if len(files)+len(removed) <= compactAt {
		head, err := encodeHead(cp, gen, files, cp.segments, removed)
		if err != nil {
			return nil, err
		}
		return &savePlan{head: head, segments: cp.segments}, nil
	}
	p := &savePlan{compacted: true}
	id := newSegmentID()
	if len(cp.segments)+1 > mergeAt {
		// Merge the newest segments, and as few as will do: merging rewrites every entry
		// it reads, and the oldest segment of a large checkpoint holds most of them.
		from, err := mergeFrom(ctx, st, cp)
		if err != nil {
			return nil, fmt.Errorf("merging checkpoint segments: %w", err)
		}
		merged := make(map[string]*File)
		// Older segments below the merged ones may hold keys removed in them: those
		// tombstones are kept. A full merge has nothing below it and keeps none.
		var tombs map[string]bool
		if from > 0 {
			tombs = map[string]bool{}
		}
		for _, old := range cp.segments[from:] {
			data, err := st.readSegment(ctx, cp.Sync, old)
			if err != nil {
				return nil, fmt.Errorf("merging checkpoint segments: %w", err)
			}
			if err := applySegment(data, cp.Sync, old, st.segmentWhere(cp.Sync, old), merged, tombs); err != nil {
				return nil, fmt.Errorf("merging checkpoint segments: %w", err)
			}
		}
		for _, k := range removed {
			delete(merged, k)
			if tombs != nil {
				tombs[k] = true
			}
		}
		for k, f := range files {
			merged[k] = f
			delete(tombs, k)
		}
		files, removed = merged, nil
		for k := range tombs {
			removed = append(removed, k)
		}
		p.obsolete = cp.segments[from:]
		p.segments = append(append(make([]string, 0, from+1), cp.segments[:from]...), id)
	} else {
		if len(cp.segments) == 0 {
			removed = nil
		}
		p.segments = append(append(make([]string, 0, len(cp.segments)+1), cp.segments...), id)
	}
	data, err := encodeSegment(cp.Sync, id, files, removed)
	if err != nil {
		return nil, fmt.Errorf("encoding checkpoint segment of sync %q: %w", cp.Sync, err)
	}
	if err := st.writeSegment(ctx, cp.Sync, id, data); err != nil {
		return nil, fmt.Errorf("saving checkpoint segment: %w", err)
	}
	if p.head, err = encodeHead(cp, gen, nil, p.segments, nil); err != nil {
		return nil, err
	}
	return p, nil
}

// mergeFrom returns the index of the oldest segment a merge includes: the newest two at
// least, and each older one whose size is at most twice what is merged so far (a tiered
// merge). A large old segment is thus rewritten only once the changes merged above it
// are half its size, so the cost of merging, amortized over the saves, stays
// proportional to what changes, not to the checkpoint.
func mergeFrom(ctx context.Context, st segmentStore, cp *Checkpoint) (int, error) {
	stored, err := st.listSegments(ctx, cp.Sync)
	if err != nil {
		// Without sizes (no permission to list, say), merge everything: slower, and
		// just as correct.
		return 0, nil
	}
	from, acc := len(cp.segments), int64(0)
	for from > 0 {
		info, ok := stored[cp.segments[from-1]]
		if !ok {
			return 0, fmt.Errorf("%s: %w", st.segmentWhere(cp.Sync, cp.segments[from-1]), errSegmentMissing)
		}
		if len(cp.segments)-from >= 2 && info.size > 2*acc {
			break
		}
		acc += info.size
		from--
	}
	return from, nil
}

// finish records a written head in cp and, after a compaction, deletes the segments no
// head names any more: those merged away, and orphans of crashed or conflicting saves
// older than orphanAge. Failing to delete loses nothing (a later compaction tries
// again), so it is not an error.
func (p *savePlan) finish(ctx context.Context, st segmentStore, cp *Checkpoint) {
	cp.segments = p.segments
	if !p.compacted {
		return
	}
	cp.live = map[string]uint64{}
	keep := make(map[string]bool, len(p.segments))
	for _, id := range p.segments {
		keep[id] = true
	}
	for _, id := range p.obsolete {
		_ = st.deleteSegment(ctx, cp.Sync, id)
	}
	stored, err := st.listSegments(ctx, cp.Sync)
	if err != nil {
		return
	}
	for id, info := range stored {
		if !keep[id] && info.age >= orphanAge {
			_ = st.deleteSegment(ctx, cp.Sync, id)
		}
	}
}

// decodeLine parses one segment line. Most lines are entries in exactly the shape
// encodeSegment writes (fields in struct order, destinations' counts, strings without
// escapes other than \" and \\), which parseEntry reads about four times faster than
// encoding/json — loading a million entries is most of a run's start. Anything else
// (ranges, a deletion time, a tombstone, escapes) goes to encoding/json.
func decodeLine(line []byte, l *segmentLine) error {
	if parseEntry(line, &l.File) {
		return nil
	}
	*l = segmentLine{}
	return json.Unmarshal(line, l)
}

// parseEntry reads {"key":S,"size":N,"etag":S?,"version_id":S?,"rows":N,"acked":{S:N,…}}
// into f, or returns false (f then holds garbage).
func parseEntry(b []byte, f *File) bool {
	p := entryParser{b: b}
	if !p.lit(`{"key":`) {
		return false
	}
	var ok bool
	if f.Key, ok = p.str(); !ok || f.Key == "" || !p.lit(`,"size":`) {
		return false
	}
	if f.Size, ok = p.num(); !ok {
		return false
	}
	if p.lit(`,"etag":`) {
		if f.ETag, ok = p.str(); !ok {
			return false
		}
	}
	if p.lit(`,"version_id":`) {
		if f.VersionID, ok = p.str(); !ok {
			return false
		}
	}
	if !p.lit(`,"rows":`) {
		return false
	}
	if f.Rows, ok = p.num(); !ok || !p.lit(`,"acked":{`) {
		return false
	}
	f.Acked = make(map[string]int64, 2)
	if !p.lit(`}`) {
		for {
			name, ok := p.str()
			if !ok || !p.lit(`:`) {
				return false
			}
			n, ok := p.num()
			if !ok {
				return false
			}
			f.Acked[name] = n
			if p.lit(`}`) {
				break
			}
			if !p.lit(`,`) {
				return false
			}
		}
	}
	return p.lit(`}`) && p.i == len(p.b)
}

// appendEntry appends f as the line encoding/json would write (but for the order of
// the destinations), in the shape parseEntry reads, or returns nil when f does not fit
// that shape (ranges, a string that is not printable ASCII).
func appendEntry(b []byte, f *File) []byte {
	if f.AckedRanges != nil || f.Key == "" || f.Size < 0 || f.Rows < 0 {
		return nil
	}
	var ok bool
	b = append(b, `{"key":`...)
	if b, ok = appendPlain(b, f.Key); !ok {
		return nil
	}
	b = append(b, `,"size":`...)
	b = strconv.AppendInt(b, f.Size, 10)
	if f.ETag != "" {
		b = append(b, `,"etag":`...)
		if b, ok = appendPlain(b, f.ETag); !ok {
			return nil
		}
	}
	if f.VersionID != "" {
		b = append(b, `,"version_id":`...)
		if b, ok = appendPlain(b, f.VersionID); !ok {
			return nil
		}
	}
	b = append(b, `,"rows":`...)
	b = strconv.AppendInt(b, f.Rows, 10)
	b = append(b, `,"acked":{`...)
	first := true
	for name, n := range f.Acked {
		if n < 0 {
			return nil
		}
		if !first {
			b = append(b, ',')
		}
		first = false
		if b, ok = appendPlain(b, name); !ok {
			return nil
		}
		b = append(b, ':')
		b = strconv.AppendInt(b, n, 10)
	}
	return append(b, "}}\n"...)
}

// appendPlain appends s as a JSON string if it is printable ASCII.
func appendPlain(b []byte, s string) ([]byte, bool) {
	b = append(b, '"')
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c < 0x20 || c > 0x7e {
			return b, false
		}
		if c == '"' || c == '\\' {
			b = append(b, '\\')
		}
		b = append(b, c)
	}
	return append(b, '"'), true
}

type entryParser struct {
	b []byte
	i int
}

func (p *entryParser) lit(s string) bool {
	if len(p.b)-p.i >= len(s) && string(p.b[p.i:p.i+len(s)]) == s {
		p.i += len(s)
		return true
	}
	return false
}

// str reads a JSON string whose only escapes are \" and \\, and whose bytes are
// printable ASCII or valid UTF-8 (what encoding/json accepts unchanged).
func (p *entryParser) str() (string, bool) {
	if p.i >= len(p.b) || p.b[p.i] != '"' {
		return "", false
	}
	p.i++
	start, escaped := p.i, false
	for p.i < len(p.b) {
		c := p.b[p.i]
		switch {
		case c == '"':
			raw := p.b[start:p.i]
			p.i++
			if !utf8.Valid(raw) {
				return "", false
			}
			if !escaped {
				return string(raw), true
			}
			out := make([]byte, 0, len(raw))
			for j := 0; j < len(raw); j++ {
				if raw[j] == '\\' {
					j++
				}
				out = append(out, raw[j])
			}
			return string(out), true
		case c == '\\':
			if p.i+1 >= len(p.b) || (p.b[p.i+1] != '"' && p.b[p.i+1] != '\\') {
				return "", false
			}
			escaped = true
			p.i += 2
		case c < 0x20:
			return "", false
		default:
			p.i++
		}
	}
	return "", false
}

// num reads a non-negative decimal integer without sign, fraction or exponent.
func (p *entryParser) num() (int64, bool) {
	start := p.i
	var n int64
	for p.i < len(p.b) && p.b[p.i] >= '0' && p.b[p.i] <= '9' {
		if n > (math.MaxInt64-9)/10 {
			return 0, false
		}
		n = n*10 + int64(p.b[p.i]-'0')
		p.i++
	}
	if p.i == start || (p.b[start] == '0' && p.i-start > 1) {
		return 0, false
	}
	return n, true
}
