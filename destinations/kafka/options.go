package kafka

import (
	"fmt"
	"net"
	"strconv"
	"strings"

	"github.com/backflowhq/backflow/config"
)

// Type is the kafka destination's type name in the configuration.
const Type = "kafka"

// Record keys: which field of a message becomes the record key (and so its partition).
const (
	KeyUserID      = "userId"
	KeyAnonymousID = "anonymousId"
	KeyGroupID     = "groupId"
	KeyMessageID   = "messageId"
)

// Compression codecs of record batches.
const (
	CompressionNone   = "none"
	CompressionGzip   = "gzip"
	CompressionSnappy = "snappy"
	CompressionLZ4    = "lz4"
	CompressionZstd   = "zstd"
)

// SASL mechanisms.
const (
	MechanismPlain       = "PLAIN"
	MechanismScramSHA256 = "SCRAM-SHA-256"
	MechanismScramSHA512 = "SCRAM-SHA-512"
)

// Defaults of the shared keys: one Write at a time keeps the records of a key in the
// order the rows were read, also across retries (see Kind).
const (
	DefaultBatchSize   = 1000
	DefaultMaxInFlight = 1
)

// maxTopicLength is Kafka's limit on a topic name (Topic.MAX_NAME_LENGTH).
const maxTopicLength = 249

// Options are the kafka destination's own configuration keys.
type Options struct {
	// Brokers are the bootstrap brokers, host:port each.
	Brokers []string `mapstructure:"brokers"`
	// Topic receives every record. backflow never creates it.
	Topic string `mapstructure:"topic"`
	// Key names the message field that becomes the record key: userId (default),
	// anonymousId, groupId or messageId. An empty field falls back to userId, then to
	// anonymousId, so that every record of an entity lands on one partition.
	Key string `mapstructure:"key"`
	// Compression is the codec of record batches: none, gzip, snappy (default), lz4, zstd.
	Compression string `mapstructure:"compression"`
	SASL        SASL   `mapstructure:"sasl"`
	// TLS connects to the brokers with TLS, verifying their certificates against the
	// system's roots, or CAFile's when set.
	TLS bool `mapstructure:"tls"`
	// CAFile is a PEM file of the certificate authorities to trust (relative to the
	// config file); setting it implies TLS.
	CAFile string `mapstructure:"ca_file"`
}

// SASL authenticates to the brokers; empty: no authentication.
type SASL struct {
	Mechanism string `mapstructure:"mechanism"` // PLAIN | SCRAM-SHA-256 | SCRAM-SHA-512
	Username  string `mapstructure:"username"`
	Password  string `mapstructure:"password"` // secret
}

func (s SASL) enabled() bool { return s.Mechanism != "" || s.Username != "" || s.Password != "" }

// Prepare fills the defaults and checks every key; it does no I/O.
func (o *Options) Prepare(c *config.OptionsCheck) {
	if o.Key == "" {
		o.Key = KeyUserID
	}
	if o.Compression == "" {
		o.Compression = CompressionSnappy
	}
	if len(o.Brokers) == 0 {
		c.Problem("brokers", "is required for type kafka: a list of host:port")
	}
	for i, b := range o.Brokers {
		if msg := checkBroker(b); msg != "" {
			c.Problem("brokers["+strconv.Itoa(i)+"]", msg)
		}
	}
	if c.Required("topic", Type, o.Topic) {
		if msg := checkTopic(o.Topic); msg != "" {
			c.Problem("topic", msg)
		}
	}
	c.OneOf("key", o.Key, KeyUserID, KeyAnonymousID, KeyGroupID, KeyMessageID)
	c.OneOf("compression", o.Compression, CompressionNone, CompressionGzip, CompressionSnappy, CompressionLZ4, CompressionZstd)
	if o.SASL.enabled() {
		// Mechanism names are upper case in Kafka; "scram-sha-512" means the same.
		o.SASL.Mechanism = strings.ToUpper(o.SASL.Mechanism)
		c.OneOf("sasl.mechanism", o.SASL.Mechanism, MechanismPlain, MechanismScramSHA256, MechanismScramSHA512)
		c.Required("sasl.username", Type+" with sasl", o.SASL.Username)
		c.Required("sasl.password", Type+" with sasl", o.SASL.Password)
	}
	if o.CAFile != "" {
		o.CAFile = c.LocalPath(o.CAFile)
		o.TLS = true
	}
}

// Secrets is the SASL password.
func (o *Options) Secrets() []string {
	if o.SASL.Password == "" {
		return nil
	}
	return []string{o.SASL.Password}
}

// checkBroker returns what is wrong with a bootstrap address, "" when nothing.
func checkBroker(b string) string {
	if strings.Contains(b, "://") {
		return fmt.Sprintf("%q must be host:port, without a scheme", b)
	}
	host, port, err := net.SplitHostPort(b)
	if err != nil || host == "" {
		return fmt.Sprintf("%q must be host:port", b)
	}
	if n, err := strconv.Atoi(port); err != nil || n < 1 || n > 65535 {
		return fmt.Sprintf("%q: the port must be a number from 1 to 65535", b)
	}
	return ""
}

// checkTopic returns what Kafka would refuse in a topic name (Topic.validate), "" when
// nothing.
func checkTopic(t string) string {
	if t == "." || t == ".." {
		return fmt.Sprintf("%q is not a valid topic name", t)
	}
	if len(t) > maxTopicLength {
		return fmt.Sprintf("is %d characters long; Kafka allows at most %d", len(t), maxTopicLength)
	}
	for _, r := range t {
		if !(r >= 'a' && r <= 'z' || r >= 'A' && r <= 'Z' || r >= '0' && r <= '9' || r == '.' || r == '_' || r == '-') {
			return fmt.Sprintf("%q holds %q: a topic name is made of letters, digits, '.', '_' and '-'", t, r)
		}
	}
	return ""
}
