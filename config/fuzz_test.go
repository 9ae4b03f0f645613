package config_test

import (
	"errors"
	"os"
	"path/filepath"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
)

var fuzzFormats = []string{"yaml", "json", "toml"}

// FuzzLoadBytes feeds arbitrary documents to the loader: it must never panic, every
// error must be a *config.Error whose problems all have a message, and a config it
// accepts must hold what validation promises.
func FuzzLoadBytes(f *testing.F) {
	for i, ext := range fuzzFormats {
		data, err := os.ReadFile(filepath.Join("testdata", "full."+ext))
		if err != nil {
			f.Fatal(err)
		}
		f.Add(data, uint8(i))
	}
	seeds := []struct {
		doc    string
		format uint8
	}{
		{"syncs:\n  - name: a\n    source: {url: 's3://b/p'}\n    mapping: {type: identify, user_id: u}\n    destinations: [{type: stdout}]\n", 0},
		{"syncs:\n  - name: a\n    mapping: {type: track, event: E, event_column: e, rename: {a: b, c: b.d}}\n    destinations: [{type: s3, format: parquet, compression: gzip, csv: {}}]\n", 0},
		{"syncs: [{name: ${X}, schedule: {every: 1h, cron: '* *', start: 'x'}}]", 0},
		{"&a [*a, *a]", 0},
		{"a: &a {b: *a}", 0},
		{"syncs: [[[[]]]]", 0},
		{"{1: 2, [a]: b}", 0},
		{"syncs:\n\t- bad", 0},
		{`{"syncs":[{"name":"a","source":{"url":"file://%zz"},"mapping":{"type":"group","user_id":"u","group_id":"u"},"destinations":[{"type":"webhook","url":"http://x","non_retryable_status":[1e400, -1, 1.5]}]}]}`, 1},
		{`{"syncs":null,"serve":{"history":"${"}}`, 1},
		{`[`, 1},
		{"[[syncs]]\nname = \"a\"\n[syncs.schedule]\nstart = 2025-01-01T00:00:00\n", 2},
		{"[[syncs]]\nname = 1979-05-27\n[syncs.mapping.constants]\nd = 07:32:00\n", 2},
		{"a = [\n", 2},
	}
	for _, s := range seeds {
		f.Add([]byte(s.doc), s.format)
	}
	dir := f.TempDir()
	lookup := env(map[string]string{"X": "x", "AWS_ACCESS_KEY_ID": "k", "AWS_SECRET_ACCESS_KEY": "s",
		"SEGMENT_WRITE_KEY": "w", "HOOK_TOKEN": "h", "BACKFLOW_EXTERNAL_ID": "e"})

	f.Fuzz(func(t *testing.T, data []byte, format uint8) {
		c, err := config.LoadBytes(data, fuzzFormats[int(format)%len(fuzzFormats)], dir, lookup, all.Registry())
		if err != nil {
			var ce *config.Error
			if !errors.As(err, &ce) {
				t.Fatalf("error %v (%T) is not a *config.Error", err, err)
			}
			if len(ce.Errors) == 0 || err.Error() == "" {
				t.Fatalf("empty *config.Error")
			}
			for _, fe := range ce.Errors {
				if fe.Msg == "" {
					t.Fatalf("problem at %q without a message", fe.Path)
				}
			}
			return
		}
		if c == nil || len(c.Syncs) == 0 {
			t.Fatalf("accepted a config without syncs")
		}
		for _, s := range c.Syncs {
			if s.Name == "" || len(s.Destinations) == 0 || s.Mode == "" {
				t.Fatalf("accepted an incomplete sync: %+v", s)
			}
			if _, err := c.Sync(s.Name); err != nil {
				t.Fatalf("Sync(%q): %v", s.Name, err)
			}
			for _, d := range s.Destinations {
				if d.Name == "" || d.MaxInFlight < 1 || d.BatchSize < 1 || d.Timeout <= 0 || d.Retry.MaxAttempts < 1 {
					t.Fatalf("accepted an invalid destination: %+v", d)
				}
			}
		}
	})
}
