package amplitude_test

import (
	"context"
	"encoding/json"
	"errors"
	"fmt"
	"net/http"
	"strings"
	"sync"
	"testing"
	"time"

	"github.com/backflowhq/backflow/config"
	"github.com/backflowhq/backflow/destinations"
	"github.com/backflowhq/backflow/destinations/amplitude"
	"github.com/backflowhq/backflow/destinations/destinationstest"
	"github.com/backflowhq/backflow/destinations/internal/httpapi/apitest"
	"github.com/backflowhq/backflow/mapper"
)

const key = "amp-key-123"

// event is an event as Amplitude's HTTP V2 API reads it.
type event struct {
	EventType       string            `json:"event_type"`
	UserID          string            `json:"user_id"`
	DeviceID        string            `json:"device_id"`
	Time            int64             `json:"time"`
	InsertID        string            `json:"insert_id"`
	EventProperties json.RawMessage   `json:"event_properties"`
	UserProperties  json.RawMessage   `json:"user_properties"`
	Groups          map[string]string `json:"groups"`
	GroupProperties json.RawMessage   `json:"group_properties"`
}

// handler answers as Amplitude's HTTP V2 API documents
// (https://amplitude.com/docs/apis/analytics/http-v2): 400 naming a bad API key; 413 over
// 2,000 events or 1 MB; 400 listing the invalid events by index, none ingested (here: the
// events of refused users, as invalid user_id); else 200, everything ingested.
func handler(s *apitest.Server, r *http.Request, body []byte) apitest.Answer {
	if r.URL.Path != "/2/httpapi" && r.URL.Path != "/batch" {
		return apitest.Answer{Status: 404, Body: `{"error":"not found"}`}
	}
	var req struct {
		APIKey string            `json:"api_key"`
		Events []json.RawMessage `json:"events"`
	}
	if err := json.Unmarshal(body, &req); err != nil {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"Invalid JSON request body"}`}
	}
	if req.APIKey != key {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"Invalid API key: ` + req.APIKey + `"}`}
	}
	if len(req.Events) > 2000 || (r.URL.Path == "/2/httpapi" && len(body) > 1_000_000) {
		return apitest.Answer{Status: 413, Body: `{"code":413,"error":"Payload too large"}`}
	}
	if len(req.Events) == 0 {
		return apitest.Answer{Status: 400, Body: `{"code":400,"error":"Request missing required field","missing_field":"events"}`}
	}
	var invalid, missing []int
	evs := make([]event, len(req.Events))
	for i, raw := range req.Events {
		if err := json.Unmarshal(raw, &evs[i]); err != nil {
			return apitest.Answer{Status: 400, Body: `{"code":400,"error":"Invalid JSON request body"}`}
		}
		e := evs[i]
		switch {
		case e.EventType == "" || (e.UserID == "" && e.DeviceID == ""):
			missing = append(missing, i)
		case s.Refused(e.UserID):
			invalid = append(invalid, i)
		}
	}
	if len(invalid)+len(missing) > 0 {
		b, _ := json.Marshal(map[string]any{"code": 400, "error": "Request missing required field",
			"events_with_invalid_fields": map[string][]int{"user_id": invalid},
			"events_with_missing_fields": map[string][]int{"event_type": missing}})
		return apitest.Answer{Status: 400, Body: string(b)}
	}
	a := apitest.Answer{Status: 200, Body: fmt.Sprintf(`{"code":200,"events_ingested":%d,"payload_size_bytes":%d}`, len(evs), len(body))}
	for _, e := range evs {
		a.Accepted = append(a.Accepted, segmentOf(e))
	}
	return a
}

// segmentOf rebuilds the Segment message an event came from.
func segmentOf(e event) destinationstest.Received {
	ts := ""
	if e.Time != 0 {
		ts = time.UnixMilli(e.Time).UTC().Format(time.RFC3339Nano)
	}
	set := func(props json.RawMessage) json.RawMessage {
		var m struct {
			Set json.RawMessage `json:"$set"`
		}
		json.Unmarshal(props, &m)
		return m.Set
	}
	switch e.EventType {
	case "$identify":
		return apitest.Segment("identify", e.InsertID, e.UserID, e.DeviceID, "", "", set(e.UserProperties), ts)
	case "$groupidentify":
		return apitest.Segment("group", e.InsertID, e.UserID, e.DeviceID, e.Groups["company"], "", set(e.GroupProperties), ts)
	}
	return apitest.Segment("track", e.InsertID, e.UserID, e.DeviceID, "", e.EventType, e.EventProperties, ts)
}

func cfgFor(url string) config.Destination {
	return config.Destination{
		Type: amplitude.Type, Name: "amp", BatchSize: amplitude.MaxEvents, MaxInFlight: 4,
		Retry: config.Retry{MaxAttempts: 4, MaxBackoff: 20 * time.Millisecond}, Timeout: 5 * time.Second,
		Options: &amplitude.Options{APIKey: key, Endpoint: url, API: amplitude.APIHTTP, GroupType: "company"},
	}
}

func build(t testing.TB, cfg config.Destination) destinations.Destination {
	return destinationstest.Build(t, amplitude.Kind(), cfg)
}

func TestSuite(t *testing.T) {
	destinationstest.RunSuite(t, func(t *testing.T) (destinations.Destination, destinationstest.Receiver) {
		srv := apitest.New(t, handler)
		return build(t, cfgFor(srv.URL)), srv
	})
}

// TestEventShape pins the events of each message type, byte for byte.
func TestEventShape(t *testing.T) {
	srv := apitest.New(t, handler)
	d := build(t, cfgFor(srv.URL))
	id := destinationstest.NewMessage("identify", "m1", "user-1", `{"plan":"pro","amount":12.30}`, "2024-01-02T03:04:05.678Z")
	tr := destinationstest.NewMessage("track", "m2", "user-2", `{}`, "")
	gr := destinationstest.NewMessage("group", "m3", "user-3", `{"name":"Acme \"Inc\""}`, "2024-01-02T03:04:05Z")
	if err := d.Write(context.Background(), []mapper.Message{id, tr, gr}); err != nil {
		t.Fatal(err)
	}
	want := `{"api_key":"amp-key-123","events":[` +
		`{"event_type":"$identify","user_id":"user-1","time":1704164645678,"insert_id":"m1","user_properties":{"$set":{"plan":"pro","amount":12.30}}},` +
		`{"event_type":"Order Completed","user_id":"user-2","insert_id":"m2","event_properties":{}},` +
		`{"event_type":"$groupidentify","user_id":"user-3","time":1704164645000,"insert_id":"m3","groups":{"company":"g-user-3"},"group_properties":{"$set":{"name":"Acme \"Inc\""}}}]}`
	reqs := srv.Requests()
	if len(reqs) != 1 || string(reqs[0].Body) != want {
		t.Fatalf("%d requests; body\n%s\nwant\n%s", len(reqs), reqs[0].Body, want)
	}
}

// TestThrottled: a 429 is retried after its Retry-After, and without one after Amplitude's
// 30 seconds — both capped by max_backoff (150ms here), so the gap is exactly the cap
// rather than the much shorter random backoff of a 500.
func TestThrottled(t *testing.T) {
	for _, header := range []http.Header{{"Retry-After": {"1"}}, nil} {
		srv := apitest.New(t, handler)
		srv.Throttle(apitest.Answer{Status: 429, Header: header,
			Body: `{"code":429,"error":"Too many requests for some devices and users","eps_threshold":30,"throttled_users":{"u-ra-0":31}}`})
		cfg := cfgFor(srv.URL)
		cfg.Retry.MaxBackoff = 150 * time.Millisecond
		d := build(t, cfg)
		msgs := destinationstest.Messages("ra", 3)
		start := time.Now()
		if err := d.Write(context.Background(), msgs); err != nil {
			t.Fatal(err)
		}
		if el := time.Since(start); el < 150*time.Millisecond {
			t.Errorf("Retry-After %v: retried after %s, want the capped 150ms", header, el)
		}
		if reqs := srv.Requests(); len(reqs) != 2 || reqs[0].Status != 429 || len(srv.Received()) != 3 {
			t.Errorf("%d requests, %d received", len(reqs), len(srv.Received()))
		}
	}
}

// TestInvalidEventsAreRemovedAndTheRestResent: Amplitude ingests nothing of a 400 that
// lists invalid events; backflow rejects exactly those and sends the others once more.
func TestInvalidEventsAreRemovedAndTheRestResent(t *testing.T) {
	srv := apitest.New(t, handler)
	d := build(t, cfgFor(srv.URL))
	msgs := destinationstest.Messages("inv", 10)
	srv.RefuseUsers(msgs[2].UserID, msgs[7].UserID)
	err := d.Write(context.Background(), msgs)
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 2 || be.Failed[0].Index != 2 || be.Failed[1].Index != 7 {
		t.Fatalf("Write = %v, want messages 2 and 7 refused", err)
	}
	if !strings.Contains(be.Failed[0].Err.Error(), "invalid user_id") || destinations.IsRetryable(be.Failed[0].Err) {
		t.Errorf("refusal %v", be.Failed[0].Err)
	}
	reqs := srv.Requests()
	if len(reqs) != 2 || reqs[0].Status != 400 || reqs[1].Status != 200 || len(srv.Received()) != 8 {
		t.Errorf("%d requests, %d events received; want a 400 then one resend of the 8 valid ones", len(reqs), len(srv.Received()))
	}
}

// TestCredentialsRefused: a bad API key (Amplitude answers 400 naming it) and a 401 or
// 403 fail the batch as a whole after one request: no split, nothing rejected.
func TestCredentialsRefused(t *testing.T) {
	for _, status := range []int{400, 401, 403} {
		srv := apitest.New(t, func(s *apitest.Server, r *http.Request, b []byte) apitest.Answer {
			if status != 400 {
				return apitest.Answer{Status: status, Body: `{"error":"forbidden"}`}
			}
			return handler(s, r, b)
		})
		cfg := cfgFor(srv.URL)
		cfg.Options.(*amplitude.Options).APIKey = "wrong"
		d := build(t, cfg)
		err := d.Write(context.Background(), destinationstest.Messages("key", 8))
		var pe *destinations.PermanentError
		if !errors.As(err, &pe) || destinations.Splittable(pe) || len(srv.Requests()) != 1 {
			t.Errorf("HTTP %d: Write = %v after %d requests, want one unsplittable refusal", status, err, len(srv.Requests()))
		}
		if err := d.(destinations.Checker).Check(context.Background()); err == nil || strings.Contains(err.Error(), key) {
			t.Errorf("HTTP %d: Check = %v, want the key refused", status, err)
		}
	}
}

// TestSizeLimits: requests stay within 2,000 events and 1 MB whatever batch_size says; a
// single event over 1 MB is rejected without being sent; a 413 splits the request.
func TestSizeLimits(t *testing.T) {
	srv := apitest.New(t, handler)
	cfg := cfgFor(srv.URL)
	cfg.BatchSize = 5000
	d := build(t, cfg)
	small := destinationstest.Messages("count", 4500)
	if err := d.Write(context.Background(), small); err != nil {
		t.Fatal(err)
	}
	large := destinationstest.LargeMessages("bytes", 30, 100_000)
	huge := destinationstest.LargeMessages("huge", 1, 1_100_000)
	err := d.Write(context.Background(), append(large[:15:15], append(huge, large[15:]...)...))
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 15 || !strings.Contains(be.Failed[0].Err.Error(), "over its limit") {
		t.Fatalf("Write = %v, want the 1.1 MB message refused", err)
	}
	var counts []int
	for _, r := range srv.Requests() {
		if r.Status != 200 || r.Bytes > amplitude.MaxHTTPBytes {
			t.Errorf("a request of %d bytes answered %d", r.Bytes, r.Status)
		}
		counts = append(counts, r.Accepted)
	}
	if len(srv.Received()) != 4530 || len(counts) < 6 || counts[0] != 2000 || counts[1] != 2000 || counts[2] != 500 {
		t.Errorf("requests of %v events, %d received", counts, len(srv.Received()))
	}

	// A receiver with a smaller limit than Amplitude documents answers 413: bisected.
	var mu sync.Mutex
	limited := apitest.New(t, func(s *apitest.Server, r *http.Request, b []byte) apitest.Answer {
		mu.Lock()
		defer mu.Unlock()
		if len(b) > 300_000 {
			return apitest.Answer{Status: 413, Body: `{"code":413,"error":"Payload too large"}`}
		}
		return handler(s, r, b)
	})
	if err := build(t, cfgFor(limited.URL)).Write(context.Background(), destinationstest.LargeMessages("split", 8, 100_000)); err != nil {
		t.Fatal(err)
	}
	if n := len(limited.Received()); n != 8 {
		t.Errorf("%d of 8 received after 413s", n)
	}
}

func TestMinIDLength(t *testing.T) {
	srv := apitest.New(t, handler)
	cfg := cfgFor(srv.URL)
	cfg.Options.(*amplitude.Options).MinIDLength = 1
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("min", 1)); err != nil {
		t.Fatal(err)
	}
	if r := srv.Requests(); len(r) != 1 || !strings.HasPrefix(string(r[0].Body), `{"api_key":"amp-key-123","options":{"min_id_length":1},"events":[{`) {
		t.Errorf("body %s", r[0].Body)
	}
}

func TestEUAndBatchEndpoints(t *testing.T) {
	o := &amplitude.Options{APIKey: "k", Region: "eu"}
	prepare(t, o)
	if o.Endpoint != amplitude.EndpointEU || o.API != amplitude.APIHTTP || o.GroupType != "company" {
		t.Errorf("prepared %+v", o)
	}
	srv := apitest.New(t, handler)
	cfg := cfgFor(srv.URL)
	cfg.Options.(*amplitude.Options).API = amplitude.APIBatch
	if err := build(t, cfg).Write(context.Background(), destinationstest.Messages("batch", 2)); err != nil {
		t.Fatal(err)
	}
	if r := srv.Requests(); len(r) != 1 || r[0].Path != "/batch" {
		t.Errorf("requests %+v", r)
	}
}

func FuzzParseError(f *testing.F) {
	f.Add([]byte(`{"code":400,"error":"Request missing required field","events_with_invalid_fields":{"user_id":[0,3]},"events_with_missing_fields":{"event_type":[1,99,-1]}}`), 5)
	f.Add([]byte(`{"code":400,"error":"Invalid API key: x"}`), 1)
	f.Add([]byte(`{"code":400,"missing_field":"api_key"}`), 1)
	f.Add([]byte(`{"events_with_invalid_fields":{"a":"x"}}`), 2)
	f.Add([]byte(`not json`), 0)
	f.Fuzz(func(t *testing.T, b []byte, n int) {
		n = n % 3000
		e := amplitude.ParseError(b, n)
		for i, why := range e.Invalid {
			if i < 0 || i >= n || why == "" {
				t.Fatalf("index %d (%q) of a request of %d", i, why, n)
			}
		}
		if e.BadKey && len(e.Invalid) > 0 {
			t.Fatal("a refused key and invalid events")
		}
	})
}

// TestIdentifiers: an anonymousId becomes device_id; a message with neither identifier
// is rejected without a request.
func TestIdentifiers(t *testing.T) {
	srv := apitest.New(t, handler)
	d := build(t, cfgFor(srv.URL))
	anon := destinationstest.NewMessage("track", "a1", "", `{}`, "")
	anon.AnonymousID = "device-1"
	none := destinationstest.NewMessage("identify", "a2", "", `{}`, "")
	err := d.Write(context.Background(), []mapper.Message{none, anon})
	var be *destinations.BatchError
	if !errors.As(err, &be) || len(be.Failed) != 1 || be.Failed[0].Index != 0 || !strings.Contains(be.Failed[0].Err.Error(), "neither") {
		t.Fatalf("Write = %v, want the message without identifiers refused", err)
	}
	if r := srv.Requests(); len(r) != 1 || !strings.Contains(string(r[0].Body), `"device_id":"device-1"`) || strings.Contains(string(r[0].Body), `"user_id"`) {
		t.Errorf("requests %d: %s", len(r), r[0].Body)
	}
}
