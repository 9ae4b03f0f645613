package config

import (
	"cmp"
	"slices"
	"strings"
)

// Redacted replaces a secret in logs, errors and reports.
const Redacted = "REDACTED"

// Secrets returns every secret value of the configuration: write keys, secret access
// keys, session tokens, external ids, webhook header values, notification URLs and
// signing secrets, serve's auth token, and every value that came from a ${VAR}
// expansion. Empty values are left out. Longest first, so that a secret
// containing another is redacted whole.
func (c *Config) Secrets() []string {
	out := c.structuralSecrets()
	for _, v := range c.expanded {
		if v != "" && !slices.Contains(out, v) {
			out = append(out, v)
		}
	}
	slices.SortStableFunc(out, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	return out
}

// isStructuralSecret tells whether v is the value of a secret key of c.
func isStructuralSecret(c *Config, v string) bool {
	return slices.Contains(c.structuralSecrets(), v)
}

// structuralSecrets are the values of c's secret keys, whatever their origin.
func (c *Config) structuralSecrets() []string {
	var out []string
	add := func(vals ...string) {
		for _, v := range vals {
			if v != "" && !slices.Contains(out, v) {
				out = append(out, v)
			}
		}
	}
	auth := func(a Auth) { add(a.SecretAccessKey, a.SessionToken, a.ExternalID) }
	add(c.Serve.AuthToken)
	auth(c.State.S3.Auth)
	notify := func(ns []Notify) {
		for _, n := range ns {
			add(n.URL, n.Secret)
		}
	}
	notify(c.Notify)
	for _, s := range c.Syncs {
		notify(s.Notify)
		auth(s.Source.S3.Auth)
		for _, d := range s.Destinations {
			if so, ok := d.Options.(SecretOptions); ok {
				add(so.Secrets()...)
			}
		}
	}
	return out
}

// Redact replaces every occurrence of each secret in s with REDACTED, the longest
// secrets first.
func Redact(s string, secrets []string) string {
	if s == "" || len(secrets) == 0 {
		return s
	}
	sorted := slices.Clone(secrets)
	slices.SortStableFunc(sorted, func(a, b string) int { return cmp.Compare(len(b), len(a)) })
	pairs := make([]string, 0, 2*len(sorted))
	for _, sec := range sorted {
		if sec != "" {
			pairs = append(pairs, sec, Redacted)
		}
	}
	if len(pairs) == 0 {
		return s
	}
	// One pass, the longest match winning at each position: a short secret is never
	// found inside the REDACTED that replaced a longer one.
	return strings.NewReplacer(pairs...).Replace(s)
}
