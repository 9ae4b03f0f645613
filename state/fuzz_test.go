package state

import (
	"errors"
	"reflect"
	"testing"
)

// FuzzDecodeCheckpoint: any bytes either load as a checkpoint that survives a save and a
// reload unchanged, or fail with a corrupt/newer-format error — never a panic.
func FuzzDecodeCheckpoint(f *testing.F) {
	valid, err := encodeCheckpoint(sampleCheckpoint("users"), "g")
	if err != nil {
		f.Fatal(err)
	}
	f.Add(valid)
	f.Add([]byte(`{"version":1,"sync":"users","files":{"a":{"rows":1,"acked":{"d":1}}}}`))
	f.Add([]byte(`{"version":1,"sync":"users","files":{"a":null}}`))
	f.Add([]byte(`{"version":99,"sync":"users"}`))
	f.Add([]byte(`{"version":1,"sync":"users","files":{"a":{"key":"b"}}}`))
	f.Add([]byte(``))
	f.Fuzz(func(t *testing.T, data []byte) {
		cp, _, err := decodeCheckpoint(data, "users", "fuzz.json")
		if err != nil {
			if !errors.Is(err, ErrCorrupt) && !errors.Is(err, ErrNewerFormat) {
				t.Fatalf("error %v is neither corrupt nor newer-format", err)
			}
			return
		}
		out, err := encodeCheckpoint(cp.Clone(), "g2")
		if err != nil {
			t.Fatal(err)
		}
		again, gen, err := decodeCheckpoint(out, "users", "fuzz.json")
		if err != nil {
			t.Fatalf("re-encoded checkpoint does not load: %v\n%s", err, out)
		}
		if gen != "g2" {
			t.Fatalf("generation %q", gen)
		}
		if !reflect.DeepEqual(cp.Files, again.Files) || cp.LastRunID != again.LastRunID ||
			cp.MappingFingerprint != again.MappingFingerprint || !cp.UpdatedAt.Equal(again.UpdatedAt) {
			t.Fatalf("round trip changed the checkpoint:\n%+v\n%+v", cp, again)
		}
	})
}

// FuzzHashEncoding: the compact key/hash encoding is one-to-one and round-trips.
func FuzzHashEncoding(f *testing.F) {
	for _, s := range []string{"", "00", "abcdef", "ABCDEF", "abc", "identify:u1", "0123456789abcdef0123456789abcdef", "\x00\x01"} {
		f.Add(s, "00")
	}
	f.Fuzz(func(t *testing.T, a, b string) {
		ea, eb := appendEncoded(nil, a), appendEncoded(nil, b)
		da, err := decodeStored(ea)
		if err != nil || da != a {
			t.Fatalf("%q encodes to %x and decodes to %q, %v", a, ea, da, err)
		}
		if (a == b) != (string(ea) == string(eb)) {
			t.Fatalf("%q and %q encode to %x and %x", a, b, ea, eb)
		}
	})
}
