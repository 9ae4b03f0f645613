// Package discovery holds the building blocks of event-driven discovery: a source learns
// of new and removed objects from S3 event notifications delivered to an SQS queue
// instead of listing its prefix. Parse understands the notification bodies, Queue
// receives, deletes and keeps messages invisible, and Filter tells which events belong
// to a source.
package discovery

import (
	"bytes"
	"encoding/json"
	"errors"
	"fmt"
	"net/url"
	"strings"
	"time"

	"github.com/backflowhq/backflow/reader"
)

// Event is one object created or removed, as a notification tells it.
type Event struct {
	Bucket string
	// Key is the object's key, decoded (S3's notifications URL-encode it).
	Key       string
	Size      int64  // 0 for a removal
	ETag      string // without quotes; empty for a removal
	VersionID string // set only in a versioned bucket
	// Removed is true for a deletion (a delete marker included), false for a creation.
	Removed bool
	// Time is when S3 saw the change; zero when the notification did not say.
	Time time.Time
}

// Object is the event's object in the shape a listing gives (the pipeline reads it
// without a HEAD: the size is known).
func (e Event) Object() reader.Object {
	return reader.Object{Key: e.Key, Size: e.Size, ETag: e.ETag, VersionID: e.VersionID, LastModified: e.Time}
}

// ErrMalformed is wrapped by every error of Parse: the body is not a notification it
// understands. Such a message will never parse, so redelivering it is useless.
var ErrMalformed = errors.New("malformed notification")

// Parse returns the object events of one SQS message body, in the order they are listed.
// It understands:
//
//   - S3's own notification ({"Records":[{"eventName":"ObjectCreated:Put","s3":{…}}]}),
//     with its URL-encoded keys ("+" for a space);
//   - the same wrapped in an SNS envelope ({"Type":"Notification","Message":"<S3 JSON>"});
//   - EventBridge's ({"detail-type":"Object Created","source":"aws.s3","detail":{…}}),
//     whose keys are not encoded.
//
// S3's test event (s3:TestEvent, sent when notifications are configured) and events about
// anything but the creation or removal of an object (restores, tagging, ACLs, lifecycle
// transitions, replication) give no events and no error. Anything else is an error
// wrapping ErrMalformed that says what is wrong, quoting at most a short prefix of body.
func Parse(body []byte) ([]Event, error) {
	evs, err := parse(body, true)
	if err != nil {
		return nil, fmt.Errorf("%w: %v (body %s)", ErrMalformed, err, excerpt(body))
	}
	return evs, nil
}

// envelope holds the top-level fields of every shape Parse knows; which ones are set
// tells the shape.
type envelope struct {
	Records    *[]s3Record      `json:"Records"`
	Event      string           `json:"Event"` // s3:TestEvent
	Type       string           `json:"Type"`  // SNS: Notification, SubscriptionConfirmation
	Message    *string          `json:"Message"`
	TopicArn   string           `json:"TopicArn"`
	DetailType *string          `json:"detail-type"`
	Source     string           `json:"source"`
	Time       string           `json:"time"`
	Detail     *json.RawMessage `json:"detail"`
}

type s3Record struct {
	EventSource string `json:"eventSource"`
	EventName   string `json:"eventName"`
	EventTime   string `json:"eventTime"`
	S3          *struct {
		Bucket struct {
			Name string `json:"name"`
		} `json:"bucket"`
		Object struct {
			Key       *string `json:"key"`
			Size      int64   `json:"size"`
			ETag      string  `json:"eTag"`
			VersionID string  `json:"versionId"`
		} `json:"object"`
	} `json:"s3"`
}

type bridgeDetail struct {
	Bucket struct {
		Name string `json:"name"`
	} `json:"bucket"`
	Object struct {
		Key       *string `json:"key"`
		Size      int64   `json:"size"`
		ETag      string  `json:"etag"`
		VersionID string  `json:"version-id"`
	} `json:"object"`
}

// parse reads one body; sns allows one SNS envelope around it (an envelope inside an
// envelope is no shape AWS sends).
func parse(body []byte, sns bool) ([]Event, error) {
	body = bytes.TrimSpace(body)
	if len(body) == 0 {
		return nil, errors.New("empty body")
	}
	if body[0] != '{' {
		return nil, errors.New("not a JSON object")
	}
	var env envelope
	if err := json.Unmarshal(body, &env); err != nil {
		return nil, fmt.Errorf("invalid JSON: %v", err)
	}
	switch {
	case env.Records != nil:
		return s3Events(*env.Records)
	case env.Event == "s3:TestEvent":
		return nil, nil
	case env.Type != "" && env.TopicArn != "" || env.Type == "Notification":
		if !sns {
			return nil, errors.New("an SNS envelope inside an SNS envelope")
		}
		switch env.Type {
		case "Notification":
		case "SubscriptionConfirmation", "UnsubscribeConfirmation":
			return nil, fmt.Errorf("an SNS %s, not a notification (confirm the queue's subscription to topic %s)", env.Type, env.TopicArn)
		default:
			return nil, fmt.Errorf("an SNS message of type %q, not a Notification", env.Type)
		}
		if env.Message == nil {
			return nil, errors.New("SNS notification without a Message")
		}
		evs, err := parse([]byte(*env.Message), false)
		if err != nil {
			return nil, fmt.Errorf("SNS Message: %v", err)
		}
		return evs, nil
	case env.DetailType != nil:
		return bridgeEvents(env)
	}
	return nil, errors.New("neither an S3 notification (Records), an SNS Notification nor an EventBridge event (detail-type)")
}

func s3Events(recs []s3Record) ([]Event, error) {
	var out []Event
	for i, r := range recs {
		kind, _, _ := strings.Cut(r.EventName, ":")
		var removed bool
		switch {
		case r.EventName == "":
			return nil, fmt.Errorf("Records[%d]: no eventName", i)
		case kind == "ObjectCreated":
		case kind == "ObjectRemoved", strings.HasPrefix(r.EventName, "LifecycleExpiration:"):
			removed = true
		default:
			continue // restores, tagging, ACLs, transitions, replication: the object is unchanged
		}
		if r.EventSource != "" && r.EventSource != "aws:s3" {
			return nil, fmt.Errorf("Records[%d]: eventSource %q is not aws:s3", i, r.EventSource)
		}
		if r.S3 == nil {
			return nil, fmt.Errorf("Records[%d]: no s3", i)
		}
		if r.S3.Bucket.Name == "" {
			return nil, fmt.Errorf("Records[%d]: no s3.bucket.name", i)
		}
		if r.S3.Object.Key == nil || *r.S3.Object.Key == "" {
			return nil, fmt.Errorf("Records[%d]: no s3.object.key", i)
		}
		// S3 encodes keys as a form value: "+" for a space, %XX for the rest.
		key, err := url.QueryUnescape(*r.S3.Object.Key)
		if err != nil {
			return nil, fmt.Errorf("Records[%d]: s3.object.key %q is not URL-encoded: %v", i, *r.S3.Object.Key, err)
		}
		if r.S3.Object.Size < 0 {
			return nil, fmt.Errorf("Records[%d]: s3.object.size %d is negative", i, r.S3.Object.Size)
		}
		t, err := parseTime(r.EventTime)
		if err != nil {
			return nil, fmt.Errorf("Records[%d]: eventTime: %v", i, err)
		}
		out = append(out, Event{
			Bucket: r.S3.Bucket.Name, Key: key, Size: r.S3.Object.Size,
			ETag: strings.Trim(r.S3.Object.ETag, `"`), VersionID: r.S3.Object.VersionID,
			Removed: removed, Time: t,
		})
	}
	return out, nil
}

func bridgeEvents(env envelope) ([]Event, error) {
	var removed bool
	switch *env.DetailType {
	case "Object Created":
	case "Object Deleted":
		removed = true
	case "":
		return nil, errors.New("empty detail-type")
	default:
		return nil, nil // restores, tags, ACLs, storage class changes: the object is unchanged
	}
	if env.Source != "" && env.Source != "aws.s3" {
		return nil, fmt.Errorf("EventBridge source %q is not aws.s3", env.Source)
	}
	if env.Detail == nil {
		return nil, errors.New("EventBridge event without detail")
	}
	var d bridgeDetail
	if err := json.Unmarshal(*env.Detail, &d); err != nil {
		return nil, fmt.Errorf("EventBridge detail: %v", err)
	}
	if d.Bucket.Name == "" {
		return nil, errors.New("no detail.bucket.name")
	}
	if d.Object.Key == nil || *d.Object.Key == "" {
		return nil, errors.New("no detail.object.key")
	}
	if d.Object.Size < 0 {
		return nil, fmt.Errorf("detail.object.size %d is negative", d.Object.Size)
	}
	t, err := parseTime(env.Time)
	if err != nil {
		return nil, fmt.Errorf("time: %v", err)
	}
	return []Event{{
		Bucket: d.Bucket.Name, Key: *d.Object.Key, Size: d.Object.Size,
		ETag: strings.Trim(d.Object.ETag, `"`), VersionID: d.Object.VersionID,
		Removed: removed, Time: t,
	}}, nil
}

// parseTime reads an ISO 8601 time as S3 and EventBridge write it; empty is the zero time.
func parseTime(s string) (time.Time, error) {
	if s == "" {
		return time.Time{}, nil
	}
	t, err := time.Parse(time.RFC3339Nano, s)
	if err != nil {
		return time.Time{}, fmt.Errorf("%q is not an RFC 3339 time", s)
	}
	return t, nil
}

// excerpt quotes the start of a body for an error: enough to recognise it, never a
// whole (possibly large) message.
func excerpt(body []byte) string {
	const max = 120
	if len(body) > max {
		return fmt.Sprintf("%q…", body[:max])
	}
	return fmt.Sprintf("%q", body)
}
