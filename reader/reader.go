// Package reader lists and reads Parquet files from a source: an S3 prefix or a local
// directory. It hands out random-access readers (ranged GETs over S3) and reads Parquet
// files row group by row group as Arrow records with a bounded batch size.
package reader

import (
	"context"
	"io"
	"time"
)

// Object is one file of a source, as listed.
type Object struct {
	// Key names the object: for S3 its full key in the bucket, for a local directory its
	// slash-separated path relative to that directory.
	Key          string
	Size         int64
	ETag         string // S3 ETag without quotes; for local files, a hash of size and mtime
	VersionID    string // S3 version id where the bucket is versioned
	LastModified time.Time
}

// Skipped is an object the listing passed over, and why (it is not Parquet, it does not
// match include, it is in an older partition).
type Skipped struct {
	Key    string `json:"key"`
	Reason string `json:"reason"`
	// Expected marks what writers always leave next to the data (_SUCCESS, _temporary/,
	// directory markers): worth a line at info, not a warning every run.
	Expected bool `json:"-"`
}

// Listing is what a source holds.
type Listing struct {
	Objects []Object  // sorted by key
	Skipped []Skipped // sorted by key
}

// Blob is random access to one object's bytes. It is safe for concurrent ReadAt calls.
type Blob interface {
	io.ReaderAt
	io.Closer
	Size() int64
}

// Source is a place Parquet files are listed and read from. Its methods are safe for
// concurrent use; ctx bounds each call only.
type Source interface {
	// List returns the objects below the source's prefix that match include (with
	// partition: latest, only those of the greatest sub-prefix), sorted by key, and the
	// objects it passed over with why. Errors are one clear line (no such bucket, access
	// denied, bad credentials, unreachable endpoint) wrapped in *SourceError.
	List(ctx context.Context) (Listing, error)
	// Open returns random access to obj, using obj.Size from the listing (no HEAD). A
	// vanished object yields an error matching ErrNotFound.
	Open(ctx context.Context, obj Object) (Blob, error)
	// String is the source's URL, with no secret.
	String() string
}
