package postgres

import (
	"errors"
	"fmt"
	"strings"
	"unicode/utf8"
)

// maxIdentBytes is PostgreSQL's longest identifier (NAMEDATALEN - 1): a longer one is
// silently truncated by the server, so two long trait names could land in one column.
const maxIdentBytes = 63

// defaultSchema is the schema of a table named without one. It is not the connection's
// search_path: the table a destination writes must not depend on the role's settings.
const defaultSchema = "public"

// TableName is a table's schema and name, as the server spells them (unquoted parts
// folded to lower case, as in SQL).
type TableName struct {
	Schema, Table string
}

// String spells the name back as SQL would read it (each part quoted when needed).
func (t TableName) String() string { return quoteIfNeeded(t.Schema) + "." + quoteIfNeeded(t.Table) }

// ParseTable reads the table option: "table" or "schema.table", where each part is either
// an SQL identifier written plainly (letters, digits, _ and $, not starting with a digit
// or $; folded to lower case as PostgreSQL does) or a double-quoted one ("My Table",
// with "" for a quote), kept exactly. A name without schema is in public.
func ParseTable(s string) (TableName, error) {
	if strings.TrimSpace(s) == "" {
		return TableName{}, errors.New("is empty")
	}
	var parts []string
	rest := s
	for {
		part, after, err := parseIdent(rest)
		if err != nil {
			return TableName{}, err
		}
		parts = append(parts, part)
		if after == "" {
			break
		}
		if after[0] != '.' {
			return TableName{}, fmt.Errorf("unexpected %q after %q: write schema.table, quoting names with other characters in double quotes", after[:1], part)
		}
		rest = after[1:]
	}
	switch len(parts) {
	case 1:
		return TableName{Schema: defaultSchema, Table: parts[0]}, nil
	case 2:
		return TableName{Schema: parts[0], Table: parts[1]}, nil
	}
	return TableName{}, fmt.Errorf("has %d dot-separated parts: write table or schema.table (the database comes from url)", len(parts))
}

// parseIdent reads one identifier at the start of s and returns it and what follows.
func parseIdent(s string) (ident, rest string, err error) {
	if s == "" {
		return "", "", errors.New("has an empty name part")
	}
	if s[0] == '"' {
		var b strings.Builder
		for i := 1; i < len(s); i++ {
			if s[i] != '"' {
				b.WriteByte(s[i])
				continue
			}
			if i+1 < len(s) && s[i+1] == '"' {
				b.WriteByte('"')
				i++
				continue
			}
			id := b.String()
			if err := checkIdent(id); err != nil {
				return "", "", err
			}
			return id, s[i+1:], nil
		}
		return "", "", errors.New("has an unterminated double quote")
	}
	end := 0
	for end < len(s) && s[end] != '.' {
		c := s[end]
		ok := c == '_' || c >= 'a' && c <= 'z' || c >= 'A' && c <= 'Z' || end > 0 && (c >= '0' && c <= '9' || c == '$')
		if !ok {
			return "", "", fmt.Errorf("has %q in name %q: plain names hold letters, digits, _ and $ (not first); quote others in double quotes", rune(c), s[:min(len(s), end+1)])
		}
		end++
	}
	if end == 0 {
		return "", "", errors.New("has an empty name part")
	}
	id := strings.ToLower(s[:end])
	if err := checkIdent(id); err != nil {
		return "", "", err
	}
	return id, s[end:], nil
}

// checkIdent refuses names the server would not keep as written.
func checkIdent(id string) error {
	switch {
	case id == "":
		return errors.New("has an empty name part")
	case len(id) > maxIdentBytes:
		return fmt.Errorf("name %q is %d bytes long: PostgreSQL keeps at most %d", id, len(id), maxIdentBytes)
	case !utf8.ValidString(id):
		return fmt.Errorf("name %q is not valid UTF-8", id)
	case strings.ContainsRune(id, 0):
		return errors.New("has a NUL character")
	}
	return nil
}

// quoteIfNeeded writes id plainly when it reads back the same way, else double-quoted.
func quoteIfNeeded(id string) string {
	plain := id != ""
	for i := 0; i < len(id) && plain; i++ {
		c := id[i]
		plain = c == '_' || c >= 'a' && c <= 'z' || i > 0 && (c >= '0' && c <= '9' || c == '$')
	}
	if plain {
		return id
	}
	return `"` + strings.ReplaceAll(id, `"`, `""`) + `"`
}
