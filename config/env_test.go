package config_test

import (
	"reflect"
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
)

// TestExpansion checks ${NAME} expansion through a constant's value.
func TestExpansion(t *testing.T) {
	vars := map[string]string{"A": "alpha", "B": "beta", "EMPTY": "", "DOLLAR": "$x${A}"}
	tests := []struct {
		in, want, err string
	}{
		{"${A}", "alpha", ""},
		{"x-${A}-y", "x-alpha-y", ""},
		{"${A}${B}", "alphabeta", ""},
		{"$$", "$", ""},
		{"$${A}", "${A}", ""},
		{"cost: $5", "cost: $5", ""},
		{"a$", "a$", ""},
		{"$A", "$A", ""},
		{"${EMPTY}", "", ""},
		{"${DOLLAR}", "$x${A}", ""}, // values are not expanded again
		{"no dollar", "no dollar", ""},
		{"${MISSING}", "", "environment variable MISSING is not set"},
		{"${MISSING}-${OTHER}-${MISSING}", "", "environment variables MISSING, OTHER are not set"},
		{"${A", "", "unterminated ${ (write $$ for a literal dollar)"},
		{"${}", "", `invalid environment variable name ""`},
		{"${1A}", "", `invalid environment variable name "1A"`},
		{"${A:-x}", "", `invalid environment variable name "A:-x"`},
	}
	for _, tc := range tests {
		t.Run(tc.in, func(t *testing.T) {
			tree := baseTree()
			set(t, tree, mp+".constants", map[string]any{"v": tc.in})
			c, err := loadTree(t, tree, t.TempDir(), vars)
			if tc.err != "" {
				ce := asConfigError(t, err)
				if len(ce.Errors) != 1 || !ce.Has(mp+".constants.v", tc.err) {
					t.Fatalf("want %s.constants.v: %s; got%s", mp, tc.err, problems(err))
				}
				return
			}
			if err != nil {
				t.Fatalf("load:%s", problems(err))
			}
			if got := c.Syncs[0].Mapping.Constants["v"]; got != tc.want {
				t.Fatalf("got %q, want %q", got, tc.want)
			}
		})
	}
}

// TestExpansionEverywhere checks that every string value is expanded — in lists, nested
// constants and map values — but never a key, and that expanded text feeds numbers,
// booleans and durations.
func TestExpansionEverywhere(t *testing.T) {
	doc := `
syncs:
  - name: ${NAME}
    source: {url: "s3://${BUCKET}/users/"}
    mapping:
      type: identify
      user_id: id
      columns: ["${COL}", plain, "$${COL}"]
      rename: {"${COL}": "x.${COL}"}
      # keys are never expanded: this renames a column literally named ${COL}
      constants: {nested: {list: ["${COL}", 1]}}
      skip_nulls: ${TRUE}
    destinations:
      - type: webhook
        url: https://example.com/hook
        batch_size: ${BATCH}
        timeout: ${TIMEOUT}
        rate_limit: ${RATE}
`
	vars := map[string]string{"NAME": "users", "BUCKET": "acme", "COL": "city", "TRUE": "true", "BATCH": "25", "TIMEOUT": "5s", "RATE": "2.5"}
	c, err := config.LoadBytes([]byte(doc), "yaml", t.TempDir(), env(vars), all.Registry())
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	s := c.Syncs[0]
	m := s.Mapping
	d := s.Destinations[0]
	if s.Name != "users" || s.Source.URL != "s3://acme/users/" || !reflect.DeepEqual(m.Columns, []string{"city", "plain", "${COL}"}) ||
		!reflect.DeepEqual(m.Rename, map[string]string{"${COL}": "x.city"}) || !m.SkipNulls ||
		d.BatchSize != 25 || d.Timeout.String() != "5s" || d.RateLimit != 2.5 {
		t.Fatalf("got %+v", s)
	}
	nested := m.Constants["nested"].(map[string]any)["list"].([]any)
	if nested[0] != "city" {
		t.Fatalf("nested constant %v", nested)
	}
}

// TestUnsetVariableReportsAll checks that every unset variable is reported, each at its
// own key path, alongside other problems.
func TestUnsetVariableReportsAll(t *testing.T) {
	tree := baseTree()
	set(t, tree, d0, map[string]any{"type": "segment", "write_key": "${SEGMENT_WRITE_KEY}"})
	set(t, tree, d1, map[string]any{"type": "webhook", "url": "${HOOK_URL}", "headers": map[string]any{"Authorization": "Bearer ${HOOK_TOKEN}"}})
	set(t, tree, "syncs[0].mode", "nope")
	_, err := loadTree(t, tree, t.TempDir(), nil)
	ce := asConfigError(t, err)
	want := []config.FieldError{
		{Path: d0 + ".write_key", Msg: "environment variable SEGMENT_WRITE_KEY is not set"},
		{Path: d1 + ".headers.Authorization", Msg: "environment variable HOOK_TOKEN is not set"},
		{Path: d1 + ".url", Msg: "environment variable HOOK_URL is not set"},
		{Path: "syncs[0].mode", Msg: `"nope" is not one of incremental, full, diff`},
	}
	if !reflect.DeepEqual(ce.Errors, want) {
		t.Fatalf("got%s", problems(err))
	}
}

func TestSecrets(t *testing.T) {
	path := copyFull(t, "yaml")
	c, err := config.Load(path, env(fullEnv), all.Registry())
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	got := c.Secrets()
	for _, want := range []string{
		"AKIAEXAMPLE",       // expanded, so secret although an access key id is not
		"aws-secret-value",  // secret_access_key
		"segment-write-key", // write_key
		"hook-token",        // expanded inside a header
		"Bearer hook-token", // the header value as a whole
		"backflow",          // a literal header value (X-Source)
		"external-id-value", // external_id
	} {
		found := false
		for _, s := range got {
			found = found || s == want
		}
		if !found {
			t.Errorf("Secrets() lacks %q: %q", want, got)
		}
	}
	for i := 1; i < len(got); i++ {
		if len(got[i]) > len(got[i-1]) {
			t.Fatalf("Secrets() not longest first: %q", got)
		}
	}
	for _, s := range got {
		if s == "" || s == "customer_id" || s == "https://hooks.example.com/backflow" {
			t.Fatalf("Secrets() holds a value that is not secret: %q", got)
		}
	}
	line := "POST with Bearer hook-token key segment-write-key"
	if r := config.Redact(line, got); strings.Contains(r, "hook-token") || strings.Contains(r, "segment-write-key") || !strings.Contains(r, "POST with REDACTED key REDACTED") {
		t.Fatalf("Redact: %q", r)
	}
}

func TestRedact(t *testing.T) {
	tests := []struct {
		in      string
		secrets []string
		want    string
	}{
		{"abc", nil, "abc"},
		{"", []string{"x"}, ""},
		{"token=abc123&x=abc", []string{"abc", "abc123"}, "token=REDACTED&x=REDACTED"},
		{"ababab", []string{"ab"}, "REDACTEDREDACTEDREDACTED"},
		{"keep", []string{""}, "keep"},
		// A short secret is not found inside the REDACTED of a longer one.
		{"long-secret E", []string{"E", "long-secret"}, "REDACTED REDACTED"},
	}
	for _, tc := range tests {
		if got := config.Redact(tc.in, tc.secrets); got != tc.want {
			t.Errorf("Redact(%q, %q) = %q, want %q", tc.in, tc.secrets, got, tc.want)
		}
	}
}

// TestErrorsNeverShowSecrets puts secret values where a problem would quote them, and
// values from variables that are not secrets.
func TestErrorsNeverShowSecrets(t *testing.T) {
	vars := map[string]string{"MODE": "topsecret-mode", "DIR": "secret-dir-name", "KEY": "wk-123456", "TOKEN": "tok\r\nen-secret"}
	tree := baseTree()
	set(t, tree, "syncs[0].mode", "${MODE}")
	set(t, tree, sp+".url", "${DIR}")
	set(t, tree, d0, map[string]any{"type": "webhook", "url": "https://x.example/${KEY}", "write_key": "${KEY}",
		"headers": map[string]any{"X-T": "${TOKEN}"}, "batch_size": "${KEY}"})
	_, err := loadTree(t, tree, t.TempDir(), vars)
	ce := asConfigError(t, err)
	for _, want := range []string{"syncs[0].mode", sp + ".url", d0 + ".write_key", d0 + ".headers.X-T", d0 + ".batch_size"} {
		if !ce.Has(want, "") {
			t.Errorf("no problem at %s:%s", want, problems(err))
		}
	}
	for _, secret := range []string{"wk-123456", "en-secret"} {
		if strings.Contains(err.Error(), secret) {
			t.Fatalf("error shows %q:\n%v", secret, err)
		}
	}
	// A bad value from a variable at a key that holds no secret is shown: the user
	// must see what is wrong with it. At a secret key, or equal to a secret, it is not.
	if !ce.Has("syncs[0].mode", `"topsecret-mode" is not one of`) || !ce.Has(sp+".url", "secret-dir-name") ||
		!ce.Has(d0+".batch_size", `"REDACTED" is not a number`) {
		t.Fatalf("got%s", problems(err))
	}
}

// TestAuthTokenIsSecret checks that serve's token is redacted like any other secret,
// whether it was written in the file or came from ${VAR}.
func TestAuthTokenIsSecret(t *testing.T) {
	for _, tok := range []string{"literal-token-0123456789", "${BACKFLOW_TOKEN}"} {
		tree := baseTree()
		set(t, tree, "serve.auth_token", tok)
		c, err := loadTree(t, tree, t.TempDir(), map[string]string{"BACKFLOW_TOKEN": "from-env-token-0123456789"})
		if err != nil {
			t.Fatalf("%s: load:%s", tok, problems(err))
		}
		if !slices.Contains(c.Secrets(), c.Serve.AuthToken) || c.Serve.AuthToken == tok && strings.HasPrefix(tok, "$") {
			t.Fatalf("%s: token %q not among the secrets", tok, c.Serve.AuthToken)
		}
	}
}
