package pipeline

import (
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/state"
)

// Reasons for a full sync (SPEC.md's full_sync_reason).
const (
	ReasonFirstSync      = "first sync"
	ReasonMappingChanged = "mapping changed"
	ReasonSchemaChanged  = "schema changed"
	ReasonSourceChanged  = "source changed"
	ReasonRequested      = "requested"
	ReasonModeFull       = "mode full"
	ReasonShardsChanged  = "shards changed"
)

// Mode names.
const (
	ModeIncremental = "incremental"
	ModeFull        = "full"
	ModeDiff        = "diff"
)

func fingerprint(v any) string {
	b, err := json.Marshal(v) // maps are marshalled with sorted keys: stable
	if err != nil {
		panic(err) // config values always marshal; a failure is a programming error
	}
	sum := sha256.Sum256(b)
	return hex.EncodeToString(sum[:16])
}

// MappingFingerprint changes whenever the mapping would produce different messages.
func MappingFingerprint(s *config.Sync) string {
	return fingerprint(struct {
		Mapping config.Mapping
		Mode    string
	}{s.Mapping, s.Mode})
}

// SourceFingerprint changes when the sync reads another set of files.
func SourceFingerprint(s *config.Sync) string {
	return fingerprint([]string{s.Source.URL, s.Source.Include, s.Source.Partition})
}

// fullSyncReason decides whether this run sends everything, and why ("" = incremental).
func fullSyncReason(cp *state.Checkpoint, s *config.Sync, requested bool, mappingFP, sourceFP, schemaFP string) string {
	switch {
	case cp == nil || (len(cp.Files) == 0 && cp.SchemaFingerprint == ""):
		// No checkpoint, or one from runs that found nothing yet.
		return ReasonFirstSync
	case requested:
		return ReasonRequested
	case s.Mode == ModeFull:
		return ReasonModeFull
	case cp.MappingFingerprint != mappingFP:
		return ReasonMappingChanged
	case cp.SourceFingerprint != sourceFP:
		return ReasonSourceChanged
	case schemaFP != "" && cp.SchemaFingerprint != schemaFP:
		return ReasonSchemaChanged
	}
	return ""
}

// sameObject tells whether a listed object is the file a checkpoint entry describes.
func sameObject(f *state.File, o reader.Object) bool {
	return f.Size == o.Size && f.ETag == o.ETag && f.VersionID == o.VersionID
}

// planFiles updates the working checkpoint for this listing and returns the files to read:
// new files and changed files (reset, sent again whole), and files some destination has
// not acknowledged fully. Files that vanished from the listing are removed and counted.
// An unchanged file that is done is left as it is: a settled entry stays settled, so
// saving the run costs what it changes, not the whole checkpoint. removed, when not nil,
// says the objects are not a whole listing (event-driven discovery): then only the keys
// it names are removed, the other files of the checkpoint stay.
func planFiles(cp *state.Checkpoint, objects []reader.Object, dests []string, removed map[string]bool) (toRead []*state.File, unchanged, deleted int) {
	listed := make(map[string]bool, len(objects))
	for _, o := range objects {
		listed[o.Key] = true
		f := cp.Files[o.Key]
		fresh := f == nil || !sameObject(f, o)
		if fresh {
			if f != nil {
				cp.Delete(o.Key) // the stored entry is stale: the next save drops it
			}
			// Not marked changed: a file not yet opened is not saved (the ledger marks
			// it when it opens it).
			f = &state.File{Key: o.Key, Size: o.Size, ETag: o.ETag, VersionID: o.VersionID, Rows: -1, Acked: map[string]int64{}}
			cp.Files[o.Key] = f
		}
		if f.Acked == nil {
			f.Acked = map[string]int64{}
		}
		if f.Rows >= 0 && f.Done(dests) {
			unchanged++
			continue
		}
		if !fresh {
			// The ledger changes the entries it reads in place: a settled one, shared
			// with the loaded checkpoint, is copied first.
			f = cp.Own(o.Key)
		}
		toRead = append(toRead, f)
	}
	for key := range cp.Files {
		gone := !listed[key]
		if removed != nil {
			gone = removed[key] && !listed[key]
		}
		if gone {
			cp.Delete(key)
			deleted++
		}
	}
	return toRead, unchanged, deleted
}
