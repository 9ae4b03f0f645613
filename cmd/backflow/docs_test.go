package main

import (
	"os"
	"path/filepath"
	"reflect"
	"regexp"
	"slices"
	"sort"
	"strings"
	"testing"
	"time"

	"github.com/spf13/cobra"
	"github.com/spf13/pflag"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
)

// docsText is README.md and every page of docs/, concatenated.
func docsText(t *testing.T) string {
	t.Helper()
	paths, err := filepath.Glob("../../docs/*.md")
	if err != nil {
		t.Fatal(err)
	}
	paths = append(paths, "../../README.md")
	var b strings.Builder
	for _, p := range paths {
		data, err := os.ReadFile(p)
		if err != nil {
			t.Fatal(err)
		}
		b.Write(data)
		b.WriteByte('\n')
	}
	return b.String()
}

// commandFlags are the long flags of every command, by name.
func commandFlags() map[string]bool {
	root := newRootCommand(&globalOptions{stdout: os.Stdout, stderr: os.Stderr, getenv: os.LookupEnv})
	flags := map[string]bool{}
	var walk func(c *cobra.Command)
	walk = func(c *cobra.Command) {
		add := func(f *pflag.Flag) { flags[f.Name] = true }
		c.Flags().VisitAll(add)
		c.PersistentFlags().VisitAll(add)
		for _, sub := range c.Commands() {
			walk(sub)
		}
	}
	walk(root)
	delete(flags, "help")    // cobra's
	delete(flags, "version") // cobra's
	return flags
}

// otherTools are flags the docs show for other programs (go, docker, curl, …).
var otherTools = []string{"race", "rm", "network", "name", "env", "header", "data", "fail", "silent",
	"show-error", "location", "request", "output", "user", "volume", "count", "run", "tags", "timeout",
	"help", "version", "now",
	"prefix", "all-containers", "from-literal"} // kubectl

// TestDocsFlags: every flag the docs name exists, and every flag that exists is named.
func TestDocsFlags(t *testing.T) {
	docs := docsText(t)
	flags := commandFlags()
	mentioned := map[string]bool{}
	for _, m := range regexp.MustCompile("(?:^|[\\s`(\\[|])--([a-z][a-z0-9-]*)").FindAllStringSubmatch(docs, -1) {
		mentioned[m[1]] = true
	}
	for name := range mentioned {
		if !flags[name] && !slices.Contains(otherTools, name) {
			t.Errorf("the docs name --%s, which no command has", name)
		}
	}
	for name := range flags {
		if !mentioned[name] {
			t.Errorf("--%s is not documented in README.md or docs/", name)
		}
	}
}

// configKeys are the key names of every level of the configuration (mapstructure tags).
func configKeys(typ reflect.Type, into map[string]bool) {
	for typ.Kind() == reflect.Pointer || typ.Kind() == reflect.Slice || typ.Kind() == reflect.Map {
		typ = typ.Elem()
	}
	if typ.Kind() != reflect.Struct || typ == reflect.TypeFor[time.Time]() {
		return
	}
	for i := range typ.NumField() {
		f := typ.Field(i)
		tag := strings.Split(f.Tag.Get("mapstructure"), ",")[0]
		if tag == "-" || !f.IsExported() {
			continue
		}
		if tag != "" {
			into[tag] = true
		}
		configKeys(f.Type, into)
	}
}

// TestDocsConfigKeys: every key of the configuration is documented in
// docs/configuration.md (or the destination pages), and every key a table there lists
// exists.
func TestDocsConfigKeys(t *testing.T) {
	docs := docsText(t)
	keys := map[string]bool{}
	configKeys(reflect.TypeFor[config.Config](), keys)
	// Each destination type's own keys, from its options struct.
	reg := all.Registry()
	for _, typ := range reg.Types() {
		k, _ := reg.Kind(typ)
		configKeys(reflect.TypeOf(k.NewOptions()), keys)
	}
	var missing []string
	for k := range keys {
		if !regexp.MustCompile("[`.]"+regexp.QuoteMeta(k)+"[`:]").MatchString(docs) && !regexp.MustCompile(`(?m)^\s*`+regexp.QuoteMeta(k)+`:`).MatchString(docs) {
			missing = append(missing, k)
		}
	}
	sort.Strings(missing)
	for _, k := range missing {
		t.Errorf("config key %q is not documented", k)
	}
	// The key tables of configuration.md: | `key` | …
	data, err := os.ReadFile("../../docs/configuration.md")
	if err != nil {
		t.Fatal(err)
	}
	keyTable := false
	row := regexp.MustCompile("^\\| `([a-z_.]+)`")
	for _, line := range strings.Split(string(data), "\n") {
		switch {
		case !strings.HasPrefix(line, "|"):
			keyTable = false
		case strings.HasPrefix(line, "| key "):
			keyTable = true
		case keyTable:
			m := row.FindStringSubmatch(line)
			if m == nil {
				continue
			}
			for _, part := range strings.Split(m[1], ".") {
				if !keys[part] {
					t.Errorf("docs/configuration.md lists key %q, which the configuration does not have", m[1])
				}
			}
		}
	}
}

// TestDocsDestinationKeys: every key of a destination type's own options is documented
// in that type's section of docs/destinations.md (`## type`), or in its own page
// docs/<type>-destination.md.
func TestDocsDestinationKeys(t *testing.T) {
	data, err := os.ReadFile("../../docs/destinations.md")
	if err != nil {
		t.Fatal(err)
	}
	sections := map[string]string{}
	var cur string
	for _, line := range strings.Split(string(data), "\n") {
		if h, ok := strings.CutPrefix(line, "## "); ok {
			cur = strings.TrimSpace(strings.Trim(h, "`"))
		}
		sections[cur] += line + "\n"
	}
	reg := all.Registry()
	for _, typ := range reg.Types() {
		text := sections[typ]
		if page, err := os.ReadFile("../../docs/" + typ + "-destination.md"); err == nil {
			text += string(page)
		}
		if text == "" {
			t.Errorf("destination type %s has no section \"## %s\" in docs/destinations.md", typ, typ)
			continue
		}
		k, _ := reg.Kind(typ)
		for _, key := range config.OptionKeys(k.NewOptions()) {
			leaf := key[strings.LastIndexByte(key, '.')+1:]
			if !strings.Contains(text, "`"+leaf+"`") && !strings.Contains(text, "`"+key+"`") && !regexp.MustCompile(`(?m)^\s*`+regexp.QuoteMeta(leaf)+`:`).MatchString(text) {
				t.Errorf("destination type %s: key %q is not documented in its section of docs/destinations.md", typ, key)
			}
		}
	}
}
