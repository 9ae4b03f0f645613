package kafka_test

import (
	"os"
	"path/filepath"
	"regexp"
	"strings"
	"testing"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations/all"
	"github.com/backflowhq/backflow/destinations/kafka"
)

// load loads a config whose only destination is dest (YAML lines, indented as an item
// of destinations).
func load(t *testing.T, dest string, env map[string]string) (*config.Config, error) {
	t.Helper()
	yaml := `state:
  url: .backflow
syncs:
  - name: users
    source:
      url: data
    mapping:
      type: identify
      user_id: id
    destinations:
` + dest
	dir := t.TempDir()
	if err := os.Mkdir(filepath.Join(dir, "data"), 0o755); err != nil {
		t.Fatal(err)
	}
	return config.LoadBytes([]byte(yaml), "yaml", dir, func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}, all.Registry())
}

func TestConfigDefaults(t *testing.T) {
	cfg, err := load(t, `      - type: kafka
        brokers: ["127.0.0.1:9092", "kafka-2.internal:9093"]
        topic: warehouse.users
`, nil)
	if err != nil {
		t.Fatal(err)
	}
	d := cfg.Syncs[0].Destinations[0]
	o := d.Options.(*kafka.Options)
	if o.Key != kafka.KeyUserID || o.Compression != kafka.CompressionSnappy || o.TLS || o.SASL.Mechanism != "" {
		t.Errorf("defaults: %+v", o)
	}
	if d.BatchSize != kafka.DefaultBatchSize || d.MaxInFlight != kafka.DefaultMaxInFlight {
		t.Errorf("batch_size %d, max_in_flight %d", d.BatchSize, d.MaxInFlight)
	}
	if len(o.Brokers) != 2 || o.Topic != "warehouse.users" {
		t.Errorf("options %+v", o)
	}
}

func TestConfigSASLAndTLS(t *testing.T) {
	dir := t.TempDir()
	cfg, err := load(t, `      - type: kafka
        brokers: ["b:9096"]
        topic: t
        key: anonymousId
        compression: zstd
        sasl: { mechanism: scram-sha-512, username: backflow, password: "${KAFKA_PASSWORD}" }
        ca_file: `+filepath.Join(dir, "ca.pem")+`
`, map[string]string{"KAFKA_PASSWORD": "hunter2-secret"})
	if err != nil {
		t.Fatal(err)
	}
	o := cfg.Syncs[0].Destinations[0].Options.(*kafka.Options)
	if o.SASL.Mechanism != kafka.MechanismScramSHA512 || o.SASL.Password != "hunter2-secret" || !o.TLS || o.Key != kafka.KeyAnonymousID {
		t.Errorf("options %+v", o)
	}
	if s := o.Secrets(); len(s) != 1 || s[0] != "hunter2-secret" {
		t.Errorf("Secrets = %v", s)
	}
}

// TestConfigProblems: every problem is reported at once, at its path, and a secret
// never appears in them.
func TestConfigProblems(t *testing.T) {
	_, err := load(t, `      - type: kafka
        brokers: ["http://b:9092", "nohost", "b:99999"]
        topic: "bad topic!"
        key: email
        compression: brotli
        sasl: { mechanism: GSSAPI, password: "${KAFKA_PASSWORD}" }
        tsl: true
`, map[string]string{"KAFKA_PASSWORD": "hunter2-secret"})
	if err == nil {
		t.Fatal("a config full of mistakes loaded")
	}
	msg := err.Error()
	t.Log(msg)
	for _, want := range []string{
		`destinations[0].brokers[0]`, "without a scheme",
		`destinations[0].brokers[1]`, "must be host:port",
		`destinations[0].brokers[2]`, "1 to 65535",
		`destinations[0].topic`, "letters, digits",
		`destinations[0].key`,
		`destinations[0].compression`,
		`destinations[0].sasl.mechanism`,
		`destinations[0].sasl.username`,
		`destinations[0].tsl`,
	} {
		if !strings.Contains(msg, want) {
			t.Errorf("the error does not mention %q:\n%s", want, msg)
		}
	}
	if strings.Contains(msg, "hunter2-secret") {
		t.Errorf("the password is in the error:\n%s", msg)
	}

	_, err = load(t, "      - type: kafka\n", nil)
	if err == nil || !strings.Contains(err.Error(), "brokers") || !strings.Contains(err.Error(), "topic") {
		t.Errorf("a kafka destination without brokers and topic: %v", err)
	}
}

// TestExample: examples/kafka/backflow.yaml loads.
func TestExample(t *testing.T) {
	env := map[string]string{"KAFKA_BROKERS": "127.0.0.1:9092", "KAFKA_PASSWORD": "secret"}
	cfg, err := config.Load(filepath.Join("..", "..", "examples", "kafka", "backflow.yaml"), func(k string) (string, bool) {
		v, ok := env[k]
		return v, ok
	}, all.Registry())
	if err != nil {
		t.Fatal(err)
	}
	found := false
	for _, s := range cfg.Syncs {
		for _, d := range s.Destinations {
			found = found || d.Type == kafka.Type
		}
	}
	if !found {
		t.Error("the example has no kafka destination")
	}
}

// TestDocumented: docs/destinations.md has a kafka section whose key table lists
// every option key.
func TestDocumented(t *testing.T) {
	b, err := os.ReadFile(filepath.Join("..", "..", "docs", "destinations.md"))
	if err != nil {
		t.Fatal(err)
	}
	doc := string(b)
	start := strings.Index(doc, "\n## kafka\n")
	if start < 0 {
		t.Fatal("docs/destinations.md has no ## kafka section")
	}
	section := doc[start+1:]
	if end := strings.Index(section[3:], "\n## "); end >= 0 {
		section = section[:end+3]
	}
	if w := strings.Index(doc, "\n## Writing a destination"); w >= 0 && w < start {
		t.Error("the kafka section comes after ## Writing a destination")
	}
	for _, key := range config.OptionKeys(&kafka.Options{}) {
		if !regexp.MustCompile("(?m)^\\| `" + regexp.QuoteMeta(key) + "` \\|").MatchString(section) {
			t.Errorf("key %s is not in the kafka section's key table", key)
		}
	}
}
