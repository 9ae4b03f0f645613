package config

// The values of the config's enumerated fields.
const (
	TypeIdentify = "identify"
	TypeTrack    = "track"
	TypeGroup    = "group"

	ModeIncremental = "incremental"
	ModeFull        = "full"
	ModeDiff        = "diff"

	PartitionAll    = "all"
	PartitionLatest = "latest"

	DiscoveryList       = "list"
	DiscoverySQS        = "sqs"
	FirstRowNullsReject = "reject"
	FirstRowNullsWarn   = "warn"

	AuthDefault = "default"
	AuthKeys    = "keys"
	AuthRole    = "role"

	NotifySlack   = "slack"
	NotifyWebhook = "webhook"

	// The events a notify entry may subscribe to (`on:`).
	NotifyStarted   = "started"
	NotifySucceeded = "succeeded"
	NotifyPartial   = "partial"
	NotifyFailed    = "failed"
	NotifyRecovered = "recovered"
)

// NotifyEvents are the values `on:` accepts, in the order a run raises them.
func NotifyEvents() []string {
	return []string{NotifyStarted, NotifySucceeded, NotifyPartial, NotifyFailed, NotifyRecovered}
}

// DefaultNotifyOn is what a notify entry without `on:` subscribes to.
func DefaultNotifyOn() []string { return []string{NotifyFailed, NotifyRecovered} }

// DefaultPath is the config file used when neither -c nor BACKFLOW_CONFIG names one
// (the command line picks the file).
const DefaultPath = "backflow.yaml"

// PathEnv is the environment variable that may name the config file instead of -c.
const PathEnv = "BACKFLOW_CONFIG"
