package mapper

import (
	"bytes"
	"encoding/base64"
	"encoding/json"
	"fmt"
	"math"
	"math/big"
	"math/rand/v2"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/apache/arrow-go/v18/arrow"
	"github.com/apache/arrow-go/v18/arrow/decimal128"
	"github.com/apache/arrow-go/v18/arrow/decimal256"
	"github.com/apache/arrow-go/v18/arrow/extensions"
	"github.com/apache/arrow-go/v18/arrow/float16"
	"github.com/apache/arrow-go/v18/arrow/memory"

	"github.com/backflowhq/backflow/config"
)

// FuzzMapper draws a schema (types from SPEC.md's value table, nested up to three levels)
// and rows from the input, maps them, and checks that every message is valid JSON whose
// traits decode to the values that went in, as an independent reference conversion
// written here (with encoding/json, time and math/big) computes them.
func FuzzMapper(f *testing.F) {
	f.Add([]byte("seed"))
	f.Add([]byte{3, 0, 12, 1, 24, 12, 27, 2, 4, 12, 5, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16})
	f.Add([]byte{4, 1, 16, 200, 17, 30, 18, 2, 28, 11, 255, 255, 255, 255, 255, 255, 255, 255, 0, 0, 0, 1, 2, 3})
	f.Add(bytes.Repeat([]byte{0xff, 0x80, 0x00, 0x1f, 0x7f, 0xc3, 0x28}, 20))
	for k := range numKinds {
		f.Add([]byte{2, 0, byte(k), byte(k), 3, 1, 2, 3, 4, 5, 6, 7, 8, 9, 0xfe, 0xed, 0xfa, 0xce})
	}
	// Longer inputs reach several rows of nested values from the start.
	rng := rand.New(rand.NewPCG(1, 2))
	for range 16 {
		b := make([]byte, 400)
		for i := range b {
			b[i] = byte(rng.Uint32())
		}
		f.Add(b)
	}
	f.Fuzz(func(t *testing.T, data []byte) {
		mem := memory.NewCheckedAllocator(memory.NewGoAllocator())
		defer mem.AssertSize(t, 0)
		g := &gen{data: data}

		ncols := 1 + g.n(4)
		intID := g.bit()
		fields := []arrow.Field{{Name: "uid", Type: arrow.BinaryTypes.String, Nullable: true}}
		if intID {
			fields[0].Type = arrow.PrimitiveTypes.Int64
		}
		kinds := make([]*fkind, ncols)
		for c := range kinds {
			kinds[c] = g.kind(0)
			fields = append(fields, arrow.Field{Name: fmt.Sprintf("c%d", c), Type: kinds[c].dt, Nullable: true})
		}
		schema := arrow.NewSchema(fields, nil)
		mp := config.Mapping{Type: "identify", UserID: "uid", SkipNulls: g.bit()}
		nest := ncols >= 2 && g.bit()
		if nest {
			mp.Rename = map[string]string{"c0": "g.x", "c1": "g.y"}
		}

		nrows := g.n(6)
		rows := make([][]any, nrows)
		refs := make([][]any, nrows)
		ids := make([]string, nrows) // "" when the row has none
		for r := range rows {
			switch {
			case g.n(8) == 0:
				rows[r] = append(rows[r], nil)
			case intID:
				v := g.i64()
				rows[r] = append(rows[r], v)
				ids[r] = strconv.FormatInt(v, 10)
			default:
				s := g.str()
				rows[r] = append(rows[r], s)
				ids[r] = string([]rune(s))
			}
			for _, k := range kinds {
				v, ref := g.value(k)
				rows[r] = append(rows[r], v)
				refs[r] = append(refs[r], ref)
			}
		}
		rec := buildRecord(t, mem, schema, rows)
		defer rec.Release()

		m, err := New(Options{Sync: "fuzz", Schema: schema, Mapping: mp, Version: "fuzz"})
		if err != nil {
			t.Fatal(err)
		}
		msgs, rejects := m.Map(rec, 0, nil, nil)
		checkMessages(t, msgs)
		if len(msgs)+len(rejects) != nrows {
			t.Fatalf("%d rows gave %d messages and %d rejects", nrows, len(msgs), len(rejects))
		}
		for _, rj := range rejects {
			if ids[rj.Row] != "" || !strings.HasPrefix(rj.Reason, "no identifier") {
				t.Fatalf("row %d (id %q) rejected: %s", rj.Row, ids[rj.Row], rj.Reason)
			}
		}
		for _, msg := range msgs {
			r := msg.Row
			if msg.UserID != ids[r] {
				t.Fatalf("row %d: userId %q, want %q", r, msg.UserID, ids[r])
			}
			want := map[string]any{}
			group := map[string]any{}
			for c, ref := range refs[r] {
				if ref == nil && mp.SkipNulls {
					continue
				}
				switch name := fmt.Sprintf("c%d", c); {
				case nest && c == 0:
					group["x"] = ref
				case nest && c == 1:
					group["y"] = ref
				default:
					want[name] = ref
				}
			}
			if nest && (len(group) > 0 || !mp.SkipNulls) {
				want["g"] = group
			}
			dec := json.NewDecoder(bytes.NewReader(msg.Body()))
			dec.UseNumber()
			var got any
			if err := dec.Decode(&got); err != nil {
				t.Fatalf("row %d: %v", r, err)
			}
			if err := match(want, got); err != nil {
				t.Fatalf("row %d: %v\nbody: %s", r, err, msg.Body())
			}
		}
	})
}

// gen draws choices and values from the fuzz input; past its end it draws zeros.
type gen struct {
	data []byte
	pos  int
}

func (g *gen) byte() byte {
	if g.pos >= len(g.data) {
		return 0
	}
	g.pos++
	return g.data[g.pos-1]
}

func (g *gen) n(k int) int { return int(g.byte()) % k }
func (g *gen) bit() bool   { return g.byte()&1 == 1 }

func (g *gen) u64() uint64 {
	var v uint64
	for range 8 {
		v = v<<8 | uint64(g.byte())
	}
	return v
}

func (g *gen) i64() int64 { return int64(g.u64()) }

// inRange returns a value in [lo, hi].
func (g *gen) inRange(lo, hi int64) int64 {
	return lo + int64(g.u64()%uint64(hi-lo+1))
}

func (g *gen) bytes(max int) []byte {
	n := g.n(max + 1)
	b := make([]byte, n)
	for i := range b {
		b[i] = g.byte()
	}
	return b
}

func (g *gen) str() string { return string(g.bytes(12)) }

// The kinds of value the fuzzer draws; the reference conversion knows each.
const (
	kBool = iota
	kInt8
	kInt16
	kInt32
	kInt64
	kUint8
	kUint16
	kUint32
	kUint64
	kFloat16
	kFloat32
	kFloat64
	kString
	kLargeString
	kBinary
	kFixedBinary
	kDecimal128
	kDecimal256
	kTimestamp
	kDate32
	kDate64
	kTime32
	kTime64
	kUUID
	kDict
	kList
	kLargeList
	kFixedList
	kStruct
	kMapString
	kMapInt
	numKinds
)

type fkind struct {
	kind   int
	dt     arrow.DataType
	unit   arrow.TimeUnit
	scale  int32
	prec   int32
	elem   *fkind   // lists
	fields []*fkind // structs
	val    *fkind   // maps
}

func (g *gen) kind(depth int) *fkind {
	k := g.n(numKinds)
	if depth >= 3 && k >= kList {
		k = kString
	}
	fk := &fkind{kind: k}
	units := []arrow.TimeUnit{arrow.Second, arrow.Millisecond, arrow.Microsecond, arrow.Nanosecond}
	switch k {
	case kBool:
		fk.dt = arrow.FixedWidthTypes.Boolean
	case kInt8:
		fk.dt = arrow.PrimitiveTypes.Int8
	case kInt16:
		fk.dt = arrow.PrimitiveTypes.Int16
	case kInt32:
		fk.dt = arrow.PrimitiveTypes.Int32
	case kInt64:
		fk.dt = arrow.PrimitiveTypes.Int64
	case kUint8:
		fk.dt = arrow.PrimitiveTypes.Uint8
	case kUint16:
		fk.dt = arrow.PrimitiveTypes.Uint16
	case kUint32:
		fk.dt = arrow.PrimitiveTypes.Uint32
	case kUint64:
		fk.dt = arrow.PrimitiveTypes.Uint64
	case kFloat16:
		fk.dt = arrow.FixedWidthTypes.Float16
	case kFloat32:
		fk.dt = arrow.PrimitiveTypes.Float32
	case kFloat64:
		fk.dt = arrow.PrimitiveTypes.Float64
	case kString:
		fk.dt = arrow.BinaryTypes.String
	case kLargeString:
		fk.dt = arrow.BinaryTypes.LargeString
	case kBinary:
		fk.dt = arrow.BinaryTypes.Binary
	case kFixedBinary:
		fk.dt = &arrow.FixedSizeBinaryType{ByteWidth: 3}
	case kDecimal128:
		fk.prec = int32(1 + g.n(38))
		fk.scale = int32(g.n(int(fk.prec) + 1))
		fk.dt = &arrow.Decimal128Type{Precision: fk.prec, Scale: fk.scale}
	case kDecimal256:
		fk.prec = int32(1 + g.n(76))
		fk.scale = int32(g.n(int(fk.prec) + 1))
		fk.dt = &arrow.Decimal256Type{Precision: fk.prec, Scale: fk.scale}
	case kTimestamp:
		fk.unit = units[g.n(4)]
		fk.dt = &arrow.TimestampType{Unit: fk.unit, TimeZone: []string{"", "UTC", "Asia/Tokyo"}[g.n(3)]}
	case kDate32:
		fk.dt = arrow.FixedWidthTypes.Date32
	case kDate64:
		fk.dt = arrow.FixedWidthTypes.Date64
	case kTime32:
		fk.unit = units[g.n(2)]
		fk.dt = &arrow.Time32Type{Unit: fk.unit}
	case kTime64:
		fk.unit = units[2+g.n(2)]
		fk.dt = &arrow.Time64Type{Unit: fk.unit}
	case kUUID:
		fk.dt = extensions.NewUUIDType()
	case kDict:
		fk.dt = &arrow.DictionaryType{IndexType: arrow.PrimitiveTypes.Int8, ValueType: arrow.BinaryTypes.String}
	case kList, kLargeList, kFixedList:
		fk.elem = g.kind(depth + 1)
		switch k {
		case kList:
			fk.dt = arrow.ListOf(fk.elem.dt)
		case kLargeList:
			fk.dt = arrow.LargeListOf(fk.elem.dt)
		default:
			fk.dt = arrow.FixedSizeListOf(2, fk.elem.dt)
		}
	case kStruct:
		var fs []arrow.Field
		for j := range 1 + g.n(3) {
			sub := g.kind(depth + 1)
			fk.fields = append(fk.fields, sub)
			fs = append(fs, arrow.Field{Name: fmt.Sprintf("f%d", j), Type: sub.dt, Nullable: true})
		}
		fk.dt = arrow.StructOf(fs...)
	case kMapString, kMapInt:
		fk.val = g.kind(depth + 1)
		if k == kMapString {
			fk.dt = arrow.MapOf(arrow.BinaryTypes.String, fk.val.dt)
		} else {
			fk.dt = arrow.MapOf(arrow.PrimitiveTypes.Int32, fk.val.dt)
		}
	}
	return fk
}

// Reference leaves that need more than == to compare with what encoding/json decodes.
type (
	refInt   string // the exact decimal text
	refFloat struct {
		v    float64
		bits int    // 16, 32 or 64
		half uint16 // the half's bits, for 16
	}
	refDec struct {
		unscaled *big.Int
		scale    int32
	}
)

// value draws a value of kind k: what appendAny takes, and what the message should hold.
func (g *gen) value(k *fkind) (any, any) {
	if g.n(5) == 0 {
		return nil, nil
	}
	switch k.kind {
	case kBool:
		v := g.bit()
		return v, v
	case kInt8, kInt16, kInt32, kInt64:
		bits := []uint{8, 16, 32, 64}[k.kind-kInt8]
		v := g.i64() << (64 - bits) >> (64 - bits)
		return v, refInt(strconv.FormatInt(v, 10))
	case kUint8, kUint16, kUint32, kUint64:
		bits := []uint{8, 16, 32, 64}[k.kind-kUint8]
		v := g.u64() << (64 - bits) >> (64 - bits)
		return v, refInt(strconv.FormatUint(v, 10))
	case kFloat16:
		h := float16.FromBits(uint16(g.u64()))
		return h, refFloat{halfRef(h.Uint16()), 16, h.Uint16()}
	case kFloat32:
		v := math.Float32frombits(uint32(g.u64()))
		return float64(v), refFloat{float64(v), 32, 0}
	case kFloat64:
		v := math.Float64frombits(g.u64())
		return v, refFloat{v, 64, 0}
	case kString, kLargeString, kDict:
		s := g.str()
		return s, string([]rune(s))
	case kBinary:
		b := g.bytes(10)
		return b, base64.StdEncoding.EncodeToString(b)
	case kFixedBinary:
		b := []byte{g.byte(), g.byte(), g.byte()}
		return b, base64.StdEncoding.EncodeToString(b)
	case kDecimal128, kDecimal256:
		digits := make([]byte, 1+g.n(int(k.prec)))
		for i := range digits {
			digits[i] = '0' + byte(g.n(10))
		}
		u, _ := new(big.Int).SetString(string(digits), 10)
		if g.bit() {
			u.Neg(u)
		}
		if k.kind == kDecimal128 {
			return decimal128.FromBigInt(u), refDec{u, k.scale}
		}
		return decimal256.FromBigInt(u), refDec{u, k.scale}
	case kTimestamp:
		// Years 0000-9999, which RFC 3339 (and time.Format) can write.
		per := int64(1e9) / unitNanosTest(k.unit)
		lo, hi := int64(-62167219200), int64(253402300799)
		var v int64
		if k.unit == arrow.Nanosecond {
			v = g.i64()
		} else {
			v = g.inRange(lo*per, hi*per+per-1)
		}
		sec, frac := v/per, v%per
		if frac < 0 {
			sec, frac = sec-1, frac+per
		}
		return v, time.Unix(sec, frac*unitNanosTest(k.unit)).UTC().Format(time.RFC3339Nano)
	case kDate32:
		d := g.inRange(-719528, 2932896)
		return d, time.Unix(d*86400, 0).UTC().Format("2006-01-02")
	case kDate64:
		ms := g.inRange(-719528*86400000, 2932896*86400000)
		return ms, time.UnixMilli(ms).UTC().Format("2006-01-02")
	case kTime32, kTime64:
		per := int64(1e9) / unitNanosTest(k.unit)
		v := g.inRange(0, 86400*per-1)
		return v, time.Unix(0, v*unitNanosTest(k.unit)).UTC().Format("15:04:05.999999999")
	case kUUID:
		var b [16]byte
		for i := range b {
			b[i] = g.byte()
		}
		s := fmt.Sprintf("%x-%x-%x-%x-%x", b[0:4], b[4:6], b[6:8], b[8:10], b[10:16])
		return s, s
	case kList, kLargeList, kFixedList:
		n := g.n(4)
		if k.kind == kFixedList {
			n = 2
		}
		var vs, refs []any
		for range n {
			v, ref := g.value(k.elem)
			vs, refs = append(vs, v), append(refs, ref)
		}
		return vs, append([]any{}, refs...)
	case kStruct:
		var vs []any
		refs := map[string]any{}
		for j, sub := range k.fields {
			v, ref := g.value(sub)
			vs = append(vs, v)
			refs[fmt.Sprintf("f%d", j)] = ref
		}
		return vs, refs
	case kMapString, kMapInt:
		var kvs [][2]any
		refs := map[string]any{}
		for range g.n(4) {
			var key any
			var name string
			if k.kind == kMapString {
				s := g.str()
				key, name = s, string([]rune(s))
			} else {
				n := int64(int32(g.u64()))
				key, name = n, strconv.FormatInt(n, 10)
			}
			v, ref := g.value(k.val)
			kvs = append(kvs, [2]any{key, v})
			refs[name] = ref // a later duplicate key wins, as when decoding JSON
		}
		return kvs, refs
	}
	panic(fmt.Sprintf("kind %d", k.kind))
}

func unitNanosTest(u arrow.TimeUnit) int64 {
	return map[arrow.TimeUnit]int64{arrow.Second: 1e9, arrow.Millisecond: 1e6, arrow.Microsecond: 1e3, arrow.Nanosecond: 1}[u]
}

// halfRef is the value of the IEEE 754 half-precision number with bits h, computed from
// its definition (NaN for NaN, ±Inf for infinities).
func halfRef(h uint16) float64 {
	sign := 1.0
	if h&0x8000 != 0 {
		sign = -1
	}
	exp, frac := int(h>>10&0x1f), float64(h&0x3ff)
	switch exp {
	case 0:
		return sign * frac * math.Pow(2, -24)
	case 31:
		if frac != 0 {
			return math.NaN()
		}
		return math.Inf(int(sign))
	}
	return sign * (1 + frac/1024) * math.Pow(2, float64(exp-15))
}

// match compares a reference value with what encoding/json decoded (numbers as json.Number).
func match(want, got any) error {
	switch w := want.(type) {
	case nil:
		if got != nil {
			return fmt.Errorf("got %v, want null", got)
		}
	case bool, string:
		if got != want {
			return fmt.Errorf("got %#v, want %#v", got, want)
		}
	case refInt:
		if n, ok := got.(json.Number); !ok || string(n) != string(w) {
			return fmt.Errorf("got %#v, want %s", got, w)
		}
	case refFloat:
		if math.IsNaN(w.v) || math.IsInf(w.v, 0) {
			return match(nil, got)
		}
		n, ok := got.(json.Number)
		if !ok {
			return fmt.Errorf("got %#v, want %v", got, w.v)
		}
		switch w.bits {
		case 64:
			if d, err := strconv.ParseFloat(string(n), 64); err != nil || d != w.v {
				return fmt.Errorf("got %s, want %v", n, w.v)
			}
		case 32:
			if d, err := strconv.ParseFloat(string(n), 32); err != nil || float32(d) != float32(w.v) {
				return fmt.Errorf("got %s, want %v", n, float32(w.v))
			}
		case 16:
			// The text must read back as the same half: nearer to it than to its neighbours.
			d, err := strconv.ParseFloat(string(n), 64)
			bits := w.half
			lo, hi := halfRef(bits-1), halfRef(bits+1)
			if bits&0x7fff == 0 {
				if err != nil || d != 0 {
					return fmt.Errorf("got %s, want 0", n)
				}
				break
			}
			if bits&0x7fff == 0x7bff {
				hi = math.Copysign(65520, w.v)
			}
			if err != nil || math.Abs(d-w.v) >= math.Abs(d-lo) || math.Abs(d-w.v) >= math.Abs(d-hi) {
				return fmt.Errorf("got %s, want the half %v", n, w.v)
			}
		}
	case refDec:
		n, ok := got.(json.Number)
		if !ok {
			return fmt.Errorf("got %#v, want a decimal", got)
		}
		r, ok := new(big.Rat).SetString(string(n))
		wr := new(big.Rat).SetFrac(w.unscaled, new(big.Int).Exp(big.NewInt(10), big.NewInt(int64(w.scale)), nil))
		if !ok || r.Cmp(wr) != 0 {
			return fmt.Errorf("got %s, want %s", n, wr.FloatString(int(w.scale)))
		}
		frac := ""
		if i := strings.IndexByte(string(n), '.'); i >= 0 {
			frac = string(n)[i+1:]
		}
		if len(frac) != int(w.scale) || strings.ContainsAny(string(n), "eE") {
			return fmt.Errorf("got %s, want %d digits after the point", n, w.scale)
		}
	case []any:
		g, ok := got.([]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("got %#v, want %d elements", got, len(w))
		}
		for i := range w {
			if err := match(w[i], g[i]); err != nil {
				return fmt.Errorf("[%d]: %w", i, err)
			}
		}
	case map[string]any:
		g, ok := got.(map[string]any)
		if !ok || len(g) != len(w) {
			return fmt.Errorf("got %#v, want %d members", got, len(w))
		}
		for k, v := range w {
			gv, ok := g[k]
			if !ok {
				return fmt.Errorf("member %q missing from %#v", k, got)
			}
			if err := match(v, gv); err != nil {
				return fmt.Errorf("%q: %w", k, err)
			}
		}
	default:
		return fmt.Errorf("reference %T", want)
	}
	return nil
}

// FuzzAppendString: any bytes become a valid JSON string that decodes to the bytes with
// each invalid UTF-8 byte replaced by U+FFFD, with no raw control character.
func FuzzAppendString(f *testing.F) {
	for _, s := range []string{"", "plain", "\x00\x1f\x7f\u0085\u2028", "\xff\xfe", "\xe2\x82", "é😀"} {
		f.Add(s)
	}
	f.Fuzz(func(t *testing.T, s string) {
		b := appendString([]byte("x"), s)[1:]
		var back string
		if err := json.Unmarshal(b, &back); err != nil {
			t.Fatalf("%q: %v", b, err)
		}
		if want := string([]rune(s)); back != want {
			t.Fatalf("%q decoded to %q, want %q", s, back, want)
		}
		for _, r := range string(b) {
			if r < 0x20 || r == 0x7f || (r >= 0x80 && r <= 0x9f) || r == 0x2028 || r == 0x2029 {
				t.Fatalf("%q: raw control character %U in %q", s, r, b)
			}
		}
		if got := string(appendValidUTF8(nil, s)); got != back {
			t.Fatalf("appendValidUTF8(%q) = %q, want %q", s, got, back)
		}
	})
}
