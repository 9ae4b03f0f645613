// Package amplitude is the Amplitude destination: messages become events of Amplitude's
// HTTP V2 API (POST /2/httpapi) or of its Batch Event Upload API (POST /batch), both
// {"api_key":…,"events":[…]}:
//
//   - track: an event named by the message's event, its properties as event_properties;
//   - identify: an "$identify" event whose user_properties are {"$set": traits};
//   - group: a "$groupidentify" event whose groups are {group_type: groupId} and whose
//     group_properties are {"$set": traits} (Amplitude's Accounts add-on).
//
// Every event carries the message's userId as user_id, its anonymousId as device_id, its
// timestamp as time (milliseconds) and its messageId as insert_id, by which Amplitude
// drops an event it received in the last 7 days: a resent batch is not counted twice.
//
// Sample config:
//
//	destinations:
//	  - type: amplitude
//	    api_key: ${AMPLITUDE_API_KEY}
//	    region: eu            # or endpoint: https://api2.amplitude.com (the default)
//	    api: httpapi          # or batch (Batch Event Upload, 20 MB requests)
//	    group_type: company   # the group type of group messages
//	    min_id_length: 1      # accept ids shorter than Amplitude's default of 5
package amplitude

import (
	"cmp"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strconv"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*Amplitude)(nil)
	_ destinations.Checker     = (*Amplitude)(nil)
)

// Type is the amplitude destination's type name in the configuration.
const Type = "amplitude"

// Endpoints of Amplitude's event ingestion, by data residency
// (https://amplitude.com/docs/apis/analytics/http-v2#regions).
const (
	EndpointUS = "https://api2.amplitude.com"
	EndpointEU = "https://api.eu.amplitude.com"
)

// The two APIs: their paths and their limits per request. HTTP V2: up to 2,000 events and
// under 1 MB, else 413 (https://amplitude.com/docs/apis/analytics/http-v2#upload-limit);
// Batch Event Upload: up to 20 MB (https://amplitude.com/docs/apis/analytics/batch-event-upload).
const (
	APIHTTP  = "httpapi"
	APIBatch = "batch"

	MaxEvents     = 2000
	MaxHTTPBytes  = 1_000_000
	MaxBatchBytes = 20_000_000
)

// ThrottleWait is how long a 429 without Retry-After makes backflow wait: Amplitude asks
// clients to stop sending for a throttled user or device for 30 seconds
// (https://community.amplitude.com/data-instrumentation-57/common-api-error-codes-215),
// as its own Go SDK does (RetryThrottledInterval). retry.max_backoff caps it.
const ThrottleWait = 30 * time.Second

// DefaultGroupType is the group type of group messages when group_type is not set.
const DefaultGroupType = "company"

// Options are the amplitude destination's own configuration keys.
type Options struct {
	APIKey    string `mapstructure:"api_key"`    // secret
	Region    string `mapstructure:"region"`     // us | eu: the endpoint of that data residency
	Endpoint  string `mapstructure:"endpoint"`   // base URL; overrides region
	API       string `mapstructure:"api"`        // httpapi | batch
	GroupType string `mapstructure:"group_type"` // default DefaultGroupType
	// MinIDLength, when set, is sent as options.min_id_length: Amplitude refuses a
	// user_id or device_id shorter than 5 characters unless told otherwise.
	MinIDLength int `mapstructure:"min_id_length"`
}

// Prepare fills the defaults and checks every key.
func (o *Options) Prepare(c *config.OptionsCheck) {
	c.Required("api_key", Type, o.APIKey)
	if o.Region != "" {
		c.OneOf("region", o.Region, "us", "eu")
		if o.Endpoint != "" {
			c.Problem("endpoint", "set either region or endpoint, not both")
		}
	}
	if o.Endpoint == "" {
		o.Endpoint = EndpointUS
		if o.Region == "eu" {
			o.Endpoint = EndpointEU
		}
	}
	c.HTTPURL("endpoint", o.Endpoint)
	if o.API == "" {
		o.API = APIHTTP
	}
	c.OneOf("api", o.API, APIHTTP, APIBatch)
	if o.GroupType == "" {
		o.GroupType = DefaultGroupType
	}
	if o.MinIDLength < 0 {
		c.Problem("min_id_length", "must not be negative")
	}
}

// Secrets is the API key.
func (o *Options) Secrets() []string { return []string{o.APIKey} }

// Kind is the amplitude destination's kind: 4 requests in flight of up to 2,000 events.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: MaxEvents, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// Amplitude posts events to one Amplitude project.
type Amplitude struct {
	client    *httpapi.Client
	url       string
	limits    httpapi.Limits
	prefix    string // {"api_key":"…","events":[
	groupType string
	bufs      httpapi.BufPool
}

// New is the amplitude destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.APIKey == "" {
		return nil, errors.New("api_key is required")
	}
	endpoint := strings.TrimRight(o.Endpoint, "/")
	if endpoint == "" {
		endpoint = EndpointUS
	}
	path, maxBytes := "/2/httpapi", MaxHTTPBytes
	if o.API == APIBatch {
		path, maxBytes = "/batch", MaxBatchBytes
	}
	prefix := string(mapper.AppendJSONString([]byte(`{"api_key":`), o.APIKey))
	if o.MinIDLength > 0 {
		prefix += `,"options":{"min_id_length":` + strconv.Itoa(o.MinIDLength) + `}`
	}
	prefix += `,"events":[`
	return &Amplitude{
		client:    httpapi.NewClient(cfg.MaxInFlight, env.Version, o.APIKey),
		url:       endpoint + path,
		limits:    httpapi.Limits{MaxCount: MaxEvents, MaxBytes: maxBytes, Overhead: len(prefix) + len("]}")},
		prefix:    prefix,
		groupType: cmp.Or(o.GroupType, DefaultGroupType),
	}, nil
}

// Write sends msgs as events, in requests within Amplitude's limits. Events Amplitude
// lists as invalid in a 400 are rejected and the others sent again at once, as its
// documentation asks (https://amplitude.com/docs/apis/analytics/http-api-batching-retries).
func (d *Amplitude) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	bp := d.bufs.Get()
	defer d.bufs.Put(bp)
	items, idx, failed, buf := httpapi.Encode(*bp, msgs, d.appendEvent)
	*bp = buf
	idx, failed = httpapi.Keep(idx, failed, func(i int) error {
		if !d.limits.Fits(len(items[i])) {
			return httpapi.TooLarge("Amplitude", len(items[i]), d.limits)
		}
		return nil
	})
	f, err := httpapi.DeliverChunks(ctx, d.limits, items, idx, func(ctx context.Context, idx []int) error { return d.send(ctx, items, idx) })
	if err != nil {
		return fmt.Errorf("amplitude: %w", err)
	}
	return httpapi.Result(append(failed, f...))
}

// appendEvent appends the event of m.
func (d *Amplitude) appendEvent(dst []byte, m *mapper.Message) ([]byte, error) {
	if m.UserID == "" && m.AnonymousID == "" {
		return dst, errors.New("amplitude needs a user_id or a device_id: the message has neither a userId nor an anonymousId")
	}
	dst = append(dst, `{"event_type":`...)
	switch m.Type {
	case "track":
		dst = mapper.AppendJSONString(dst, m.Event)
	case "identify":
		dst = append(dst, `"$identify"`...)
	case "group":
		dst = append(dst, `"$groupidentify"`...)
	default:
		return dst, fmt.Errorf("amplitude cannot send a message of type %q", m.Type)
	}
	if m.UserID != "" {
		dst = append(dst, `,"user_id":`...)
		dst = mapper.AppendJSONString(dst, m.UserID)
	}
	if m.AnonymousID != "" {
		dst = append(dst, `,"device_id":`...)
		dst = mapper.AppendJSONString(dst, m.AnonymousID)
	}
	if ms, ok := httpapi.Millis(m.Timestamp()); ok {
		dst = append(dst, `,"time":`...)
		dst = httpapi.AppendInt(dst, ms)
	}
	dst = append(dst, `,"insert_id":`...)
	dst = mapper.AppendJSONString(dst, m.ID)
	switch m.Type {
	case "track":
		dst = append(dst, `,"event_properties":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
	case "identify":
		dst = append(dst, `,"user_properties":{"$set":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
		dst = append(dst, '}')
	case "group":
		dst = append(dst, `,"groups":{`...)
		dst = mapper.AppendJSONString(dst, d.groupType)
		dst = append(dst, ':')
		dst = mapper.AppendJSONString(dst, m.GroupID)
		dst = append(dst, `},"group_properties":{"$set":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
		dst = append(dst, '}')
	}
	return append(dst, '}'), nil
}

// send posts the events of the messages at idx. A 400 that lists invalid events
// rejects those and posts the others again (Amplitude ingested none of the request);
// the refusals are returned as a *destinations.BatchError of positions in idx.
func (d *Amplitude) send(ctx context.Context, items [][]byte, idx []int) error {
	live := make([]int, len(idx)) // positions in idx still to send
	for k := range live {
		live[k] = k
	}
	var failed []destinations.Failure
	bp := d.bufs.Get()
	defer d.bufs.Put(bp)
	sel := make([]int, 0, len(idx))
	for {
		sel = sel[:0]
		for _, p := range live {
			sel = append(sel, idx[p])
		}
		*bp = httpapi.AppendJoin((*bp)[:0], d.prefix, items, sel, "]}")
		resp, err := d.client.Post(ctx, d.url, "application/json", *bp, nil)
		if err != nil {
			return fmt.Errorf("posting %d events: %w", len(live), err)
		}
		if resp.OK() {
			return httpapi.Result(failed)
		}
		switch resp.Status {
		case http.StatusBadRequest:
			a := ParseError(resp.Body, len(live))
			if a.BadKey {
				// Every request would be refused the same way: a refusal of the
				// credentials, not of the events (not split, the destination fails).
				return &destinations.PermanentError{Status: http.StatusUnauthorized,
					Err: fmt.Errorf("HTTP 400: the API key was refused: %s", httpapi.Excerpt(resp.Body))}
			}
			if len(a.Invalid) > 0 {
				rest := live[:0:0]
				for k, p := range live {
					if reason, bad := a.Invalid[k]; bad {
						failed = append(failed, destinations.Failure{Index: p,
							Err: &destinations.PermanentError{Status: resp.Status, Err: fmt.Errorf("amplitude refused the event: %s", reason)}})
						continue
					}
					rest = append(rest, p)
				}
				if len(rest) == 0 {
					return httpapi.Result(failed)
				}
				live = rest
				continue
			}
		case http.StatusTooManyRequests:
			after := httpapi.RetryAfter(resp.Header, time.Now())
			if after == 0 {
				after = ThrottleWait
			}
			return &destinations.RetryableError{After: after,
				Err: fmt.Errorf("posting %d events: HTTP 429 (throttled): %s", len(live), httpapi.Excerpt(resp.Body))}
		}
		return fmt.Errorf("posting %d events: %w", len(live), resp.StatusError())
	}
}

// Error is what backflow reads of an Amplitude error answer.
type Error struct {
	// Invalid maps the position of each event the answer lists as invalid or missing a
	// field (within the request) to why.
	Invalid map[int]string
	// BadKey: the answer refuses the API key.
	BadKey bool
}

// ParseError reads a 400 answer of a request of n events: {"code":400,"error":…,
// "missing_field":…,"events_with_invalid_fields":{field:[index,…]},
// "events_with_missing_fields":{field:[index,…]}}. Indices outside [0, n) are ignored;
// anything unreadable gives an empty Error (the request is then refused as a whole).
func ParseError(b []byte, n int) Error {
	var a struct {
		Error        string           `json:"error"`
		MissingField string           `json:"missing_field"`
		Invalid      map[string][]int `json:"events_with_invalid_fields"`
		Missing      map[string][]int `json:"events_with_missing_fields"`
	}
	if json.Unmarshal(b, &a) != nil {
		return Error{}
	}
	e := Error{}
	low := strings.ToLower(a.Error)
	if a.MissingField == "api_key" || strings.Contains(low, "api key") || strings.Contains(low, "api_key") {
		e.BadKey = true
		return e
	}
	add := func(fields map[string][]int, what string) {
		for field, list := range fields {
			for _, i := range list {
				if i < 0 || i >= n {
					continue
				}
				if e.Invalid == nil {
					e.Invalid = map[int]string{}
				}
				if prev, ok := e.Invalid[i]; ok {
					e.Invalid[i] = prev + ", " + what + " " + field
				} else {
					e.Invalid[i] = what + " " + field
				}
			}
		}
	}
	add(a.Invalid, "invalid")
	add(a.Missing, "missing")
	return e
}

// Close releases idle connections; Writes hold nothing else.
func (d *Amplitude) Close(context.Context) error {
	d.client.CloseIdle()
	return nil
}

// Check posts a request without events: Amplitude then refuses a bad API key (400 naming
// the key, or 401/403); any other answer proves the endpoint reachable. Nothing is sent.
func (d *Amplitude) Check(ctx context.Context) error {
	ctx, cancel := context.WithTimeout(ctx, 10*time.Second)
	defer cancel()
	resp, err := d.client.Post(ctx, d.url, "application/json", []byte(d.prefix+"]}"), nil)
	if err != nil {
		return fmt.Errorf("checking %s: %w", destinations.RedactURL(d.url), err)
	}
	if resp.Status == http.StatusBadRequest && ParseError(resp.Body, 0).BadKey {
		return fmt.Errorf("checking %s: the API key was refused: %s", destinations.RedactURL(d.url), httpapi.Excerpt(resp.Body))
	}
	return httpapi.CheckAnswer("checking "+destinations.RedactURL(d.url)+": Amplitude", resp)
}
