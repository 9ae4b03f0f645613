// Package schema infers a sync's schema from a Parquet file's footer and first row, checks
// every file against it, and fingerprints it.
package schema

import "github.com/apache/arrow-go/v18/arrow"

// Column is one top-level column of a sync's schema.
type Column struct {
	Name    string         `json:"name"`
	Parquet string         `json:"parquet"` // physical and logical type, e.g. "BYTE_ARRAY (STRING)"
	JSON    string         `json:"json"`    // string | number | boolean | array | object
	Type    arrow.DataType `json:"-"`
}

// Schema is the inferred schema of a sync: the columns of the first valid file.
type Schema struct {
	Columns []Column      `json:"columns"`
	Arrow   *arrow.Schema `json:"-"`
	// Origin is the key of the file the schema was read from: every message about the
	// sync's schema names it, so that a stray file that became the schema is found.
	Origin string `json:"-"`
	// FirstRowNulls are the columns null in the file's first row, when the limits let
	// such a file through (first_row_nulls: warn); the caller warns about them.
	FirstRowNulls []string `json:"-"`
}
