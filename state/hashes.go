package state

import (
	"bytes"
	"context"
	"encoding/hex"
	"errors"
	"fmt"
	"slices"
	"strconv"
	"sync"
	"time"

	bolt "go.etcd.io/bbolt"
	bolterrors "go.etcd.io/bbolt/errors"
)

var (
	hashesBucket = []byte("hashes")
	metaBucket   = []byte("meta")
	versionKey   = []byte("version")
)

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
// Put collects its pairs in memory and writes them in one transaction, sorted, when
// about pendingLimit bytes are pending, and on Commit and Close. Keys are random (hashes
// of identifiers), so every transaction rewrites most leaf pages of the tree whatever its
// size: a million keys written in calls of 10,000 would rewrite the whole tree a hundred
// times. Writing the buffer in a few large transactions keeps that to a handful. Get
// and Len see pending pairs; nothing is durable before Commit, which is the contract.
type boltHashes struct {
	db    *bolt.DB
	where string // path or s3:// URL, for messages
	sync  string

	// mu serializes every operation: the store belongs to one run, and a Get must not
	// run between a flush's removal of pending pairs and its commit.
	mu     sync.Mutex
	closed bool
	// pending maps stored keys to stored values ("" deletes) not yet written.
	pending      map[string]string
	pendingBytes int
	pendingLimit int
	// dirty is set when the database changed since the last upload.
	dirty bool

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
	db, err := bolt.Open(path, filePerm, &bolt.Options{
		Timeout: lockTimeout,
		// The free list is rebuilt on open rather than written on every commit: faster
		// commits, and nothing to get wrong after a crash.
		NoFreelistSync: true,
		FreelistType:   bolt.FreelistMapType,
		NoSync:         noSync,
		NoGrowSync:     noSync,
		ReadOnly:       readOnly,
	})
	switch {
	case errors.Is(err, bolterrors.ErrTimeout):
		return nil, fmt.Errorf("row-hash store %s is in use by another backflow run of sync %q", where, sync)
	case errors.Is(err, bolterrors.ErrInvalid), errors.Is(err, bolterrors.ErrVersionMismatch),
		errors.Is(err, bolterrors.ErrChecksum), errors.Is(err, bolterrors.ErrInvalidMapping):
		return nil, corrupt(err)
	case err != nil:
		return nil, fmt.Errorf("opening row-hash store %s: %w", where, err)
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
					} else if n > Version {
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
			if n > Version {
				return &NewerFormatError{What: "row-hash store", Where: where, Version: n}
			}
		} else if err := meta.Put(versionKey, []byte(strconv.Itoa(Version))); err != nil {
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
	return &boltHashes{db: db, where: where, sync: sync, pending: map[string]string{}, pendingLimit: defaultPendingLimit}, nil
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
	return h.mu.Unlock, nil
}

// guard turns a bbolt panic (a damaged page) into a corrupt-store error.
func (h *boltHashes) guard(err *error) {
	if r := recover(); r != nil {
		*err = &CorruptError{What: "row-hash store", Where: h.where, Sync: h.sync, Err: fmt.Errorf("%v", r)}
	}
}

// Get looks the keys up in the pending pairs, then in key order in one read
// transaction (sorted lookups walk the tree's pages in order).
func (h *boltHashes) Get(ctx context.Context, keys []string) (out []string, err error) {
	done, err := h.begin(ctx)
	if err != nil {
		return nil, err
	}
	defer done()
	defer h.guard(&err)
	out = make([]string, len(keys))
	type lookup struct {
		k []byte
		i int
	}
	var arena []byte
	lookups := make([]lookup, 0, len(keys))
	for i, k := range keys {
		start := len(arena)
		arena = appendEncoded(arena, k)
		enc := arena[start:]
		if v, ok := h.pending[string(enc)]; ok {
			if out[i], err = h.decode(k, []byte(v)); err != nil {
				return nil, err
			}
			continue
		}
		lookups = append(lookups, lookup{i: i, k: enc})
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
			v := b.Get(l.k)
			if v == nil {
				continue
			}
			s, err := h.decode(keys[l.i], v)
			if err != nil {
				return err
			}
			out[l.i] = s
		}
		return nil
	})
	if err != nil {
		return nil, h.wrap("reading", err)
	}
	return out, nil
}

func (h *boltHashes) decode(key string, v []byte) (string, error) {
	if len(v) == 0 {
		return "", nil // a pending delete
	}
	s, err := decodeStored(v)
	if err != nil {
		return "", &CorruptError{What: "row-hash store", Where: h.where, Sync: h.sync, Err: fmt.Errorf("key %q: %w", key, err)}
	}
	return s, nil
}

// Put records the pairs (an empty hash deletes the key; of repeated keys the last wins).
// They are written with the next flush: when enough are pending, or on Commit or Close.
func (h *boltHashes) Put(ctx context.Context, keys, hashes []string) (err error) {
	if len(keys) != len(hashes) {
		return fmt.Errorf("row-hash store %s: %d keys but %d hashes", h.where, len(keys), len(hashes))
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
			vbuf = appendEncoded(vbuf, hashes[i])
		}
		h.pending[string(kbuf)] = string(vbuf)
		h.pendingBytes += len(kbuf) + len(vbuf) + pendingOverhead
	}
	if h.pendingBytes >= h.pendingLimit {
		return h.flush(ctx)
	}
	return nil
}

// flush writes the pending pairs in one transaction, in key order: bbolt inserts sorted
// keys far faster than random ones, and fills pages densely when the bucket is empty.
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
	err = h.db.Update(func(tx *bolt.Tx) error {
		b := tx.Bucket(hashesBucket)
		if k, _ := b.Cursor().First(); k == nil {
			// Appending to an empty tree: pages can be filled, none will be split.
			b.FillPercent = 0.95
		}
		for n, k := range keys {
			if n%4096 == 4095 {
				if err := ctx.Err(); err != nil {
					return err
				}
			}
			v := h.pending[k]
			var err error
			if v == "" {
				err = b.Delete([]byte(k))
			} else {
				err = b.Put([]byte(k), []byte(v))
			}
			if err != nil {
				return fmt.Errorf("key %q: %w", k[1:], err)
			}
		}
		return nil
	})
	if err != nil {
		return h.wrap("writing", err)
	}
	clear(h.pending)
	h.pendingBytes = 0
	h.dirty = true
	return nil
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
	if err := h.upload(ctx, h.db); err != nil {
		return err
	}
	h.dirty = false
	return nil
}

// Close commits and closes; the store is released even when the commit fails.
func (h *boltHashes) Close(ctx context.Context) error {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.closed {
		return nil
	}
	h.closed = true
	err := h.commit(ctx)
	if cerr := h.db.Close(); cerr != nil && err == nil {
		err = fmt.Errorf("closing row-hash store %s: %w", h.where, cerr)
	}
	if h.cleanup != nil {
		h.cleanup()
	}
	return err
}

func (h *boltHashes) wrap(op string, err error) error {
	var ce *CorruptError
	if errors.As(err, &ce) || errors.Is(err, context.Canceled) || errors.Is(err, context.DeadlineExceeded) {
		return err
	}
	return fmt.Errorf("%s row-hash store %s: %w", op, h.where, err)
}
