package config

import (
	"fmt"
	"slices"
	"strings"
)

// expansions is what ${VAR} expansion substituted, and where.
type expansions struct {
	// vals are every substituted value: they may be secrets, and Config.Secrets
	// reports them so that logs can be scrubbed.
	vals []string
	// secret are the values substituted at a secret key (isSecretPath): a
	// configuration error never shows them, while it may show a bad value that came
	// from a variable at any other key.
	secret map[string]bool
	// missing are the unset variables already reported: each is reported once, at the
	// first key using it.
	missing map[string]bool
}

// expandTree replaces ${NAME} in every string value of raw (map keys are left alone) with
// lookupEnv(NAME), recording what it substituted in x. Problems are recorded at the
// value's key path.
func expandTree(raw any, path string, lookupEnv func(string) (string, bool), p *problems, x *expansions) any {
	switch v := raw.(type) {
	case string:
		out, vals, missing, err := expand(v, lookupEnv)
		if err != nil {
			p.addBad(path, err.Error())
			return v
		}
		if len(missing) > 0 {
			var unreported []string
			for _, name := range missing {
				if !x.missing[name] {
					unreported = append(unreported, name)
					if x.missing == nil {
						x.missing = map[string]bool{}
					}
					x.missing[name] = true
				}
			}
			switch len(unreported) {
			case 0:
				p.markBad(path) // said already, at the first key using it
			case 1:
				p.addBad(path, fmt.Sprintf("environment variable %s is not set", unreported[0]))
			default:
				p.addBad(path, fmt.Sprintf("environment variables %s are not set", strings.Join(unreported, ", ")))
			}
			return v
		}
		x.vals = append(x.vals, vals...)
		if isSecretPath(path) {
			if x.secret == nil {
				x.secret = map[string]bool{}
			}
			for _, val := range vals {
				x.secret[val] = true
			}
		}
		return out
	case map[string]any:
		for _, k := range sortedKeys(v) {
			v[k] = expandTree(v[k], joinPath(path, k), lookupEnv, p, x)
		}
		return v
	case []any:
		for i := range v {
			v[i] = expandTree(v[i], indexPath(path, i), lookupEnv, p, x)
		}
		return v
	default:
		return raw
	}
}

// isSecretPath tells the keys whose values Config.Secrets reports: credentials, header
// values, notification URLs and secrets, serve's auth token.
func isSecretPath(path string) bool {
	key := path[strings.LastIndexAny(path, ".]")+1:]
	switch key {
	case "write_key", "secret_access_key", "session_token", "external_id", "secret", "auth_token":
		return true
	case "url":
		return strings.Contains(path, "notify[")
	}
	return strings.Contains(path, ".headers.")
}

// expand replaces ${NAME} in s; "$$" is a literal dollar and a "$" followed by anything
// else is kept as it is. It returns the substituted values and the variables that are
// not set (then the string is not expanded). Errors name the variable, never a value.
func expand(s string, lookupEnv func(string) (string, bool)) (string, []string, []string, error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil, nil
	}
	var b strings.Builder
	var vals []string
	var missing []string
	for i := 0; i < len(s); i++ {
		c := s[i]
		if c != '$' || i+1 == len(s) {
			b.WriteByte(c)
			continue
		}
		switch s[i+1] {
		case '$':
			b.WriteByte('$')
			i++
		case '{':
			end := strings.IndexByte(s[i+2:], '}')
			if end < 0 {
				return "", nil, nil, fmt.Errorf("unterminated ${ (write $$ for a literal dollar)")
			}
			name := s[i+2 : i+2+end]
			if !validEnvName(name) {
				return "", nil, nil, fmt.Errorf("invalid environment variable name %q in ${...} (write $$ for a literal dollar)", name)
			}
			val, ok := lookupEnv(name)
			if !ok {
				if !slices.Contains(missing, name) {
					missing = append(missing, name)
				}
			} else {
				b.WriteString(val)
				if val != "" {
					vals = append(vals, val)
				}
			}
			i += 2 + end
		default:
			b.WriteByte(c)
		}
	}
	if len(missing) > 0 {
		return "", nil, missing, nil
	}
	return b.String(), vals, nil, nil
}

// validEnvName accepts the portable shell variable names: [A-Za-z_][A-Za-z0-9_]*.
func validEnvName(name string) bool {
	if name == "" {
		return false
	}
	for i := 0; i < len(name); i++ {
		c := name[i]
		switch {
		case c == '_', c >= 'A' && c <= 'Z', c >= 'a' && c <= 'z':
		case c >= '0' && c <= '9' && i > 0:
		default:
			return false
		}
	}
	return true
}
