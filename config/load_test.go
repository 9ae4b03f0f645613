package config_test

import (
	"encoding/json"
	"errors"
	"io/fs"
	"os"
	"path/filepath"
	"reflect"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/file"
	"github.com/backflowhq/backflow/destinations/s3"
	"github.com/backflowhq/backflow/destinations/segment"
	"github.com/backflowhq/backflow/destinations/stdout"
	"github.com/backflowhq/backflow/destinations/webhook"
)

var fullEnv = map[string]string{
	"AWS_ACCESS_KEY_ID":     "AKIAEXAMPLE",
	"AWS_SECRET_ACCESS_KEY": "aws-secret-value",
	"SEGMENT_WRITE_KEY":     "segment-write-key",
	"HOOK_TOKEN":            "hook-token",
	"BACKFLOW_EXTERNAL_ID":  "external-id-value",
}

// copyFull copies testdata/full.<ext> into a fresh directory and returns its path.
func copyFull(t *testing.T, ext string) string {
	t.Helper()
	data, err := os.ReadFile(filepath.Join("testdata", "full."+ext))
	if err != nil {
		t.Fatal(err)
	}
	path := filepath.Join(t.TempDir(), "backflow."+ext)
	writeFile(t, path, string(data))
	return path
}

// TestFormats loads the same configuration written in YAML, JSON and TOML and checks
// that all three give the same, fully populated Config.
func TestFormats(t *testing.T) {
	var configs []*config.Config
	for _, ext := range []string{"yaml", "json", "toml"} {
		t.Run(ext, func(t *testing.T) {
			path := copyFull(t, ext)
			c, err := config.Load(path, env(fullEnv), all.Registry())
			if err != nil {
				t.Fatalf("load:%s", problems(err))
			}
			checkFull(t, c, filepath.Dir(path))
			if c.Path != path {
				t.Fatalf("Path = %q, want %q", c.Path, path)
			}
			configs = append(configs, c)
		})
	}
	if len(configs) != 3 {
		t.Fatal("not every format loaded")
	}
	// Compare across formats with the directory-dependent parts and the
	// decoder-dependent number types of constants made equal.
	norm := func(c *config.Config) string {
		c2 := *c
		c2.Dir, c2.Path = "", ""
		c2.State.URL = filepath.Base(c2.State.URL)
		syncs := make([]config.Sync, len(c.Syncs))
		copy(syncs, c.Syncs)
		for i := range syncs {
			dests := make([]config.Destination, len(syncs[i].Destinations))
			copy(dests, syncs[i].Destinations)
			for j := range dests {
				if fo, ok := dests[j].Options.(*file.Options); ok {
					base := *fo
					base.Path = filepath.Base(base.Path)
					dests[j].Options = &base
				}
			}
			syncs[i].Destinations = dests
		}
		c2.Syncs = syncs
		b, err := json.Marshal(c2)
		if err != nil {
			t.Fatal(err)
		}
		return string(b)
	}
	if a, b, c := norm(configs[0]), norm(configs[1]), norm(configs[2]); a != b || a != c {
		t.Fatalf("formats differ:\nyaml %s\njson %s\ntoml %s", a, b, c)
	}
}

// checkFull asserts every value of testdata/full.*.
func checkFull(t *testing.T, c *config.Config, dir string) {
	t.Helper()
	eq := func(what string, got, want any) {
		t.Helper()
		if !reflect.DeepEqual(got, want) {
			t.Errorf("%s = %#v, want %#v", what, got, want)
		}
	}
	eq("Dir", c.Dir, dir)
	eq("state.url", c.State.URL, filepath.Join(dir, "state"))
	eq("serve", c.Serve, config.ServeConfig{MaxConcurrentRuns: 2, History: 50, ShutdownGrace: time.Minute})
	if len(c.Syncs) != 2 {
		t.Fatalf("%d syncs", len(c.Syncs))
	}
	s := c.Syncs[0]
	eq("name", s.Name, "users")
	eq("source", s.Source, config.Source{
		URL: "s3://acme-exports/users/", Include: "**/*.parquet", Partition: "latest",
		S3: config.S3Options{Region: "us-east-1", Endpoint: "http://127.0.0.1:9000", PathStyle: true,
			Auth: config.Auth{Mode: "keys", AccessKeyID: "AKIAEXAMPLE", SecretAccessKey: "aws-secret-value"}},
		Limits:    config.Limits{MaxRowGroupBytes: 1048576, MaxRecordBytes: 2048, FirstRowNulls: "reject"},
		Discovery: config.Discovery{Type: config.DiscoveryList},
	})
	m := s.Mapping
	eq("mapping ids", []string{m.Type, m.UserID, m.AnonymousID, m.GroupID, m.Timestamp}, []string{"identify", "customer_id", "anon_id", "", "updated_at"})
	eq("columns", m.Columns, []string{"email", "plan", "City", "Zip"})
	eq("rename", m.Rename, map[string]string{"City": "address.city", "Zip": "address.Zip"})
	if len(m.Constants) != 2 || m.Constants["Source"] != "warehouse" || toFloat(m.Constants["nested.Level"]) != 2 {
		t.Errorf("constants = %#v", m.Constants)
	}
	eq("skip_nulls", m.SkipNulls, true)
	eq("mode", s.Mode, "diff")
	eq("schedule", s.Schedule, config.Schedule{Every: time.Hour, Start: time.Date(2025, 1, 1, 0, 0, 0, 0, time.UTC)})
	if len(s.Destinations) != 5 {
		t.Fatalf("%d destinations", len(s.Destinations))
	}
	eq("segment", s.Destinations[0], config.Destination{
		Type: "segment", Name: "segment", MaxInFlight: 2, RateLimit: 10.5,
		Retry: config.Retry{MaxAttempts: 3, MaxBackoff: time.Minute}, Timeout: 10 * time.Second, BatchSize: 50,
		Options: &segment.Options{WriteKey: "segment-write-key", Endpoint: "https://api.segment.io"},
	})
	eq("webhook", s.Destinations[1], config.Destination{
		Type: "webhook", Name: "webhook", MaxInFlight: 4, Retry: config.Retry{MaxAttempts: 8, MaxBackoff: 30 * time.Second},
		Timeout: 30 * time.Second, BatchSize: 500, Options: &webhook.Options{URL: "https://hooks.example.com/backflow",
			Headers: map[string]string{"Authorization": "Bearer hook-token", "X-Source": "backflow"},
			Gzip:    true, NonRetryableStatus: []int{400, 422}},
	})
	eq("file path", s.Destinations[2].Options, &file.Options{Path: filepath.Join(dir, "out", "users.jsonl")})
	eq("stdout", s.Destinations[3].Name, "stdout")
	eq("s3", s.Destinations[4], config.Destination{
		Type: "s3", Name: "lake", MaxInFlight: 1, Retry: config.Retry{MaxAttempts: 8, MaxBackoff: 30 * time.Second},
		Timeout: 30 * time.Second, BatchSize: 1000, Options: &s3.Options{URL: "s3://acme-lake/backflow/",
			S3Options: config.S3Options{Endpoint: "http://127.0.0.1:9000", Region: "eu-west-1", PathStyle: true,
				Auth: config.Auth{Mode: "role", RoleARN: "arn:aws:iam::123456789012:role/backflow", ExternalID: "external-id-value"}},
			Key: "{stream_name}/{date}/{connection_run_id}-{part}.{extension}", Format: "csv", Compression: "gzip",
			CSV: s3.CSV{Delimiter: "|", QuoteAll: true}, MaxObjectRows: 5000, VerifyObject: "_ready"},
	})
	o := c.Syncs[1]
	eq("orders", []string{o.Name, o.Mapping.Type, o.Mapping.Event, o.Schedule.Cron, o.Mode}, []string{"orders", "track", "Order Completed", "*/15 * * * *", "incremental"})
}

func toFloat(v any) float64 {
	switch n := v.(type) {
	case int:
		return float64(n)
	case int64:
		return float64(n)
	case float64:
		return n
	}
	return -1
}

// TestCasePreserved checks that keys naming columns, output keys and headers keep
// their case (viper on its own lowercases every key), in every format.
func TestCasePreserved(t *testing.T) {
	docs := map[string]string{
		"yaml": `
syncs:
  - name: users
    source: {url: "s3://b/p"}
    mapping:
      type: identify
      user_id: CustomerID
      columns: [City, eMail]
      rename: {City: address.City}
      constants: {Source: Warehouse, Nested: {InnerKey: 1}}
    destinations:
      - type: webhook
        url: https://example.com/x
        headers: {X-Api-Key: K, authorization: a}
`,
		"json": `{"syncs":[{"name":"users","source":{"url":"s3://b/p"},
  "mapping":{"type":"identify","user_id":"CustomerID","columns":["City","eMail"],"rename":{"City":"address.City"},
    "constants":{"Source":"Warehouse","Nested":{"InnerKey":1}}},
  "destinations":[{"type":"webhook","url":"https://example.com/x","headers":{"X-Api-Key":"K","authorization":"a"}}]}]}`,
		"toml": `
[[syncs]]
name = "users"
source = {url = "s3://b/p"}
[syncs.mapping]
type = "identify"
user_id = "CustomerID"
columns = ["City", "eMail"]
rename = {City = "address.City"}
constants = {Source = "Warehouse", Nested = {InnerKey = 1}}
[[syncs.destinations]]
type = "webhook"
url = "https://example.com/x"
headers = {X-Api-Key = "K", authorization = "a"}
`,
	}
	for format, doc := range docs {
		t.Run(format, func(t *testing.T) {
			c, err := config.LoadBytes([]byte(doc), format, t.TempDir(), nil, all.Registry())
			if err != nil {
				t.Fatalf("load:%s", problems(err))
			}
			m := c.Syncs[0].Mapping
			if got := m.Rename; !reflect.DeepEqual(got, map[string]string{"City": "address.City"}) {
				t.Errorf("rename = %v", got)
			}
			if m.Constants["Source"] != "Warehouse" {
				t.Errorf("constants = %v", m.Constants)
			}
			if nested, _ := m.Constants["Nested"].(map[string]any); nested == nil || nested["InnerKey"] == nil {
				t.Errorf("nested constant lost its case: %#v", m.Constants["Nested"])
			}
			if m.UserID != "CustomerID" || !reflect.DeepEqual(m.Columns, []string{"City", "eMail"}) {
				t.Errorf("user_id %q columns %v", m.UserID, m.Columns)
			}
			if h := c.Syncs[0].Destinations[0].Options.(*webhook.Options).Headers; !reflect.DeepEqual(h, map[string]string{"X-Api-Key": "K", "authorization": "a"}) {
				t.Errorf("headers = %v", h)
			}
		})
	}
}

// TestUnknownKeys checks that unknown keys are reported at their full path, at every
// depth, with a suggestion when a known key is near.
func TestUnknownKeys(t *testing.T) {
	tests := []struct {
		name, path, msg string
		v               any
	}{
		{"top level", "stat", `unknown key, did you mean "state"?`, map[string]any{}},
		{"top level far", "telemetry", "unknown key", true},
		{"state", "state.uri", `unknown key, did you mean "url"?`, "x"},
		{"serve", "serve.histroy", `unknown key, did you mean "history"?`, 3},
		{"sync", "syncs[0].sourc", `unknown key, did you mean "source"?`, map[string]any{}},
		{"sync case", "syncs[0].Mode", `unknown key, did you mean "mode"?`, "full"},
		{"mapping", "syncs[0].mapping.colums", `unknown key, did you mean "columns"?`, []any{"a"}},
		{"source auth", "syncs[0].source.auth.mdoe", `unknown key, did you mean "mode"?`, "keys"},
		{"limits", "syncs[0].source.limits.max_record_byte", `unknown key, did you mean "max_record_bytes"?`, 1},
		{"schedule", "syncs[0].schedule.evry", `unknown key, did you mean "every"?`, "1h"},
		{"destination", "syncs[0].destinations[0].verifyobject", `unknown key, did you mean "verify_object"? (a key of type s3)`, "k"},
		{"destination own key", "syncs[0].destinations[0].formt", `unknown key, did you mean "format"?`, "csv"},
		{"destination shared key", "syncs[0].destinations[0].batch_sise", `unknown key, did you mean "batch_size"?`, 3},
		{"another type's key", "syncs[0].destinations[0].verify_object", "not used by type stdout (it is a key of type s3)", "k"},
		{"retry", "syncs[0].destinations[0].retry.max_attempt", `unknown key, did you mean "max_attempts"?`, 2},
		{"csv", "syncs[0].destinations[0].csv.delimter", `unknown key, did you mean "delimiter"?`, ","},
		{"s3 auth", "syncs[0].destinations[0].auth.role_ar", `unknown key, did you mean "role_arn"?`, "x"},
		{"no near key", "syncs[0].destinations[0].compressionlevel", "unknown key", 9},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			if strings.HasPrefix(tc.path, d0+".csv") || strings.HasPrefix(tc.path, d0+".auth") || strings.HasPrefix(tc.path, d0+".formt") {
				set(t, tree, d0, map[string]any{"type": "s3", "url": "s3://lake", "format": "csv"})
			}
			set(t, tree, tc.path, tc.v)
			_, err := loadTree(t, tree, t.TempDir(), nil)
			ce := asConfigError(t, err)
			if len(ce.Errors) != 1 || ce.Errors[0].Path != tc.path || ce.Errors[0].Msg != tc.msg {
				t.Fatalf("want exactly %s: %s; got%s", tc.path, tc.msg, problems(err))
			}
		})
	}
}

// TestPaths checks that local paths are made absolute against the config file's
// directory and that other locations are left alone.
func TestPaths(t *testing.T) {
	root := t.TempDir()
	dir := filepath.Join(root, "conf")
	for _, d := range []string{"conf/data", "conf/more", "elsewhere"} {
		if err := os.MkdirAll(filepath.Join(root, d), 0o755); err != nil {
			t.Fatal(err)
		}
	}
	tests := []struct {
		url, want string
	}{
		{"data", filepath.Join(dir, "data")},
		{"./data/", filepath.Join(dir, "data")},
		{"../elsewhere", filepath.Join(root, "elsewhere")},
		{filepath.Join(root, "elsewhere"), filepath.Join(root, "elsewhere")},
		{"file://" + filepath.Join(root, "elsewhere"), filepath.Join(root, "elsewhere")},
		{"file://localhost" + filepath.Join(root, "elsewhere"), filepath.Join(root, "elsewhere")},
		{"file://more", filepath.Join(dir, "more")},
		{"file://./more", filepath.Join(dir, "more")},
		{"s3://bucket/prefix/", "s3://bucket/prefix/"},
	}
	for _, tc := range tests {
		t.Run(tc.url, func(t *testing.T) {
			tree := baseTree()
			set(t, tree, sp+".url", tc.url)
			set(t, tree, d0, map[string]any{"type": "file", "path": "out/x.jsonl"})
			set(t, tree, d1, map[string]any{"type": "file", "name": "abs", "path": filepath.Join(root, "abs.jsonl")})
			path := filepath.Join(dir, "backflow.json")
			writeJSON(t, path, tree)
			// Load from another working directory's point of view: a relative file name.
			rel, err := filepath.Rel(mustGetwd(t), path)
			if err != nil {
				t.Fatal(err)
			}
			c, err := config.Load(rel, env(nil), all.Registry())
			if err != nil {
				t.Fatalf("load:%s", problems(err))
			}
			s := c.Syncs[0]
			if s.Source.URL != tc.want {
				t.Errorf("source.url = %q, want %q", s.Source.URL, tc.want)
			}
			if c.State.URL != filepath.Join(dir, ".backflow") {
				t.Errorf("state.url = %q", c.State.URL)
			}
			p0, p1 := s.Destinations[0].Options.(*file.Options).Path, s.Destinations[1].Options.(*file.Options).Path
			if p0 != filepath.Join(dir, "out", "x.jsonl") || p1 != filepath.Join(root, "abs.jsonl") {
				t.Errorf("file paths %q %q", p0, p1)
			}
			if c.Dir != dir || c.Path != path {
				t.Errorf("Dir %q Path %q", c.Dir, c.Path)
			}
		})
	}
	t.Run("s3 state untouched", func(t *testing.T) {
		tree := baseTree()
		set(t, tree, "state.url", "s3://b/state/")
		c, err := loadTree(t, tree, dir, nil)
		if err != nil {
			t.Fatalf("load:%s", problems(err))
		}
		if c.State.URL != "s3://b/state/" {
			t.Errorf("state.url = %q", c.State.URL)
		}
	})
	t.Run("file URL state", func(t *testing.T) {
		tree := baseTree()
		set(t, tree, "state.url", "file://st")
		c, err := loadTree(t, tree, dir, nil)
		if err != nil {
			t.Fatalf("load:%s", problems(err))
		}
		if c.State.URL != filepath.Join(dir, "st") {
			t.Errorf("state.url = %q", c.State.URL)
		}
	})
}

func mustGetwd(t *testing.T) string {
	t.Helper()
	wd, err := os.Getwd()
	if err != nil {
		t.Fatal(err)
	}
	return wd
}

// TestDefaults checks every default, per destination type.
func TestDefaults(t *testing.T) {
	tree := baseTree()
	set(t, tree, "syncs[0].destinations", []any{
		map[string]any{"type": "segment", "write_key": "wk"},
		map[string]any{"type": "webhook", "url": "http://127.0.0.1:1/"},
		map[string]any{"type": "file", "path": "x.jsonl"},
		map[string]any{"type": "stdout"},
		map[string]any{"type": "s3", "url": "s3://lake"},
	})
	dir := t.TempDir()
	c, err := loadTree(t, tree, dir, nil)
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	if c.State.URL != filepath.Join(dir, ".backflow") || c.State.S3.Auth.Mode != "default" {
		t.Errorf("state = %+v", c.State)
	}
	if want := (config.ServeConfig{MaxConcurrentRuns: 4, History: 20, ShutdownGrace: 30 * time.Second}); c.Serve != want {
		t.Errorf("serve = %+v", c.Serve)
	}
	s := c.Syncs[0]
	if s.Source.Include != "*.parquet" || s.Source.Partition != "all" || s.Source.S3.Auth.Mode != "default" ||
		s.Source.Limits != (config.Limits{MaxRowGroupBytes: 536870912, MaxRecordBytes: 1048576, FirstRowNulls: "reject"}) {
		t.Errorf("source = %+v", s.Source)
	}
	if s.Mode != "incremental" || !s.Schedule.Start.IsZero() || s.Schedule.Every != 0 || s.Schedule.Cron != "" {
		t.Errorf("mode %q schedule %+v", s.Mode, s.Schedule)
	}
	want := []struct {
		name            string
		inFlight, batch int
	}{{"segment", 4, 1000}, {"webhook", 4, 500}, {"file", 1, 5000}, {"stdout", 1, 1000}, {"s3", 1, 1000}}
	for i, w := range want {
		d := s.Destinations[i]
		if d.Name != w.name || d.MaxInFlight != w.inFlight || d.BatchSize != w.batch || d.RateLimit != 0 ||
			d.Retry != (config.Retry{MaxAttempts: 8, MaxBackoff: 30 * time.Second}) || d.Timeout != 30*time.Second {
			t.Errorf("destination %d = %+v", i, d)
		}
	}
	if e := s.Destinations[0].Options.(*segment.Options).Endpoint; e != "https://api.segment.io" {
		t.Errorf("segment endpoint %q", e)
	}
	lake := s.Destinations[4].Options.(*s3.Options)
	if lake.Format != "jsonl" || lake.Compression != "none" || lake.Key != "{stream_name}/{date}/{connection_run_id}-{part}.{extension}" ||
		lake.CSV.Delimiter != "," || lake.MaxObjectRows != 1000000 || lake.Auth.Mode != "default" || lake.Endpoint != "" {
		t.Errorf("s3 = %+v", lake)
	}
	// Each type has its own options.
	if _, ok := s.Destinations[3].Options.(*stdout.Options); !ok {
		t.Errorf("stdout options: %T", s.Destinations[3].Options)
	}

	// SetDefaults gives a hand-built Config the same defaults.
	hand := &config.Config{Syncs: []config.Sync{{Destinations: []config.Destination{{Type: "webhook"}}}}}
	hand.SetDefaults(all.Registry())
	if d := hand.Syncs[0].Destinations[0]; d.Name != "webhook" || d.BatchSize != 500 || d.MaxInFlight != 4 || d.Timeout != 30*time.Second {
		t.Errorf("SetDefaults: %+v", d)
	}
}

func TestSync(t *testing.T) {
	tree := baseTree()
	c, err := loadTree(t, tree, t.TempDir(), nil)
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	if s, err := c.Sync(""); err != nil || s.Name != "users" {
		t.Fatalf("Sync(\"\") = %v, %v", s, err)
	}
	if s, err := c.Sync("users"); err != nil || s != &c.Syncs[0] {
		t.Fatalf("Sync(users) = %v, %v", s, err)
	}
	if _, err := c.Sync("orders"); err == nil || !strings.Contains(err.Error(), `syncs: no sync named "orders"; the file has: users`) {
		t.Fatalf("Sync(orders) error %v", err)
	}

	set(t, tree, "syncs[1]", map[string]any{"name": "orders", "source": map[string]any{"url": "s3://b/o"},
		"mapping": map[string]any{"type": "track", "user_id": "u", "event": "E"}, "destinations": []any{map[string]any{"type": "stdout"}}})
	path := filepath.Join(t.TempDir(), "two.json")
	writeJSON(t, path, tree)
	c, err = config.Load(path, env(nil), all.Registry())
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	_, err = c.Sync("")
	asConfigError(t, err)
	if want := path + ": syncs: the file has 2 syncs (users, orders): name the one to use"; err.Error() != want {
		t.Fatalf("Sync(\"\") error %q, want %q", err, want)
	}
	if s, err := c.Sync("orders"); err != nil || s.Mapping.Event != "E" {
		t.Fatalf("Sync(orders) = %v, %v", s, err)
	}
}

// TestFileErrors checks the problems found before any key is looked at.
func TestFileErrors(t *testing.T) {
	dir := t.TempDir()
	t.Run("missing file", func(t *testing.T) {
		path := filepath.Join(dir, "none.yaml")
		_, err := config.Load(path, env(nil), all.Registry())
		asConfigError(t, err)
		if !errors.Is(err, fs.ErrNotExist) || err.Error() != path+": no such configuration file" {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("extension", func(t *testing.T) {
		path := filepath.Join(dir, "backflow.ini")
		writeFile(t, path, "x=1")
		_, err := config.Load(path, env(nil), all.Registry())
		asConfigError(t, err)
		if !strings.Contains(err.Error(), `unsupported file extension ".ini": use .yaml, .yml, .json or .toml`) {
			t.Fatalf("got %v", err)
		}
	})
	t.Run("format", func(t *testing.T) {
		_, err := config.LoadBytes([]byte("{}"), "ini", dir, nil, all.Registry())
		asConfigError(t, err)
		if !strings.Contains(err.Error(), `unsupported configuration format "ini"`) {
			t.Fatalf("got %v", err)
		}
	})
	syntax := []struct{ ext, doc, msg string }{
		{"yaml", "syncs:\n  - name: a\n   bad: indent\n", "invalid YAML: line "},
		// The decoder names line 1, where the block starts; the bad line is 5.
		{"yaml", "syncs:\n  - name: users\n    source:\n      url: data\n     include: \"*.parquet\"\n", "invalid YAML: line 5: the indentation matches no line above it"},
		{"yml", "syncs: [", "invalid YAML"},
		{"yaml", "- a\n- b\n", "invalid YAML"},
		{"yaml", "a: 1\na: 2\n", `mapping key "a" already defined`},
		{"json", "{\n  \"syncs\": [}", "invalid JSON: line 2, column 13: invalid character '}'"},
		{"json", `[1]`, "invalid JSON"},
		{"toml", "[syncs\nname = 1", "invalid TOML: line 1, column "},
	}
	for _, tc := range syntax {
		t.Run("syntax "+tc.ext, func(t *testing.T) {
			path := filepath.Join(t.TempDir(), "c."+tc.ext)
			writeFile(t, path, tc.doc)
			_, err := config.Load(path, env(nil), all.Registry())
			ce := asConfigError(t, err)
			if len(ce.Errors) != 1 || ce.Errors[0].Path != "" || !strings.Contains(err.Error(), tc.msg) || !strings.HasPrefix(err.Error(), path+": ") {
				t.Fatalf("got %v", err)
			}
		})
	}
	for _, doc := range []string{"", "# only a comment\n", "null\n"} {
		t.Run("empty "+doc, func(t *testing.T) {
			_, err := config.LoadBytes([]byte(doc), "yaml", dir, nil, all.Registry())
			ce := asConfigError(t, err)
			if len(ce.Errors) != 1 || !ce.Has("syncs", "at least one sync is required") {
				t.Fatalf("got%s", problems(err))
			}
		})
	}
}

func TestErrorType(t *testing.T) {
	e := &config.Error{File: "b.yaml", Errors: []config.FieldError{{Path: "a.b", Msg: "bad"}, {Msg: "whole file"}}}
	if e.Error() != "b.yaml: a.b: bad\nb.yaml: whole file" {
		t.Fatalf("%q", e.Error())
	}
	var fe config.FieldError
	if !errors.As(error(e), &fe) || fe.Path != "a.b" {
		t.Fatalf("errors.As FieldError: %+v", fe)
	}
	e.File = ""
	if e.Error() != "a.b: bad\nwhole file" {
		t.Fatalf("%q", e.Error())
	}
}

// TestDecoderShapes covers values only some decoders produce.
func TestDecoderShapes(t *testing.T) {
	base := "syncs:\n  - name: a\n    source: {url: 's3://b/p'}\n    destinations: [{type: stdout, rate_limit: 2}]\n    mapping:\n      type: identify\n      user_id: u\n"
	t.Run("yaml non-string map keys", func(t *testing.T) {
		c, err := config.LoadBytes([]byte(base+"      rename: {2024: year, true: flag}\n"), "yaml", t.TempDir(), nil, all.Registry())
		if err != nil {
			t.Fatalf("load:%s", problems(err))
		}
		if r := c.Syncs[0].Mapping.Rename; r["2024"] != "year" || r["true"] != "flag" || c.Syncs[0].Destinations[0].RateLimit != 2 {
			t.Fatalf("rename %v rate %v", r, c.Syncs[0].Destinations[0].RateLimit)
		}
	})
	t.Run("yaml bool from list", func(t *testing.T) {
		_, err := config.LoadBytes([]byte(base+"      skip_nulls: [true]\n"), "yaml", t.TempDir(), nil, all.Registry())
		if ce := asConfigError(t, err); len(ce.Errors) != 1 || !ce.Has(mp+".skip_nulls", "must be true or false, not a list") {
			t.Fatalf("got%s", problems(err))
		}
	})
	t.Run("toml local date-time", func(t *testing.T) {
		doc := "[[syncs]]\nname = \"a\"\n[syncs.schedule]\nevery = \"1h\"\nstart = 2025-01-01T00:00:00\n"
		_, err := config.LoadBytes([]byte(doc), "toml", t.TempDir(), nil, all.Registry())
		if ce := asConfigError(t, err); !ce.Has("syncs[0].schedule.start", "must be an RFC 3339 time with a time zone") {
			t.Fatalf("got%s", problems(err))
		}
	})
	t.Run("toml native numbers", func(t *testing.T) {
		doc := "[[syncs]]\nname = \"a\"\nsource = {url = \"s3://b\"}\nmapping = {type = \"identify\", user_id = \"u\"}\n" +
			"[[syncs.destinations]]\ntype = \"webhook\"\nurl = \"http://127.0.0.1:1\"\nrate_limit = 3\nbatch_size = 7\nnon_retryable_status = [404]\n"
		c, err := config.LoadBytes([]byte(doc), "toml", t.TempDir(), nil, all.Registry())
		if err != nil {
			t.Fatalf("load:%s", problems(err))
		}
		if d := c.Syncs[0].Destinations[0]; d.RateLimit != 3 || d.BatchSize != 7 || d.Options.(*webhook.Options).NonRetryableStatus[0] != 404 {
			t.Fatalf("%+v", d)
		}
	})
}

// BenchmarkLoadBytes loads testdata/full.* (two syncs, six destinations).
func BenchmarkLoadBytes(b *testing.B) {
	dir := b.TempDir()
	for _, ext := range []string{"yaml", "json", "toml"} {
		data, err := os.ReadFile(filepath.Join("testdata", "full."+ext))
		if err != nil {
			b.Fatal(err)
		}
		b.Run(ext, func(b *testing.B) {
			b.ReportAllocs()
			for b.Loop() {
				if _, err := config.LoadBytes(data, ext, dir, env(fullEnv), all.Registry()); err != nil {
					b.Fatal(err)
				}
			}
		})
	}
}
