package config

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"os"
	"path/filepath"
	"reflect"
	"slices"
	"strings"

	"github.com/pelletier/go-toml/v2"
)

// Load reads the configuration file at path (YAML, JSON or TOML, by its extension),
// expands ${NAME} from lookupEnv, decodes it strictly, applies defaults, makes local
// paths absolute against the file's directory and validates it. Each destination's own
// options are decoded and prepared by its type's kind in kinds (the destinations
// registry). Every error is an *Error listing all problems found.
func Load(path string, lookupEnv func(string) (string, bool), kinds Kinds) (*Config, error) {
	fail := func(msg string, err error) error {
		return &Error{File: path, Errors: []FieldError{{Msg: msg, Err: err}}}
	}
	format, ok := formatOf(path)
	if !ok {
		return nil, fail(fmt.Sprintf("unsupported file extension %q: use .yaml, .yml, .json or .toml", filepath.Ext(path)), nil)
	}
	abs, err := filepath.Abs(path)
	if err != nil {
		return nil, fail(err.Error(), err)
	}
	data, err := os.ReadFile(abs)
	if err != nil {
		msg := fmt.Sprintf("cannot read the configuration file: %v", unwrapPathError(err))
		if os.IsNotExist(err) {
			msg = "no such configuration file"
		}
		return nil, fail(msg, err)
	}
	c, err := LoadBytes(data, format, filepath.Dir(abs), lookupEnv, kinds)
	if err != nil {
		if ce, ok := err.(*Error); ok {
			ce.File = path
		}
		return nil, err
	}
	c.Path = abs
	return c, nil
}

// formatOf maps a file extension to a decoder format.
func formatOf(path string) (string, bool) {
	switch strings.ToLower(filepath.Ext(path)) {
	case ".yaml", ".yml":
		return "yaml", true
	case ".json":
		return "json", true
	case ".toml":
		return "toml", true
	}
	return "", false
}

// LoadBytes is Load for a configuration already in memory: format is "yaml", "yml",
// "json" or "toml", and relative local paths are resolved against dir (the current
// directory when empty). Config.Path is left empty. Every error is an *Error.
func LoadBytes(data []byte, format, dir string, lookupEnv func(string) (string, bool), kinds Kinds) (*Config, error) {
	if lookupEnv == nil {
		lookupEnv = func(string) (string, bool) { return "", false }
	}
	var p problems
	format = strings.ToLower(format)
	if format == "yml" {
		format = "yaml"
	}
	switch format {
	case "yaml", "json", "toml":
	default:
		p.add("", fmt.Sprintf("unsupported configuration format %q: use yaml, json or toml", format))
		return nil, &Error{Errors: p.list}
	}
	absDir, err := filepath.Abs(dir)
	if err != nil {
		p.add("", fmt.Sprintf("resolving the configuration directory: %v", err))
		return nil, &Error{Errors: p.list}
	}

	raw, err := parse(data, format)
	if err != nil {
		// Decoders may report several problems on several lines: keep one line.
		msg := strings.Join(strings.Fields(parseMessage(err, data)), " ")
		return nil, &Error{Errors: []FieldError{{Msg: "invalid " + strings.ToUpper(format) + ": " + msg, Err: err}}}
	}
	raw, _ = normalize(raw).(map[string]any)

	c := &Config{Dir: absDir}
	var x expansions
	expandTree(raw, "", lookupEnv, &p, &x)
	c.expanded = x.vals
	present := map[string]bool{}
	own := destinationOptions(raw)
	checkKeys(raw, reflect.TypeFor[Config](), "", &p, present)
	decode(raw, c, &p)
	if kinds != nil {
		for i := range c.Syncs {
			for j := range c.Syncs[i].Destinations {
				dp := indexPath(indexPath("syncs", i)+".destinations", j)
				decodeOptions(kinds, &c.Syncs[i].Destinations[j], dp, own[dp], &p, present)
			}
		}
	}
	isSet := func(path string) bool { return present[path] }
	applyDefaults(c, isSet, kinds)
	resolvePaths(c)
	validate(c, &p, isSet, kinds)

	if len(p.list) > 0 {
		// A bad value that came from a variable is shown, so that the user sees what
		// is wrong with it, unless it is a secret: at a secret key, or a secret's value.
		var secrets []string
		for _, sec := range c.Secrets() {
			if !slices.Contains(x.vals, sec) || x.secret[sec] || isStructuralSecret(c, sec) {
				secrets = append(secrets, sec)
			}
		}
		errs := p.sorted()
		for i := range errs {
			errs[i].Msg = Redact(errs[i].Msg, secrets)
		}
		return nil, &Error{Errors: errs}
	}
	return c, nil
}

// parseMessage words a decoder's syntax error, with its line where the decoder knows it.
func parseMessage(err error, data []byte) string {
	var te *toml.DecodeError
	if errors.As(err, &te) {
		row, col := te.Position()
		return fmt.Sprintf("line %d, column %d: %s", row, col, strings.TrimPrefix(te.Error(), "toml: "))
	}
	var se *json.SyntaxError
	if errors.As(err, &se) && se.Offset >= 0 && se.Offset <= int64(len(data)) {
		before := data[:se.Offset]
		line := bytes.Count(before, []byte("\n")) + 1
		col := max(1, len(before)-bytes.LastIndexByte(before, '\n')-1) // Offset counts the bad byte
		return fmt.Sprintf("line %d, column %d: %s", line, col, se.Error())
	}
	msg := err.Error()
	for _, prefix := range []string{"yaml: ", "toml: "} {
		msg = strings.TrimPrefix(msg, prefix)
	}
	// The YAML decoder names the line where the enclosing block starts, not the line
	// that broke it: for an indentation error, find that line.
	var reported int
	if _, scanErr := fmt.Sscanf(msg, "line %d:", &reported); scanErr == nil {
		if bad := misindentedLine(data); bad > reported {
			rest := strings.TrimSpace(msg[strings.IndexByte(msg, ':')+1:])
			return fmt.Sprintf("line %d: the indentation matches no line above it (%s)", bad, rest)
		}
	}
	return msg
}

// misindentedLine returns the first line (from 1) indented less than the line before
// it but at no level an enclosing line has, or 0. Block scalars and flow collections
// spanning lines are rare in configuration files and may mislead it; it is only asked
// when the decoder already failed.
func misindentedLine(data []byte) int {
	var levels []int // indentation of the enclosing lines, increasing
	for i, line := range strings.Split(string(data), "\n") {
		body := strings.TrimLeft(line, " ")
		if strings.TrimSpace(body) == "" || strings.HasPrefix(body, "#") {
			continue
		}
		indent := len(line) - len(body)
		popped := false
		for len(levels) > 0 && indent < levels[len(levels)-1] {
			levels = levels[:len(levels)-1]
			popped = true
		}
		switch {
		case popped && (len(levels) == 0 || levels[len(levels)-1] != indent):
			// Back out of a block to a column no enclosing line has.
			return i + 1
		case len(levels) == 0 || indent > levels[len(levels)-1]:
			levels = append(levels, indent)
		}
	}
	return 0
}

// Sync returns the sync called name. An empty name is allowed when the file has
// exactly one sync. The error (an *Error) lists the syncs there are.
func (c *Config) Sync(name string) (*Sync, error) {
	names := make([]string, len(c.Syncs))
	for i := range c.Syncs {
		names[i] = c.Syncs[i].Name
		if name != "" && c.Syncs[i].Name == name {
			return &c.Syncs[i], nil
		}
	}
	var msg string
	switch {
	case name == "" && len(c.Syncs) == 1:
		return &c.Syncs[0], nil
	case len(c.Syncs) == 0:
		msg = "the file has no sync"
	case name == "":
		msg = fmt.Sprintf("the file has %d syncs (%s): name the one to use", len(c.Syncs), strings.Join(names, ", "))
	default:
		msg = fmt.Sprintf("no sync named %q; the file has: %s", name, strings.Join(names, ", "))
	}
	return nil, &Error{File: c.Path, Errors: []FieldError{{Path: "syncs", Msg: msg}}}
}
