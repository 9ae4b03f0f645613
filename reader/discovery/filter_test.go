package discovery

import (
	"strings"
	"testing"
)

func TestFilter(t *testing.T) {
	f, err := NewFilter("acme", "exports/users", "")
	if err != nil {
		t.Fatal(err)
	}
	deep, err := NewFilter("acme", "exports/users/", "dt=*/*.parquet")
	if err != nil {
		t.Fatal(err)
	}
	cases := []struct {
		f      Filter
		e      Event
		ok     bool
		reason string
	}{
		{f, Event{Bucket: "acme", Key: "exports/users/a.parquet"}, true, ""},
		{f, Event{Bucket: "acme", Key: "exports/users/dt=2025-01-01/part 0.parquet"}, true, ""},
		{f, Event{Bucket: "acme", Key: "exports/users/a.parquet", Removed: true}, true, ""},
		{f, Event{Bucket: "other", Key: "exports/users/a.parquet"}, false, `bucket "other" is not the source's ("acme")`},
		{f, Event{Bucket: "acme", Key: "exports/users-old/a.parquet"}, false, "outside the prefix"},
		{f, Event{Bucket: "acme", Key: "exports/users/"}, false, "outside the prefix"},
		{f, Event{Bucket: "acme", Key: "exports/users/dir/"}, false, "directory marker"},
		{f, Event{Bucket: "acme", Key: "exports/users/README.txt"}, false, "not a Parquet file"},
		{f, Event{Bucket: "acme", Key: "exports/users/_temporary/0/a.parquet"}, false, "hidden"},
		{f, Event{Bucket: "acme", Key: "exports/users/_SUCCESS"}, false, "hidden"},
		{deep, Event{Bucket: "acme", Key: "exports/users/dt=1/a.parquet"}, true, ""},
		{deep, Event{Bucket: "acme", Key: "exports/users/a.parquet"}, false, `does not match include "dt=*/*.parquet"`},
	}
	for _, c := range cases {
		ok, reason := c.f.Match(c.e)
		if ok != c.ok || !strings.Contains(reason, c.reason) || (c.ok && reason != "") {
			t.Errorf("%s/%s: %v %q, want %v %q", c.e.Bucket, c.e.Key, ok, reason, c.ok, c.reason)
		}
	}
	if _, err := NewFilter("acme", "p/", "[a-"); err == nil {
		t.Error("a bad include glob was accepted")
	}
	if _, err := NewFilter("", "p/", ""); err == nil {
		t.Error("an empty bucket was accepted")
	}
}
