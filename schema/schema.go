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
}
