package pipeline

import (
	"encoding/binary"
	"errors"
	"fmt"
	"hash/fnv"
	"strconv"
	"strings"
)

// Shard is one of Count shards of a sync (`sync --shard I/N`): several processes — a
// Kubernetes Indexed Job's pods — share a sync's work, each with its own lease,
// checkpoint, row hashes, rejects and history. The zero Shard (and 0/1) is the whole
// sync.
type Shard struct {
	Index, Count int
}

// ParseShard parses "I/N" (0 ≤ I < N).
func ParseShard(s string) (Shard, error) {
	i, n, ok := strings.Cut(strings.TrimSpace(s), "/")
	if !ok {
		return Shard{}, fmt.Errorf("shard %q: want I/N, such as 0/4 (shard 0 of 4)", s)
	}
	index, err1 := strconv.Atoi(i)
	count, err2 := strconv.Atoi(n)
	switch {
	case err1 != nil || err2 != nil:
		return Shard{}, fmt.Errorf("shard %q: I and N must be whole numbers (I/N, such as 0/4)", s)
	case count < 1:
		return Shard{}, fmt.Errorf("shard %q: N must be at least 1", s)
	case count > 10000:
		return Shard{}, fmt.Errorf("shard %q: N must be at most 10000", s)
	case index < 0 || index >= count:
		return Shard{}, fmt.Errorf("shard %q: I must be between 0 and %d (shards count from 0)", s, count-1)
	}
	return Shard{Index: index, Count: count}, nil
}

// Sharded tells whether s is a part of the sync rather than all of it.
func (s Shard) Sharded() bool { return s.Count > 1 }

func (s Shard) String() string {
	if !s.Sharded() {
		return ""
	}
	return fmt.Sprintf("%d/%d", s.Index, s.Count)
}

// StateName is the name a shard's state is kept under: the sync's name, or
// "<sync>.shard-I-of-N" (sync names cannot hold a dot, so no sync's state is mistaken for
// a shard's).
func (s Shard) StateName(sync string) string {
	if !s.Sharded() {
		return sync
	}
	return fmt.Sprintf("%s.shard-%d-of-%d", sync, s.Index, s.Count)
}

// ParseStateName tells which sync and shard a state name belongs to.
func ParseStateName(name string) (sync string, shard Shard, err error) {
	sync, rest, ok := strings.Cut(name, ".shard-")
	if !ok {
		return name, Shard{}, nil
	}
	i, n, ok := strings.Cut(rest, "-of-")
	if !ok {
		return "", Shard{}, errors.New("not a shard's state name")
	}
	shard, err = ParseShard(i + "/" + n)
	return sync, shard, err
}

// OwnsFile tells whether the shard reads the file of key (modes incremental and full):
// rendezvous hashing — each file goes to the shard with the highest score for it, so a
// file is read by exactly one shard, and going from N to N+1 shards moves only the files
// the new shard wins.
func (s Shard) OwnsFile(key string) bool {
	if !s.Sharded() {
		return true
	}
	best, bestScore := 0, uint64(0)
	for i := range s.Count {
		h := fnv.New64a()
		var b [8]byte
		binary.LittleEndian.PutUint64(b[:], uint64(i))
		h.Write(b[:])
		h.Write([]byte(key))
		if score := mix64(h.Sum64()); i == 0 || score > bestScore {
			best, bestScore = i, score
		}
	}
	return best == s.Index
}

// OwnsKey tells whether the shard sends the rows of a message key (mode diff: every
// shard reads every file and keeps the identifiers that hash to it, so that each
// identifier's content hash lives in exactly one shard's row-hash store).
func (s Shard) OwnsKey(key string) bool {
	if !s.Sharded() {
		return true
	}
	h := fnv.New64a()
	h.Write([]byte(key))
	return mix64(h.Sum64())%uint64(s.Count) == uint64(s.Index)
}

// mix64 is a finalizer (from SplitMix64) that spreads FNV's weak low bits.
func mix64(x uint64) uint64 {
	x ^= x >> 30
	x *= 0xbf58476d1ce4e5b9
	x ^= x >> 27
	x *= 0x94d049bb133111eb
	x ^= x >> 31
	return x
}
