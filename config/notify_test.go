package config_test

import (
	"slices"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
)

// TestNotifyValidation checks every problem a notify entry or serve.public_url can have,
// at its path, one problem each.
func TestNotifyValidation(t *testing.T) {
	slack := func() map[string]any {
		return map[string]any{"type": "slack", "url": "https://hooks.slack.com/services/T0/B0/xyz"}
	}
	hook := func() map[string]any {
		return map[string]any{"type": "webhook", "url": "https://ops.example.com/backflow"}
	}
	const n0, s0 = "notify[0]", "syncs[0].notify[0]"
	tests := []struct {
		name      string
		muts      []kv
		path, msg string
	}{
		{"type missing", []kv{{n0, map[string]any{"url": "https://x.example/y"}}}, n0 + ".type", "is required: one of slack, webhook"},
		{"type unknown", []kv{{n0, slack()}, {n0 + ".type", "email"}}, n0 + ".type", `"email" is not one of slack, webhook`},
		{"url missing", []kv{{n0, map[string]any{"type": "slack"}}}, n0 + ".url", "is required"},
		{"url scheme", []kv{{s0, hook()}, {s0 + ".url", "ftp://ops.example.com/x"}}, s0 + ".url", "must be an http:// or https:// URL"},
		{"url no host", []kv{{n0, slack()}, {n0 + ".url", "https:///services"}}, n0 + ".url", "must be an http:// or https:// URL"},
		{"secret on slack", []kv{{n0, slack()}, {n0 + ".secret", "sign-me-please"}}, n0 + ".secret", "only used by type webhook"},
		{"unknown event", []kv{{s0, hook()}, {s0 + ".on", []any{"failed", "exploded"}}}, s0 + ".on[1]", `"exploded" is not one of started, succeeded, partial, failed, recovered`},
		{"event twice", []kv{{n0, hook()}, {n0 + ".on", []any{"failed", "failed"}}}, n0 + ".on[1]", `"failed" is listed twice`},
		{"no events", []kv{{n0, hook()}, {n0 + ".on", []any{}}}, n0 + ".on", "must name at least one event"},
		{"on not a list", []kv{{n0, hook()}, {n0 + ".on", "failed"}}, n0 + ".on", "must be a list, not a string"},
		{"unknown key", []kv{{s0, hook()}, {s0 + ".channel", "#ops"}}, s0 + ".channel", "unknown key"},
		{"typo", []kv{{n0, hook()}, {n0 + ".secert", "x"}}, n0 + ".secert", `unknown key, did you mean "secret"?`},
		{"notify not a list", []kv{{"notify", hook()}}, "notify", "must be a list, not a mapping"},
		{"public_url scheme", []kv{{"serve.public_url", "backflow.example.com"}}, "serve.public_url", "must be an http:// or https:// URL"},
		{"public_url query", []kv{{"serve.public_url", "https://backflow.example.com/?a=b"}}, "serve.public_url", "without query or fragment"},
	}
	for _, tc := range tests {
		t.Run(tc.name, func(t *testing.T) {
			tree := baseTree()
			for _, m := range tc.muts {
				set(t, tree, m.path, m.v)
			}
			_, err := loadTree(t, tree, t.TempDir(), nil)
			if err == nil {
				t.Fatalf("loaded; want %s: %s", tc.path, tc.msg)
			}
			ce := asConfigError(t, err)
			if !ce.Has(tc.path, tc.msg) || len(ce.Errors) != 1 {
				t.Fatalf("want exactly %s: %s; got%s", tc.path, tc.msg, problems(err))
			}
			for _, secret := range []string{"xyz", "sign-me-please"} {
				if strings.Contains(err.Error(), secret) {
					t.Fatalf("error shows a secret: %v", err)
				}
			}
		})
	}
}

// TestNotifyLoaded checks defaults (on: [failed, recovered]), that top-level and
// per-sync entries are both kept, and that URLs and signing secrets count as secrets.
func TestNotifyLoaded(t *testing.T) {
	tree := baseTree()
	set(t, tree, "notify", []any{map[string]any{"type": "slack", "url": "${SLACK_URL}"}})
	set(t, tree, "syncs[0].notify", []any{map[string]any{
		"type": "webhook", "url": "https://ops.example.com/backflow?token=t0ken-in-query", "secret": "${NOTIFY_SECRET}",
		"on": []any{"started", "succeeded", "partial", "failed", "recovered"},
	}})
	set(t, tree, "serve.public_url", "https://backflow.example.com/")
	c, err := loadTree(t, tree, t.TempDir(), map[string]string{
		"SLACK_URL":     "https://hooks.slack.com/services/T1/B2/s3cr3t",
		"NOTIFY_SECRET": "hmac-signing-secret",
	})
	if err != nil {
		t.Fatalf("load:%s", problems(err))
	}
	if len(c.Notify) != 1 || !slices.Equal(c.Notify[0].On, []string{"failed", "recovered"}) {
		t.Errorf("top-level notify: %+v, want on [failed recovered] by default", c.Notify)
	}
	s := c.Syncs[0]
	if len(s.Notify) != 1 || len(s.Notify[0].On) != 5 || s.Notify[0].Secret != "hmac-signing-secret" {
		t.Errorf("sync notify: %+v", s.Notify)
	}
	if c.Serve.PublicURL != "https://backflow.example.com/" {
		t.Errorf("serve.public_url = %q", c.Serve.PublicURL)
	}
	secrets := c.Secrets()
	for _, want := range []string{"https://hooks.slack.com/services/T1/B2/s3cr3t", "hmac-signing-secret", "https://ops.example.com/backflow?token=t0ken-in-query"} {
		if !slices.Contains(secrets, want) {
			t.Errorf("Secrets() lacks %q: %q", want, secrets)
		}
	}
	line := "POST https://ops.example.com/backflow?token=t0ken-in-query failed"
	if r := config.Redact(line, secrets); strings.Contains(r, "t0ken") {
		t.Errorf("Redact left the URL: %q", r)
	}
}
