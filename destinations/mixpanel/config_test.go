package mixpanel_test

import (
	"os"
	"path/filepath"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
	"github.com/backflowhq/backflow/destinations/mixpanel"
)

// prepare loads a config holding o's keys, so that Prepare runs as it does for a file.
func prepare(t *testing.T, o *mixpanel.Options) {
	t.Helper()
	yaml := "syncs:\n  - name: s\n    source: { url: data }\n    mapping: { type: identify, user_id: id }\n    destinations:\n      - type: mixpanel\n        project_token: " + o.ProjectToken + "\n"
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
	*o = *cfg.Syncs[0].Destinations[0].Options.(*mixpanel.Options)
}

func TestExampleLoads(t *testing.T) {
	path := filepath.Join("..", "..", "examples", "mixpanel", "backflow.yaml")
	env := map[string]string{"MIXPANEL_TOKEN": "secret-token", "MIXPANEL_SA_USER": "sa", "MIXPANEL_SA_SECRET": "sa-secret"}
	cfg, err := config.Load(path, func(k string) (string, bool) { v, ok := env[k]; return v, ok }, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	o, ok := cfg.Syncs[0].Destinations[0].Options.(*mixpanel.Options)
	if !ok || o.ProjectToken != "secret-token" || o.ServiceAccountSecret != "sa-secret" || o.Endpoint != mixpanel.Endpoints["eu"] {
		t.Errorf("options %+v", cfg.Syncs[0].Destinations[0].Options)
	}
}

func TestBadOptions(t *testing.T) {
	yaml := `syncs:
  - name: s
    source: { url: data }
    mapping: { type: identify, user_id: id }
    destinations:
      - type: mixpanel
        region: mars
        endpoint: ftp://x
        service_account_username: u
        api_secret: s
        project_tokn: x
`
	_, err := config.LoadBytes([]byte(yaml), "yaml", t.TempDir(), nil, all.Registry())
	if err == nil {
		t.Fatal("loaded")
	}
	for _, want := range []string{"project_token", "region", "endpoint", "service_account_secret", "project_id", "api_secret", "project_tokn"} {
		if !strings.Contains(err.Error(), want) {
			t.Errorf("error %q does not name %s", err, want)
		}
	}
}

func TestDocumented(t *testing.T) { apitest.CheckDocumented(t, mixpanel.Type, &mixpanel.Options{}) }

func TestRegions(t *testing.T) {
	for region, want := range map[string]string{"": "https://api.mixpanel.com", "eu": "https://api-eu.mixpanel.com", "in": "https://api-in.mixpanel.com"} {
		o := &mixpanel.Options{ProjectToken: "t", Region: region}
		prepare(t, o)
		if o.Endpoint != want || o.GroupKey != "company" {
			t.Errorf("region %q: prepared %+v", region, o)
		}
	}
}
