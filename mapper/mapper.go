// Package mapper turns Arrow record batches into Segment-spec messages, JSON-encoded once,
// straight from the Arrow columns.
//
// New checks a mapping against a schema and compiles it: which columns hold the
// identifiers, the event and the timestamp, and the tree of keys the traits or properties
// object is made of. Map then walks a record batch row by row and appends each message's
// bytes to one buffer: no per-row map, no reflection, no encoding/json.
package mapper

// Message is one row as a Segment-spec message, already encoded.
type Message struct {
	// Row is the row's index within its file, counting from 0.
	Row int64
	// Type is identify, track or group.
	Type string
	// UserID, AnonymousID, GroupID and Event are the message's identifiers as sent.
	UserID, AnonymousID, GroupID, Event string
	// ID is the deterministic messageId (at most 100 characters): the same sync, the same
	// identifiers and the same mapped content give the same ID.
	ID string
	// Key identifies the entity the row speaks of (type and identifiers): mode diff keys
	// its row-hash store by it, and stores ID as the content hash.
	Key string
	// JSON is the whole message as a destination receives it. Messages of one Map call
	// share a backing array (each JSON's capacity ends where it does): do not modify it.
	JSON []byte
	// BodyStart and BodyEnd delimit, within JSON, the traits or properties object.
	BodyStart, BodyEnd int
	// TimestampStart and TimestampEnd delimit, within JSON, the timestamp string without
	// its quotes (both 0 when the message has no timestamp).
	TimestampStart, TimestampEnd int
}

// Body returns the traits (identify, group) or properties (track) object.
func (m *Message) Body() []byte { return m.JSON[m.BodyStart:m.BodyEnd] }

// Timestamp returns the RFC 3339 timestamp, or "" when the message has none.
func (m *Message) Timestamp() string { return string(m.JSON[m.TimestampStart:m.TimestampEnd]) }

// Reject is a row that could not become a deliverable message.
type Reject struct {
	Row    int64
	Reason string
	// Message is the encoded message where the row could be mapped (too large), else nil.
	Message []byte
}
