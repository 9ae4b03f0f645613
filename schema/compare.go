package schema

import (
	"crypto/sha256"
	"encoding/hex"
	"fmt"
	"strings"

	"github.com/apache/arrow-go/v18/arrow"
)

// Column returns the column named name, and whether there is one.
func (s *Schema) Column(name string) (Column, bool) {
	if s == nil {
		return Column{}, false
	}
	for _, c := range s.Columns {
		if c.Name == name {
			return c, true
		}
	}
	return Column{}, false
}

// Equal reports whether s and o have the same columns, in the same order, with the
// same types (as TypeName compares them). Two nil schemas are equal.
func (s *Schema) Equal(o *Schema) bool {
	if s == nil || o == nil {
		return s == o
	}
	if len(s.Columns) != len(o.Columns) {
		return false
	}
	for i := range s.Columns {
		if s.Columns[i].Name != o.Columns[i].Name || s.Columns[i].TypeName() != o.Columns[i].TypeName() {
			return false
		}
	}
	return true
}

// Fingerprint is a stable hex hash of the columns' names and types, in column order:
// equal schemas have equal fingerprints, whichever file and writer they came from.
// A checkpoint keeps it to notice that the source's schema changed.
func (s *Schema) Fingerprint() string {
	h := sha256.New()
	h.Write([]byte("backflow schema v1\n"))
	if s != nil {
		for _, c := range s.Columns {
			fmt.Fprintf(h, "%q %q\n", c.Name, c.TypeName())
		}
	}
	return hex.EncodeToString(h.Sum(nil))
}

// TypeName is the column's type as schemas are compared and as error messages show it:
// its Arrow type, with the differences that do not change a message's values left out
// — dictionary encoding, 32- or 64-bit offsets and views, nullability. A column
// without an Arrow type (a schema decoded from JSON) is named by its Parquet type.
func (c Column) TypeName() string {
	if c.Type == nil {
		return "parquet " + c.Parquet
	}
	return typeName(c.Type)
}

func typeName(dt arrow.DataType) string {
	switch t := dt.(type) {
	case *arrow.DictionaryType:
		return typeName(t.ValueType)
	case *arrow.RunEndEncodedType:
		return typeName(t.Encoded())
	case *arrow.StringType, *arrow.LargeStringType, *arrow.StringViewType:
		return "utf8"
	case *arrow.BinaryType, *arrow.LargeBinaryType, *arrow.BinaryViewType:
		return "binary"
	case *arrow.MapType:
		return "map<" + typeName(t.KeyType()) + ", " + typeName(t.ItemType()) + ">"
	case *arrow.FixedSizeListType:
		return fmt.Sprintf("fixed_size_list<%s>[%d]", typeName(t.Elem()), t.Len())
	case arrow.ListLikeType:
		// list, large_list, list_view, large_list_view
		return "list<" + typeName(t.Elem()) + ">"
	case *arrow.StructType:
		parts := make([]string, t.NumFields())
		for i, f := range t.Fields() {
			parts[i] = f.Name + ": " + typeName(f.Type)
		}
		return "struct<" + strings.Join(parts, ", ") + ">"
	case arrow.ExtensionType:
		return "extension<" + t.ExtensionName() + ">"
	default:
		return dt.String()
	}
}
