// Package braze is the Braze destination: messages become user attributes and custom
// events of Braze's /users/track endpoint (POST {"attributes":[…],"events":[…]}, Bearer
// API key) on the workspace's REST endpoint:
//
//   - identify: an attributes object, the traits as custom attributes;
//   - track: an event named by the message's event, its properties as properties;
//   - group: an attributes object setting ab_segment_group_<groupId> to true (the
//     attribute Segment's own Braze destination sets) and, when the group has traits,
//     ab_segment_group_<groupId>_traits to them (a nested custom attribute).
//
// The user is the message's userId as external_id; a message with only an anonymousId
// names a user alias {alias_name: anonymousId, alias_label: "anonymous_id"}.
//
// Sample config:
//
//	destinations:
//	  - type: braze
//	    api_key: ${BRAZE_API_KEY}
//	    endpoint: https://rest.iad-01.braze.com   # the workspace's REST endpoint
package braze

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*Braze)(nil)
	_ destinations.Checker     = (*Braze)(nil)
)

// Type is the braze destination's type name in the configuration.
const Type = "braze"

// MaxObjects is how many attributes, events and purchases objects one /users/track
// request may hold in all (https://www.braze.com/docs/api/endpoints/user_data/post_user_track:
// "up to 75 total objects combined across attributes, events, and purchases"; customers on
// legacy limits may send 75 of each, which 75 in all satisfies too).
const MaxObjects = 75

// AliasLabel is the label of the user alias of a message that has only an anonymousId.
const AliasLabel = "anonymous_id"

// GroupPrefix starts the attributes of a group message.
const GroupPrefix = "ab_segment_group_"

// Options are the braze destination's own configuration keys.
type Options struct {
	APIKey string `mapstructure:"api_key"` // secret; a REST API key with users.track
	// Endpoint is the workspace's REST endpoint (https://rest.iad-01.braze.com, …).
	Endpoint string `mapstructure:"endpoint"`
}

// Prepare checks both keys: Braze has one REST endpoint per instance, so there is no
// default.
func (o *Options) Prepare(c *config.OptionsCheck) {
	c.Required("api_key", Type, o.APIKey)
	if c.Required("endpoint", Type, o.Endpoint) {
		c.HTTPURL("endpoint", o.Endpoint)
	}
}

// Secrets is the API key.
func (o *Options) Secrets() []string { return []string{o.APIKey} }

// Kind is the braze destination's kind: 8 requests in flight of 75 messages (one object
// each). Braze allows 3,000 /users/track requests per three seconds.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 8, BatchSize: MaxObjects, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// Braze posts to one workspace's /users/track.
type Braze struct {
	client *httpapi.Client
	url    string
	auth   http.Header
	now    func() time.Time
	bufs   httpapi.BufPool
}

// New is the braze destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.APIKey == "" || o.Endpoint == "" {
		return nil, errors.New("api_key and endpoint are required")
	}
	return &Braze{
		client: httpapi.NewClient(cfg.MaxInFlight, env.Version, o.APIKey),
		url:    strings.TrimRight(o.Endpoint, "/") + "/users/track",
		auth:   httpapi.Bearer(o.APIKey),
		now:    time.Now,
	}, nil
}

var limits = httpapi.Limits{MaxCount: MaxObjects}

// Write sends msgs in requests of at most 75 objects.
func (d *Braze) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	bp := d.bufs.Get()
	defer d.bufs.Put(bp)
	now := d.now().UTC()
	items, idx, failed, buf := httpapi.Encode(*bp, msgs, func(dst []byte, m *mapper.Message) ([]byte, error) {
		return appendObject(dst, m, now)
	})
	*bp = buf
	f, err := httpapi.DeliverChunks(ctx, limits, items, idx, func(ctx context.Context, idx []int) error { return d.send(ctx, msgs, items, idx) })
	if err != nil {
		return fmt.Errorf("braze: %w", err)
	}
	return httpapi.Result(append(failed, f...))
}

// appendUser appends the members naming m's user: external_id, or a user alias (which
// needs _update_existing_only false to create the profile).
func appendUser(dst []byte, m *mapper.Message, attributes bool) []byte {
	if m.UserID != "" {
		dst = append(dst, `"external_id":`...)
		return mapper.AppendJSONString(dst, m.UserID)
	}
	dst = append(dst, `"user_alias":{"alias_name":`...)
	dst = mapper.AppendJSONString(dst, m.AnonymousID)
	dst = append(dst, `,"alias_label":"`+AliasLabel+`"}`...)
	if attributes {
		dst = append(dst, `,"_update_existing_only":false`...)
	}
	return dst
}

// appendObject appends m's attributes object (identify, group) or event object (track).
// The user's members come after the traits, so that they win over traits of the same name.
func appendObject(dst []byte, m *mapper.Message, now time.Time) ([]byte, error) {
	if m.UserID == "" && m.AnonymousID == "" {
		return dst, errors.New("braze needs an external_id or a user alias: the message has neither a userId nor an anonymousId")
	}
	switch m.Type {
	case "identify":
		return httpapi.AppendObject(dst, httpapi.Body(m), func(dst []byte) []byte { return appendUser(dst, m, true) }), nil
	case "group":
		if m.GroupID == "" {
			return dst, errors.New("braze needs a group id: the group message has no groupId")
		}
		dst = append(dst, '{')
		dst = mapper.AppendJSONString(dst, GroupPrefix+m.GroupID)
		dst = append(dst, ":true,"...)
		if traits, some := httpapi.AppendMembers(nil, httpapi.Body(m)); some {
			dst = mapper.AppendJSONString(dst, GroupPrefix+m.GroupID+"_traits")
			dst = append(dst, ":{"...)
			dst = append(dst, traits...)
			dst = append(dst, "},"...)
		}
		dst = appendUser(dst, m, true)
		return append(dst, '}'), nil
	case "track":
		dst = append(dst, '{')
		dst = appendUser(dst, m, false)
		dst = append(dst, `,"name":`...)
		dst = mapper.AppendJSONString(dst, m.Event)
		dst = append(dst, `,"time":`...)
		ts := m.Timestamp()
		if ts == "" {
			ts = now.Format(time.RFC3339Nano) // Braze requires a time
		}
		dst = mapper.AppendJSONString(dst, ts)
		dst = append(dst, `,"properties":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
		return append(dst, '}'), nil
	}
	return dst, fmt.Errorf("braze cannot send a message of type %q", m.Type)
}

// send posts the objects of the messages at idx. Objects Braze lists in "errors" were
// not processed: on a 2xx the others were (a partial success); on a 400 none was, so
// the others are posted again at once. The refusals are a *destinations.BatchError of
// positions in idx.
func (d *Braze) send(ctx context.Context, msgs []mapper.Message, items [][]byte, idx []int) error {
	live := make([]int, len(idx)) // positions in idx still to send
	for k := range live {
		live[k] = k
	}
	var failed []destinations.Failure
	bp := d.bufs.Get()
	defer d.bufs.Put(bp)
	for {
		// Both arrays, and where each object sits in them.
		var attrs, events []int
		for _, p := range live {
			if msgs[idx[p]].Type == "track" {
				events = append(events, p)
			} else {
				attrs = append(attrs, p)
			}
		}
		b := (*bp)[:0]
		b = append(b, '{')
		if len(attrs) > 0 {
			b = appendArray(b, `"attributes":[`, items, idx, attrs)
		}
		if len(events) > 0 {
			if len(attrs) > 0 {
				b = append(b, ',')
			}
			b = appendArray(b, `"events":[`, items, idx, events)
		}
		b = append(b, '}')
		*bp = b
		resp, err := d.client.Post(ctx, d.url, "application/json", b, d.auth)
		if err != nil {
			return fmt.Errorf("posting %d objects: %w", len(live), err)
		}
		if !resp.OK() && resp.Status != http.StatusBadRequest {
			return fmt.Errorf("posting %d objects: %w", len(live), resp.StatusError())
		}
		a := ParseAnswer(resp.Body, len(attrs), len(events))
		if resp.OK() && a.Success {
			for _, e := range a.Attributes {
				failed = append(failed, refusal(attrs[e.Index], e.Reason, resp.Status))
			}
			for _, e := range a.Events {
				failed = append(failed, refusal(events[e.Index], e.Reason, resp.Status))
			}
			return httpapi.Result(failed)
		}
		if len(a.Attributes)+len(a.Events) == 0 {
			// A fatal error that names no object: the request as a whole (bisected).
			return &destinations.PermanentError{Status: http.StatusBadRequest,
				Err: fmt.Errorf("posting %d objects: HTTP %d: %s", len(live), resp.Status, httpapi.Excerpt(resp.Body))}
		}
		bad := map[int]bool{}
		for _, e := range a.Attributes {
			bad[attrs[e.Index]] = true
			failed = append(failed, refusal(attrs[e.Index], e.Reason, resp.Status))
		}
		for _, e := range a.Events {
			bad[events[e.Index]] = true
			failed = append(failed, refusal(events[e.Index], e.Reason, resp.Status))
		}
		rest := live[:0:0]
		for _, p := range live {
			if !bad[p] {
				rest = append(rest, p)
			}
		}
		if len(rest) == 0 {
			return httpapi.Result(failed)
		}
		live = rest
	}
}

func refusal(pos int, reason string, status int) destinations.Failure {
	return destinations.Failure{Index: pos, Err: &destinations.PermanentError{Status: status, Err: fmt.Errorf("braze refused the object: %s", reason)}}
}

func appendArray(dst []byte, open string, items [][]byte, idx, pos []int) []byte {
	dst = append(dst, open...)
	for k, p := range pos {
		if k > 0 {
			dst = append(dst, ',')
		}
		dst = append(dst, items[idx[p]]...)
	}
	return append(dst, ']')
}

// ObjectError is one object Braze did not process.
type ObjectError struct {
	Index  int // within its array
	Reason string
}

// Answer is what backflow reads of an answer of /users/track.
type Answer struct {
	Success    bool // "message": "success"
	Attributes []ObjectError
	Events     []ObjectError
}

// ParseAnswer reads {"message":"success"|<fatal error>,"errors":[{"type":…,
// "input_array":"attributes"|"events","index":…}]} for a request of nAttrs attributes
// and nEvents events (https://www.braze.com/docs/api/errors). Errors naming another
// array, or an index outside it, are ignored; each object is listed once.
func ParseAnswer(b []byte, nAttrs, nEvents int) Answer {
	var a struct {
		Message string `json:"message"`
		Errors  []struct {
			Type  string `json:"type"`
			Array string `json:"input_array"`
			Index *int   `json:"index"`
		} `json:"errors"`
	}
	if json.Unmarshal(b, &a) != nil {
		return Answer{}
	}
	out := Answer{Success: a.Message == "success"}
	seenA, seenE := map[int]bool{}, map[int]bool{}
	for _, e := range a.Errors {
		if e.Index == nil {
			continue
		}
		i, reason := *e.Index, strings.TrimSpace(e.Type)
		if reason == "" {
			reason = "no reason given"
		}
		switch {
		case e.Array == "attributes" && i >= 0 && i < nAttrs && !seenA[i]:
			seenA[i] = true
			out.Attributes = append(out.Attributes, ObjectError{i, reason})
		case e.Array == "events" && i >= 0 && i < nEvents && !seenE[i]:
			seenE[i] = true
			out.Events = append(out.Events, ObjectError{i, reason})
		}
	}
	return out
}

// Close releases idle connections; Writes hold nothing else.
func (d *Braze) Close(context.Context) error {
	d.client.CloseIdle()
	return nil
}

// Check posts an empty request ({}) with the API key: Braze refuses a bad key or one
// without the users.track permission (401, 403); any other answer (a 400 asking for
// data) proves the endpoint reachable. Nothing is sent.
func (d *Braze) Check(ctx context.Context) error {
	return d.client.CheckPost(ctx, "Braze", d.url, []byte("{}"), d.auth)
}
