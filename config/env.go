package config

import (
	"fmt"
	"slices"
	"strings"
)

// expandTree replaces ${NAME} in every string value of raw (map keys are left alone) with
// lookupEnv(NAME). It returns the values it substituted: they may be secrets, and
// Config.Secrets reports them so that logs can be scrubbed. Problems are recorded
// at the value's key path.
func expandTree(raw any, path string, lookupEnv func(string) (string, bool), p *problems, expanded *[]string) any {
	switch v := raw.(type) {
	case string:
		out, vals, err := expand(v, lookupEnv)
		if err != nil {
			p.addBad(path, err.Error())
			return v
		}
		*expanded = append(*expanded, vals...)
		return out
	case map[string]any:
		for _, k := range sortedKeys(v) {
			v[k] = expandTree(v[k], joinPath(path, k), lookupEnv, p, expanded)
		}
		return v
	case []any:
		for i := range v {
			v[i] = expandTree(v[i], indexPath(path, i), lookupEnv, p, expanded)
		}
		return v
	default:
		return raw
	}
}

// expand replaces ${NAME} in s; "$$" is a literal dollar and a "$" followed by anything
// else is kept as it is. It returns the substituted values. Errors name the variable,
// never a value.
func expand(s string, lookupEnv func(string) (string, bool)) (string, []string, error) {
	if !strings.Contains(s, "$") {
		return s, nil, nil
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
				return "", nil, fmt.Errorf("unterminated ${ (write $$ for a literal dollar)")
			}
			name := s[i+2 : i+2+end]
			if !validEnvName(name) {
				return "", nil, fmt.Errorf("invalid environment variable name %q in ${...} (write $$ for a literal dollar)", name)
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
	switch len(missing) {
	case 0:
		return b.String(), vals, nil
	case 1:
		return "", nil, fmt.Errorf("environment variable %s is not set", missing[0])
	default:
		return "", nil, fmt.Errorf("environment variables %s are not set", strings.Join(missing, ", "))
	}
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
