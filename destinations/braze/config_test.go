package braze_test

import (
	"path/filepath"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/braze"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
)

func TestExampleLoads(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "braze", "backflow.yaml")
	env := map[string]string{"BRAZE_API_KEY": "secret-key"}
	cfg, err := config.Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	o, ok := cfg.Syncs[0].Destinations[0].Options.(*braze.Options)
	if !ok || o.APIKey != "secret-key" || cfg.Syncs[0].Destinations[0].BatchSize != braze.MaxObjects {
		t.Errorf("destination %+v", cfg.Syncs[0].Destinations[0])
	}
}

func TestBadOptions(t *testing.T) {
	yaml := `syncs:
  - name: s
    source: { url: s3://b/p/ }
    mapping: { type: identify, user_id: id }
    destinations:
      - type: braze
        api_kye: x
`
	_, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), nil, all.Registry())
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{"api_key", "endpoint", "api_kye"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestDocumented(t *testing.T) { apitest.CheckDocumented(t, braze.Type, &braze.Options{}) }
