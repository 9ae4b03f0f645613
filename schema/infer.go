package schema

import (
	"fmt"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/parquet"
	pqschema "github.com/apache/arrow-go/v18/parquet/schema"

	"github.com/backflowhq/backflow/reader"
)

// The JSON types a column's values become (SPEC.md, Values).
const (
	JSONString  = "string"
	JSONNumber  = "number"
	JSONBoolean = "boolean"
	JSONArray   = "array"
	JSONObject  = "object"
	// JSONNull is the type of a column of Arrow type null: every value is null, so the
	// first-row check refuses any file with a row of it.
	JSONNull = "null"
)

// Infer returns the schema of f's top-level columns, from its footer: each column's
// name, its Parquet type as a person reads it, the JSON type its values become and
// its Arrow type. It reads no data. Errors name the file's key.
func Infer(f *reader.File) (s *Schema, err error) {
	key := f.Object().Key
	defer func() {
		if p := recover(); p != nil {
			s, err = nil, &reader.ParquetError{Key: key, RowGroup: -1, Err: fmt.Errorf("unreadable Parquet schema (%v)", p)}
		}
	}()
	as, err := f.ArrowSchema()
	if err != nil {
		return nil, err
	}
	root := f.Metadata().Schema.Root()
	if root.NumFields() != as.NumFields() {
		return nil, &reader.ParquetError{Key: key, RowGroup: -1,
			Err: fmt.Errorf("unsupported Parquet schema: %d top-level columns read as %d Arrow fields", root.NumFields(), as.NumFields())}
	}
	s = &Schema{Columns: make([]Column, root.NumFields()), Arrow: as}
	for i := range s.Columns {
		node, field := root.Field(i), as.Field(i)
		if node.Name() != field.Name {
			return nil, &reader.ParquetError{Key: key, RowGroup: -1,
				Err: fmt.Errorf("unsupported Parquet schema: column %d is %q in Parquet and %q in Arrow", i, node.Name(), field.Name)}
		}
		s.Columns[i] = Column{
			Name:    field.Name,
			Parquet: ParquetType(node),
			JSON:    JSONType(field.Type),
			Type:    field.Type,
		}
	}
	return s, nil
}

// ParquetType describes a Parquet schema node the way Parquet tools print it: the
// physical type (or "group") and its logical or converted type, e.g.
// "BYTE_ARRAY (STRING)", "INT64 (TIMESTAMP(MICROS,true))", "group (LIST)", "INT96".
// A repeated node (a list without a LIST annotation) starts with "repeated ".
func ParquetType(n pqschema.Node) string {
	var b strings.Builder
	if n.RepetitionType() == parquet.Repetitions.Repeated {
		b.WriteString("repeated ")
	}
	if p, ok := n.(*pqschema.PrimitiveNode); ok {
		b.WriteString(p.PhysicalType().String())
	} else {
		b.WriteString("group")
	}
	if a := annotation(n); a != "" {
		b.WriteString(" (")
		b.WriteString(a)
		b.WriteString(")")
	}
	return b.String()
}

// annotation is a node's logical type in parquet-format's own spelling (the one
// parquet-java and parquet-cli print), or its legacy converted type when it has no
// logical type; "" when it has neither.
func annotation(n pqschema.Node) string {
	switch t := n.LogicalType().(type) {
	case nil, pqschema.NoLogicalType:
		// fall through to the converted type
	case pqschema.StringLogicalType:
		return "STRING"
	case pqschema.MapLogicalType:
		return "MAP"
	case pqschema.ListLogicalType:
		return "LIST"
	case pqschema.EnumLogicalType:
		return "ENUM"
	case pqschema.DecimalLogicalType:
		return fmt.Sprintf("DECIMAL(%d,%d)", t.Precision(), t.Scale())
	case pqschema.DateLogicalType:
		return "DATE"
	case pqschema.TimeLogicalType:
		return fmt.Sprintf("TIME(%s,%t)", timeUnit(t.TimeUnit()), t.IsAdjustedToUTC())
	case pqschema.TimestampLogicalType:
		return fmt.Sprintf("TIMESTAMP(%s,%t)", timeUnit(t.TimeUnit()), t.IsAdjustedToUTC())
	case pqschema.IntLogicalType:
		// A signed integer as wide as its physical type says nothing the physical
		// type does not: "INT64", not "INT64 (INTEGER(64,true))".
		if p, ok := n.(*pqschema.PrimitiveNode); ok && t.IsSigned() &&
			(p.PhysicalType() == parquet.Types.Int32 && t.BitWidth() == 32 || p.PhysicalType() == parquet.Types.Int64 && t.BitWidth() == 64) {
			return ""
		}
		return fmt.Sprintf("INTEGER(%d,%t)", t.BitWidth(), t.IsSigned())
	case pqschema.NullLogicalType:
		return "UNKNOWN"
	case pqschema.JSONLogicalType:
		return "JSON"
	case pqschema.BSONLogicalType:
		return "BSON"
	case pqschema.UUIDLogicalType:
		return "UUID"
	case pqschema.IntervalLogicalType:
		return "INTERVAL"
	case pqschema.Float16LogicalType:
		return "FLOAT16"
	case pqschema.VariantLogicalType:
		return "VARIANT"
	case pqschema.GeometryLogicalType:
		return "GEOMETRY"
	case pqschema.GeographyLogicalType:
		return "GEOGRAPHY"
	default:
		return strings.ToUpper(t.String())
	}
	if c := n.ConvertedType(); c != pqschema.ConvertedTypes.None && c != pqschema.ConvertedTypes.NA {
		return c.String()
	}
	return ""
}

func timeUnit(u pqschema.TimeUnitType) string {
	switch u {
	case pqschema.TimeUnitMillis:
		return "MILLIS"
	case pqschema.TimeUnitMicros:
		return "MICROS"
	case pqschema.TimeUnitNanos:
		return "NANOS"
	}
	return "UNKNOWN"
}

// JSONType is the JSON type the values of an Arrow type become in a message, per
// SPEC.md's value rules: timestamps, dates, times, binary and UUIDs are strings;
// integers, floats (float16 too) and decimals are numbers; lists are arrays; structs
// and maps are objects. A dictionary column is its values' type.
func JSONType(dt arrow.DataType) string {
	switch dt.ID() {
	case arrow.BOOL:
		return JSONBoolean
	case arrow.INT8, arrow.INT16, arrow.INT32, arrow.INT64,
		arrow.UINT8, arrow.UINT16, arrow.UINT32, arrow.UINT64,
		arrow.FLOAT16, arrow.FLOAT32, arrow.FLOAT64,
		arrow.DECIMAL32, arrow.DECIMAL64, arrow.DECIMAL128, arrow.DECIMAL256,
		arrow.DURATION:
		return JSONNumber
	case arrow.LIST, arrow.LARGE_LIST, arrow.FIXED_SIZE_LIST, arrow.LIST_VIEW, arrow.LARGE_LIST_VIEW:
		return JSONArray
	case arrow.STRUCT, arrow.MAP:
		return JSONObject
	case arrow.DICTIONARY:
		return JSONType(dt.(*arrow.DictionaryType).ValueType)
	case arrow.RUN_END_ENCODED:
		return JSONType(dt.(*arrow.RunEndEncodedType).Encoded())
	case arrow.EXTENSION:
		ext := dt.(arrow.ExtensionType)
		if ext.ExtensionName() == "arrow.uuid" {
			return JSONString
		}
		return JSONType(ext.StorageType())
	case arrow.NULL:
		return JSONNull
	default:
		// strings, binary (base64), timestamps, dates, times, intervals
		return JSONString
	}
}
