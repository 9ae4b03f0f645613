package postgres_test

import (
	"path/filepath"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/postgres"
)

func lookup(vars map[string]string) func(string) (string, bool) {
	return func(k string) (string, bool) { v, ok := vars[k]; return v, ok }
}

// TestExampleLoads: examples/postgres/backflow.yaml is a valid configuration.
func TestExampleLoads(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "postgres", "backflow.yaml")
	url := "postgres://backflow:s3cret-pw@127.0.0.1:5432/crm?sslmode=disable"
	cfg, err := config.Load(path, lookup(map[string]string{"DATABASE_URL": url}), all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Syncs[0].Destinations[0]
	o, ok := d.Options.(*postgres.Options)
	if !ok || o.URL != url || o.Table != "public.crm_users" || o.Key != "userId" || o.Layout != "columns" {
		t.Fatalf("options %#v", d.Options)
	}
	if d.BatchSize != 1000 || d.MaxInFlight != 4 {
		t.Errorf("batch_size %d, max_in_flight %d: want the defaults 1000 and 4", d.BatchSize, d.MaxInFlight)
	}
	if !slices.Contains(o.Secrets(), "s3cret-pw") || !slices.Contains(o.Secrets(), url) {
		t.Errorf("Secrets() = %q lacks the URL or its password", o.Secrets())
	}
}

// TestOptionsValidation: defaults, and every problem reported at its key, the password
// never in a message.
func TestOptionsValidation(t *testing.T) {
	load := func(dest string) (*config.Config, error) {
		y := "syncs:\n  - name: s\n    source: { url: s3://b/p/, region: us-east-1 }\n    mapping: { type: identify, user_id: id }\n    destinations:\n      - " +
			strings.ReplaceAll(dest, "\n", "\n        ") + "\n"
		return config.LoadBytes([]byte(y), "yaml", t.TempDir(), lookup(nil), all.Registry())
	}
	cfg, err := load("type: postgres\nurl: postgres://u:pw@h/db\ntable: users")
	if err != nil {
		t.Fatal(err)
	}
	if o := cfg.Syncs[0].Destinations[0].Options.(*postgres.Options); o.Key != "userId" || o.Layout != "columns" {
		t.Errorf("defaults: %#v", o)
	}
	for _, tc := range []struct{ dest, want string }{
		{"type: postgres\ntable: users", "url"},
		{"type: postgres\nurl: postgres://u:pw@h/db", "table"},
		{"type: postgres\nurl: mysql://u:topsecret@h/db\ntable: users", "postgres://"},
		{"type: postgres\nurl: postgres://u:pw@h/db\ntable: a.b.c", "table"},
		{"type: postgres\nurl: postgres://u:pw@h/db\ntable: users\nlayout: wide", "layout"},
		{"type: postgres\nurl: postgres://u:pw@h/db\ntable: users\nkey: email", "key"},
		{"type: postgres\nurl: postgres://u:pw@h/db\ntable: users\ntabel: x", "tabel"},
	} {
		_, err := load(tc.dest)
		if err == nil || !strings.Contains(err.Error(), tc.want) {
			t.Errorf("%q: %v, want a problem about %s", tc.dest, err, tc.want)
		}
		if err != nil && strings.Contains(err.Error(), "topsecret") {
			t.Errorf("%q: the error shows the password: %v", tc.dest, err)
		}
	}
}
