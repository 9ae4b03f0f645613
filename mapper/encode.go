package mapper

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"strconv"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/array"
	"github.com/apache/arrow-go/v18/arrow/bitutil"
	"github.com/apache/arrow-go/v18/arrow/decimal"
	"github.com/apache/arrow-go/v18/arrow/extensions"
)

// encoder writes the values of one Arrow array as JSON. Encoders are built for each record
// (newEncoder) and used by one goroutine; building one type-asserts the array and its
// children once, so that encoding a value is a direct read of the typed buffers.
type encoder interface {
	// isNull reports whether row i is null, including values that are null one level down
	// (a dictionary or run-end encoded array whose value is null).
	isNull(i int) bool
	// appendValue appends the JSON of row i, which is not null.
	appendValue(dst []byte, i int) []byte
}

// appendJSON appends the JSON of row i of e, null included.
func appendJSON(e encoder, dst []byte, i int) []byte {
	if e.isNull(i) {
		return append(dst, "null"...)
	}
	return e.appendValue(dst, i)
}

// validity is the null bitmap of an array; the zero value has no nulls.
type validity struct {
	bits   []byte
	offset int
}

func validityOf(arr arrow.Array) validity {
	if arr.NullN() == 0 {
		return validity{}
	}
	bits := arr.NullBitmapBytes()
	if len(bits) == 0 {
		return validity{}
	}
	return validity{bits: bits, offset: arr.Data().Offset()}
}

func (v validity) isNull(i int) bool {
	return v.bits != nil && !bitutil.BitIsSet(v.bits, v.offset+i)
}

// newEncoder returns the encoder of arr, following SPEC.md's value table.
func newEncoder(arr arrow.Array) encoder {
	v := validityOf(arr)
	switch a := arr.(type) {
	case *array.Null:
		return nullEncoder{}
	case *array.Boolean:
		return boolEncoder{v, a}
	case *array.Int8:
		return intEncoder[int8]{v, a.Values()}
	case *array.Int16:
		return intEncoder[int16]{v, a.Values()}
	case *array.Int32:
		return intEncoder[int32]{v, a.Values()}
	case *array.Int64:
		return intEncoder[int64]{v, a.Values()}
	case *array.Uint8:
		return uintEncoder[uint8]{v, a.Values()}
	case *array.Uint16:
		return uintEncoder[uint16]{v, a.Values()}
	case *array.Uint32:
		return uintEncoder[uint32]{v, a.Values()}
	case *array.Uint64:
		return uintEncoder[uint64]{v, a.Values()}
	case *array.Float16:
		return float16Encoder{v, a}
	case *array.Float32:
		return float32Encoder{v, a.Values()}
	case *array.Float64:
		return float64Encoder{v, a.Values()}
	case *array.String:
		return utf8Encoder{v, utf8ValuesOf(a)}
	case *array.LargeString:
		return stringEncoder[*array.LargeString]{v, a}
	case *array.StringView:
		return stringEncoder[*array.StringView]{v, a}
	case *array.Binary:
		return binaryEncoder[*array.Binary]{v, a}
	case *array.LargeBinary:
		return binaryEncoder[*array.LargeBinary]{v, a}
	case *array.BinaryView:
		return binaryEncoder[*array.BinaryView]{v, a}
	case *array.FixedSizeBinary:
		return binaryEncoder[*array.FixedSizeBinary]{v, a}
	case *array.Decimal32:
		return decimalEncoder[decimal.Decimal32]{v, a.Values(), arr.DataType().(arrow.DecimalType).GetScale()}
	case *array.Decimal64:
		return decimalEncoder[decimal.Decimal64]{v, a.Values(), arr.DataType().(arrow.DecimalType).GetScale()}
	case *array.Decimal128:
		return decimal128Encoder{v, a.Values(), arr.DataType().(arrow.DecimalType).GetScale()}
	case *array.Decimal256:
		return decimal256Encoder{v, a.Values(), arr.DataType().(arrow.DecimalType).GetScale()}
	case *array.Timestamp:
		return timestampEncoder{v, a.Values(), unitNanos(a.DataType().(*arrow.TimestampType).Unit)}
	case *array.Date32:
		return date32Encoder{v, a.Values()}
	case *array.Date64:
		return date64Encoder{v, a.Values()}
	case *array.Time32:
		return time32Encoder{v, a.Values(), unitNanos(a.DataType().(*arrow.Time32Type).Unit)}
	case *array.Time64:
		return time64Encoder{v, a.Values(), unitNanos(a.DataType().(*arrow.Time64Type).Unit)}
	case *array.Duration:
		// A duration is written as the number of its unit (SPEC.md is silent on durations,
		// which Parquet files carry only through an embedded Arrow schema).
		return intEncoder[arrow.Duration]{v, a.Values()}
	case *array.Struct:
		return newStructEncoder(v, a)
	case *array.Map:
		return newMapEncoder(v, a)
	case *array.Dictionary:
		return dictEncoder{v, a, newEncoder(a.Dictionary())}
	case *array.RunEndEncoded:
		return reeEncoder{a, newEncoder(a.Values())}
	case *extensions.VariantArray:
		return fallbackEncoder{a}
	case array.ExtensionArray:
		switch a.ExtensionType().ExtensionName() {
		case "arrow.uuid":
			if s, ok := a.Storage().(*array.FixedSizeBinary); ok && s.DataType().(*arrow.FixedSizeBinaryType).ByteWidth == 16 {
				return uuidEncoder{validityOf(s), s}
			}
		case "arrow.bool8":
			if s, ok := a.Storage().(*array.Int8); ok {
				return bool8Encoder{validityOf(s), s.Values()}
			}
		}
		return newEncoder(a.Storage())
	case array.ListLike:
		return listEncoder{v, a, newEncoder(a.ListValues())}
	default:
		return fallbackEncoder{arr}
	}
}

func unitNanos(u arrow.TimeUnit) int64 {
	switch u {
	case arrow.Second:
		return 1e9
	case arrow.Millisecond:
		return 1e6
	case arrow.Microsecond:
		return 1e3
	default:
		return 1
	}
}

type nullEncoder struct{}

func (nullEncoder) isNull(int) bool                      { return true }
func (nullEncoder) appendValue(dst []byte, _ int) []byte { return append(dst, "null"...) }

type boolEncoder struct {
	validity
	a *array.Boolean
}

func (e boolEncoder) appendValue(dst []byte, i int) []byte {
	return strconv.AppendBool(dst, e.a.Value(i))
}

type bool8Encoder struct {
	validity
	vals []int8
}

func (e bool8Encoder) appendValue(dst []byte, i int) []byte {
	return strconv.AppendBool(dst, e.vals[i] != 0)
}

type intEncoder[T ~int8 | ~int16 | ~int32 | ~int64] struct {
	validity
	vals []T
}

func (e intEncoder[T]) appendValue(dst []byte, i int) []byte {
	return strconv.AppendInt(dst, int64(e.vals[i]), 10)
}

type uintEncoder[T ~uint8 | ~uint16 | ~uint32 | ~uint64] struct {
	validity
	vals []T
}

func (e uintEncoder[T]) appendValue(dst []byte, i int) []byte {
	return strconv.AppendUint(dst, uint64(e.vals[i]), 10)
}

type float16Encoder struct {
	validity
	a *array.Float16
}

func (e float16Encoder) appendValue(dst []byte, i int) []byte {
	return appendFloat16(dst, e.a.Value(i))
}

type float32Encoder struct {
	validity
	vals []float32
}

func (e float32Encoder) appendValue(dst []byte, i int) []byte {
	return appendFloat(dst, float64(e.vals[i]), 32)
}

type float64Encoder struct {
	validity
	vals []float64
}

func (e float64Encoder) appendValue(dst []byte, i int) []byte { return appendFloat(dst, e.vals[i], 64) }

type stringEncoder[A interface{ Value(int) string }] struct {
	validity
	a A
}

func (e stringEncoder[A]) appendValue(dst []byte, i int) []byte {
	return appendString(dst, e.a.Value(i))
}

// utf8Values are the offsets and bytes of an *array.String, the type Parquet strings are
// read as. Reading them directly costs less than the generic encoders' Value, an indirect
// call for every value (the type parameters of pointer types share one instantiation).
type utf8Values struct {
	offsets []int32 // from the array's offset: value i is bytes[offsets[i]:offsets[i+1]]
	bytes   []byte
}

func utf8ValuesOf(a *array.String) utf8Values {
	v := utf8Values{offsets: a.ValueOffsets()}
	if buf := a.Data().Buffers()[2]; buf != nil {
		v.bytes = buf.Bytes()
	}
	return v
}

func (v utf8Values) value(i int) []byte { return v.bytes[v.offsets[i]:v.offsets[i+1]] }

type utf8Encoder struct {
	validity
	values utf8Values
}

func (e utf8Encoder) appendValue(dst []byte, i int) []byte {
	return appendString(dst, e.values.value(i))
}

type binaryEncoder[A interface{ Value(int) []byte }] struct {
	validity
	a A
}

func (e binaryEncoder[A]) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '"')
	dst = base64.StdEncoding.AppendEncode(dst, e.a.Value(i))
	return append(dst, '"')
}

type uuidEncoder struct {
	validity
	a *array.FixedSizeBinary
}

func (e uuidEncoder) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '"')
	dst = appendUUID(dst, e.a.Value(i))
	return append(dst, '"')
}

type decimalEncoder[T decimal.Decimal32 | decimal.Decimal64] struct {
	validity
	vals  []T
	scale int32
}

func (e decimalEncoder[T]) appendValue(dst []byte, i int) []byte {
	v := int64(e.vals[i])
	mag := uint64(v)
	if v < 0 {
		mag = -mag
	}
	return appendDecimalUint(dst, v < 0, mag, e.scale)
}

type decimal128Encoder struct {
	validity
	vals  []decimal.Decimal128
	scale int32
}

func (e decimal128Encoder) appendValue(dst []byte, i int) []byte {
	v := e.vals[i]
	neg := v.Sign() < 0
	if neg {
		v = v.Negate()
	}
	if v.HighBits() == 0 {
		return appendDecimalUint(dst, neg, v.LowBits(), e.scale)
	}
	return appendDecimalBig(dst, e.vals[i].BigInt(), e.scale)
}

type decimal256Encoder struct {
	validity
	vals  []decimal.Decimal256
	scale int32
}

func (e decimal256Encoder) appendValue(dst []byte, i int) []byte {
	v := e.vals[i]
	neg := v.Sign() < 0
	if neg {
		v = v.Negate()
	}
	if w := v.Array(); w[1] == 0 && w[2] == 0 && w[3] == 0 {
		return appendDecimalUint(dst, neg, w[0], e.scale)
	}
	return appendDecimalBig(dst, e.vals[i].BigInt(), e.scale)
}

type timestampEncoder struct {
	validity
	vals []arrow.Timestamp
	unit int64 // nanoseconds per unit
}

// instant splits the value into seconds and nanoseconds since the epoch. Arrow stores an
// instant in UTC whatever the type's time zone, which only says how to display it.
func (e timestampEncoder) instant(i int) (sec, nsec int64) {
	v := int64(e.vals[i])
	if e.unit == 1e9 {
		return v, 0
	}
	q, r := floorDiv(v, 1e9/e.unit)
	return q, r * e.unit
}

func (e timestampEncoder) appendValue(dst []byte, i int) []byte {
	sec, nsec := e.instant(i)
	dst = append(dst, '"')
	dst = appendTimestamp(dst, sec, nsec)
	return append(dst, '"')
}

type date32Encoder struct {
	validity
	vals []arrow.Date32
}

func (e date32Encoder) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '"')
	dst = appendDate(dst, int64(e.vals[i]))
	return append(dst, '"')
}

type date64Encoder struct {
	validity
	vals []arrow.Date64
}

func (e date64Encoder) appendValue(dst []byte, i int) []byte {
	days, _ := floorDiv(int64(e.vals[i]), 86400000)
	dst = append(dst, '"')
	dst = appendDate(dst, days)
	return append(dst, '"')
}

type time32Encoder struct {
	validity
	vals []arrow.Time32
	unit int64
}

func (e time32Encoder) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '"')
	dst = appendTimeOfDay(dst, int64(e.vals[i])*e.unit)
	return append(dst, '"')
}

type time64Encoder struct {
	validity
	vals []arrow.Time64
	unit int64
}

func (e time64Encoder) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '"')
	dst = appendTimeOfDay(dst, int64(e.vals[i])*e.unit)
	return append(dst, '"')
}

type structEncoder struct {
	validity
	keys   [][]byte // `"name":`, then `,"name":`
	fields []encoder
}

func newStructEncoder(v validity, a *array.Struct) structEncoder {
	st := a.DataType().(*arrow.StructType)
	e := structEncoder{validity: v, keys: make([][]byte, a.NumField()), fields: make([]encoder, a.NumField())}
	for j := range e.fields {
		var key []byte
		if j > 0 {
			key = append(key, ',')
		}
		key = appendString(key, st.Field(j).Name)
		e.keys[j] = append(key, ':')
		e.fields[j] = newEncoder(a.Field(j))
	}
	return e
}

func (e structEncoder) appendValue(dst []byte, i int) []byte {
	dst = append(dst, '{')
	for j, f := range e.fields {
		dst = append(dst, e.keys[j]...)
		dst = appendJSON(f, dst, i)
	}
	return append(dst, '}')
}

type listEncoder struct {
	validity
	a    array.ListLike
	elem encoder
}

func (e listEncoder) appendValue(dst []byte, i int) []byte {
	start, end := e.a.ValueOffsets(i)
	dst = append(dst, '[')
	for j := start; j < end; j++ {
		if j > start {
			dst = append(dst, ',')
		}
		dst = appendJSON(e.elem, dst, int(j))
	}
	return append(dst, ']')
}

// mapEncoder writes a map as an object. Keys become strings: a string key as is, an integer
// key in decimal, any other key as its JSON text.
type mapEncoder struct {
	validity
	a           *array.Map
	keys, items encoder
	stringKeys  bool
	tmp         *[]byte // scratch for non-string keys; encoders are used by one goroutine
}

func newMapEncoder(v validity, a *array.Map) encoder {
	entries, ok := a.ListValues().(*array.Struct)
	if !ok || entries.NumField() != 2 {
		return fallbackEncoder{a}
	}
	keys, items := entries.Field(0), entries.Field(1)
	e := mapEncoder{validity: v, a: a, keys: newEncoder(keys), items: newEncoder(items), tmp: new([]byte)}
	switch k := keys.DataType(); {
	case isStringType(k):
		e.stringKeys = true
	}
	return e
}

func (e mapEncoder) appendValue(dst []byte, i int) []byte {
	start, end := e.a.ValueOffsets(i)
	dst = append(dst, '{')
	for j := int(start); j < int(end); j++ {
		if j > int(start) {
			dst = append(dst, ',')
		}
		switch {
		case e.keys.isNull(j):
			dst = append(dst, `"null"`...)
		case e.stringKeys:
			dst = e.keys.appendValue(dst, j)
		default:
			text := e.keys.appendValue((*e.tmp)[:0], j)
			*e.tmp = text
			if len(text) >= 2 && text[0] == '"' {
				dst = append(dst, text...) // already a JSON string (dates, binary, UUID)
			} else {
				dst = appendString(dst, text)
			}
		}
		dst = append(dst, ':')
		dst = appendJSON(e.items, dst, j)
	}
	return append(dst, '}')
}

type dictEncoder struct {
	validity
	a      *array.Dictionary
	values encoder
}

func (e dictEncoder) isNull(i int) bool {
	return e.validity.isNull(i) || e.values.isNull(e.a.GetValueIndex(i))
}

func (e dictEncoder) appendValue(dst []byte, i int) []byte {
	return e.values.appendValue(dst, e.a.GetValueIndex(i))
}

type reeEncoder struct {
	a      *array.RunEndEncoded
	values encoder
}

func (e reeEncoder) isNull(i int) bool { return e.values.isNull(e.a.GetPhysicalIndex(i)) }

func (e reeEncoder) appendValue(dst []byte, i int) []byte {
	return e.values.appendValue(dst, e.a.GetPhysicalIndex(i))
}

// fallbackEncoder covers the types no Parquet file yields through pqarrow (unions,
// intervals) and variants: it asks arrow-go for the value and encodes it with
// encoding/json. It is slow and rare; whatever happens, it writes valid JSON.
type fallbackEncoder struct{ a arrow.Array }

func (e fallbackEncoder) isNull(i int) bool { return e.a.IsNull(i) }

func (e fallbackEncoder) appendValue(dst []byte, i int) []byte {
	if v, ok := e.a.(*extensions.VariantArray); ok {
		if val, err := v.Value(i); err == nil {
			if b, err := val.MarshalJSON(); err == nil && json.Valid(b) {
				return appendCompact(dst, b)
			}
		}
		return appendString(dst, e.a.ValueStr(i))
	}
	if b, err := json.Marshal(e.a.GetOneForMarshal(i)); err == nil && json.Valid(b) {
		return appendCompact(dst, b)
	}
	return appendString(dst, e.a.ValueStr(i))
}

// appendCompact appends valid JSON b without insignificant white space.
func appendCompact(dst, b []byte) []byte {
	n := len(dst)
	buf := bytes.NewBuffer(dst)
	if err := json.Compact(buf, b); err != nil {
		return append(dst[:n], "null"...)
	}
	return buf.Bytes()
}

// isStringType reports whether values of t are text: string, large string, string view,
// or a dictionary of those.
func isStringType(t arrow.DataType) bool {
	switch t.ID() {
	case arrow.STRING, arrow.LARGE_STRING, arrow.STRING_VIEW:
		return true
	case arrow.DICTIONARY:
		return isStringType(t.(*arrow.DictionaryType).ValueType)
	}
	return false
}
