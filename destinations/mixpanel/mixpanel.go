// Package mixpanel is the Mixpanel destination: track messages become events of
// Mixpanel's Import API (POST /import?strict=1), identify messages profile updates
// (POST /engage, $set) and group messages group profile updates (POST /groups, $set)
// plus the user's membership of the group (POST /engage, $union of the group key).
//
// Events carry the message's messageId as $insert_id (hashed to Mixpanel's 36
// characters when longer), by which Mixpanel drops an event it already has: a resent
// batch is not counted twice. Profile updates are idempotent ($set, $union).
//
// Sample config:
//
//	destinations:
//	  - type: mixpanel
//	    project_token: ${MIXPANEL_TOKEN}
//	    service_account_username: ${MIXPANEL_SA_USER}   # or api_secret; or neither: the token
//	    service_account_secret: ${MIXPANEL_SA_SECRET}
//	    project_id: "12345"
//	    region: eu                                      # us (default), eu, in; or endpoint
//	    group_key: company
package mixpanel

import (
	"context"
	"crypto/sha256"
	"encoding/hex"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"net/url"
	"strings"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/internal/httpapi"
	"github.com/backflowhq/backflow/mapper"
)

var (
	_ destinations.Destination = (*Mixpanel)(nil)
	_ destinations.Checker     = (*Mixpanel)(nil)
)

// Type is the mixpanel destination's type name in the configuration.
const Type = "mixpanel"

// Endpoints of Mixpanel's ingestion API by data residency
// (https://docs.mixpanel.com/reference/profile-batch-update: servers api, api-eu, api-in).
var Endpoints = map[string]string{
	"us": "https://api.mixpanel.com",
	"eu": "https://api-eu.mixpanel.com",
	"in": "https://api-in.mixpanel.com",
}

// Limits per request. Import: 2,000 events and 10 MB uncompressed
// (https://docs.mixpanel.com/reference/import-events), each event under 1 MB
// (https://developer.mixpanel.com/reference/track-event). Profile and group updates:
// 2,000 per request, each at most 1 MB (https://docs.mixpanel.com/reference/user-profile-limits),
// and 2 MB per request (https://www.mintlify.com/mixpanel/docs/api-reference/rate-limits).
const (
	MaxPerRequest    = 2000
	MaxImportBytes   = 10_000_000
	MaxUpdateBytes   = 2_000_000
	MaxItemBytes     = 1_000_000
	DefaultGroupKey  = "company"
	maxInsertIDBytes = 36
)

// Options are the mixpanel destination's own configuration keys.
type Options struct {
	// ProjectToken is the project's token: the $token of profile and group updates,
	// and the credentials of /import when neither of the others is set.
	ProjectToken string `mapstructure:"project_token"` // secret
	// APISecret is the project's API secret (legacy /import credentials).
	APISecret string `mapstructure:"api_secret"` // secret
	// ServiceAccountUsername and ServiceAccountSecret are a service account's
	// credentials for /import, with ProjectID.
	ServiceAccountUsername string `mapstructure:"service_account_username"`
	ServiceAccountSecret   string `mapstructure:"service_account_secret"` // secret
	ProjectID              string `mapstructure:"project_id"`
	Region                 string `mapstructure:"region"`   // us | eu | in
	Endpoint               string `mapstructure:"endpoint"` // base URL; overrides region
	GroupKey               string `mapstructure:"group_key"`
}

// Prepare fills the defaults and checks the keys and their combinations.
func (o *Options) Prepare(c *config.OptionsCheck) {
	c.Required("project_token", Type, o.ProjectToken)
	sa := o.ServiceAccountUsername != "" || o.ServiceAccountSecret != ""
	if sa {
		c.Required("service_account_username", Type+" with a service account", o.ServiceAccountUsername)
		c.Required("service_account_secret", Type+" with a service account", o.ServiceAccountSecret)
		c.Required("project_id", Type+" with a service account", o.ProjectID)
		if o.APISecret != "" {
			c.Problem("api_secret", "set either api_secret or a service account, not both")
		}
	}
	if o.Region != "" {
		c.OneOf("region", o.Region, "us", "eu", "in")
		if o.Endpoint != "" {
			c.Problem("endpoint", "set either region or endpoint, not both")
		}
	}
	if o.Endpoint == "" {
		o.Endpoint = Endpoints["us"]
		if e, ok := Endpoints[o.Region]; ok {
			o.Endpoint = e
		}
	}
	c.HTTPURL("endpoint", o.Endpoint)
	if o.GroupKey == "" {
		o.GroupKey = DefaultGroupKey
	}
}

// Secrets are the token, the API secret and the service account's secret.
func (o *Options) Secrets() []string {
	return []string{o.ProjectToken, o.APISecret, o.ServiceAccountSecret}
}

// Kind is the mixpanel destination's kind: 4 writes in flight of up to 2,000 messages.
func Kind() destinations.Kind {
	return destinations.Kind{
		Type: Type,
		Kind: config.Kind{MaxInFlight: 4, BatchSize: MaxPerRequest, NewOptions: func() config.Options { return &Options{} }},
		New:  New,
	}
}

// Mixpanel sends to one Mixpanel project.
type Mixpanel struct {
	client     *httpapi.Client
	importURL  string
	engageURL  string
	groupsURL  string
	importAuth http.Header
	token      string
	groupKey   string
	now        func() time.Time
	bufs       httpapi.BufPool
}

// New is the mixpanel destination's Factory.
func New(_ context.Context, cfg config.Destination, env destinations.Env) (destinations.Destination, error) {
	o, err := destinations.OptionsOf[*Options](cfg)
	if err != nil {
		return nil, err
	}
	if o.ProjectToken == "" {
		return nil, errors.New("project_token is required")
	}
	endpoint := strings.TrimRight(o.Endpoint, "/")
	if endpoint == "" {
		endpoint = Endpoints["us"]
	}
	q := url.Values{"strict": {"1"}}
	auth := httpapi.Basic(o.ProjectToken, "")
	switch {
	case o.ServiceAccountUsername != "":
		auth = httpapi.Basic(o.ServiceAccountUsername, o.ServiceAccountSecret)
		q.Set("project_id", o.ProjectID)
	case o.APISecret != "":
		auth = httpapi.Basic(o.APISecret, "")
	}
	groupKey := o.GroupKey
	if groupKey == "" {
		groupKey = DefaultGroupKey
	}
	return &Mixpanel{
		client:     httpapi.NewClient(cfg.MaxInFlight, env.Version, o.Secrets()...),
		importURL:  endpoint + "/import?" + q.Encode(),
		engageURL:  endpoint + "/engage?verbose=1",
		groupsURL:  endpoint + "/groups?verbose=1",
		importAuth: auth,
		token:      o.ProjectToken,
		groupKey:   groupKey,
		now:        time.Now,
	}, nil
}

var (
	importLimits = httpapi.Limits{MaxCount: MaxPerRequest, MaxBytes: MaxImportBytes, Overhead: 2}
	updateLimits = httpapi.Limits{MaxCount: MaxPerRequest, MaxBytes: MaxUpdateBytes, Overhead: 2}
)

// Write sends the events to /import, then the group updates to /groups, then the
// profile updates and group memberships to /engage, each in requests within Mixpanel's
// limits. A message refused at one step is not sent at the next (a group whose update
// was refused gets no members).
func (d *Mixpanel) Write(ctx context.Context, msgs []mapper.Message) error {
	if err := ctx.Err(); err != nil {
		return err
	}
	if len(msgs) == 0 {
		return nil
	}
	bp, mp := d.bufs.Get(), d.bufs.Get()
	defer d.bufs.Put(bp)
	defer d.bufs.Put(mp)
	now := d.now()
	items, idx, failed, buf := httpapi.Encode(*bp, msgs, func(dst []byte, m *mapper.Message) ([]byte, error) {
		return d.appendItem(dst, m, now)
	})
	*bp = buf
	// The second item of a group message: its user's membership, on /engage.
	members, _, _, buf := httpapi.Encode(*mp, msgs, d.appendMembership)
	*mp = buf

	var events, groups, updates []int
	idx, failed = httpapi.Keep(idx, failed, func(i int) error {
		if len(items[i]) > MaxItemBytes {
			return &destinations.PermanentError{Err: fmt.Errorf("the message is %d bytes as Mixpanel expects it, over its limit of %d bytes per event or update", len(items[i]), MaxItemBytes)}
		}
		return nil
	})
	for _, i := range idx {
		switch msgs[i].Type {
		case "track":
			events = append(events, i)
		case "group":
			groups = append(groups, i)
		default:
			updates = append(updates, i)
		}
	}
	steps := []struct {
		what   string
		idx    []int
		items  [][]byte
		limits httpapi.Limits
		send   func(ctx context.Context, body []byte, n int) error
	}{
		{"events", events, items, importLimits, d.sendImport},
		{"group updates", groups, items, updateLimits, d.sendUpdates(d.groupsURL)},
		{"profile updates", updates, items, updateLimits, d.sendUpdates(d.engageURL)},
		{"group memberships", nil, members, updateLimits, d.sendUpdates(d.engageURL)},
	}
	refused := map[int]bool{}
	for _, f := range failed {
		refused[f.Index] = true
	}
	for _, i := range groups {
		if members[i] != nil {
			steps[3].idx = append(steps[3].idx, i)
		}
	}
	for _, st := range steps {
		var live []int
		for _, i := range st.idx {
			if !refused[i] {
				live = append(live, i)
			}
		}
		f, err := httpapi.DeliverChunks(ctx, st.limits, st.items, live, func(ctx context.Context, idx []int) error {
			b := d.bufs.Get()
			defer d.bufs.Put(b)
			*b = httpapi.AppendJoin((*b)[:0], "[", st.items, idx, "]")
			return d.annotate(st.what, len(idx), st.send(ctx, *b, len(idx)))
		})
		for _, x := range f {
			refused[x.Index] = true
		}
		failed = append(failed, f...)
		if err != nil {
			return fmt.Errorf("mixpanel: %w", err)
		}
	}
	return httpapi.Result(failed)
}

func (d *Mixpanel) annotate(what string, n int, err error) error {
	var be *destinations.BatchError
	if err == nil || errors.As(err, &be) {
		return err
	}
	return fmt.Errorf("sending %d %s: %w", n, what, err)
}

// distinctID is whom a message speaks of: its userId, else its anonymousId.
func distinctID(m *mapper.Message) string {
	if m.UserID != "" {
		return m.UserID
	}
	return m.AnonymousID
}

var errNoID = errors.New("mixpanel needs a distinct_id: the message has neither a userId nor an anonymousId")

// appendItem appends m's event (track), profile update (identify) or group update (group).
func (d *Mixpanel) appendItem(dst []byte, m *mapper.Message, now time.Time) ([]byte, error) {
	id := distinctID(m)
	switch m.Type {
	case "track":
		if id == "" {
			return dst, errNoID
		}
		ms, ok := httpapi.Millis(m.Timestamp())
		if !ok {
			ms = now.UnixMilli() // Mixpanel requires a time
		}
		dst = append(dst, `{"event":`...)
		dst = mapper.AppendJSONString(dst, m.Event)
		dst = append(dst, `,"properties":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), func(dst []byte) []byte {
			dst = append(dst, `"time":`...)
			dst = httpapi.AppendInt(dst, ms)
			dst = append(dst, `,"distinct_id":`...)
			dst = mapper.AppendJSONString(dst, id)
			dst = append(dst, `,"$insert_id":`...)
			return AppendInsertID(dst, m.ID)
		})
		return append(dst, '}'), nil
	case "identify":
		if id == "" {
			return dst, errNoID
		}
		dst = d.appendToken(dst)
		dst = append(dst, `,"$distinct_id":`...)
		dst = mapper.AppendJSONString(dst, id)
		dst = append(dst, `,"$set":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
		return append(dst, '}'), nil
	case "group":
		if m.GroupID == "" {
			return dst, errors.New("mixpanel needs a group id: the group message has no groupId")
		}
		dst = d.appendToken(dst)
		dst = append(dst, `,"$group_key":`...)
		dst = mapper.AppendJSONString(dst, d.groupKey)
		dst = append(dst, `,"$group_id":`...)
		dst = mapper.AppendJSONString(dst, m.GroupID)
		dst = append(dst, `,"$set":`...)
		dst = httpapi.AppendObject(dst, httpapi.Body(m), nil)
		return append(dst, '}'), nil
	}
	return dst, fmt.Errorf("mixpanel cannot send a message of type %q", m.Type)
}

// appendMembership appends, for a group message with a user, the profile update that
// adds the group to the user's group key ($union: the user may belong to several).
func (d *Mixpanel) appendMembership(dst []byte, m *mapper.Message) ([]byte, error) {
	id := distinctID(m)
	if m.Type != "group" || id == "" || m.GroupID == "" {
		return dst, httpapi.Skip
	}
	dst = d.appendToken(dst)
	dst = append(dst, `,"$distinct_id":`...)
	dst = mapper.AppendJSONString(dst, id)
	dst = append(dst, `,"$union":{`...)
	dst = mapper.AppendJSONString(dst, d.groupKey)
	dst = append(dst, ":["...)
	dst = mapper.AppendJSONString(dst, m.GroupID)
	return append(dst, "]}}"...), nil
}

func (d *Mixpanel) appendToken(dst []byte) []byte {
	dst = append(dst, `{"$token":`...)
	return mapper.AppendJSONString(dst, d.token)
}

// AppendInsertID appends the $insert_id of a messageId: the id itself when Mixpanel
// takes it (at most 36 letters, digits or dashes), else the first 36 hex digits of its
// SHA-256 — deterministic, so that a resent message has the same one.
func AppendInsertID(dst []byte, id string) []byte {
	ok := id != "" && len(id) <= maxInsertIDBytes
	for i := 0; ok && i < len(id); i++ {
		c := id[i]
		ok = c == '-' || (c >= '0' && c <= '9') || (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z')
	}
	if ok {
		dst = append(dst, '"')
		dst = append(dst, id...)
		return append(dst, '"')
	}
	sum := sha256.Sum256([]byte(id))
	dst = append(dst, '"')
	dst = hex.AppendEncode(dst, sum[:maxInsertIDBytes/2])
	return append(dst, '"')
}

// sendImport posts events to /import with strict validation. A 400 listing
// failed_records is a partial success: Mixpanel imported the others
// (https://docs.mixpanel.com/troubleshooting/errors/400-bad-request).
func (d *Mixpanel) sendImport(ctx context.Context, body []byte, n int) error {
	resp, err := d.client.Post(ctx, d.importURL, "application/json", body, d.importAuth)
	if err != nil {
		return err
	}
	if resp.OK() {
		return nil
	}
	if resp.Status == http.StatusBadRequest {
		if failed := ParseImportError(resp.Body, n); len(failed) > 0 {
			return &destinations.BatchError{Failed: failed}
		}
	}
	return resp.StatusError()
}

// ParseImportError reads the failed_records of a 400 from /import?strict=1 for a request
// of n events: [{"index":…,"insert_id":…,"field":…,"message":…}], sorted by index, each
// index once; records whose index is outside [0, n) are ignored.
func ParseImportError(b []byte, n int) []destinations.Failure {
	var a struct {
		Failed []struct {
			Index   *int   `json:"index"`
			Field   string `json:"field"`
			Message string `json:"message"`
		} `json:"failed_records"`
	}
	if json.Unmarshal(b, &a) != nil {
		return nil
	}
	var out []destinations.Failure
	seen := map[int]bool{}
	for _, r := range a.Failed {
		if r.Index == nil || *r.Index < 0 || *r.Index >= n || seen[*r.Index] {
			continue
		}
		seen[*r.Index] = true
		msg := strings.TrimSpace(r.Message)
		if msg == "" {
			msg = "invalid " + r.Field
		}
		out = append(out, destinations.Failure{Index: *r.Index,
			Err: &destinations.PermanentError{Status: http.StatusBadRequest, Err: fmt.Errorf("mixpanel refused the event: %s", msg)}})
	}
	return httpapi.Sorted(out)
}

// sendUpdates posts profile or group updates. Mixpanel answers 200 even when it refuses
// them (https://docs.mixpanel.com/reference/profile-batch-update): with verbose=1 the
// body says {"status":1} or {"status":0,"error":…}; a refusal concerns the whole request
// and is bisected by Deliver, unless it is about the token.
func (d *Mixpanel) sendUpdates(url string) func(ctx context.Context, body []byte, n int) error {
	return func(ctx context.Context, body []byte, n int) error {
		resp, err := d.client.Post(ctx, url, "application/json", body, nil)
		if err != nil {
			return err
		}
		if !resp.OK() {
			return resp.StatusError()
		}
		return ParseUpdateAnswer(resp.Body)
	}
}

// ParseUpdateAnswer reads the answer of /engage or /groups: nil when accepted, else a
// *destinations.PermanentError (with the status of a 401 when the token was refused,
// so that the refusal is not split).
func ParseUpdateAnswer(b []byte) error {
	t := strings.TrimSpace(string(b))
	if t == "1" {
		return nil
	}
	var a struct {
		Status *int    `json:"status"`
		Error  *string `json:"error"`
	}
	if t != "0" && (json.Unmarshal(b, &a) != nil || a.Status == nil) {
		return &destinations.PermanentError{Err: fmt.Errorf("mixpanel answered something else than its status: %s", httpapi.Excerpt(b))}
	}
	if a.Status != nil && *a.Status == 1 {
		return nil
	}
	reason := "no reason given"
	if a.Error != nil && *a.Error != "" {
		reason = *a.Error
	}
	status := http.StatusBadRequest
	if strings.Contains(strings.ToLower(reason), "token") {
		status = http.StatusUnauthorized
	}
	return &destinations.PermanentError{Status: status, Err: fmt.Errorf("mixpanel refused the updates: %s", reason)}
}

// Close releases idle connections; Writes hold nothing else.
func (d *Mixpanel) Close(context.Context) error {
	d.client.CloseIdle()
	return nil
}

// Check posts an empty list of events to /import with the credentials: Mixpanel
// refuses bad credentials (401, 403); any other answer proves the API reachable. The
// token of profile updates cannot be checked without sending one. Nothing is sent.
func (d *Mixpanel) Check(ctx context.Context) error {
	return d.client.CheckPost(ctx, "Mixpanel", d.importURL, []byte("[]"), d.importAuth)
}
