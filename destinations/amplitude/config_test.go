package amplitude_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/amplitude"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
)

// prepare loads a config holding o's keys, so that Prepare runs as it does for a file.
func prepare(t *testing.T, o *amplitude.Options) {
	t.Helper()
	yaml := "syncs:\n  - name: s\n    source: { url: data }\n    mapping: { type: identify, user_id: id }\n    destinations:\n      - type: amplitude\n        api_key: " + o.APIKey + "\n"
	if o.Region != "" {
		yaml += "        region: " + o.Region + "\n"
	}
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	cfg, err := config.LoadBytes([]byte(yaml), "yaml", dir, nil, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	*o = *cfg.Syncs[0].Destinations[0].Options.(*amplitude.Options)
}

func TestExampleLoads(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "amplitude", "backflow.yaml")
	env := map[string]string{"AMPLITUDE_API_KEY": "secret-key"}
	cfg, err := config.Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	o, ok := cfg.Syncs[0].Destinations[0].Options.(*amplitude.Options)
	if !ok || o.APIKey != "secret-key" {
		t.Errorf("options %+v", cfg.Syncs[0].Destinations[0].Options)
	}
}

func TestBadOptions(t *testing.T) {
	yaml := `syncs:
  - name: s
    source: { url: data }
    mapping: { type: identify, user_id: id }
    destinations:
      - type: amplitude
        region: mars
        endpoint: ftp://x
        api: v3
        api_kee: x
`
	_, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), nil, all.Registry())
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{"api_key", "region", "endpoint", "api", "api_kee"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestDocumented(t *testing.T) { apitest.CheckDocumented(t, amplitude.Type, &amplitude.Options{}) }
