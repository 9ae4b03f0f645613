package discovery

import (
	"fmt"
	"strings"

	"github.com/backflowhq/backflow/reader"
)

// Filter tells which events belong to a source: the source's bucket, below its prefix,
// matching its include glob, and not hidden, exactly as its listing decides (it is the
// listing's own reader.Filter). It does not apply partition: latest, which needs the
// whole listing.
type Filter struct {
	bucket, prefix string
	keys           reader.Filter
}

// NewFilter returns the filter of a source reading s3://bucket/prefix with include ("":
// every *.parquet). A prefix not ending in "/" gets one, as the source lists it.
func NewFilter(bucket, prefix, include string) (Filter, error) {
	if bucket == "" {
		return Filter{}, fmt.Errorf("discovery filter: no bucket")
	}
	keys, err := reader.NewFilter(include, reader.PartitionAll)
	if err != nil {
		return Filter{}, fmt.Errorf("discovery filter: %w", err)
	}
	if prefix != "" && !strings.HasSuffix(prefix, "/") {
		prefix += "/"
	}
	return Filter{bucket: bucket, prefix: prefix, keys: keys}, nil
}

// Match tells whether e is about an object the source reads, and when not, why (for a
// log line: such events are ignored and their message deleted).
func (f Filter) Match(e Event) (ok bool, reason string) {
	if e.Bucket != f.bucket {
		return false, fmt.Sprintf("bucket %q is not the source's (%q)", e.Bucket, f.bucket)
	}
	return f.keys.Match(f.prefix, e.Key)
}
