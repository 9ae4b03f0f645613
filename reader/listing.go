package reader

import (
	"fmt"
	"sort"
	"strings"

	"github.com/backflowhq/backflow/internal/glob"
)

// DefaultInclude is the include pattern of a source that names none.
const DefaultInclude = "*.parquet"

// Partition modes of a source.
const (
	PartitionAll    = "all"
	PartitionLatest = "latest"
)

// Filter decides which listed objects a source reads. The zero Filter reads every
// *.parquet object at any depth.
type Filter struct {
	include     glob.Glob
	partition   string
	allowHidden bool
}

// NewFilter compiles an include glob and a partition mode ("all", "latest" or "" for
// all). The glob is matched on the key below the prefix:
//
//   - a pattern without "/" matches the base name at any depth ("*.parquet" keeps
//     "dt=2025-01-01/part-0.parquet");
//   - a pattern with "/" matches the whole relative key, segment by segment ("*" never
//     crosses a "/"); a leading "/" anchors a one-segment pattern to the top level;
//   - a "**" segment matches any number of segments, none included.
//
// Segments are matched with path.Match, so "?", "[a-z]" and "\" escapes work as there.
func NewFilter(include, partition string) (Filter, error) {
	if include == "" {
		include = DefaultInclude
	}
	g, err := glob.Compile(include)
	if err != nil {
		return Filter{}, fmt.Errorf("include: %w", err)
	}
	switch partition {
	case "", PartitionAll:
		partition = PartitionAll
	case PartitionLatest:
	default:
		return Filter{}, fmt.Errorf("partition %q: want %q or %q", partition, PartitionAll, PartitionLatest)
	}
	f := Filter{include: g, partition: partition}
	// Hidden paths ("_temporary/", "_SUCCESS", ".part-0.parquet") are what Spark, Hive
	// and most writers leave while a write is in progress; they are skipped unless the
	// pattern names such a segment itself, because then the user asked for it.
	for _, s := range g.Segments() {
		if isHidden(s) {
			f.allowHidden = true
		}
	}
	return f, nil
}

// Include is the filter's include pattern.
func (f Filter) Include() string {
	if f.include.String() == "" {
		return DefaultInclude
	}
	return f.include.String()
}

// Partition is the filter's partition mode.
func (f Filter) Partition() string {
	if f.partition == "" {
		return PartitionAll
	}
	return f.partition
}

// Apply turns every object found below prefix into a Listing: the objects to read, sorted
// by key, and the others with why they were passed over, sorted by key. prefix is the
// part of every key before the relative key the glob sees ("" or ending in "/"). Apply
// does no I/O: sources list, Apply decides.
func (f Filter) Apply(prefix string, objs []Object) Listing {
	if f.include.String() == "" {
		f.include, _ = glob.Compile(DefaultInclude)
	}
	var out Listing
	skip := func(key, reason string) { out.Skipped = append(out.Skipped, Skipped{Key: key, Reason: reason}) }
	expected := func(key, reason string) {
		out.Skipped = append(out.Skipped, Skipped{Key: key, Reason: reason, Expected: true})
	}

	type kept struct {
		obj       Object
		partition string // first segment of the relative key; "" when directly under the prefix
	}
	var keep []kept
	latest := ""
	for _, o := range objs {
		if ok, reason := f.Match(prefix, o.Key); !ok {
			if reason == "directory marker" || strings.HasPrefix(reason, "hidden (") {
				expected(o.Key, reason) // what writers leave beside their files: no warning
			} else {
				skip(o.Key, reason)
			}
			continue
		}
		rel := strings.TrimPrefix(o.Key, prefix)
		if o.Size <= 0 {
			skip(o.Key, "empty object (0 bytes)")
			continue
		}
		part := ""
		if i := strings.IndexByte(rel, '/'); i >= 0 {
			part = rel[:i]
			if compareNatural(part, latest) > 0 {
				latest = part
			}
		}
		keep = append(keep, kept{obj: o, partition: part})
	}

	for _, k := range keep {
		if f.partition == PartitionLatest {
			switch {
			case latest == "":
				skip(k.obj.Key, "not in a partition (partition: latest found no sub-prefix with files to read)")
				continue
			case k.partition == "":
				skip(k.obj.Key, fmt.Sprintf("not in a partition (partition: latest reads only %s/)", latest))
				continue
			case k.partition != latest:
				skip(k.obj.Key, fmt.Sprintf("older partition (latest is %s/)", latest))
				continue
			}
		}
		out.Objects = append(out.Objects, k.obj)
	}
	sort.Slice(out.Objects, func(i, j int) bool { return out.Objects[i].Key < out.Objects[j].Key })
	sort.SliceStable(out.Skipped, func(i, j int) bool { return out.Skipped[i].Key < out.Skipped[j].Key })
	return out
}

// Match tells whether key, an object key below prefix ("" or ending in "/"), is one the
// filter keeps, and when not, why (in the words of Listing.Skipped). It judges the key
// alone, as event-driven discovery needs: an empty object and partition latest are
// decided by Apply, which sees the sizes and the whole listing.
func (f Filter) Match(prefix, key string) (ok bool, reason string) {
	if f.include.String() == "" {
		f.include, _ = glob.Compile(DefaultInclude)
	}
	rel, found := strings.CutPrefix(key, prefix)
	switch {
	case !found || rel == "":
		return false, fmt.Sprintf("outside the prefix %q", prefix)
	case strings.HasSuffix(rel, "/"):
		return false, "directory marker"
	}
	if !f.allowHidden {
		if seg, hidden := hiddenSegment(rel); hidden {
			return false, fmt.Sprintf("hidden (%q starts with \"_\" or \".\": a temporary or marker file)", seg)
		}
	}
	if !f.include.Match(rel) {
		if strings.HasSuffix(strings.ToLower(rel), ".parquet") {
			return false, fmt.Sprintf("does not match include %q", f.Include())
		}
		return false, fmt.Sprintf("not a Parquet file (include %q)", f.Include())
	}
	return true, ""
}

// isHidden tells whether a path segment is one writers use for work in progress or
// markers: it starts with "_" or "." and is not a Hive partition ("_col=x").
func isHidden(seg string) bool {
	return (strings.HasPrefix(seg, "_") || strings.HasPrefix(seg, ".")) && !strings.Contains(seg, "=")
}

func hiddenSegment(rel string) (string, bool) {
	for seg := range strings.SplitSeq(rel, "/") {
		if isHidden(seg) {
			return seg, true
		}
	}
	return "", false
}

// compareNatural orders strings so that runs of digits compare as numbers:
// "dt=2025-01-10" > "dt=2025-01-9", "10" > "9". Equal numbers with different leading
// zeros, and otherwise equal strings, fall back to byte order so the order is total.
func compareNatural(a, b string) int {
	i, j := 0, 0
	for i < len(a) && j < len(b) {
		ca, cb := a[i], b[j]
		if isDigit(ca) && isDigit(cb) {
			si, sj := i, j
			for i < len(a) && isDigit(a[i]) {
				i++
			}
			for j < len(b) && isDigit(b[j]) {
				j++
			}
			na := strings.TrimLeft(a[si:i], "0")
			nb := strings.TrimLeft(b[sj:j], "0")
			if len(na) != len(nb) {
				if len(na) < len(nb) {
					return -1
				}
				return 1
			}
			if c := strings.Compare(na, nb); c != 0 {
				return c
			}
			continue
		}
		if ca != cb {
			if ca < cb {
				return -1
			}
			return 1
		}
		i++
		j++
	}
	switch {
	case i < len(a):
		return 1
	case j < len(b):
		return -1
	}
	return strings.Compare(a, b)
}

func isDigit(c byte) bool { return '0' <= c && c <= '9' }
