package httpapi

import (
	"bytes"
	"strconv"
	"time"
)

// AppendMembers appends the members of the JSON object obj (the mapper's traits or
// properties, without its braces) and returns whether there were any. Anything but an
// object counts as an empty one.
func AppendMembers(dst []byte, obj []byte) ([]byte, bool) {
	obj = bytes.TrimSpace(obj)
	if len(obj) < 2 || obj[0] != '{' || obj[len(obj)-1] != '}' {
		return dst, false
	}
	inner := bytes.TrimSpace(obj[1 : len(obj)-1])
	if len(inner) == 0 {
		return dst, false
	}
	return append(dst, inner...), true
}

// AppendObject appends obj (a JSON object, as AppendMembers reads it) with the members
// extra appends after its own: {…obj's members…,extra}. Extra members come last, so that
// they win over members of the same name for receivers that keep the last one.
func AppendObject(dst []byte, obj []byte, extra func(dst []byte) []byte) []byte {
	dst = append(dst, '{')
	dst, some := AppendMembers(dst, obj)
	if extra != nil {
		mark := len(dst)
		if some {
			dst = append(dst, ',')
		}
		before := len(dst)
		dst = extra(dst)
		if len(dst) == before {
			dst = dst[:mark] // extra added nothing: no dangling comma
		}
	}
	return append(dst, '}')
}

// Millis returns an RFC 3339 timestamp as milliseconds since the epoch, and false when
// ts is empty or not a timestamp.
func Millis(ts string) (int64, bool) {
	if ts == "" {
		return 0, false
	}
	t, err := time.Parse(time.RFC3339Nano, ts)
	if err != nil {
		return 0, false
	}
	return t.UnixMilli(), true
}

// AppendInt appends n in decimal.
func AppendInt(dst []byte, n int64) []byte { return strconv.AppendInt(dst, n, 10) }
