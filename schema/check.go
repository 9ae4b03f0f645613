package schema

import (
	"context"
	"errors"
	"fmt"
	"strings"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/reader"
)

// FileError is a file that fails validation: it is rejected, and the other files of
// the run are still synced.
type FileError struct {
	Key      string
	RowGroup int    // -1: the failure is not about one row group
	Column   string // "": the failure is not about one column
	Reason   string
	// Differences are every schema difference of the file, each as Detail words it,
	// when the file differs from the sync's schema; Reason words the first only.
	Differences []string
}

// Detail is the error without the key: the row group, column and reason.
func (e *FileError) Detail() string {
	return strings.TrimPrefix(e.Error(), e.Key+": ")
}

// Full is the error with every schema difference, for `backflow schema`.
func (e *FileError) Full() string {
	if len(e.Differences) < 2 {
		return e.Error()
	}
	return e.Key + ": " + strings.Join(e.Differences, "; ")
}

// Error is one line naming the key, then the row group and column when there are
// ones: `users/b.parquet: column "email": null in the first row`.
func (e *FileError) Error() string {
	var b strings.Builder
	b.WriteString(e.Key)
	if e.RowGroup >= 0 {
		fmt.Fprintf(&b, ": row group %d", e.RowGroup)
	}
	if e.Column != "" {
		fmt.Fprintf(&b, ": column %q", e.Column)
	}
	b.WriteString(": ")
	b.WriteString(e.Reason)
	return b.String()
}

// IsInvalid reports whether err says that a file itself is at fault — it failed
// validation (*FileError) or is not readable Parquet (*reader.ParquetError) — so that
// the file is rejected and the run goes on. Other errors (the source is unreachable,
// the context ended) are not the file's fault.
func IsInvalid(err error) bool {
	var fe *FileError
	var pe *reader.ParquetError
	return errors.As(err, &fe) || errors.As(err, &pe)
}

// Check validates f before any of its rows is sent, in this order:
//
//  1. from the footer, every row group's uncompressed size is at most
//     limits.MaxRowGroupBytes (0 means no limit);
//  2. from the footer, no two top-level columns share a name, and when want is not
//     nil, f has the same columns as want by name and type (order does not matter);
//  3. from the first row, no top-level column is null (empty strings are fine), unless
//     limits.FirstRowNulls is warn: then the columns are listed in the schema's
//     FirstRowNulls for the caller to warn about. A file with no rows is valid: it has
//     no first row to check.
//
// It returns f's schema. A file that fails gives a *FileError naming the key and the
// row group or column; a file that cannot be read gives a *reader.ParquetError; other
// errors are the source's or ctx's.
func Check(ctx context.Context, f *reader.File, limits config.Limits, want *Schema) (s *Schema, err error) {
	key := f.Object().Key
	defer func() {
		if p := recover(); p != nil {
			s, err = nil, &reader.ParquetError{Key: key, RowGroup: -1, Err: fmt.Errorf("unreadable Parquet footer (%v)", p)}
		}
	}()

	if err := checkRowGroups(f, limits.MaxRowGroupBytes); err != nil {
		return nil, err
	}

	got, err := Infer(f)
	if err != nil {
		return nil, err
	}
	seen := make(map[string]bool, len(got.Columns))
	for _, c := range got.Columns {
		if seen[c.Name] {
			return nil, &FileError{Key: key, RowGroup: -1, Column: c.Name, Reason: "more than one top-level column has this name"}
		}
		seen[c.Name] = true
	}
	if want != nil {
		if err := compare(key, got, want); err != nil {
			return nil, err
		}
	}

	got.Origin = key
	nulls, err := checkFirstRow(ctx, f, got)
	if err != nil {
		return nil, err
	}
	if len(nulls) > 0 {
		if limits.FirstRowNulls != config.FirstRowNullsWarn {
			return nil, &FileError{Key: key, RowGroup: -1, Column: nulls[0],
				Reason: "null in the first row (source.limits.first_row_nulls: warn accepts such a file)"}
		}
		got.FirstRowNulls = nulls
	}
	return got, nil
}

// RowGroupBytes is row group i's uncompressed size: the sum of its column chunks'
// uncompressed sizes, or the row group's total byte size when the footer has no
// column chunk sizes.
func RowGroupBytes(f *reader.File, i int) (int64, error) {
	rg := f.Metadata().RowGroup(i)
	var sum int64
	for c := 0; c < rg.NumColumns(); c++ {
		cc, err := rg.ColumnChunk(c)
		if err != nil {
			return 0, err
		}
		n := cc.TotalUncompressedSize()
		if n < 0 || sum+n < sum {
			return 0, fmt.Errorf("corrupt footer: column chunk %d has uncompressed size %d", c, n)
		}
		sum += n
	}
	if sum == 0 {
		sum = rg.TotalByteSize()
	}
	if sum < 0 {
		return 0, fmt.Errorf("corrupt footer: uncompressed size %d", sum)
	}
	return sum, nil
}

func checkRowGroups(f *reader.File, limit int64) error {
	key := f.Object().Key
	for i := 0; i < f.NumRowGroups(); i++ {
		size, err := RowGroupBytes(f, i)
		if err != nil {
			return &reader.ParquetError{Key: key, RowGroup: i, Err: err}
		}
		if limit > 0 && size > limit {
			return &FileError{Key: key, RowGroup: i,
				Reason: fmt.Sprintf("uncompressed size %s is over max_row_group_bytes (%s)", FormatBytes(size), FormatBytes(limit))}
		}
	}
	return nil
}

// compare returns a *FileError for the first difference between got and want (in
// want's column order, then the columns want lacks), saying how many more there are;
// its Differences list them all. Every message names the file the sync's schema came
// from: when a stray file became the schema, that is the file to look at.
func compare(key string, got, want *Schema) error {
	from := "the sync's schema"
	if want.Origin != "" {
		from += ", from " + want.Origin + ","
	}
	var diffs []*FileError
	for _, w := range want.Columns {
		g, ok := got.Column(w.Name)
		switch {
		case !ok:
			diffs = append(diffs, &FileError{Key: key, RowGroup: -1, Column: w.Name,
				Reason: fmt.Sprintf("missing from the file (%s has %s)", from, w.TypeName())})
		case g.TypeName() != w.TypeName():
			diffs = append(diffs, &FileError{Key: key, RowGroup: -1, Column: w.Name,
				Reason: fmt.Sprintf("type %s, %s has %s", g.TypeName(), from, w.TypeName())})
		}
	}
	for _, g := range got.Columns {
		if _, ok := want.Column(g.Name); !ok {
			diffs = append(diffs, &FileError{Key: key, RowGroup: -1, Column: g.Name,
				Reason: fmt.Sprintf("not in %s (%s)", strings.TrimSuffix(from, ","), g.TypeName())})
		}
	}
	if len(diffs) == 0 {
		return nil
	}
	first := *diffs[0]
	for _, d := range diffs {
		first.Differences = append(first.Differences, d.Detail())
	}
	switch len(diffs) {
	case 1:
	case 2:
		first.Reason += " (and 1 more schema difference)"
	default:
		first.Reason += fmt.Sprintf(" (and %d more schema differences)", len(diffs)-1)
	}
	return &first
}

// checkFirstRow returns the columns null in the first row; errors are the file's
// corruption or the source's.
func checkFirstRow(ctx context.Context, f *reader.File, s *Schema) ([]string, error) {
	if f.NumRows() == 0 {
		return nil, nil
	}
	rec, err := f.ReadFirstRows(ctx, 1)
	if err != nil {
		return nil, err
	}
	defer rec.Release()
	key := f.Object().Key
	if rec.NumRows() != 1 {
		return nil, &reader.ParquetError{Key: key, RowGroup: -1,
			Err: fmt.Errorf("corrupt data: the footer says %d rows, the first row could not be read", f.NumRows())}
	}
	if int(rec.NumCols()) != len(s.Columns) {
		return nil, &reader.ParquetError{Key: key, RowGroup: -1,
			Err: fmt.Errorf("corrupt data: %d columns read, the schema has %d", rec.NumCols(), len(s.Columns))}
	}
	var nulls []string
	for i, c := range s.Columns {
		if rec.Column(i).IsNull(0) {
			nulls = append(nulls, c.Name)
		}
	}
	return nulls, nil
}

// FormatBytes shows a byte count the way validation messages do: "612.0 MiB".
func FormatBytes(n int64) string {
	const unit = 1024
	if n < unit {
		return fmt.Sprintf("%d B", n)
	}
	div, exp := int64(unit), 0
	for m := n / unit; m >= unit && exp < 5; m /= unit {
		div *= unit
		exp++
	}
	return fmt.Sprintf("%.1f %ciB", float64(n)/float64(div), "KMGTPE"[exp])
}
