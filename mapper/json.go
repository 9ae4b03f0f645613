package mapper

import (
	"math"
	"math/big"
	"strconv"
	"unicode/utf8"

	"github.com/apache/arrow-go/v18/arrow/float16"
)

// This file holds the JSON primitives of the hot path: they append to a byte slice and
// never allocate (except for decimals wider than 64 bits).

const hexDigits = "0123456789abcdef"

// safeASCII[b] reports whether the ASCII byte b may be written as is inside a JSON string.
// Control characters (C0 and DEL), the quote and the backslash may not.
var safeASCII = func() (t [utf8.RuneSelf]bool) {
	for b := 0x20; b < 0x7f; b++ {
		t[b] = b != '"' && b != '\\'
	}
	return t
}()

// appendString appends s as a JSON string. Every control character (C0, DEL, C1) is escaped,
// as are U+2028 and U+2029 (for JavaScript consumers); each byte of invalid UTF-8 becomes
// U+FFFD, so the output is always valid JSON and valid UTF-8.
func appendString[S string | []byte](dst []byte, s S) []byte {
	dst = append(dst, '"')
	dst = appendStringContent(dst, s)
	return append(dst, '"')
}

// load8 reads 8 bytes of s at i as a little-endian word (the compiler merges the loads).
func load8[S string | []byte](s S, i int) uint64 {
	_ = s[i+7]
	return uint64(s[i]) | uint64(s[i+1])<<8 | uint64(s[i+2])<<16 | uint64(s[i+3])<<24 |
		uint64(s[i+4])<<32 | uint64(s[i+5])<<40 | uint64(s[i+6])<<48 | uint64(s[i+7])<<56
}

const (
	ones  = 0x0101010101010101
	highs = 0x8080808080808080
)

// hasZeroByte reports whether a byte of x is 0.
func hasZeroByte(x uint64) bool { return (x-ones)&^x&highs != 0 }

// plainASCII8 reports whether the 8 bytes of x may all be written as is inside a JSON
// string: no byte below 0x20, no quote, no backslash, no DEL, nothing outside ASCII.
func plainASCII8(x uint64) bool {
	return x&highs == 0 &&
		(x-ones*0x20)&^x&highs == 0 && // no byte < 0x20
		!hasZeroByte(x^(ones*'"')) && !hasZeroByte(x^(ones*'\\')) && !hasZeroByte(x^(ones*0x7f))
}

// appendStringContent is appendString without the quotes.
func appendStringContent[S string | []byte](dst []byte, s S) []byte {
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) && plainASCII8(load8(s, i)) {
			i += 8
			continue
		}
		b := s[i]
		if b < utf8.RuneSelf {
			if safeASCII[b] {
				i++
				continue
			}
			dst = append(dst, s[start:i]...)
			switch b {
			case '"', '\\':
				dst = append(dst, '\\', b)
			case '\n':
				dst = append(dst, '\\', 'n')
			case '\r':
				dst = append(dst, '\\', 'r')
			case '\t':
				dst = append(dst, '\\', 't')
			case '\b':
				dst = append(dst, '\\', 'b')
			case '\f':
				dst = append(dst, '\\', 'f')
			default:
				dst = append(dst, '\\', 'u', '0', '0', hexDigits[b>>4], hexDigits[b&0xf])
			}
			i++
			start = i
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(len(s), i+utf8.UTFMax)]))
		switch {
		case r == utf8.RuneError && size == 1:
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
		case r <= 0x9f || r == '\u2028' || r == '\u2029':
			dst = append(dst, s[start:i]...)
			dst = append(dst, '\\', 'u', hexDigits[r>>12], hexDigits[r>>8&0xf], hexDigits[r>>4&0xf], hexDigits[r&0xf])
		default:
			i += size
			continue
		}
		i += size
		start = i
	}
	return append(dst, s[start:]...)
}

// appendValidUTF8 appends s with each byte of invalid UTF-8 replaced by U+FFFD, the way
// appendString does: it is the identifier as sent, unescaped.
func appendValidUTF8[S string | []byte](dst []byte, s S) []byte {
	start := 0
	for i := 0; i < len(s); {
		if i+8 <= len(s) && load8(s, i)&highs == 0 {
			i += 8
			continue
		}
		if s[i] < utf8.RuneSelf {
			i++
			continue
		}
		r, size := utf8.DecodeRuneInString(string(s[i:min(len(s), i+utf8.UTFMax)]))
		if r == utf8.RuneError && size == 1 {
			dst = append(dst, s[start:i]...)
			dst = append(dst, "\ufffd"...)
			start = i + 1
		}
		i += size
	}
	return append(dst, s[start:]...)
}

// appendFloat appends f the way encoding/json does: the shortest text that parses back to
// the same value at the given bit size, without an exponent between 1e-6 and 1e21. NaN and
// ±Inf, which JSON cannot represent, become null.
func appendFloat(dst []byte, f float64, bits int) []byte {
	if math.IsNaN(f) || math.IsInf(f, 0) {
		return append(dst, "null"...)
	}
	format := byte('f')
	if abs := math.Abs(f); abs != 0 {
		if bits == 64 && (abs < 1e-6 || abs >= 1e21) || bits == 32 && (float32(abs) < 1e-6 || float32(abs) >= 1e21) {
			format = 'e'
		}
	}
	dst = strconv.AppendFloat(dst, f, format, -1, bits)
	if format == 'e' {
		// Shorten e-09 to e-9, as encoding/json does.
		n := len(dst)
		if n >= 4 && dst[n-4] == 'e' && dst[n-3] == '-' && dst[n-2] == '0' {
			dst[n-2] = dst[n-1]
			dst = dst[:n-1]
		}
	}
	return dst
}

// appendFloat16 appends the shortest decimal that reads back as the same half-precision
// value: 0.1 rather than 0.0999755859375. (arrow-go's float16.Num.Float32 mishandles
// subnormals, hence the conversion here.)
func appendFloat16(dst []byte, v float16.Num) []byte {
	bits := v.Uint16()
	mag := bits & 0x7fff
	if mag >= 0x7c00 { // ±Inf, NaN
		return append(dst, "null"...)
	}
	if bits&0x8000 != 0 {
		dst = append(dst, '-')
	}
	if mag == 0 {
		return append(dst, '0')
	}
	f, lo, hi := halfValue(mag), halfValue(mag-1), 65520.0 // 65520 and above round to +Inf
	if mag < 0x7bff {
		hi = halfValue(mag + 1)
	}
	var tmp [32]byte
	for prec := 0; prec < 5; prec++ {
		d, err := strconv.ParseFloat(string(strconv.AppendFloat(tmp[:0], f, 'e', prec, 64)), 64)
		// d reads back as v when it is nearer to v than to either neighbour.
		if err == nil && math.Abs(d-f) < math.Abs(d-lo) && math.Abs(d-f) < math.Abs(d-hi) {
			return appendFloat(dst, d, 64)
		}
	}
	return appendFloat(dst, f, 64)
}

// halfValue returns the value of the non-negative, finite half-precision number with bits h.
func halfValue(h uint16) float64 {
	exp, frac := int(h>>10&0x1f), float64(h&0x3ff)
	if exp == 0 {
		return math.Ldexp(frac, -24) // subnormal
	}
	return math.Ldexp(1+frac/1024, exp-15)
}

// appendDecimalDigits appends the unscaled value given by its sign and decimal digits of
// its magnitude as a JSON number with scale digits after the point.
func appendDecimalDigits(dst []byte, neg bool, digits []byte, scale int32) []byte {
	if neg {
		dst = append(dst, '-')
	}
	switch {
	case scale <= 0:
		dst = append(dst, digits...)
		if !(len(digits) == 1 && digits[0] == '0') {
			for ; scale < 0; scale++ {
				dst = append(dst, '0')
			}
		}
	case len(digits) > int(scale):
		p := len(digits) - int(scale)
		dst = append(dst, digits[:p]...)
		dst = append(dst, '.')
		dst = append(dst, digits[p:]...)
	default:
		dst = append(dst, '0', '.')
		for n := int(scale) - len(digits); n > 0; n-- {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	}
	return dst
}

// appendDecimalUint appends a decimal whose magnitude fits in 64 bits.
func appendDecimalUint(dst []byte, neg bool, mag uint64, scale int32) []byte {
	var tmp [24]byte
	return appendDecimalDigits(dst, neg && mag != 0, strconv.AppendUint(tmp[:0], mag, 10), scale)
}

// appendDecimalBig appends a decimal of any width (the slow path, for magnitudes over 64 bits).
func appendDecimalBig(dst []byte, v *big.Int, scale int32) []byte {
	neg := v.Sign() < 0
	mag := new(big.Int).Abs(v)
	return appendDecimalDigits(dst, neg, mag.Append(nil, 10), scale)
}

// floorDiv returns the quotient and non-negative remainder of a / b (b > 0).
func floorDiv(a, b int64) (q, r int64) {
	q, r = a/b, a%b
	if r < 0 {
		q--
		r += b
	}
	return q, r
}

// civil converts days since 1970-01-01 into a proleptic Gregorian date
// (Howard Hinnant's days_from_civil inverse), valid over the whole int64 day range we feed it.
func civil(days int64) (year int64, month, day int) {
	z := days + 719468
	era, doe := floorDiv(z, 146097)
	yoe := (doe - doe/1460 + doe/36524 - doe/146096) / 365
	year = yoe + era*400
	doy := doe - (365*yoe + yoe/4 - yoe/100)
	mp := (5*doy + 2) / 153
	day = int(doy - (153*mp+2)/5 + 1)
	if mp < 10 {
		month = int(mp + 3)
	} else {
		month = int(mp - 9)
	}
	if month <= 2 {
		year++
	}
	return year, month, day
}

func append2(dst []byte, v int) []byte {
	return append(dst, byte('0'+v/10), byte('0'+v%10))
}

// appendDate appends days since the epoch as YYYY-MM-DD. Years outside 0000-9999 use the
// ISO 8601 expanded form (+10000, -0001).
func appendDate(dst []byte, days int64) []byte {
	y, m, d := civil(days)
	switch {
	case y >= 0 && y <= 9999:
		v := int(y)
		dst = append(dst, byte('0'+v/1000), byte('0'+v/100%10), byte('0'+v/10%10), byte('0'+v%10))
	case y > 9999:
		dst = append(dst, '+')
		dst = strconv.AppendInt(dst, y, 10)
	default:
		dst = append(dst, '-')
		var tmp [24]byte
		digits := strconv.AppendUint(tmp[:0], uint64(-(y+1)+1), 10)
		for n := len(digits); n < 4; n++ {
			dst = append(dst, '0')
		}
		dst = append(dst, digits...)
	}
	dst = append(dst, '-')
	dst = append2(dst, m)
	dst = append(dst, '-')
	return append2(dst, d)
}

// appendFraction appends .nnnnnnnnn with trailing zeros trimmed, nothing when nsec is 0.
func appendFraction(dst []byte, nsec int64) []byte {
	if nsec == 0 {
		return dst
	}
	var digits [9]byte
	for i := 8; i >= 0; i-- {
		digits[i] = byte('0' + nsec%10)
		nsec /= 10
	}
	n := 9
	for digits[n-1] == '0' {
		n--
	}
	dst = append(dst, '.')
	return append(dst, digits[:n]...)
}

// appendClock appends the seconds of a day (0 <= sec < 86400) as hh:mm:ss.
func appendClock(dst []byte, sec int64) []byte {
	dst = append2(dst, int(sec/3600))
	dst = append(dst, ':')
	dst = append2(dst, int(sec/60%60))
	dst = append(dst, ':')
	return append2(dst, int(sec%60))
}

// appendTimestamp appends the instant sec.nsec after the epoch as RFC 3339 in UTC, with the
// fraction the value has (trailing zeros trimmed), without quotes.
func appendTimestamp(dst []byte, sec, nsec int64) []byte {
	days, secOfDay := floorDiv(sec, 86400)
	dst = appendDate(dst, days)
	dst = append(dst, 'T')
	dst = appendClock(dst, secOfDay)
	dst = appendFraction(dst, nsec)
	return append(dst, 'Z')
}

// appendTimeOfDay appends a time of day given in nanoseconds as 15:04:05.000001 (trimmed).
// Values outside a day, which a valid file does not hold, are written with more hours or a
// sign rather than refused: the output stays valid JSON.
func appendTimeOfDay(dst []byte, ns int64) []byte {
	mag := uint64(ns)
	if ns < 0 {
		dst = append(dst, '-')
		mag = -mag
	}
	sec, frac := mag/1e9, mag%1e9
	if h := sec / 3600; h > 99 {
		dst = strconv.AppendUint(dst, h, 10)
		sec %= 3600
		dst = append(dst, ':')
		dst = append2(dst, int(sec/60))
		dst = append(dst, ':')
		dst = append2(dst, int(sec%60))
	} else {
		dst = appendClock(dst, int64(sec))
	}
	return appendFraction(dst, int64(frac))
}

// appendUUID appends 16 bytes as the canonical 8-4-4-4-12 lower-case hex form.
func appendUUID(dst []byte, b []byte) []byte {
	for i, c := range b {
		if i == 4 || i == 6 || i == 8 || i == 10 {
			dst = append(dst, '-')
		}
		dst = append(dst, hexDigits[c>>4], hexDigits[c&0xf])
	}
	return dst
}

// AppendJSONString appends s as a JSON string exactly as the mapper writes one (control
// characters, U+2028 and U+2029 escaped; invalid UTF-8 replaced by U+FFFD), for
// destinations that build their own request bodies from a message's values.
func AppendJSONString(dst []byte, s string) []byte { return appendString(dst, s) }
