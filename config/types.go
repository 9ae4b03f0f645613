// Package config loads, expands, strictly decodes, defaults and validates a backflow
// configuration file. It is the only package that imports viper.
package config

import "time"

// Config is a whole configuration file.
type Config struct {
	State StateConfig `mapstructure:"state"`
	Serve ServeConfig `mapstructure:"serve"`
	Syncs []Sync      `mapstructure:"syncs"`
	// Notify are told about the runs of every sync.
	Notify []Notify `mapstructure:"notify"`

	// Dir is the directory holding the config file; relative local paths
	// (state, sources, file destinations) are resolved against it by Load.
	Dir string `mapstructure:"-"`
	// Path is the file the config was loaded from.
	Path string `mapstructure:"-"`

	// expanded holds the values ${VAR} expansion substituted; they count as secrets.
	expanded []string
}

// StateConfig says where checkpoints, row-hash stores, rejects and run history live.
type StateConfig struct {
	// URL is a local directory (absolute after Load) or s3://bucket/prefix.
	URL string    `mapstructure:"url"`
	S3  S3Options `mapstructure:",squash"`
	// LeaseTTL is how long a run's lease on s3:// state lasts without renewal: a run
	// that was killed blocks the next one for at most this long.
	LeaseTTL time.Duration `mapstructure:"lease_ttl"`
}

// ServeConfig tunes `backflow serve`; every field has a default.
type ServeConfig struct {
	// MaxConcurrentRuns bounds how many different syncs run at once.
	MaxConcurrentRuns int `mapstructure:"max_concurrent_runs"`
	// History is how many run reports are kept per sync.
	History int `mapstructure:"history"`
	// ShutdownGrace bounds how long in-flight runs may take to checkpoint on SIGTERM.
	ShutdownGrace time.Duration `mapstructure:"shutdown_grace"`
	// PublicURL is where people reach serve's status page (http(s)://host[/prefix]);
	// notifications link to the sync's page below it. Empty: no link.
	PublicURL string `mapstructure:"public_url"`
	// AuthToken, when set, protects every endpoint but /healthz (Bearer, or basic auth
	// with the token as password). A secret: give it as ${VAR}.
	AuthToken string `mapstructure:"auth_token"`
}

// S3Options are the connection settings shared by S3 sources, S3 state and the s3 destination.
type S3Options struct {
	Region    string `mapstructure:"region"`
	Endpoint  string `mapstructure:"endpoint"`
	PathStyle bool   `mapstructure:"path_style"`
	Auth      Auth   `mapstructure:"auth"`
}

// Auth says how to obtain AWS credentials.
type Auth struct {
	Mode            string `mapstructure:"mode"` // default | keys | role
	AccessKeyID     string `mapstructure:"access_key_id"`
	SecretAccessKey string `mapstructure:"secret_access_key"` // secret
	SessionToken    string `mapstructure:"session_token"`     // secret
	RoleARN         string `mapstructure:"role_arn"`
	ExternalID      string `mapstructure:"external_id"` // secret
	SessionName     string `mapstructure:"session_name"`
}

// Sync is one source mapped to one or more destinations.
type Sync struct {
	Name         string        `mapstructure:"name"`
	Source       Source        `mapstructure:"source"`
	Mapping      Mapping       `mapstructure:"mapping"`
	Mode         string        `mapstructure:"mode"` // incremental | full | diff
	Schedule     Schedule      `mapstructure:"schedule"`
	Destinations []Destination `mapstructure:"destinations"`
	// Notify are told about this sync's runs, in addition to the top-level ones.
	Notify []Notify `mapstructure:"notify"`
}

// Notify is one place told what happened to runs: a Slack incoming webhook or a JSON
// webhook. Fields not used by Type are rejected by validation.
type Notify struct {
	Type   string   `mapstructure:"type"`   // slack | webhook
	URL    string   `mapstructure:"url"`    // secret: an incoming-webhook URL is a credential
	Secret string   `mapstructure:"secret"` // webhook only, optional; secret: signs the body
	On     []string `mapstructure:"on"`     // events among Notify* names; default [failed, recovered]
}

// Source is where the Parquet files are.
type Source struct {
	// URL is s3://bucket/prefix, or a local directory (absolute after Load; file:// removed).
	URL       string    `mapstructure:"url"`
	Include   string    `mapstructure:"include"`   // glob on the key below the prefix
	Partition string    `mapstructure:"partition"` // all | latest
	S3        S3Options `mapstructure:",squash"`
	Limits    Limits    `mapstructure:"limits"`
	Discovery Discovery `mapstructure:"discovery"`
}

// Discovery says how a source learns which objects exist: by listing its prefix, or
// from S3 event notifications delivered to an SQS queue. The queue is reached with the
// source's region and auth; only an s3:// source may use a queue.
type Discovery struct {
	Type string `mapstructure:"type"` // list | sqs
	// QueueURL is the queue's URL (https://sqs.REGION.amazonaws.com/ACCOUNT/NAME).
	QueueURL string `mapstructure:"queue_url"`
	// Endpoint overrides the SQS endpoint (an emulator, a VPC endpoint); the source's
	// endpoint is S3's, so it is not reused.
	Endpoint string `mapstructure:"endpoint"`
	// Reconcile is how often the prefix is listed anyway, to catch events that never
	// arrived (notifications are best effort). 0 means DefaultReconcile.
	Reconcile time.Duration `mapstructure:"reconcile"`
}

// Limits bound what one file or row may cost.
type Limits struct {
	MaxRowGroupBytes int64 `mapstructure:"max_row_group_bytes"`
	MaxRecordBytes   int64 `mapstructure:"max_record_bytes"`
	// FirstRowNulls says what a null in a file's first row does: reject the file (the
	// default, "" counts as it) or warn and read it (types come from the footer either way).
	FirstRowNulls string `mapstructure:"first_row_nulls"` // reject | warn
}

// Mapping says how a row becomes a Segment-spec message.
type Mapping struct {
	Type        string            `mapstructure:"type"` // identify | track | group
	UserID      string            `mapstructure:"user_id"`
	AnonymousID string            `mapstructure:"anonymous_id"`
	GroupID     string            `mapstructure:"group_id"`
	Event       string            `mapstructure:"event"`
	EventColumn string            `mapstructure:"event_column"`
	Timestamp   string            `mapstructure:"timestamp"`
	Columns     []string          `mapstructure:"columns"`
	Rename      map[string]string `mapstructure:"rename"`    // keys keep their case
	Constants   map[string]any    `mapstructure:"constants"` // keys keep their case
	SkipNulls   bool              `mapstructure:"skip_nulls"`
}

// Schedule says when `backflow serve` runs a sync. Both empty: manual only.
type Schedule struct {
	Every time.Duration `mapstructure:"every"`
	// Start anchors `every`: runs happen at Start + k*Every. Zero: the Unix epoch, so
	// that every replica of serve (and every restart) has the same due times.
	Start time.Time `mapstructure:"start"`
	Cron  string    `mapstructure:"cron"` // 5 fields, UTC
}

// Destination is one place messages are delivered to: the keys every type shares,
// and the type's own options, decoded and prepared by the type's Kind (see Options).
type Destination struct {
	Type string `mapstructure:"type"` // a registered destination type
	Name string `mapstructure:"name"` // defaults to Type; unique within the sync

	MaxInFlight int           `mapstructure:"max_in_flight"` // concurrent requests
	RateLimit   float64       `mapstructure:"rate_limit"`    // requests per second; 0: unlimited
	Retry       Retry         `mapstructure:"retry"`
	Timeout     time.Duration `mapstructure:"timeout"`    // one request
	BatchSize   int           `mapstructure:"batch_size"` // messages per request

	// Options are the type's own options (a pointer to its struct), set by Load; code
	// that builds a Destination by hand sets them itself.
	Options Options `mapstructure:"-"`
}

// Retry bounds retries of one request.
type Retry struct {
	MaxAttempts int           `mapstructure:"max_attempts"`
	MaxBackoff  time.Duration `mapstructure:"max_backoff"`
}
