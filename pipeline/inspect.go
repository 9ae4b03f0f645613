package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/internal/render"
	"github.com/backflowhq/backflow/internal/suggest"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/reader/discovery"
	"github.com/backflowhq/backflow/schema"
	"github.com/backflowhq/backflow/state"
)

// SchemaReport is what `backflow schema` prints.
type SchemaReport struct {
	Sync string `json:"sync"`
	// SchemaFrom is the file the sync's schema was read from: the first valid one.
	SchemaFrom string           `json:"schema_from,omitempty"`
	Columns    []schema.Column  `json:"columns"`
	Files      []FileInfo       `json:"files"`
	Skipped    []reader.Skipped `json:"skipped"`
}

// FileInfo is one file's validation result.
type FileInfo struct {
	Key       string `json:"key"`
	Size      int64  `json:"size,omitempty"`
	Rows      int64  `json:"rows,omitempty"`
	RowGroups int    `json:"row_groups,omitempty"`
	Valid     bool   `json:"valid"`
	Error     string `json:"error,omitempty"`
	// Differences are every difference from the sync's schema, when there are some.
	Differences []string `json:"differences,omitempty"`
}

// Invalid counts the files that failed validation.
func (s *SchemaReport) Invalid() int {
	n := 0
	for _, f := range s.Files {
		if !f.Valid {
			n++
		}
	}
	return n
}

// InspectOptions tune `schema` and `preview`.
type InspectOptions struct {
	// Concurrency is how many footers are read at once (default 16).
	Concurrency int
	BatchRows   int64
	BufferBytes int64
}

func (o *InspectOptions) defaults() {
	if o.Concurrency <= 0 {
		o.Concurrency = 16
	}
	if o.BatchRows <= 0 {
		o.BatchRows = 4096
	}
	if o.BufferBytes <= 0 {
		o.BufferBytes = 1 << 20
	}
}

func openChecked(ctx context.Context, src reader.Source, obj reader.Object, limits config.Limits, want *schema.Schema, o InspectOptions) (*reader.File, *schema.Schema, error) {
	blob, err := src.Open(ctx, obj)
	if err != nil {
		return nil, nil, err
	}
	f, err := reader.OpenFile(ctx, blob, obj, reader.FileOptions{BatchSize: o.BatchRows, BufferSize: o.BufferBytes})
	if err != nil {
		blob.Close()
		return nil, nil, err
	}
	s, err := schema.Check(ctx, f, limits, want)
	if err != nil {
		// The file is open and its footer read: `schema` still shows its rows.
		return f, nil, err
	}
	return f, s, nil
}

// closeIf closes f when it is open.
func closeIf(f *reader.File) {
	if f != nil {
		f.Close()
	}
}

// isSourceFailure tells errors that concern the whole source (credentials, network) from
// those of one file.
func isSourceFailure(err error) bool {
	return !schema.IsInvalid(err) && !errors.Is(err, reader.ErrNotFound) && !errors.Is(err, reader.ErrChanged)
}

// Inspect lists the sync's files, checks each (footer and first row) and returns the
// inferred schema: the first valid file's.
func Inspect(ctx context.Context, sync *config.Sync, o InspectOptions) (*SchemaReport, error) {
	o.defaults()
	src, err := reader.NewSource(ctx, sync.Source)
	if err != nil {
		return nil, fmt.Errorf("opening source %s: %w", sync.Source.URL, err)
	}
	listing, err := src.List(ctx)
	if err != nil {
		return nil, err
	}
	rep := &SchemaReport{Sync: sync.Name, Skipped: listing.Skipped, Files: make([]FileInfo, len(listing.Objects)), Columns: []schema.Column{}}
	if rep.Skipped == nil {
		rep.Skipped = []reader.Skipped{}
	}
	info := func(i int, f *reader.File, err error) {
		obj := listing.Objects[i]
		fi := FileInfo{Key: obj.Key, Size: obj.Size}
		if f != nil { // read, even when it fails a check
			fi.Rows = f.NumRows()
			fi.RowGroups = f.NumRowGroups()
		}
		fi.Valid = err == nil
		var fe *schema.FileError
		switch {
		case errors.As(err, &fe):
			fi.Error = fe.Full()
			if len(fe.Differences) > 0 {
				fi.Differences = fe.Differences
			}
		case err != nil:
			fi.Error = err.Error()
		}
		rep.Files[i] = fi
	}
	var want *schema.Schema
	first := len(listing.Objects)
	for i, obj := range listing.Objects {
		f, s, err := openChecked(ctx, src, obj, sync.Source.Limits, nil, o)
		if err != nil && isSourceFailure(err) {
			closeIf(f)
			return nil, err
		}
		info(i, f, err)
		closeIf(f)
		if err == nil {
			want = s
			first = i
			break
		}
	}
	if want != nil {
		rep.Columns = want.Columns
		rep.SchemaFrom = want.Origin
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Concurrency)
	for i := first + 1; i < len(listing.Objects); i++ {
		g.Go(func() error {
			f, _, err := openChecked(gctx, src, listing.Objects[i], sync.Source.Limits, want, o)
			if err != nil && isSourceFailure(err) {
				closeIf(f)
				return err
			}
			info(i, f, err)
			closeIf(f)
			return nil
		})
	}
	if err := g.Wait(); err != nil {
		return nil, err
	}
	return rep, nil
}

// PreviewResult is what `backflow preview` prints.
type PreviewResult struct {
	Sync    string
	Columns []string   // the table's columns
	Rows    [][]string // the cells of the first rows, as text
	Files   []string   // the files the rows came from, by row
	// Messages holds, by row, the message the row becomes ("" when rejected).
	Messages [][]byte
	// Reasons holds, by row, why the row was rejected ("" when mapped).
	Reasons []string
	// Problems are files that could not be previewed, and why.
	Problems []FileInfo
}

// PreviewOptions tune `preview`.
type PreviewOptions struct {
	InspectOptions
	Rows    int      // how many rows (default 10)
	Columns []string // keep only these columns in the table
	Search  string   // keep only the columns whose name contains this
	Version string
}

// Preview reads the first rows of the sync's first files, only as much as it needs,
// and maps them. It sends nothing and writes no state.
func Preview(ctx context.Context, sync *config.Sync, o PreviewOptions) (*PreviewResult, error) {
	o.defaults()
	if o.Rows <= 0 {
		o.Rows = 10
	}
	o.BatchRows = min(o.BatchRows, int64(o.Rows))
	src, err := reader.NewSource(ctx, sync.Source)
	if err != nil {
		return nil, fmt.Errorf("opening source %s: %w", sync.Source.URL, err)
	}
	listing, err := src.List(ctx)
	if err != nil {
		return nil, err
	}
	res := &PreviewResult{Sync: sync.Name}
	var want *schema.Schema
	var m *mapper.Mapper
	var cols []int
	for _, obj := range listing.Objects {
		if len(res.Rows) >= o.Rows {
			break
		}
		f, s, err := openChecked(ctx, src, obj, sync.Source.Limits, want, o.InspectOptions)
		if err != nil {
			closeIf(f)
			if isSourceFailure(err) {
				return nil, err
			}
			res.Problems = append(res.Problems, FileInfo{Key: obj.Key, Error: err.Error()})
			continue
		}
		if m == nil {
			want = s
			m, err = mapper.New(mapper.Options{
				Sync: sync.Name, Mapping: sync.Mapping, Schema: s.Arrow,
				MaxRecordBytes: sync.Source.Limits.MaxRecordBytes, Version: o.Version,
			})
			if err != nil {
				f.Close()
				return nil, newConfigError(fmt.Errorf("sync %s, whose schema is from %s: %w", sync.Name, s.Origin, err))
			}
			cols, res.Columns, err = previewColumns(s, sync.Mapping, m, o.Columns, o.Search)
			if err != nil {
				f.Close()
				return nil, err
			}
		}
		rec, err := f.ReadFirstRows(ctx, int64(o.Rows-len(res.Rows)))
		if err != nil {
			f.Close()
			res.Problems = append(res.Problems, FileInfo{Key: obj.Key, Error: err.Error()})
			continue
		}
		msgs, rejects := m.Map(rec, 0, nil, nil)
		byRow := map[int64]*mapper.Message{}
		for i := range msgs {
			byRow[msgs[i].Row] = &msgs[i]
		}
		why := map[int64]string{}
		for _, r := range rejects {
			why[r.Row] = r.Reason
		}
		for row := int64(0); row < rec.NumRows(); row++ {
			cells := make([]string, len(cols))
			for j, c := range cols {
				cells[j] = mapper.FormatCell(rec.Column(c), int(row))
			}
			res.Rows = append(res.Rows, cells)
			res.Files = append(res.Files, obj.Key)
			if msg := byRow[row]; msg != nil {
				res.Messages = append(res.Messages, msg.JSON)
				res.Reasons = append(res.Reasons, "")
			} else {
				res.Messages = append(res.Messages, nil)
				res.Reasons = append(res.Reasons, why[row])
			}
		}
		rec.Release()
		f.Close()
	}
	return res, nil
}

// previewColumns picks the table's columns: the identifier columns and the mapped ones,
// narrowed by --columns and --search.
func previewColumns(s *schema.Schema, mp config.Mapping, m *mapper.Mapper, only []string, search string) ([]int, []string, error) {
	want := map[string]bool{}
	for _, c := range []string{mp.UserID, mp.AnonymousID, mp.GroupID, mp.EventColumn, mp.Timestamp} {
		if c != "" {
			want[c] = true
		}
	}
	for _, c := range m.Columns() {
		want[c] = true
	}
	if len(only) > 0 {
		// A column asked for by name must exist: an empty table would look like no data.
		names := make([]string, len(s.Columns))
		for i, c := range s.Columns {
			names[i] = c.Name
		}
		want = map[string]bool{}
		var unknown []string
		for _, c := range only {
			c = strings.TrimSpace(c)
			if _, ok := s.Column(c); !ok {
				msg := fmt.Sprintf("%q", c)
				if best := suggest.Closest(c, names); best != "" {
					msg += fmt.Sprintf(" (did you mean %q?)", best)
				}
				unknown = append(unknown, msg)
			}
			want[c] = true
		}
		if len(unknown) > 0 {
			return nil, nil, newConfigError(fmt.Errorf("--columns: no column %s in the sync's schema (from %s); column names are case-sensitive",
				strings.Join(unknown, ", "), s.Origin))
		}
	}
	var idx []int
	var names []string
	for i, f := range s.Arrow.Fields() {
		if !want[f.Name] {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(f.Name), strings.ToLower(search)) {
			continue
		}
		idx = append(idx, i)
		names = append(names, f.Name)
	}
	if search != "" && len(names) == 0 {
		return nil, nil, newConfigError(fmt.Errorf("--search %q: no column name contains it (--search matches column names, not values)", search))
	}
	return idx, names, nil
}

// CheckResult is one line of `backflow check`.
type CheckResult struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
	// Warn is worth knowing but does not fail the check: a file a run would reject,
	// a next run that will send everything again.
	Warn bool `json:"warn,omitempty"`
	// Config is a failure of the configuration itself (the mapping does not fit the
	// schema): the command line exits 2 for it, as sync and preview do.
	Config bool `json:"config,omitempty"`
}

// Check validates what can be validated without sending data: the source is listed and
// one footer read, the state store answers, and each destination is built and checked.
func Check(ctx context.Context, cfg *config.Config, sync *config.Sync, reg *destinations.Registry, store state.Store, version string) []CheckResult {
	var out []CheckResult
	add := func(what string, err error, ok string) {
		if err != nil {
			out = append(out, CheckResult{What: what, Detail: err.Error()})
		} else {
			out = append(out, CheckResult{What: what, OK: true, Detail: ok})
		}
	}
	what := "source " + sync.Source.URL
	var s *schema.Schema // the sync's schema, when a valid file gives one
	src, err := reader.NewSource(ctx, sync.Source)
	if err != nil {
		add(what, err, "")
	} else if listing, err := src.List(ctx); err != nil {
		add(what, err, "")
	} else if len(listing.Objects) == 0 {
		add(what, nil, fmt.Sprintf("reachable; no Parquet file yet (%d other objects skipped)", len(listing.Skipped)))
	} else {
		// The sync's schema is the first valid file's, as in a run: files before it are
		// reported (a run rejects them and goes on), and the mapping is checked against it.
		var bad []string
		for _, obj := range listing.Objects {
			f, fs, err := openChecked(ctx, src, obj, sync.Source.Limits, nil, InspectOptions{BatchRows: 1, BufferBytes: 1 << 20})
			closeIf(f)
			if err != nil && isSourceFailure(err) {
				add(what, err, "")
				return checkRest(ctx, out, sync, reg, store, version, nil)
			}
			if err != nil {
				bad = append(bad, err.Error())
				continue
			}
			s = fs
			break
		}
		for _, e := range bad {
			out = append(out, CheckResult{What: what, Warn: true, Detail: e + " (a run rejects this file)"})
		}
		if s == nil {
			add(what, fmt.Errorf("none of the %s listed is valid", render.Plural(len(listing.Objects), "Parquet file")), "")
		} else {
			add(what, nil, fmt.Sprintf("%s listed (%d skipped); %s is valid and gives the sync's schema",
				render.Plural(len(listing.Objects), "Parquet file"), len(listing.Skipped), s.Origin))
			m, err := mapper.New(mapper.Options{Sync: sync.Name, Mapping: sync.Mapping, Schema: s.Arrow,
				MaxRecordBytes: sync.Source.Limits.MaxRecordBytes, Version: version})
			if err != nil {
				out = append(out, CheckResult{What: "mapping of sync " + sync.Name, Config: true,
					Detail: fmt.Sprintf("the sync's schema is from %s: %s", s.Origin, strings.ReplaceAll(err.Error(), "\n", "; "))})
			} else {
				add("mapping of sync "+sync.Name, nil, fmt.Sprintf("%s message with %s from %s",
					sync.Mapping.Type, render.Plural(len(m.Columns()), "column"), s.Origin))
			}
		}
	}
	return checkRest(ctx, out, sync, reg, store, version, s)
}

// checkRest checks the state and the destinations, after the source; s is the sync's
// schema when the source gave one. It warns when the next run will be a full sync.
func checkRest(ctx context.Context, out []CheckResult, sync *config.Sync, reg *destinations.Registry, store state.Store, version string, s *schema.Schema) []CheckResult {
	add := func(what string, err error, ok string) {
		if err != nil {
			out = append(out, CheckResult{What: what, Detail: err.Error()})
		} else {
			out = append(out, CheckResult{What: what, OK: true, Detail: ok})
		}
	}
	if d := sync.Source.Discovery; d.Type == config.DiscoverySQS {
		// The queue of event-driven discovery: counting its messages reaches it with the
		// source's credentials and receives (hides) nothing.
		what := "queue " + d.QueueURL
		q, err := discovery.NewQueue(ctx, d, sync.Source.S3)
		var n int
		if err == nil {
			n, err = q.Pending(ctx)
		}
		add(what, err, fmt.Sprintf("reachable; %d messages waiting", n))
	}
	if store != nil {
		cp, err := store.Load(ctx, sync.Name)
		if err == nil {
			// A state the run cannot write would lose every acknowledgement.
			err = store.Probe(ctx, sync.Name)
		}
		add("state "+store.String(), err, "reachable and writable")
		if err == nil {
			schemaFP := ""
			if s != nil {
				schemaFP = s.Fingerprint()
			}
			if reason := fullSyncReason(cp, sync, false, MappingFingerprint(sync), SourceFingerprint(sync), schemaFP); reason != "" && reason != ReasonFirstSync {
				out = append(out, CheckResult{What: "next run of sync " + sync.Name, Warn: true, Detail: fullSyncWarning(reason)})
			}
		}
	}
	env := destinations.Env{Sync: sync.Name, RunID: "check", Version: version, Stdout: io.Discard}
	for _, dc := range sync.Destinations {
		what := fmt.Sprintf("destination %s (%s)", dc.Name, dc.Type)
		d, err := reg.New(ctx, dc, env)
		if err != nil {
			add(what, err, "")
			continue
		}
		if c, ok := d.(destinations.Checker); ok {
			err = c.Check(ctx)
			add(what, err, "reachable")
		} else {
			add(what, nil, "configured")
		}
		_ = d.Close(ctx)
	}
	return out
}

// fullSyncWarning says what a full sync for reason means for the destinations.
func fullSyncWarning(reason string) string {
	msg := "will be a full sync (" + reason + "): every row is sent again"
	switch reason {
	case ReasonMappingChanged:
		msg += ", as new messages with new messageIds (a changed column, rename or constant changes every message)"
	case ReasonSchemaChanged:
		msg += ", as the files' columns changed"
	case ReasonSourceChanged:
		msg += ", as the source's url, include or partition changed"
	case ReasonModeFull:
		msg += ": the sync's mode is full"
	}
	return msg
}
