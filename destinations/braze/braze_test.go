package braze_test

import (
	"bytes"
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"reflect"
	"strconv"
	"strings"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/braze"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
	"github.com/backflowhq/backflow/mapper"
)

const key = "braze-key"

// handler answers as Braze's /users/track documents
// (https://www.braze.com/docs/api/endpoints/user_data/post_user_track,
// https://www.braze.com/docs/api/errors): 401 for a bad key; 400 over 75 objects; objects
// it refuses (here: of refused users) listed in "errors" by array and index — with 201
// "success" the others were processed, with a fatal 400 (every object refused) none.
// Braze keeps no message id nor, for attributes, a time: each object is matched with the
// message it came from (apitest.Server.Original) and checked against its mapping.
func handler(s *apitest.Server, r *http.Request, body []byte) apitest.Answer {
	if r.URL.Path != "/users/track" {
		return apitest.Answer{Status: 404, Body: `{"message":"not found"}`}
	}
	if r.Header.Get("Authorization") != "Bearer "+key {
		return apitest.Answer{Status: 401, Body: `{"message":"Invalid API key: ` + strings.TrimPrefix(r.Header.Get("Authorization"), "Bearer ") + `"}`}
	}
	var req struct {
		Attributes []map[string]json.RawMessage `json:"attributes"`
		Events     []map[string]json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return apitest.Answer{Status: 400, Body: `{"message":"Invalid JSON"}`}
	}
	if n := len(req.Attributes) + len(req.Events); n > braze.MaxObjects || n == 0 {
		return apitest.Answer{Status: 400, Body: `{"message":"Valid data must be provided in the 'attributes', 'events', or 'purchases' fields."}`}
	}
	var errs []map[string]any
	var ok []destinationstest.Received
	for i, a := range req.Attributes {
		user := str(a["external_id"])
		if s.Refused(user) {
			errs = append(errs, map[string]any{"type": "'external_id' is refused by the test", "input_array": "attributes", "index": i})
			continue
		}
		ok = append(ok, attributes(s, a))
	}
	for i, e := range req.Events {
		user := str(e["external_id"])
		if s.Refused(user) || str(e["time"]) == "" {
			errs = append(errs, map[string]any{"type": "'external_id' is refused by the test", "input_array": "events", "index": i})
			continue
		}
		ok = append(ok, event(s, e))
	}
	if len(ok) == 0 {
		b, _ := json.Marshal(map[string]any{"message": "Valid data must be provided in the 'attributes', 'events', or 'purchases' fields.", "errors": errs})
		return apitest.Answer{Status: 400, Body: string(b)}
	}
	answer := map[string]any{"message": "success", "attributes_processed": len(req.Attributes), "events_processed": len(req.Events)}
	if len(errs) > 0 {
		answer["errors"] = errs
	}
	b, _ := json.Marshal(answer)
	return apitest.Answer{Status: 201, Body: string(b), Accepted: ok}
}

func str(raw json.RawMessage) string {
	var s string
	json.Unmarshal(raw, &s)
	return s
}

func attributes(s *apitest.Server, a map[string]json.RawMessage) destinationstest.Received {
	user := str(a["external_id"])
	orig, known := s.Original(user)
	for k, v := range a {
		if gid, isGroup := strings.CutPrefix(k, braze.GroupPrefix); isGroup && !strings.HasSuffix(k, "_traits") && string(v) == "true" {
			traits := a[k+"_traits"]
			if traits == nil {
				traits = json.RawMessage("{}")
			}
			if known && orig.Type == "group" && orig.GroupID == gid && sameJSON(traits, orig.Body()) && len(a) <= 3 {
				return apitest.Segment("group", orig.ID, user, "", gid, "", traits, orig.Timestamp())
			}
			return apitest.Segment("group", "unknown", user, "", gid, "", traits, "")
		}
	}
	traits, _ := apitest.Without(mustJSON(a), "external_id")
	if known && orig.Type == "identify" && sameJSON(traits, orig.Body()) {
		return apitest.Segment("identify", orig.ID, user, "", "", "", traits, orig.Timestamp())
	}
	return apitest.Segment("identify", "unknown", user, "", "", "", traits, "")
}

func event(s *apitest.Server, e map[string]json.RawMessage) destinationstest.Received {
	user := str(e["external_id"])
	orig, known := s.Original(user)
	id := "unknown"
	if known && orig.Type == "track" && orig.Event == str(e["name"]) && sameJSON(e["properties"], orig.Body()) {
		id = orig.ID
	}
	return apitest.Segment("track", id, user, "", "", str(e["name"]), e["properties"], str(e["time"]))
}

func mustJSON(v any) []byte {
	b, _ := json.Marshal(v)
	return b
}

// sameJSON compares two JSON values, numbers by their text.
func sameJSON(a, b []byte) bool {
	dec := func(b []byte) any {
		d := json.NewDecoder(bytes.NewReader(b))
		d.UseNumber()
		var v any
		if d.Decode(&v) != nil {
			return errors.New("invalid")
		}
		return v
	}
	return reflect.DeepEqual(dec(a), dec(b))
}

func cfgFor(url string) config.Destination {
	return config.Destination{
		Type: braze.Type, Name: "braze", BatchSize: braze.MaxObjects, MaxInFlight: 8,
		Retry: config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
		Options: &braze.Options{APIKey: key, Endpoint: url},
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, braze.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		srv := apitest.New(t, handler)
		return build(t, cfgFor(srv.URL)), srv
	})
}

// TestShapes pins a request, byte for byte.
func TestShapes(t *testing.T) {
	srv := apitest.New(t, handler)
	d := build(t, cfgFor(srv.URL))
	id := destinationstest.NewMessage("identify", "m1", "user-1", `{"plan":"pro","external_id":"spoof"}`, "")
	tr := destinationstest.NewMessage("track", "m2", "user-2", `{"amount":12.30}`, "2024-01-02T03:04:05.678Z")
	gr := destinationstest.NewMessage("group", "m3", "user-3", `{"name":"Acme"}`, "")
	anon := destinationstest.NewMessage("identify", "m4", "", `{}`, "")
	anon.AnonymousID = "anon-4"
	if err := d.Write(context.Background(), []mapper.Message{id, tr, gr, anon}); err != nil {
		t.Fatal(err)
	}
	want := `{"attributes":[` +
		`{"plan":"pro","external_id":"spoof","external_id":"user-1"},` +
		`{"ab_segment_group_g-user-3":true,"ab_segment_group_g-user-3_traits":{"name":"Acme"},"external_id":"user-3"},` +
		`{"user_alias":{"alias_name":"anon-4","alias_label":"anonymous_id"},"_update_existing_only":false}],` +
		`"events":[{"external_id":"user-2","name":"Order Completed","time":"2024-01-02T03:04:05.678Z","properties":{"amount":12.30}}]}`
	if r := srv.Requests(); len(r) != 1 || string(r[0].Body) != want {
		t.Fatalf("%d requests; body\n%s\nwant\n%s", len(r), r[0].Body, want)
	}
}

// TestPartialAndFatal: with 201 the objects Braze lists were not processed, the others
// were (sent once); with a fatal 400 none was, so the others are sent again at once.
func TestPartialAndFatal(t *testing.T) {
	srv := apitest.New(t, handler)
	d := build(t, cfgFor(srv.URL))
	msgs := destinationstest.Messages("part", 9)
	srv.RefuseUsers(msgs[1].UserID, msgs[3].UserID)
	err := d.Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 1 || be.Failed[1].Index != 3 ||
		!strings.Contains(be.Failed[0].Err.Error(), "refused by the test") {
		t.Fatalf("Write = %v, want messages 1 and 3 refused", err)
	}
	if n, r := len(srv.Requests()), len(srv.Received()); n != 1 || r != 7 {
		t.Errorf("%d requests, %d received; want 1 and 7", n, r)
	}

	// Every object of the first request refused except those Braze did not list: a
	// fatal 400 whose errors name only some objects (the others were not processed).
	fatal := apitest.New(t, func(s *apitest.Server, r *http.Request, b []byte) apitest.Answer {
		if len(s.Requests()) == 0 {
			return apitest.Answer{Status: 400, Body: `{"message":"Valid data must be provided","errors":[{"type":"bad","input_array":"events","index":0}]}`}
		}
		return handler(s, r, b)
	})
	err = build(t, cfgFor(fatal.URL)).Write(context.Background(), destinationstest.Messages("fatal", 3))
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 1 {
		t.Fatalf("Write = %v, want the track message (1) refused", err)
	}
	if n, r := len(fatal.Requests()), len(fatal.Received()); n != 2 || r != 2 {
		t.Errorf("%d requests, %d received; want a resend of the 2 others", n, r)
	}
}

// TestRateLimited: a 429 is retried when X-RateLimit-Reset says (Braze sends no
// Retry-After), capped by max_backoff.
func TestRateLimited(t *testing.T) {
	srv := apitest.New(t, handler)
	reset := strconv.FormatInt(time.Now().Add(10*time.Second).Unix(), 10)
	srv.Throttle(apitest.Answer{Status: 429, Header: http.Header{"X-Ratelimit-Limit": {"3000"}, "X-Ratelimit-Remaining": {"0"}, "X-Ratelimit-Reset": {reset}},
		Body: `{"message":"Rate limit exceeded"}`})
	cfg := cfgFor(srv.URL)
	cfg.Retry.MaxBackoff = 150 * time.Millisecond
	start := time.Now()
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("rl", 5)); err != nil {
		t.Fatal(err)
	}
	if el := time.Since(start); el < 150*time.Millisecond {
		t.Errorf("retried after %s, want X-RateLimit-Reset capped at 150ms", el)
	}
	if n := len(srv.Received()); n != 5 {
		t.Errorf("%d of 5 received", n)
	}
}

func TestCredentialsRefused(t *testing.T) {
	for _, status := range []int{401, 403} {
		srv := apitest.New(t, func(s *apitest.Server, r *http.Request, b []byte) apitest.Answer {
			if status == 403 {
				return apitest.Answer{Status: 403, Body: `{"message":"Access Denied"}`}
			}
			return handler(s, r, b)
		})
		cfg := cfgFor(srv.URL)
		cfg.Options.(*braze.Options).APIKey = "wrong-key"
		d := build(t, cfg)
		err := d.Write(context.Background(), destinationstest.Messages("auth", 10))
		var pe *destinations.PermanentError
		if !errors.As(err, &pe) || pe.Status != status || len(srv.Requests()) != 1 {
			t.Errorf("HTTP %d: Write = %v after %d requests, want one refusal", status, err, len(srv.Requests()))
		}
		if err := d.(destinations.Checker).Check(context.Background()); err == nil || strings.Contains(err.Error(), "wrong-key") {
			t.Errorf("HTTP %d: Check = %v", status, err)
		}
	}
	srv := apitest.New(t, handler)
	if err := build(t, cfgFor(srv.URL)).(destinations.Checker).Check(context.Background()); err != nil {
		t.Errorf("Check with a good key (answered 400: no data): %v", err)
	}
}

// TestObjectLimit: a batch_size above 75 still makes requests of 75 objects at most.
func TestObjectLimit(t *testing.T) {
	srv := apitest.New(t, handler)
	cfg := cfgFor(srv.URL)
	cfg.BatchSize = 500
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("lim", 200)); err != nil {
		t.Fatal(err)
	}
	var sizes []int
	for _, r := range srv.Requests() {
		sizes = append(sizes, r.Accepted)
	}
	if fmt.Sprint(sizes) != "[75 75 50]" || len(srv.Received()) != 200 {
		t.Errorf("requests of %v objects", sizes)
	}
}

func FuzzParseAnswer(f *testing.F) {
	f.Add([]byte(`{"message":"success","errors":[{"type":"bad","input_array":"attributes","index":0},{"type":"x","input_array":"events","index":2},{"input_array":"events","index":9},{"input_array":"purchases","index":0},{"input_array":"events","index":2}]}`), 2, 3)
	f.Add([]byte(`{"message":"Valid data must be provided"}`), 1, 1)
	f.Add([]byte(`{"errors":"x"}`), 0, 0)
	f.Fuzz(func(t *testing.T, b []byte, na, ne int) {
		na, ne = na%100, ne%100
		a := braze.ParseAnswer(b, na, ne)
		seen := map[string]bool{}
		for _, e := range a.Attributes {
			if e.Index < 0 || e.Index >= na || seen["a"+strconv.Itoa(e.Index)] || e.Reason == "" {
				t.Fatalf("attribute error %+v of %d", e, na)
			}
			seen["a"+strconv.Itoa(e.Index)] = true
		}
		for _, e := range a.Events {
			if e.Index < 0 || e.Index >= ne || seen["e"+strconv.Itoa(e.Index)] || e.Reason == "" {
				t.Fatalf("event error %+v of %d", e, ne)
			}
			seen["e"+strconv.Itoa(e.Index)] = true
		}
	})
}
