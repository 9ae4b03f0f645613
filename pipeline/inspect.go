package pipeline

import (
	"context"
	"errors"
	"fmt"
	"io"
	"strings"

	"golang.org/x/sync/errgroup"

	"github.com/apache/arrow-go/v18/arrow"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/mapper"
	"github.com/backflowhq/backflow/reader"
	"github.com/backflowhq/backflow/schema"
	"github.com/backflowhq/backflow/state"
)

// SchemaReport is what `backflow schema` prints.
type SchemaReport struct {
	Sync    string           `json:"sync"`
	Columns []schema.Column  `json:"columns"`
	Files   []FileInfo       `json:"files"`
	Skipped []reader.Skipped `json:"skipped"`
}

// FileInfo is one file's validation result.
type FileInfo struct {
	Key       string `json:"key"`
	Size      int64  `json:"size,omitempty"`
	Rows      int64  `json:"rows,omitempty"`
	RowGroups int    `json:"row_groups,omitempty"`
	Valid     bool   `json:"valid"`
	Error     string `json:"error,omitempty"`
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
		f.Close()
		return nil, nil, err
	}
	return f, s, nil
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
		if err != nil {
			fi.Error = err.Error()
		} else {
			fi.Valid = true
			fi.Rows = f.NumRows()
			fi.RowGroups = f.NumRowGroups()
		}
		rep.Files[i] = fi
	}
	var want *schema.Schema
	first := len(listing.Objects)
	for i, obj := range listing.Objects {
		f, s, err := openChecked(ctx, src, obj, sync.Source.Limits, nil, o)
		if err != nil && isSourceFailure(err) {
			return nil, err
		}
		info(i, f, err)
		if err == nil {
			f.Close()
			want = s
			first = i
			break
		}
	}
	if want != nil {
		rep.Columns = want.Columns
	}
	g, gctx := errgroup.WithContext(ctx)
	g.SetLimit(o.Concurrency)
	for i := first + 1; i < len(listing.Objects); i++ {
		g.Go(func() error {
			f, _, err := openChecked(gctx, src, listing.Objects[i], sync.Source.Limits, want, o)
			if err != nil && isSourceFailure(err) {
				return err
			}
			info(i, f, err)
			if f != nil {
				f.Close()
			}
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
				return nil, &ConfigError{Err: fmt.Errorf("sync %s: %w", sync.Name, err)}
			}
			cols, res.Columns = previewColumns(s.Arrow, sync.Mapping, m, o.Columns, o.Search)
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
func previewColumns(s *arrow.Schema, mp config.Mapping, m *mapper.Mapper, only []string, search string) ([]int, []string) {
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
		want = map[string]bool{}
		for _, c := range only {
			want[strings.TrimSpace(c)] = true
		}
	}
	var idx []int
	var names []string
	for i, f := range s.Fields() {
		if !want[f.Name] {
			continue
		}
		if search != "" && !strings.Contains(strings.ToLower(f.Name), strings.ToLower(search)) {
			continue
		}
		idx = append(idx, i)
		names = append(names, f.Name)
	}
	return idx, names
}

// CheckResult is one line of `backflow check`.
type CheckResult struct {
	What   string `json:"what"`
	OK     bool   `json:"ok"`
	Detail string `json:"detail"`
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
	src, err := reader.NewSource(ctx, sync.Source)
	if err != nil {
		add(what, err, "")
	} else if listing, err := src.List(ctx); err != nil {
		add(what, err, "")
	} else if len(listing.Objects) == 0 {
		add(what, nil, fmt.Sprintf("reachable; no Parquet file yet (%d other objects skipped)", len(listing.Skipped)))
	} else {
		obj := listing.Objects[0]
		f, s, err := openChecked(ctx, src, obj, sync.Source.Limits, nil, InspectOptions{BatchRows: 1, BufferBytes: 1 << 20})
		if err != nil {
			add(what, fmt.Errorf("%d Parquet files listed, but the first fails: %w", len(listing.Objects), err), "")
		} else {
			f.Close()
			add(what, nil, fmt.Sprintf("%d Parquet files listed (%d skipped); %s is valid", len(listing.Objects), len(listing.Skipped), obj.Key))
			// The mapping is checked against the schema the first file gives.
			_, err := mapper.New(mapper.Options{Sync: sync.Name, Mapping: sync.Mapping, Schema: s.Arrow,
				MaxRecordBytes: sync.Source.Limits.MaxRecordBytes, Version: version})
			add("mapping of sync "+sync.Name, err, fmt.Sprintf("%s message with %d columns from %s", sync.Mapping.Type, len(s.Columns), obj.Key))
		}
	}
	if store != nil {
		_, err := store.Load(ctx, sync.Name)
		if err == nil {
			// A state the run cannot write would lose every acknowledgement.
			err = store.Probe(ctx, sync.Name)
		}
		add("state "+store.String(), err, "reachable and writable")
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
