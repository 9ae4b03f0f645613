package state

import (
	"bytes"
	"context"
	"encoding/binary"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"runtime"
	"slices"
	"strconv"
	"strings"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	hashesBucket = []byte("hashes")
	metaBucket   = []byte("meta")
	versionKey   = []byte("version")
	// destBitsKey maps destination names to their bit in entry masks (JSON);
	// legacyMaskKey is the mask that entries written before masks existed stand for.
	destBitsKey   = []byte("dest_bits")
	legacyMaskKey = []byte("legacy_mask")
)

// hashStoreVersion is the row-hash store's format: 2 added the per-destination masks
// (older builds refuse it as newer rather than misread it).
const hashStoreVersion = 2

// maxDestinations is how many destination names one store can tell apart (mask bits).
const maxDestinations = 64

// Stored keys and hashes are tagged: lowercase hex of even length (message ids and
// content hashes) is stored decoded, at half the size; anything else is stored as is.
// The tag keeps the encoding one-to-one.
const (
	tagHex byte = 0
	tagRaw byte = 1
)

func isLowerHex(s string) bool {
	if len(s) == 0 || len(s)%2 != 0 {
		return false
	}
	for i := 0; i < len(s); i++ {
		c := s[i]
		if (c < '0' || c > '9') && (c < 'a' || c > 'f') {
			return false
		}
	}
	return true
}

// appendEncoded appends the stored form of s to dst.
func appendEncoded(dst []byte, s string) []byte {
	if isLowerHex(s) {
		// isLowerHex checked every character, so decoding cannot fail.
		if out, err := hex.AppendDecode(append(dst, tagHex), []byte(s)); err == nil {
			return out
		}
	}
	dst = append(dst, tagRaw)
	return append(dst, s...)
}

// tagMasked starts a value of format 2: tagMasked, the destination mask (uvarint), then
// the hash in its tagged stored form. Values without it (tagHex, tagRaw) were written
// before masks existed and stand for the store's legacy mask.
const tagMasked byte = 2

// HashEntry is what the row-hash store keeps of a key: the content hash last
// acknowledged for it and, as a bit set over the store's destination bits (Bits), the
// destinations that acknowledged exactly that content.
type HashEntry struct {
	Hash  string
	Dests uint64
}

// Acked tells whether the destination of bit acknowledged hash for this key.
func (e HashEntry) Acked(bit uint, hash string) bool {
	return e.Hash != "" && e.Hash == hash && e.Dests&(1<<bit) != 0
}

// merge returns what the store keeps after e was recorded over old: the same content
// adds its destinations; other content replaces the entry.
func (e HashEntry) merge(old HashEntry) HashEntry {
	if old.Hash == e.Hash {
		e.Dests |= old.Dests
	}
	return e
}

func appendValue(dst []byte, e HashEntry) []byte {
	dst = append(dst, tagMasked)
	dst = binary.AppendUvarint(dst, e.Dests)
	return appendEncoded(dst, e.Hash)
}

func decodeValue(b []byte, legacy uint64) (HashEntry, error) {
	if len(b) > 0 && b[0] == tagMasked {
		mask, n := binary.Uvarint(b[1:])
		if n <= 0 {
			return HashEntry{}, errors.New("bad destination mask")
		}
		h, err := decodeStored(b[1+n:])
		return HashEntry{Hash: h, Dests: mask}, err
	}
	h, err := decodeStored(b)
	return HashEntry{Hash: h, Dests: legacy}, err
}

func decodeStored(b []byte) (string, error) {
	if len(b) == 0 {
		return "", errors.New("empty entry")
	}
	switch b[0] {
	case tagHex:
		return hex.EncodeToString(b[1:]), nil
	case tagRaw:
		return string(b[1:]), nil
	}
	return "", fmt.Errorf("unknown entry tag %d", b[0])
}

// boltHashes is a row-hash store in a bbolt file: the state directory's own file, or a
// local copy of an S3 object that upload sends back.
//
// Put collects its pairs in memory and writes them, sorted, when about pendingLimit
// bytes are pending, and on Commit and Close. Keys are random (hashes of identifiers),
// so a flush touches most leaf pages of the tree whatever its size; sorting makes each
// page be rewritten once per flush rather than once per Put call.
//
// A flush is written in several transactions of consecutive keys, each rewriting a
// bounded number of pages (about 1/16 of the tree): bbolt copies every page a transaction changes
// and can reuse the old copies only after the commit, so one transaction over the whole
// tree needed the tree's size again in free space, and the file doubled. Writing a flush
// in slices keeps that extra space to a slice's worth; the total written stays the same,
// since every slice touches only the pages of its own key range. Get and Len see pending
// pairs; nothing is durable before Commit, which is the contract (what a flush already
// wrote may survive a crash: it is only more of what the run delivered).
//
// Random inserts still leave pages about two-thirds full (splits), and a store that
// shrank keeps its free pages: Close (local) and Commit (s3, before the upload) rewrite
// the file densely when that reclaims enough (compact).
type boltHashes struct {
	db    *bolt.DB
	path  string // the bbolt file
	where string // path or s3:// URL, for messages
	sync  string

	// noSync: a private temporary copy whose durability comes from its upload.
	noSync   bool
	readOnly bool

	// mu serializes every operation: the store belongs to one run, and a Get must not
	// run between a flush's removal of pending pairs and its commit.
	mu     sync.Mutex
	closed bool
	// bits maps destination names to their mask bit; legacy is the mask of entries
	// written before masks existed.
	bits   map[string]uint
	legacy uint64
	// pending maps stored keys to stored values ("" deletes) not yet written.
	pending      map[string]string
	pendingBytes int
	pendingLimit int
	// dirty is set when the database changed since the last upload.
	dirty bool

	// The file is compacted when it is larger than compactRatio times its live bytes
	// and the rewrite would reclaim at least compactMin bytes (tests change both).
	compactRatio float64
	compactMin   int64
	// compactErr is a failed compaction of an s3 store's copy before an upload, which
	// went ahead with the uncompacted copy; Close reports it.
	compactErr error

	// upload, when set, copies the database to its remote home (s3 state): Commit and
	// Close call it when something changed. cleanup runs after Close.
	upload  func(ctx context.Context, db *bolt.DB) error
	cleanup func()
}

// defaultPendingLimit bounds the memory of pending Puts: about 16 MiB of accounted
// bytes, some 150,000 pairs of 32-character hex keys and hashes.
const defaultPendingLimit = 16 << 20

// pendingOverhead approximates a map entry's memory beyond its key and value bytes.
const pendingOverhead = 64

const (
	// denseFill is how full bbolt fills pages when keys arrive in order: appends past
	// the last key and compaction. Not 1.0: a page left with a tenth free takes the next
	// runs' new keys without splitting, where a full page would split into two halves
	// at the first insert (measured: after compacting a million keys, 50,000 new random
	// keys grew the tree by 2% from 0.9, by 99% from 1.0).
	denseFill = 0.9

	// Flush transactions stop after touching about 1/16 of the tree's pages, within
	// these bounds (pages).
	minFlushPages = 256
	maxFlushPages = 4096

	// allocSize is how far bbolt grows the file past its high-water mark (default
	// 16 MiB). Flushes commit in slices, so the file grows at most once per commit.
	allocSize = 1 << 20

	// Compaction: when the file exceeds defaultCompactRatio × the live bytes and at least
	// defaultCompactMin bytes would be reclaimed (less is regrown by the next run's
	// flush slices). Measured on a million random keys (50 MB live): a first run leaves
	// 1.56× (pages two-thirds full, as random inserts into a B-tree do, plus a flush
	// slice of free pages); compacted, the file is 1.11×; a later run that updates 10,000
	// keys or adds 5% brings it to 1.2–1.25×, one that adds 20% to 1.9×. The ratio
	// rewrites the first and the last kind, not the common small run.
	defaultCompactRatio = 1.35
	defaultCompactMin   = 2 << 20
	// compactRate is a cautious compaction speed, in live bytes a second (measured:
	// 50 MB in 0.7 s on a 2-core virtual machine).
	compactRate = 20 << 20
	// compactTxBytes bounds the keys and values copied per transaction while
	// compacting: the destination's dirty pages are held in memory until each commit.
	compactTxBytes = 4 << 20
)

// openBoltHashes opens (creating) the bbolt file at path. noSync skips fsync on every
// transaction, for a temporary copy whose durability comes from its upload.
func openBoltHashes(path, where, sync string, noSync bool, lockTimeout time.Duration) (h *boltHashes, err error) {
	return openBolt(path, where, sync, noSync, false, lockTimeout)
}

// openBolt opens the bbolt file at path; readOnly opens an existing file without ever
// writing to it (a dry run).
func openBolt(path, where, sync string, noSync, readOnly bool, lockTimeout time.Duration) (h *boltHashes, err error) {
	corrupt := func(e error) error {
		return &CorruptError{What: "row-hash store", Where: where, Sync: sync, Err: e}
	}
	// bbolt may panic on a damaged file; that is a corrupt store, not a crash.
	defer func() {
		if r := recover(); r != nil {
			h, err = nil, corrupt(fmt.Errorf("%v", r))
		}
	}()
	db, err := lockCurrent(path, where, sync, noSync, readOnly, lockTimeout)
	if err != nil {
		return nil, err
	}
	check := db.Update
	if readOnly {
		check = func(fn func(*bolt.Tx) error) error {
			return db.View(func(tx *bolt.Tx) error {
				meta := tx.Bucket(metaBucket)
				if meta == nil || tx.Bucket(hashesBucket) == nil {
					return corrupt(errors.New("missing buckets"))
				}
				if v := meta.Get(versionKey); v != nil {
					if n, err := strconv.Atoi(string(v)); err != nil {
						return corrupt(fmt.Errorf("bad format version %q", v))
					} else if n > hashStoreVersion {
						return &NewerFormatError{What: "row-hash store", Where: where, Version: n}
					}
				}
				return nil
			})
		}
	}
	err = check(func(tx *bolt.Tx) error {
		meta, err := tx.CreateBucketIfNotExists(metaBucket)
		if err != nil {
			return err
		}
		if v := meta.Get(versionKey); v != nil {
			n, err := strconv.Atoi(string(v))
			if err != nil {
				return corrupt(fmt.Errorf("bad format version %q", v))
			}
			if n > hashStoreVersion {
				return &NewerFormatError{What: "row-hash store", Where: where, Version: n}
			}
		}
		if err := meta.Put(versionKey, []byte(strconv.Itoa(hashStoreVersion))); err != nil {
			return err
		}
		_, err = tx.CreateBucketIfNotExists(hashesBucket)
		return err
	})
	if err != nil {
		_ = db.Close()
		var ce *CorruptError
		var ne *NewerFormatError
		if errors.As(err, &ce) || errors.As(err, &ne) {
			return nil, err
		}
		return nil, fmt.Errorf("opening row-hash store %s: %w", where, err)
	}
	if !readOnly && !noSync {
		// Holding the lock of the current file: no compaction is under way, so any
		// temporary file of one is a leftover of a crash. (A private copy's directory
		// is the system's temporary one, not worth listing.)
		removeCompactionTemps(path)
	}
	h = &boltHashes{
		db: db, path: path, where: where, sync: sync, noSync: noSync, readOnly: readOnly,
		pending: map[string]string{}, pendingLimit: defaultPendingLimit,
		compactRatio: defaultCompactRatio, compactMin: defaultCompactMin,
	}
	if err := h.loadBits(); err != nil {
		_ = db.Close()
		return nil, corrupt(err)
	}
	return h, nil
}

// lockCurrent opens path with bbolt, which locks the file (flock: exclusive, shared when
// readOnly), and makes sure that the locked file is still the one at path. A compaction
// or a reset replaces or removes the file while holding its lock; an opener that was
// waiting for that lock then gets the lock of a file no longer in the directory, where
// its writes would be lost. It opens path again in that case.
func lockCurrent(path, where, sync string, noSync, readOnly bool, lockTimeout time.Duration) (*bolt.DB, error) {
	var deadline time.Time
	if lockTimeout > 0 {
		deadline = time.Now().Add(lockTimeout)
	}
	for attempt := 0; ; attempt++ {
		timeout := lockTimeout
		if lockTimeout > 0 {
			// At least one try after a replacement, even at the deadline.
			timeout = max(time.Until(deadline), 10*time.Millisecond)
		}
		var file *os.File
		db, err := bolt.Open(path, filePerm, &bolt.Options{
			Timeout: timeout,
			// The free list is rebuilt on open rather than written on every commit: faster
			// commits, and nothing to get wrong after a crash.
			NoFreelistSync: true,
			FreelistType:   bolt.FreelistMapType,
			NoSync:         noSync,
			NoGrowSync:     noSync,
			ReadOnly:       readOnly,
			OpenFile: func(name string, flag int, perm os.FileMode) (*os.File, error) {
				f, err := os.OpenFile(name, flag, perm)
				file = f
				return f, err
			},
		})
		switch {
		case errors.Is(err, bolterrors.ErrTimeout):
			return nil, fmt.Errorf("row-hash store %s is in use by another backflow run of sync %q", where, sync)
		case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch),
			errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrInvalidMapping):
			return nil, &CorruptError{What: "row-hash store", Where: where, Sync: sync, Err: err}
		case err != nil:
			return nil, fmt.Errorf("opening row-hash store %s: %w", where, err)
		}
		same, err := isCurrent(file, path)
		if err != nil {
			_ = db.Close()
			return nil, fmt.Errorf("opening row-hash store %s: %w", where, err)
		}
		if same {
			if !readOnly {
				db.AllocSize = allocSize
			}
			return db, nil
		}
		_ = db.Close()
		if attempt == 100 {
			return nil, fmt.Errorf("opening row-hash store %s: the file kept being replaced while it was opened", where)
		}
	}
}

// isCurrent tells whether f (locked) is the file now at path; false when path was
// replaced or removed.
func isCurrent(f *os.File, path string) (bool, error) {
	if f == nil {
		return false, errors.New("bbolt opened no file")
	}
	locked, err := f.Stat()
	if err != nil {
		return false, err
	}
	now, err := os.Stat(path)
	if errors.Is(err, os.ErrNotExist) {
		return false, nil
	}
	if err != nil {
		return false, err
	}
	return os.SameFile(locked, now), nil
}

// begin checks that the store is usable and holds its lock until the returned func runs.
func (h *boltHashes) begin(ctx context.Context) (func(), error) {
	if err := ctx.Err(); err != nil {
		return nil, err
	}
	h.mu.Lock()
	if h.closed {
		h.mu.Unlock()
		return nil, fmt.Errorf("row-hash store %s is closed", h.where)
	}
	if h.db == nil {
		h.mu.Unlock()
		return nil, fmt.Errorf("row-hash store %s is unusable: its compacted copy could not be reopened", h.where)
	}
	return h.mu.Unlock, nil
}

// guard turns a bbolt panic (a damaged page) into a corrupt-store error.
func (h *boltHashes) guard(err *error) {
	if r := recover(); r != nil {
		*err = &CorruptError{What: "row-hash store", Where: h.where, Sync: h.sync, Err: fmt.Errorf("%v", r)}
	}
}

// loadBits reads the destination bits and the legacy mask from the meta bucket; nil
// bits means the store has not met destinations yet (Bits decides the legacy mask).
func (h *boltHashes) loadBits() error {
	return h.db.View(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if meta == nil {
			return nil
		}
		if v := meta.Get(destBitsKey); v != nil {
			if err := json.Unmarshal(v, &h.bits); err != nil {
				return fmt.Errorf("destination bits: %w", err)
			}
		}
		if v := meta.Get(legacyMaskKey); v != nil {
			mask, n := binary.Uvarint(v)
			if n <= 0 {
				return errors.New("bad legacy mask")
			}
			h.legacy = mask
		}
		return nil
	})
}

// Bits returns the mask bit of each destination, giving new names bits of their own
// (kept in the store). The first call on a store written before masks existed decides
// what its entries stand for: every destination named in legacy acknowledged them.
func (h *boltHashes) Bits(ctx context.Context, dests, legacy []string) (out []uint, err error) {
	done, err := h.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer h.guard(&err)
	changed := false
	assign := func(name string) (uint, error) {
		if b, ok := h.bits[name]; ok {
			return b, nil
		}
		used := make(map[uint]bool, len(h.bits))
		for _, b := range h.bits {
			used[b] = true
		}
		for b := uint(0); b < maxDestinations; b++ {
			if !used[b] {
				h.bits[name] = b
				changed = true
				return b, nil
			}
		}
		return 0, fmt.Errorf("row-hash store %s: more than %d destination names were used with sync %q; run `backflow state reset --sync %s`", h.where, maxDestinations, h.sync, h.sync)
	}
	if h.bits == nil {
		h.bits = map[string]uint{}
		changed = true
		for _, name := range legacy {
			b, err := assign(name)
			if err != nil {
				return nil, err
			}
			h.legacy |= 1 << b
		}
	}
	out = make([]uint, len(dests))
	for i, name := range dests {
		if out[i], err = assign(name); err != nil {
			return nil, err
		}
	}
	if !changed || h.readOnly {
		return out, nil // a read-only store keeps new bits in memory: nothing is written
	}
	data, err := json.Marshal(h.bits)
	if err != nil {
		return nil, err
	}
	err = h.db.Update(func(tx *bolt.Tx) error {
		meta := tx.Bucket(metaBucket)
		if err := meta.Put(destBitsKey, data); err != nil {
			return err
		}
		return meta.Put(legacyMaskKey, binary.AppendUvarint(nil, h.legacy))
	})
	if err != nil {
		return nil, h.wrap("writing destination bits of", err)
	}
	h.dirty = true
	return out, nil
}

// Get looks the keys up in key order in one read transaction (sorted lookups walk the
// tree's pages in order) and merges what is pending for them.
func (h *boltHashes) Get(ctx context.Context, keys []string) (out []HashEntry, err error) {
	done, err := h.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer h.guard(&err)
	out = make([]HashEntry, len(keys))
	type lookup struct {
		k []byte
		i int
	}
	var arena []byte
	lookups := make([]lookup, 0, len(keys))
	for i, k := range keys {
		start := len(arena)
		arena = appendEncoded(arena, k)
		lookups = append(lookups, lookup{i: i, k: arena[start:]})
	}
	// Subslices of earlier arena arrays stay valid after append reallocates.
	slices.SortFunc(lookups, func(a, b lookup) int { return bytes.Compare(a.k, b.k) })
	err = h.db.View(func(tx *bolt.Tx) error {
		b := tx.Bucket(hashesBucket)
		for n, l := range lookups {
			if n%4096 == 4095 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			var stored HashEntry
			if v := b.Get(l.k); v != nil {
				e, err := h.decode(keys[l.i], v)
				if err != nil {
					return err
				}
				stored = e
			}
			if v, ok := h.pending[string(l.k)]; ok {
				if v == "" {
					stored = HashEntry{} // a pending delete
				} else {
					e, err := h.decode(keys[l.i], []byte(v))
					if err != nil {
						return err
					}
					stored = e.merge(stored)
				}
			}
			out[l.i] = stored
		}
		return nil
	})
	if err != nil {
		return nil, h.wrap("reading", err)
	}
	return out, nil
}

func (h *boltHashes) decode(key string, v []byte) (HashEntry, error) {
	e, err := decodeValue(v, h.legacy)
	if err != nil {
		return HashEntry{}, &CorruptError{What: "row-hash store", Where: h.where, Sync: h.sync, Err: fmt.Errorf("key %q: %w", key, err)}
	}
	return e, nil
}

// Put records that the destination of bit acknowledged hashes[i] for keys[i] (an
// empty hash deletes the key for every destination). A hash equal to the stored one adds
// the destination to it; another hash replaces the entry. They are written with the next
// flush: when enough are pending, or on Commit or Close.
func (h *boltHashes) Put(ctx context.Context, bit uint, keys, hashes []string) (err error) {
	if len(keys) != len(hashes) {
		return fmt.Errorf("row-hash store %s: %d keys but %d hashes", h.where, len(keys), len(hashes))
	}
	if bit >= maxDestinations {
		return fmt.Errorf("row-hash store %s: destination bit %d out of range", h.where, bit)
	}
	done, err := h.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	var kbuf, vbuf []byte
	for i, k := range keys {
		kbuf = appendEncoded(kbuf[:0], k)
		if len(kbuf) > bolt.MaxKeySize {
			return fmt.Errorf("row-hash store %s: key %.40q… is longer than %d bytes", h.where, k, bolt.MaxKeySize)
		}
		vbuf = vbuf[:0]
		if hashes[i] != "" {
			e := HashEntry{Hash: hashes[i], Dests: 1 << bit}
			if old, ok := h.pending[string(kbuf)]; ok && old != "" {
				oe, err := h.decode(k, []byte(old))
				if err != nil {
					return err
				}
				e = e.merge(oe)
			}
			vbuf = appendValue(vbuf, e)
		}
		old, had := h.pending[string(kbuf)]
		h.pending[string(kbuf)] = string(vbuf)
		if had {
			h.pendingBytes += len(vbuf) - len(old)
		} else {
			h.pendingBytes += len(kbuf) + len(vbuf) + pendingOverhead
		}
	}
	if h.pendingBytes >= h.pendingLimit {
		return h.flush(ctx)
	}
	return nil
}

// flush writes the pending pairs in key order, in transactions of consecutive keys that
// each rewrite a bounded number of pages (see boltHashes). Pairs leave pending as their
// transaction commits, so an error or a cancellation leaves exactly the unwritten ones.
func (h *boltHashes) flush(ctx context.Context) (err error) {
	if len(h.pending) == 0 {
		return nil
	}
	defer h.guard(&err)
	keys := make([]string, 0, len(h.pending))
	for k := range h.pending {
		keys = append(keys, k)
	}
	slices.Sort(keys)
	for len(keys) > 0 {
		n, err := h.writeSlice(ctx, keys)
		for _, k := range keys[:n] {
			h.pendingBytes -= len(k) + len(h.pending[k]) + pendingOverhead
			delete(h.pending, k)
		}
		if n > 0 {
			h.dirty = true
		}
		if err != nil {
			return h.wrap("writing", err)
		}
		keys = keys[n:]
	}
	h.pendingBytes = 0
	return nil
}

// writeSlice writes a prefix of the sorted pending keys in one transaction and returns
// its length (0 on error). It stops once the transaction touched its page budget, and
// before the first key past the tree's last one: from there on keys are appended, and
// pages filled to denseFill will not be split again by this flush. bbolt's own split
// point, half a page, suits the random inserts before that: measured on a million
// random keys, a higher fill percent there leaves the tree larger, not smaller, since
// a page split at 0.9 leaves a nearly full page that splits again at the next insert.
func (h *boltHashes) writeSlice(ctx context.Context, keys []string) (n int, err error) {
	err = h.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(hashesBucket)
		last, _ := b.Cursor().Last()
		lastKey := string(last)
		appending := last == nil || keys[0] > lastKey
		if appending {
			b.FillPercent = denseFill
		}
		pages := tx.Size() / int64(h.db.Info().PageSize)
		budget := min(max(pages/16, minFlushPages), maxFlushPages)
		for i, k := range keys {
			if i%4096 == 4095 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			if !appending && k > lastKey {
				n = i
				return nil
			}
			v := h.pending[k]
			var err error
			if v == "" {
				err = b.Delete([]byte(k))
			} else {
				val := []byte(v)
				if old := b.Get([]byte(k)); old != nil {
					// The same content acknowledged by other destinations keeps them.
					oe, derr := h.decode(k[1:], old)
					if derr != nil {
						return derr
					}
					ne, derr := h.decode(k[1:], val)
					if derr != nil {
						return derr
					}
					if merged := ne.merge(oe); merged.Dests != ne.Dests {
						val = appendValue(nil, merged)
					}
				}
				err = b.Put([]byte(k), val)
			}
			if err != nil {
				return fmt.Errorf("key %q: %w", k[1:], err)
			}
			if i%64 == 63 {
				// NodeCount counts the pages this transaction read into nodes to change.
				if st := tx.Stats(); st.GetNodeCount() >= budget {
					n = i + 1
					return nil
				}
			}
		}
		n = len(keys)
		return nil
	})
	if err != nil {
		return 0, err
	}
	return n, nil
}

func (h *boltHashes) Clear(ctx context.Context) (err error) {
	done, err := h.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	defer h.guard(&err)
	clear(h.pending)
	h.pendingBytes = 0
	err = h.db.Update(func(tx *bolt.Tx) error {
		if err := tx.DeleteBucket(hashesBucket); err != nil && !errors.Is(err, bolterrors.ErrBucketNotFound) {
			return err
		}
		_, err := tx.CreateBucket(hashesBucket)
		return err
	})
	if err != nil {
		return h.wrap("clearing", err)
	}
	h.dirty = true
	return nil
}

func (h *boltHashes) Len(ctx context.Context) (n int, err error) {
	done, err := h.begin(ctx)
	if err != nil {
		return 0, err
	}
	defer done()
	defer h.guard(&err)
	if err := h.flush(ctx); err != nil {
		return 0, err
	}
	err = h.db.View(func(tx *bolt.Tx) error {
		n = tx.Bucket(hashesBucket).Stats().KeyN
		return nil
	})
	if err != nil {
		return 0, h.wrap("counting", err)
	}
	return n, nil
}

func (h *boltHashes) Commit(ctx context.Context) error {
	done, err := h.begin(ctx)
	if err != nil {
		return err
	}
	defer done()
	return h.commit(ctx)
}

func (h *boltHashes) commit(ctx context.Context) error {
	if err := h.flush(ctx); err != nil {
		return err
	}
	if h.upload == nil {
		// Every transaction of a local store is fsynced by bbolt as it commits; Sync
		// is a cheap safety net.
		if err := h.db.Sync(); err != nil {
			return fmt.Errorf("syncing row-hash store %s: %w", h.where, err)
		}
		return nil
	}
	if !h.dirty {
		return nil
	}
	// The copy is uploaded whole: compacting it first makes the upload smaller too.
	if h.compactErr == nil {
		if err := h.compactIfWorth(ctx, true); err != nil {
			if h.db == nil {
				return err // nothing left to upload (begin and Close see it)
			}
			// The copy is whole: upload it as it is.
			h.compactErr = err
		}
	}
	if err := h.upload(ctx, h.db); err != nil {
		return err
	}
	h.dirty = false
	return nil
}

// Close commits and closes; the store is released even when the commit fails. A local
// store is compacted when that is worth it (see compactIfWorth); a failed compaction
// leaves the saved store as it was and is reported.
func (h *boltHashes) Close(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	var err error
	switch {
	case h.db == nil:
		err = fmt.Errorf("row-hash store %s is unusable: its compacted copy could not be reopened", h.where)
	case h.upload == nil && !h.readOnly:
		// Only after a run that wrote: deciding reads every page's header, which a run
		// that only read may not have had to bring into memory.
		if err = h.commit(ctx); err == nil && h.dirty {
			err = h.compactIfWorth(ctx, false)
		}
	default:
		if err = h.commit(ctx); err == nil {
			err = h.compactErr
		}
	}
	if err != nil && errors.Is(err, errCompaction) {
		err = fmt.Errorf("row-hash store %s is saved, but %w", h.where, err)
	}
	if h.db != nil {
		if cerr := h.db.Close(); cerr != nil && err == nil {
			err = fmt.Errorf("closing row-hash store %s: %w", h.where, cerr)
		}
	}
	if h.cleanup != nil {
		h.cleanup()
	}
	return err
}

// errCompaction marks the errors of a compaction that left the store whole.
var errCompaction = errors.New("compacting it failed")

// compactIfWorth rewrites the file densely when it is larger than compactRatio times
// the bytes its pages hold and that would reclaim at least compactMin bytes. The new
// file is written beside the old one, fsynced (unless noSync) and renamed over it, and
// the directory is fsynced: a crash at any moment leaves the old or the new file, whole.
//
// The old file's lock is held until the new file is in place, and the new file is
// locked (opened with bbolt) before it replaces the old one, so the file at path is
// locked throughout; an opener that was waiting for the old file's lock finds it
// replaced and opens the new one (lockCurrent).
//
// With reopen, h.db is the compacted file afterwards; otherwise it is closed and nil
// (Close). A failed compaction leaves the old file whole and returns an error wrapping
// errCompaction; h.db is then the old file, open, unless it had to be closed (Windows,
// see replace). With reopen, h.db is nil when no file could be reopened: the store is
// unusable.
func (h *boltHashes) compactIfWorth(ctx context.Context, reopen bool) (err error) {
	defer h.guard(&err)
	fi, err := os.Stat(h.path)
	if err != nil {
		return fmt.Errorf("%w: %w", errCompaction, err)
	}
	var live int64
	var entries int
	pageSize := int64(h.db.Info().PageSize)
	err = h.db.View(func(tx *bolt.Tx) error {
		// Two meta pages, the free list page and the root bucket's page.
		live = 4 * pageSize
		return tx.ForEach(func(_ []byte, b *bolt.Bucket) error {
			s := b.Stats()
			live += int64(s.LeafInuse + s.BranchInuse)
			entries += s.KeyN
			return nil
		})
	})
	if err != nil {
		return fmt.Errorf("%w: %w", errCompaction, err)
	}
	size := fi.Size()
	if float64(size) <= h.compactRatio*float64(live) || size-int64(float64(live)/denseFill) < h.compactMin {
		return nil
	}
	// A compaction that cannot finish before ctx's deadline would only be thrown away.
	if dl, ok := ctx.Deadline(); ok && time.Until(dl) < time.Duration(float64(live)/compactRate*float64(time.Second)) {
		return nil
	}
	return h.compact(ctx, entries, fi.Mode().Perm(), reopen)
}

// compact rewrites the file; see compactIfWorth. entries is the number of keys the copy
// must hold; perm is the file's permissions, which the copy keeps.
func (h *boltHashes) compact(ctx context.Context, entries int, perm os.FileMode, reopen bool) error {
	dir, base := filepath.Split(h.path)
	if dir == "" {
		dir = "."
	}
	tmp, err := os.CreateTemp(dir, compactionTemp(base)+"*")
	if err != nil {
		return fmt.Errorf("%w: %w", errCompaction, err)
	}
	tmpPath := tmp.Name()
	err = tmp.Chmod(perm)
	if cerr := tmp.Close(); err == nil {
		err = cerr
	}
	var dst *bolt.DB
	if err == nil {
		dst, err = h.writeCompacted(ctx, tmpPath, entries)
	}
	if err == nil {
		dst, err = h.replace(dst, tmpPath)
	}
	if err != nil {
		if dst != nil {
			_ = dst.Close()
		}
		_ = os.Remove(tmpPath)
		return fmt.Errorf("%w: %w", errCompaction, err)
	}
	// The new file is in place.
	if !h.noSync {
		if serr := syncDir(dir); serr != nil {
			// Only the rename's durability is in doubt: a crash would leave the old
			// file, whole.
			err = fmt.Errorf("%w: syncing directory %s: %w", errCompaction, dir, serr)
		}
	}
	if dst != nil {
		_ = dst.Close()
	}
	if h.db != nil {
		// Releases the old file's lock, now that the new file is in place and locked.
		_ = h.db.Close()
		h.db = nil
	}
	if !reopen {
		return err
	}
	n, oerr := openBolt(h.path, h.where, h.sync, h.noSync, false, 0)
	if oerr != nil {
		return fmt.Errorf("reopening row-hash store %s after compacting it: %w", h.where, oerr)
	}
	h.db = n.db
	return err
}

// writeCompacted writes the store's entries into a new bbolt file at path and makes it
// durable (unless noSync). The returned database is open (it holds the new file's
// lock), also when err is not nil.
func (h *boltHashes) writeCompacted(ctx context.Context, path string, entries int) (*bolt.DB, error) {
	// The copy's durability comes from the fsync at the end; bbolt's per-commit fsyncs
	// and its truncations would only slow it down.
	dst, err := bolt.Open(path, filePerm, &bolt.Options{
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		NoSync:         true,
		NoGrowSync:     true,
	})
	if err != nil {
		return nil, fmt.Errorf("creating %s: %w", path, err)
	}
	copied, err := copyBuckets(ctx, dst, h.db)
	if err != nil {
		return dst, fmt.Errorf("copying into %s: %w", path, err)
	}
	if copied != entries {
		return dst, fmt.Errorf("copying into %s: %d entries copied, the store holds %d", path, copied, entries)
	}
	if !h.noSync {
		if err := fsyncPath(path); err != nil {
			return dst, err
		}
	}
	return dst, nil
}

// replace renames the compacted file at tmpPath over the store's file. On Unix both stay
// open (locked) through the rename. Windows renames no file over an open one: both are
// closed first, so an opener may come in between and hold the old file open; the rename
// then fails, and the old file stays. h.db is then nil, except for a private copy
// (noSync), which nobody else opens: it is reopened.
func (h *boltHashes) replace(dst *bolt.DB, tmpPath string) (*bolt.DB, error) {
	if runtime.GOOS != "windows" {
		if err := os.Rename(tmpPath, h.path); err != nil {
			return dst, fmt.Errorf("replacing %s: %w", h.path, err)
		}
		return dst, nil
	}
	if err := dst.Close(); err != nil {
		return nil, fmt.Errorf("closing %s: %w", tmpPath, err)
	}
	if err := h.db.Close(); err != nil {
		return nil, fmt.Errorf("closing %s: %w", h.path, err)
	}
	h.db = nil
	err := os.Rename(tmpPath, h.path)
	if err == nil {
		return nil, nil
	}
	err = fmt.Errorf("replacing %s: %w", h.path, err)
	if h.noSync {
		old, oerr := openBolt(h.path, h.where, h.sync, h.noSync, false, 0)
		if oerr != nil {
			return nil, fmt.Errorf("%w; reopening it: %w", err, oerr)
		}
		h.db = old.db
	}
	return nil, err
}

// copyBuckets copies every bucket of src into dst (empty) in key order, its pages filled
// to denseFill, in transactions of about compactTxBytes, and returns the number of keys
// copied. The row-hash store has no nested buckets; one is an error.
func copyBuckets(ctx context.Context, dst, src *bolt.DB) (copied int, err error) {
	err = src.View(func(stx *bolt.Tx) error {
		return stx.ForEach(func(name []byte, sb *bolt.Bucket) error {
			c := sb.Cursor()
			k, v := c.First()
			created := false
			for !created || k != nil {
				err := dst.Update(func(tx *bolt.Tx) error {
					b := tx.Bucket(name)
					if !created {
						var err error
						if b, err = tx.CreateBucket(name); err != nil {
							return fmt.Errorf("bucket %q: %w", name, err)
						}
						if err := b.SetSequence(sb.Sequence()); err != nil {
							return err
						}
						created = true
					}
					b.FillPercent = denseFill
					// Values are not copied by Put: they point into src's pages, which stay
					// mapped while its read transaction is open.
					for size := 0; k != nil && size < compactTxBytes; k, v = c.Next() {
						if v == nil {
							return fmt.Errorf("bucket %q: nested bucket %q", name, k)
						}
						if err := b.Put(k, v); err != nil {
							return fmt.Errorf("bucket %q: key %x: %w", name, k, err)
						}
						size += len(k) + len(v)
						copied++
					}
					return ctx.Err()
				})
				if err != nil {
					return err
				}
			}
			return nil
		})
	})
	return copied, err
}

// compactionTemp is the prefix of a compaction's temporary file for the file named base.
// A leading dot: sync names cannot start with one, so no store's file has it.
func compactionTemp(base string) string { return "." + base + ".compact-" }

// removeCompactionTemps removes what a crashed compaction of path left behind; the
// caller holds the lock of the file at path.
func removeCompactionTemps(path string) {
	dir, base := filepath.Split(path)
	if dir == "" {
		dir = "."
	}
	entries, _ := os.ReadDir(dir)
	for _, e := range entries {
		if strings.HasPrefix(e.Name(), compactionTemp(base)) {
			_ = os.Remove(filepath.Join(dir, e.Name()))
		}
	}
}

func fsyncPath(path string) error {
	f, err := os.Open(path)
	if err != nil {
		return err
	}
	defer f.Close()
	if err := f.Sync(); err != nil {
		return fmt.Errorf("syncing %s: %w", path, err)
	}
	return nil
}

func (h *boltHashes) wrap(op string, err error) error {
	var ce *CorruptError
	if errors.As(err, &ce) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%s row-hash store %s: %w", op, h.where, err)
}
